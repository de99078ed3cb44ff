//! End-to-end tests of what the local control plane (`just cluster-up`) has on, as a real cluster
//! would: the release devtools/scripts/build-control-plane.sh names, Pod Security admission, and
//! an audit log that names who wrote what.
use std::{collections::BTreeMap, path::PathBuf, process::Command, time::Duration};

use devtools::testkit::{TestNamespace, client, local_kubeconfig_path, wait_until};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Container, Namespace, Node, Pod, PodSpec, SecurityContext, ServiceAccount},
    rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(30);

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The cluster's directory: where its kubeconfig is (`target/local-cluster/`).
fn cluster_dir() -> PathBuf {
    local_kubeconfig_path()
        .parent()
        .expect("the kubeconfig is in the cluster's directory")
        .to_path_buf()
}

/// `v` + what `build-control-plane.sh --version` prints: the one setting of the release.
fn release() -> String {
    let out = Command::new(repo_root().join("devtools/scripts/build-control-plane.sh"))
        .arg("--version")
        .output()
        .expect("run build-control-plane.sh --version");
    assert!(
        out.status.success(),
        "build-control-plane.sh --version failed"
    );
    format!("v{}", String::from_utf8_lossy(&out.stdout).trim())
}

#[tokio::test]
async fn the_server_kubectl_and_node_are_the_release_the_build_names() {
    let client = client().await;
    let release = release();
    let server = client.apiserver_version().await.expect("server version");
    assert_eq!(server.git_version, release);
    let minor: u32 = server
        .minor
        .trim_end_matches('+')
        .parse()
        .expect("numeric minor");
    assert!(minor >= 33, "a supported release, not 1.{minor}");

    // `kubectl version` as a user runs it, with the kubectl cluster.sh links.
    let out = Command::new(cluster_dir().join("bin/kubectl"))
        .args(["version", "-o", "json", "--kubeconfig"])
        .arg(local_kubeconfig_path())
        .output()
        .expect("run kubectl version");
    assert!(
        out.status.success(),
        "kubectl version: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let versions: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(versions["serverVersion"]["gitVersion"], json!(release));
    assert_eq!(versions["clientVersion"]["gitVersion"], json!(release));

    // The simulated node reports the server's release as its kubelet's.
    let nodes: Api<Node> = Api::all(client);
    let node = nodes.get("sim-node").await.expect("the simulated node");
    let info = node.status.and_then(|s| s.node_info).expect("nodeInfo");
    assert_eq!(info.kubelet_version, release);
}

fn pod(name: &str, security: Option<SecurityContext>) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some("registry.local/plugin:1.0".into()),
                security_context: security,
                ..Default::default()
            }],
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn a_restricted_namespace_refuses_a_privileged_pod_and_admits_a_restricted_one() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "pod-security").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label =
        json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}});
    namespaces
        .patch(&ns.name, &PatchParams::default(), &Patch::Merge(&label))
        .await
        .expect("label the namespace");
    wait_for_default_service_account(&client, &ns.name).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);

    let privileged = SecurityContext {
        privileged: Some(true),
        ..Default::default()
    };
    let refused = pods
        .create(&PostParams::default(), &pod("privileged", Some(privileged)))
        .await
        .expect_err("Pod Security admission refuses a privileged pod");
    match refused {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status
                    .message
                    .contains(r#"violates PodSecurity "restricted:latest""#)
                    && status.message.contains("privileged"),
                "{}",
                status.message
            );
        }
        other => panic!("not the API server's answer: {other}"),
    }

    let restricted: SecurityContext = serde_json::from_value(json!({
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": true,
        "runAsUser": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }))
    .expect("a security context");
    pods.create(&PostParams::default(), &pod("restricted", Some(restricted)))
        .await
        .expect("a pod that meets the restricted standard is admitted");
}

