//! The objects an active supervised install owns, built from the install, its resolved version
//! and its config. Pure: the same inputs always build the same objects, so the apply step can
//! tell from a hash whether anything changed.
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, ExecAction,
            HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSpec, PodTemplateSpec, Probe,
            Secret, SecretVolumeSource, Service, ServiceAccount, ServicePort, ServiceSpec,
            TCPSocketAction, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use kube::{Resource, ResourceExt, api::ObjectMeta};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::resources::{
    Execution, PluginInstall,
    names::{
        annotations, child_labels, client_id, config_map_name, credentials, credentials_rotation,
        credentials_secret_name, labels,
    },
};

/// Name of the container that runs the plugin.
pub const CONTAINER: &str = "plugin";
/// Where the config file is mounted in the container.
pub const CONFIG_DIR: &str = "/etc/plugin";
/// Where Secrets of `configFrom` are mounted, one folder per Secret.
pub const SECRETS_DIR: &str = "/etc/plugin/secrets";
/// The key of the config in the ConfigMap (and the file name).
pub const CONFIG_KEY: &str = "config.json";

/// Where an install's credentials (seed 003: `client_id`, `client_secret`) are mounted.
pub const CREDENTIALS_DIR: &str = "/etc/plugin/credentials";

/// A fresh credentials Secret for an install: its client id, `client_secret`, no refresh tokens;
/// owned by the install, labelled like every child, marked with the rotation it was made for.
pub fn credentials_secret(install: &PluginInstall, plugin: &str, client_secret: &str) -> Secret {
    let name = install.name_any();
    let namespace = install.namespace().unwrap_or_default();
    let data = BTreeMap::from([
        (
            credentials::CLIENT_ID.to_owned(),
            ByteString(client_id(&namespace, &name).into_bytes()),
        ),
        (
            credentials::CLIENT_SECRET.to_owned(),
            ByteString(client_secret.as_bytes().to_vec()),
        ),
    ]);
    Secret {
        metadata: ObjectMeta {
            name: Some(credentials_secret_name(&name)),
            namespace: Some(namespace),
            labels: Some(child_labels(plugin, &name)),
            annotations: Some(BTreeMap::from([(
                credentials::ROTATION_ANNOTATION.to_owned(),
                credentials_rotation(install),
            )])),
            owner_references: install.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Default::default()
    }
}

/// Everything a supervised install's children are built from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub install: &'a PluginInstall,
    pub plugin_name: &'a str,
    pub version: &'a str,
    pub execution: &'a Execution,
    /// The config after defaults, without Secret values.
    pub config: &'a serde_json::Value,
    /// The install's `status.restarts`: a new value restarts the pods.
    pub restarts: i32,
    /// 0 when the install is inactive.
    pub replicas: i32,
}

/// The children of one install. Applying destructures it without `..`, so a child that is built
/// but never applied does not compile.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub service: Service,
    pub deployment: Deployment,
    /// Hash of the Deployment's pod template (the pods' `plugin-operator.dev/template` label).
    pub template_hash: String,
}

