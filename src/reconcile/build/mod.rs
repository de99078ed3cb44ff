//! The objects an active supervised install owns, built from the install, its resolved version
//! and its config. Pure: the same inputs always build the same objects, so the apply step can
//! tell from a hash whether anything changed.
use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EmptyDirVolumeSource, EnvVar, ExecAction, HTTPGetAction, KeyToPath, Lifecycle,
            LifecycleHandler, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret,
            SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec,
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
/// The one writable directory of a plugin's container by default (an emptyDir).
pub const TMP_DIR: &str = "/tmp";
/// The liveness probe (on the version's health path): every 10 s, restarted after 6 failures
/// in a row, i.e. a minute without an answer.
pub const LIVENESS_PERIOD_SECONDS: i32 = 10;
pub const LIVENESS_FAILURES: i32 = 6;
/// The startup probe: every 5 s, for up to 5 minutes (the default progress deadline) before
/// the liveness probe takes over.
pub const STARTUP_FAILURES: i32 = 60;

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

/// The ServiceAccount of an external install: the same object a supervised install applies (so
/// a plugin that changes mode keeps it unchanged), for its tokens (seed 000 get-endpoint, seed
/// 003 token route).
pub fn service_account(
    install: &PluginInstall,
    plugin: &str,
) -> Result<ServiceAccount, BuildError> {
    let name = install.name_any();
    let mut service_account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: install.namespace(),
            labels: Some(child_labels(plugin, &name)),
            owner_references: install.controller_owner_ref(&()).map(|r| vec![r]),
            ..Default::default()
        },
        ..Default::default()
    };
    let hash = hash_of(&service_account)?;
    service_account
        .annotations_mut()
        .insert(annotations::APPLIED.into(), hash);
    Ok(service_account)
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

/// A child could not be serialized, so neither hashed nor applied. (The children are made of
/// Kubernetes types and JSON values, which always serialize; this is a bug if it ever happens,
/// and the reconcile fails loudly rather than skip the apply.)
#[derive(Debug, thiserror::Error)]
#[error("a child of the install cannot be serialized: {0}")]
pub struct BuildError(#[from] serde_json::Error);

/// A stable short hash of anything serializable.
pub fn hash_of<T: Serialize>(value: &T) -> Result<String, BuildError> {
    let bytes = serde_json::to_vec(value)?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The hash of the pod template [`children`] builds from these inputs: the
/// `plugin-operator.dev/template` label of its pods. The lifecycle looks only at pods of the
/// template it wants.
pub fn template_hash(inputs: &Inputs<'_>) -> Result<String, BuildError> {
    let labels = child_labels(inputs.plugin_name, &inputs.install.name_any());
    let config_json = serde_json::to_string_pretty(inputs.config)?;
    hash_of(&pod_template(inputs, &labels, &hash_of(&config_json)?))
}

/// Builds every child of an active (or deactivated: `replicas` 0) supervised install.
pub fn children(inputs: &Inputs<'_>) -> Result<Children, BuildError> {
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
    let config_json = serde_json::to_string_pretty(inputs.config)?;

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

    let mut template = pod_template(inputs, &labels, &hash_of(&config_json)?);
    let template_hash = hash_of(&template)?;
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
    stamp_applied_hashes(&mut children)?;
    Ok(children)
}

/// Adds [`annotations::APPLIED`] to each child: the hash of the child as built.
fn stamp_applied_hashes(children: &mut Children) -> Result<(), BuildError> {
    fn stamp<K: Resource + Serialize>(object: &mut K) -> Result<(), BuildError> {
        let hash = hash_of(object)?;
        object
            .annotations_mut()
            .insert(annotations::APPLIED.into(), hash);
        Ok(())
    }
    let Children {
        service_account,
        config_map,
        service,
        deployment,
        template_hash: _,
    } = children;
    stamp(service_account)?;
    stamp(config_map)?;
    stamp(service)?;
    stamp(deployment)
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
    // The root filesystem is read-only by default; /tmp is where a plugin may write.
    volumes.push(Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    });
    mounts.push(VolumeMount {
        name: "tmp".into(),
        mount_path: TMP_DIR.into(),
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
                port: probe_handler_port.clone(),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        },
        None => Probe {
            tcp_socket: Some(TCPSocketAction {
                port: probe_handler_port.clone(),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        },
    });
    // The health path also tells the kubelet when a plugin hangs: liveness, with a generous
    // threshold (a minute of failed checks), and only after a startup probe has passed once, so
    // a slow start is not killed (it has as long as the default progress deadline).
    let health_get = execution.health_path.as_ref().map(|path| HTTPGetAction {
        path: Some(path.clone()),
        port: probe_handler_port,
        ..Default::default()
    });
    let liveness_probe = health_get.clone().map(|get| Probe {
        http_get: Some(get),
        period_seconds: Some(LIVENESS_PERIOD_SECONDS),
        timeout_seconds: Some(5),
        failure_threshold: Some(LIVENESS_FAILURES),
        ..Default::default()
    });
    let startup_probe = health_get.map(|get| Probe {
        http_get: Some(get),
        period_seconds: Some(5),
        timeout_seconds: Some(5),
        failure_threshold: Some(STARTUP_FAILURES),
        ..Default::default()
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
        liveness_probe,
        startup_probe,
        lifecycle,
        security_context: Some(container_security(runtime.security_context.as_ref())),
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
            // No token of the install's ServiceAccount in the pods unless the version asks.
            automount_service_account_token: Some(
                execution.automount_service_account_token.unwrap_or(false),
            ),
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

/// The plugin container's security context: the `restricted` Pod Security Standard
/// (runAsNonRoot, no privilege escalation, every capability dropped, seccomp RuntimeDefault)
/// and a read-only root filesystem; each field the install's `runtime.securityContext` sets
/// replaces the default one.
pub fn container_security(loosened: Option<&SecurityContext>) -> SecurityContext {
    let default = SecurityContext {
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            localhost_profile: None,
        }),
        read_only_root_filesystem: Some(true),
        ..Default::default()
    };
    let Some(set) = loosened else {
        return default;
    };
    let mut merged = set.clone();
    merged.run_as_non_root = merged.run_as_non_root.or(default.run_as_non_root);
    merged.allow_privilege_escalation = merged
        .allow_privilege_escalation
        .or(default.allow_privilege_escalation);
    merged.capabilities = merged.capabilities.or(default.capabilities);
    merged.seccomp_profile = merged.seccomp_profile.or(default.seccomp_profile);
    merged.read_only_root_filesystem = merged
        .read_only_root_filesystem
        .or(default.read_only_root_filesystem);
    merged
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
mod tests;
