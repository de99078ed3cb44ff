//! The children as built: labels, ownership, the Deployment, the mounts, the hashes.
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
    let inputs = Inputs {
        install,
        plugin_name: "billing-plugin",
        version: "1.4.0",
        execution,
        config: &serde_json::json!({"url": "https://x"}),
        restarts,
        replicas: install.spec.replicas,
    };
    let built = children(&inputs).expect("built");
    assert_eq!(
        template_hash(&inputs).expect("hashed"),
        built.template_hash,
        "the template's hash is known before the children are built"
    );
    built
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
    })
    .expect("built");
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
    })
    .expect("built");
    assert_ne!(applied(&a.deployment), applied(&scaled.deployment));
    assert_eq!(
        a.template_hash, scaled.template_hash,
        "scaling keeps the template"
    );
}

fn pod_spec(children: &Children) -> &PodSpec {
    children
        .deployment
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
}

#[test]
fn plugin_pods_meet_the_restricted_pod_security_standard_by_default() {
    let i = install(PluginInstallSpec::for_plugin("billing-plugin"));
    let c = build(&i, &execution(), 0);
    let security = container(&c).security_context.as_ref().expect("security");
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
    assert_eq!(
        security.capabilities.as_ref().and_then(|c| c.add.clone()),
        None
    );
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    assert_eq!(security.privileged, None);
    // Beyond `restricted`: a read-only root filesystem, with /tmp writable.
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let spec = pod_spec(&c);
    let tmp = spec
        .volumes
        .as_ref()
        .expect("volumes")
        .iter()
        .find(|v| v.name == "tmp")
        .expect("a tmp volume");
    assert!(tmp.empty_dir.is_some());
    let mount = container(&c)
        .volume_mounts
        .as_ref()
        .expect("mounts")
        .iter()
        .find(|m| m.name == "tmp")
        .expect("tmp mounted");
    assert_eq!(mount.mount_path, "/tmp");
    assert_ne!(mount.read_only, Some(true));
    // No ServiceAccount token unless the version asks for one.
    assert_eq!(spec.automount_service_account_token, Some(false));
    let asks = Execution {
        automount_service_account_token: Some(true),
        ..execution()
    };
    assert_eq!(
        pod_spec(&build(&i, &asks, 0)).automount_service_account_token,
        Some(true)
    );
}

#[test]
fn an_install_loosens_the_security_context_field_by_field() {
    let mut spec = PluginInstallSpec::for_plugin("billing-plugin");
    spec.runtime = Some(PluginRuntime {
        security_context: Some(SecurityContext {
            read_only_root_filesystem: Some(false),
            run_as_user: Some(1000),
            ..Default::default()
        }),
        ..Default::default()
    });
    let c = build(&install(spec), &execution(), 0);
    let security = container(&c).security_context.as_ref().expect("security");
    assert_eq!(security.read_only_root_filesystem, Some(false));
    assert_eq!(security.run_as_user, Some(1000));
    // What it does not set keeps its restricted default.
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
        Some("RuntimeDefault")
    );
    // And it changes the pods: a new template.
    let default = build(
        &install(PluginInstallSpec::for_plugin("billing-plugin")),
        &execution(),
        0,
    );
    assert_ne!(c.template_hash, default.template_hash);
}

#[test]
fn the_health_path_is_also_a_generous_liveness_probe_after_startup() {
    let i = install(PluginInstallSpec::for_plugin("billing-plugin"));
    let c = build(&i, &execution(), 0);
    let ct = container(&c);
    let liveness = ct.liveness_probe.as_ref().expect("liveness");
    assert_eq!(
        liveness.http_get.as_ref().and_then(|g| g.path.as_deref()),
        Some("/healthz")
    );
    // A minute of failed checks before a restart.
    assert_eq!(
        liveness.period_seconds.unwrap_or(10) * liveness.failure_threshold.unwrap_or(3),
        60
    );
    let startup = ct.startup_probe.as_ref().expect("startup");
    assert_eq!(
        startup.period_seconds.unwrap_or(10) * startup.failure_threshold.unwrap_or(3),
        300,
        "a slow start has the default progress deadline"
    );
    // Without a health path there is no liveness probe (a port that accepts is not alive).
    let e = Execution {
        health_path: None,
        ..execution()
    };
    let ct = build(&i, &e, 0);
    assert!(container(&ct).liveness_probe.is_none());
    assert!(container(&ct).startup_probe.is_none());
}