/// A stable short hash of anything serializable.
pub fn hash_of<T: Serialize>(value: &T) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Builds every child of an active (or deactivated: `replicas` 0) supervised install.
pub fn children(inputs: &Inputs<'_>) -> Children {
    let install = inputs.install;
    let name = install.name_any();
    let labels = child_labels(inputs.plugin_name, &name);
    let meta = |name: String| ObjectMeta {
        name: Some(name),
        namespace: install.namespace(),
        labels: Some(labels.clone()),
        owner_references: install.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    let config_json = serde_json::to_string_pretty(inputs.config).unwrap_or_else(|_| "{}".into());

    let service_account = ServiceAccount {
        metadata: meta(name.clone()),
        ..Default::default()
    };
    let config_map = ConfigMap {
        metadata: meta(config_map_name(&name)),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            config_json.clone(),
        )])),
        ..Default::default()
    };
    let service = Service {
        metadata: meta(name.clone()),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: inputs.execution.port,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let mut template = pod_template(inputs, &labels, &hash_of(&config_json));
    let template_hash = hash_of(&template);
    if let Some(template_labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        template_labels.insert(labels::TEMPLATE.into(), template_hash.clone());
    }
    let deployment = Deployment {
        metadata: meta(name.clone()),
        spec: Some(DeploymentSpec {
            replicas: Some(inputs.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                // The old version serves until the new one is ready.
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            progress_deadline_seconds: Some(install.spec.progress_deadline_seconds),
            revision_history_limit: Some(3),
            template,
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut children = Children {
        service_account,
        config_map,
        service,
        deployment,
        template_hash,
    };
    stamp_applied_hashes(&mut children);
    children
}

/// Adds [`annotations::APPLIED`] to each child: the hash of the child as built.
fn stamp_applied_hashes(children: &mut Children) {
    fn stamp<K: Resource + Serialize>(object: &mut K) {
        let hash = hash_of(object);
        object
            .annotations_mut()
            .insert(annotations::APPLIED.into(), hash);
    }
    stamp(&mut children.service_account);
    stamp(&mut children.config_map);
    stamp(&mut children.service);
    stamp(&mut children.deployment);
}

/// The Deployment's selector: immutable, so only what never changes for an install.
fn selector_labels(install: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::INSTALL.to_owned(), install.to_owned()),
    ])
}

fn pod_template(
    inputs: &Inputs<'_>,
    labels: &BTreeMap<String, String>,
    config_hash: &str,
) -> PodTemplateSpec {
    let install = inputs.install;
    let name = install.name_any();
    let execution = inputs.execution;
    let runtime = install.spec.runtime.clone().unwrap_or_default();

    let mut pod_labels = labels.clone();
    pod_labels.insert(labels::VERSION.into(), inputs.version.to_owned());
    let mut pod_annotations = runtime.pod_annotations.clone();
    pod_annotations.insert(annotations::CONFIG.into(), config_hash.to_owned());
    if inputs.restarts > 0 {
        pod_annotations.insert(annotations::RESTART.into(), inputs.restarts.to_string());
    }

    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(&name),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    volumes.push(Volume {
        name: "credentials".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(credentials_secret_name(&name)),
            // The pods start even before the Secret exists (it is filled in when it appears).
            optional: Some(true),
            items: Some(
                [credentials::CLIENT_ID, credentials::CLIENT_SECRET]
                    .into_iter()
                    .map(|key| KeyToPath {
                        key: key.into(),
                        path: key.into(),
                        mode: None,
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "credentials".into(),
        mount_path: CREDENTIALS_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    });
    for (index, source) in install.spec.config_from.iter().enumerate() {
        let volume = format!("secret-{index}");
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(source.name.clone()),
                optional: source.optional,
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: format!("{SECRETS_DIR}/{}", source.name),
            read_only: Some(true),
            ..Default::default()
        });
    }

    let probe_handler_port = IntOrString::String("http".into());
    let readiness_probe = Some(match &execution.health_path {
        Some(path) => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.clone()),
                port: probe_handler_port,
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        },
        None => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: probe_handler_port,
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        },
    });
    let lifecycle = (!execution.stop_command.is_empty()).then(|| Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(execution.stop_command.clone()),
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    let container = Container {
        name: CONTAINER.into(),
        image: execution.image.clone(),
        command: non_empty(&execution.command),
        args: non_empty(&execution.args),
        env: non_empty(&merged_env(
            &execution.env,
            &runtime.env,
            &name,
            inputs.version,
        )),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: execution.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        readiness_probe,
        lifecycle,
        resources: runtime
            .resources
            .clone()
            .or_else(|| execution.resources.clone()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(pod_annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name),
            containers: vec![container],
            volumes: Some(volumes),
            node_selector: (!runtime.node_selector.is_empty())
                .then(|| runtime.node_selector.clone()),
            tolerations: non_empty(&runtime.tolerations),
            affinity: runtime.affinity.clone(),
            image_pull_secrets: non_empty(&runtime.image_pull_secrets),
            ..Default::default()
        }),
    }
}