async fn wait_for_default_service_account(client: &Client, namespace: &str) {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    wait_until("the default ServiceAccount", DEADLINE, || async {
        match accounts.get_opt("default").await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("not yet created".to_string()),
            Err(err) => Err(err.to_string()),
        }
    })
    .await;
}

/// The audit events of `logs/audit.log` (and its rotated files) about one object.
fn audit_events(namespace: &str, name: &str) -> Vec<Value> {
    let logs = cluster_dir().join("logs");
    let mut events = Vec::new();
    for entry in std::fs::read_dir(&logs)
        .expect("the cluster's logs")
        .flatten()
    {
        let file = entry.file_name().to_string_lossy().into_owned();
        if !file.starts_with("audit") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        events.extend(
            text.lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .filter(|e| {
                    e["objectRef"]["namespace"] == namespace && e["objectRef"]["name"] == name
                }),
        );
    }
    events
}

#[tokio::test]
async fn the_audit_log_names_the_user_and_agent_of_each_write_and_skips_reads() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "audit").await;
    let ns = ns.name.as_str();

    // A ServiceAccount that may write ConfigMaps, and a token for it.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let writer = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("writer".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    accounts
        .create(&PostParams::default(), &writer)
        .await
        .expect("create the ServiceAccount");
    let roles: Api<Role> = Api::namespaced(client.clone(), ns);
    let role = Role {
        metadata: ObjectMeta {
            name: Some("configmaps".into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["create".into(), "get".into(), "patch".into()],
            ..Default::default()
        }]),
    };
    roles
        .create(&PostParams::default(), &role)
        .await
        .expect("create the Role");
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("writer".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "configmaps".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "writer".into(),
            namespace: Some(ns.to_string()),
            ..Default::default()
        }]),
    };
    bindings
        .create(&PostParams::default(), &binding)
        .await
        .expect("create the RoleBinding");
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = accounts
        .create_subresource::<TokenRequest, TokenRequest>(
            "token",
            "writer",
            &PostParams::default(),
            &request,
        )
        .await
        .expect("a token")
        .status
        .expect("token status")
        .token;

    // The ServiceAccount writes with kubectl (its own user agent); the admin reads.
    let kubectl = |args: &[&str]| {
        let out = Command::new(cluster_dir().join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(local_kubeconfig_path())
            .args(["--token", &token, "-n", ns])
            .args(args)
            .output()
            .expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    kubectl(&["create", "configmap", "audited", "--from-literal=a=1"]);
    kubectl(&[
        "patch",
        "configmap",
        "audited",
        "--type=merge",
        "-p",
        r#"{"data":{"a":"2"}}"#,
    ]);
    let maps: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), ns);
    maps.get("audited").await.expect("the admin reads it");

    let user = format!("system:serviceaccount:{ns}:writer");
    let events = wait_until("both writes in the audit log", DEADLINE, || async {
        let events = audit_events(ns, "audited");
        let verbs: BTreeMap<String, usize> = events.iter().fold(BTreeMap::new(), |mut verbs, e| {
            *verbs
                .entry(e["verb"].as_str().unwrap_or("").to_string())
                .or_default() += 1;
            verbs
        });
        if verbs.get("create") == Some(&1) && verbs.get("patch") == Some(&1) {
            Ok(events)
        } else {
            Err(format!("verbs so far: {verbs:?}"))
        }
    })
    .await;
    for event in &events {
        assert_eq!(event["user"]["username"], json!(user), "{event}");
        let agent = event["userAgent"].as_str().unwrap_or("");
        assert!(agent.starts_with("kubectl/"), "user agent {agent:?}");
        assert_eq!(event["level"], "Metadata", "no bodies: {event}");
        assert!(event.get("requestObject").is_none(), "{event}");
        assert_eq!(event["objectRef"]["resource"], "configmaps");
        assert_eq!(
            event["responseStatus"]["code"].as_u64().map(|c| c / 100),
            Some(2)
        );
    }
    assert!(
        events.iter().all(|e| e["verb"] != "get"),
        "reads are not audited"
    );
}