/// The version's env, then the install's `runtime.env` (which wins on the same name), then what
/// the operator tells every plugin.
fn merged_env(
    version_env: &[EnvVar],
    install_env: &[EnvVar],
    install: &str,
    version: &str,
) -> Vec<EnvVar> {
    let mut env: Vec<EnvVar> = version_env.to_vec();
    for var in install_env {
        match env.iter_mut().find(|e| e.name == var.name) {
            Some(existing) => *existing = var.clone(),
            None => env.push(var.clone()),
        }
    }
    let provided = [
        ("PLUGIN_INSTALL", install.to_owned()),
        ("PLUGIN_VERSION", version.to_owned()),
        ("PLUGIN_CONFIG_FILE", format!("{CONFIG_DIR}/{CONFIG_KEY}")),
    ];
    for (name, value) in provided {
        if !env.iter().any(|e| e.name == name) {
            env.push(EnvVar {
                name: name.into(),
                value: Some(value),
                ..Default::default()
            });
        }
    }
    env
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{ConfigFromSecret, PluginInstallSpec, PluginRuntime};
    use k8s_openapi::api::core::v1::ResourceRequirements;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn install(spec: PluginInstallSpec) -> PluginInstall {
        let mut install = PluginInstall::new("billing", spec);
        install.metadata.namespace = Some("tenant-a".into());
        install.metadata.uid = Some("uid-1".into());
        install
    }

    fn execution() -> Execution {
        Execution {
            image: Some("registry.example/billing:1.4.0".into()),
            command: vec!["/bin/billing".into()],
            args: vec!["--serve".into()],
            stop_command: vec!["/bin/billing".into(), "drain".into()],
            env: vec![EnvVar {
                name: "LOG".into(),
                value: Some("info".into()),
                ..Default::default()
            }],
            port: 9000,
            health_path: Some("/healthz".into()),
            ..Default::default()
        }
    }

    fn build(install: &PluginInstall, execution: &Execution, restarts: i32) -> Children {
        children(&Inputs {
            install,
            plugin_name: "billing-plugin",
            version: "1.4.0",
            execution,
            config: &serde_json::json!({"url": "https://x"}),
            restarts,
            replicas: install.spec.replicas,
        })
    }

    fn container(children: &Children) -> &Container {
        &children
            .deployment
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod spec")
            .containers[0]
    }

    #[test]
    fn every_child_is_owned_and_labelled() {
        let i = install(PluginInstallSpec::for_plugin("billing-plugin"));
        let c = build(&i, &execution(), 0);
        let metas = [
            &c.service_account.metadata,
            &c.config_map.metadata,
            &c.service.metadata,
            &c.deployment.metadata,
        ];
        for meta in metas {
            let labels = meta.labels.as_ref().expect("labels");
            assert_eq!(
                labels.get(labels::MANAGED_BY).map(String::as_str),
                Some("plugin-operator")
            );
            assert_eq!(
                labels.get(labels::PLUGIN).map(String::as_str),
                Some("billing-plugin")
            );
            assert_eq!(
                labels.get(labels::INSTALL).map(String::as_str),
                Some("billing")
            );
            let owner = &meta.owner_references.as_ref().expect("owner")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("PluginInstall", "uid-1", Some(true))
            );
            assert!(
                meta.annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(annotations::APPLIED))
            );
            assert_eq!(meta.namespace.as_deref(), Some("tenant-a"));
        }
        assert_eq!(
            c.config_map.metadata.name.as_deref(),
            Some("billing-config")
        );
    }

    #[test]
    fn the_deployment_runs_the_version() {
        let i = install(PluginInstallSpec {
            replicas: 2,
            ..PluginInstallSpec::for_plugin("billing-plugin")
        });
        let c = build(&i, &execution(), 0);
        let spec = c.deployment.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(2));
        let rolling = spec
            .strategy
            .as_ref()
            .and_then(|s| s.rolling_update.as_ref())
            .expect("rolling update");
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
        assert_eq!(spec.progress_deadline_seconds, Some(300));
        let ct = container(&c);
        assert_eq!(ct.image.as_deref(), Some("registry.example/billing:1.4.0"));
        assert_eq!(ct.command, Some(vec!["/bin/billing".to_owned()]));
        assert_eq!(ct.args, Some(vec!["--serve".to_owned()]));
        assert_eq!(ct.ports.as_ref().expect("ports")[0].container_port, 9000);
        let probe = ct
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("http probe");
        assert_eq!(probe.path.as_deref(), Some("/healthz"));
        let pre_stop = ct
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
            .and_then(|h| h.exec.as_ref());
        assert_eq!(
            pre_stop.and_then(|e| e.command.clone()),
            Some(vec!["/bin/billing".to_owned(), "drain".to_owned()])
        );
        let pod_labels = spec
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .expect("labels");
        assert_eq!(
            pod_labels.get(labels::VERSION).map(String::as_str),
            Some("1.4.0")
        );
        assert_eq!(pod_labels.get(labels::TEMPLATE), Some(&c.template_hash));
        assert_eq!(
            spec.template
                .spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref()),
            Some("billing")
        );
        let svc = c.service.spec.as_ref().expect("service spec");
        assert_eq!(svc.ports.as_ref().expect("ports")[0].port, 9000);
    }

    #[test]
    fn without_a_health_path_readiness_is_the_port() {
        let i = install(PluginInstallSpec::for_plugin("p"));
        let e = Execution {
            health_path: None,
            stop_command: vec![],
            ..execution()
        };
        let c = build(&i, &e, 0);
        let ct = container(&c);
        assert!(
            ct.readiness_probe
                .as_ref()
                .is_some_and(|p| p.tcp_socket.is_some() && p.http_get.is_none())
        );
        assert!(ct.lifecycle.is_none());
    }

    #[test]
    fn runtime_overrides_apply() {
        let resources = ResourceRequirements {
            limits: Some(BTreeMap::from([("cpu".to_owned(), Quantity("2".into()))])),
            ..Default::default()
        };
        let runtime = PluginRuntime {
            resources: Some(resources.clone()),
            env: vec![
                EnvVar {
                    name: "LOG".into(),
                    value: Some("debug".into()),
                    ..Default::default()
                },
                EnvVar {
                    name: "EXTRA".into(),
                    value: Some("1".into()),
                    ..Default::default()
                },
            ],
            node_selector: BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]),
            pod_annotations: BTreeMap::from([("team".to_owned(), "billing".to_owned())]),
            ..Default::default()
        };
        let i = install(PluginInstallSpec {
            runtime: Some(runtime),
            ..PluginInstallSpec::for_plugin("p")
        });
        let c = build(&i, &execution(), 0);
        let ct = container(&c);
        assert_eq!(ct.resources, Some(resources));
        let env = ct.env.as_ref().expect("env");
        let value = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(value("LOG").as_deref(), Some("debug"));
        assert_eq!(value("EXTRA").as_deref(), Some("1"));
        assert_eq!(value("PLUGIN_VERSION").as_deref(), Some("1.4.0"));
        let pod = c.deployment.spec.as_ref().expect("spec").template.clone();
        assert_eq!(
            pod.spec
                .as_ref()
                .and_then(|s| s.node_selector.clone())
                .and_then(|n| n.get("disk").cloned())
                .as_deref(),
            Some("ssd")
        );
        assert_eq!(
            pod.metadata
                .and_then(|m| m.annotations)
                .and_then(|a| a.get("team").cloned())
                .as_deref(),
            Some("billing")
        );
    }

    #[test]
    fn config_secrets_are_mounted_not_copied() {
        let spec = PluginInstallSpec {
            config_from: vec![ConfigFromSecret {
                name: "db".into(),
                keys: vec![],
                optional: None,
            }],
            ..PluginInstallSpec::for_plugin("p")
        };
        let c = build(&install(spec), &execution(), 0);
        let mounts = container(&c).volume_mounts.as_ref().expect("mounts");
        assert!(
            mounts
                .iter()
                .any(|m| m.mount_path == "/etc/plugin/secrets/db")
        );
        assert!(!c.config_map.data.as_ref().expect("data")[CONFIG_KEY].contains("db"));
    }

    #[test]
    fn credentials_are_a_secret_of_the_install_mounted_without_refresh_tokens() {
        let mut i = install(PluginInstallSpec::for_plugin("p"));
        i.annotations_mut()
            .insert(credentials::ROTATE_ANNOTATION.into(), "2".into());
        let secret = credentials_secret(&i, "billing-plugin", "s3cret");
        assert_eq!(secret.name_any(), "billing-credentials");
        let data = secret.data.as_ref().expect("data");
        assert_eq!(data[credentials::CLIENT_ID].0, b"tenant-a.billing");
        assert_eq!(data[credentials::CLIENT_SECRET].0, b"s3cret");
        assert_eq!(secret.labels()[labels::INSTALL], "billing");
        assert_eq!(secret.labels()[labels::PLUGIN], "billing-plugin");
        assert_eq!(secret.annotations()[credentials::ROTATION_ANNOTATION], "2");
        let owner = &secret.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.uid, "uid-1");

        let c = build(&i, &execution(), 0);
        let mounts = container(&c).volume_mounts.as_ref().expect("mounts");
        assert!(mounts.iter().any(|m| m.mount_path == CREDENTIALS_DIR));
        let pod = c
            .deployment
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref();
        let volume = pod
            .and_then(|p| p.volumes.as_ref())
            .and_then(|v| v.iter().find(|v| v.name == "credentials"))
            .and_then(|v| v.secret.as_ref())
            .expect("a Secret volume");
        assert_eq!(volume.secret_name.as_deref(), Some("billing-credentials"));
        assert_eq!(volume.optional, Some(true));
        let keys: Vec<_> = volume
            .items
            .iter()
            .flatten()
            .map(|k| k.key.as_str())
            .collect();
        assert_eq!(keys, [credentials::CLIENT_ID, credentials::CLIENT_SECRET]);
    }

    #[test]
    fn same_inputs_same_hashes_and_changes_show() {
        let i = install(PluginInstallSpec::for_plugin("p"));
        let a = build(&i, &execution(), 0);
        assert_eq!(a, build(&i, &execution(), 0));
        let restarted = build(&i, &execution(), 1);
        assert_ne!(a.template_hash, restarted.template_hash);
        let other_config = children(&Inputs {
            install: &i,
            plugin_name: "billing-plugin",
            version: "1.4.0",
            execution: &execution(),
            config: &serde_json::json!({"url": "https://y"}),
            restarts: 0,
            replicas: 1,
        });
        assert_ne!(
            a.template_hash, other_config.template_hash,
            "a config change rolls the pods"
        );
        let applied = |d: &Deployment| {
            d.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(annotations::APPLIED).cloned())
        };
        let scaled = children(&Inputs {
            replicas: 0,
            install: &i,
            plugin_name: "billing-plugin",
            version: "1.4.0",
            execution: &execution(),
            config: &serde_json::json!({"url": "https://x"}),
            restarts: 0,
        });
        assert_ne!(applied(&a.deployment), applied(&scaled.deployment));
        assert_eq!(
            a.template_hash, scaled.template_hash,
            "scaling keeps the template"
        );
    }
}
