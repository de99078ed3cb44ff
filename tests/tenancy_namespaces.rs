//! Least privilege: the operator run in namespace mode (`--namespace a,b`) with nothing but the
//! RBAC the chart renders for that mode (`operator.namespaces={a,b}`) runs installs of catalog
//! plugins in `a` and `b`, and has no rights in `c`, where it neither sees nor touches anything.
//! Its own test binary: the other e2e binaries run an operator over every namespace, which
//! would reconcile these installs too.
mod support;

use std::{path::Path, process::Command};

use devtools::testkit::{self, wait_until};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
    core::v1::ServiceAccount,
};
use kube::{
    Api, Client,
    api::{DynamicObject, Patch, PatchParams, PostParams},
    config::Kubeconfig,
    discovery::Discovery,
};
use plugin_operator::resources::{Phase, conditions::READY};
use serde::Deserialize;
use serde_json::{Value, json};
use support::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `helm template` of the chart with `--set` values, as JSON documents.
fn render(release_namespace: &str, sets: &[String]) -> Vec<Value> {
    let helm = Command::new(root().join("devtools/scripts/deploy-tools.sh"))
        .arg("helm")
        .output()
        .expect("deploy-tools.sh helm");
    assert!(helm.status.success(), "{helm:?}");
    let helm = String::from_utf8_lossy(&helm.stdout).trim().to_owned();
    let mut args: Vec<String> = [
        "template",
        "plugin-operator",
        "charts/plugin-operator",
        "--namespace",
        release_namespace,
        "--kube-version",
        "1.33.0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    for set in sets {
        args.push("--set".into());
        args.push(set.clone());
    }
    let out = Command::new(helm)
        .args(&args)
        .current_dir(root())
        .output()
        .expect("helm template");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .collect()
}

/// Server-side applies rendered objects with the admin client.
async fn apply_all(client: &Client, documents: &[Value]) {
    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    for doc in documents {
        let (group, version) = match doc["apiVersion"]
            .as_str()
            .expect("apiVersion")
            .split_once('/')
        {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (
                String::new(),
                doc["apiVersion"].as_str().unwrap_or("v1").to_owned(),
            ),
        };
        let kind = doc["kind"].as_str().expect("kind");
        let gvk = kube::api::GroupVersionKind::gvk(&group, &version, kind);
        let (resource, caps) = discovery.resolve_gvk(&gvk).expect("a known kind");
        let name = doc["metadata"]["name"].as_str().expect("name");
        let api: Api<DynamicObject> = match doc["metadata"]["namespace"].as_str() {
            Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), ns, &resource)
            }
            _ => Api::all_with(client.clone(), &resource),
        };
        api.patch(
            name,
            &PatchParams::apply("plugin-operator-tests").force(),
            &Patch::Apply(doc),
        )
        .await
        .unwrap_or_else(|e| panic!("apply {kind} {name}: {e}"));
    }
}

/// A kubeconfig for the local cluster that authenticates with `token`.
fn token_kubeconfig(token: &str) -> String {
    let admin = Kubeconfig::read_from(testkit::local_kubeconfig_path()).expect("admin kubeconfig");
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("a cluster");
    let server = cluster.server.expect("server");
    let ca = cluster
        .certificate_authority_data
        .expect("certificate-authority-data");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: plugin-operator\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: plugin-operator\ncurrent-context: local\n"
    )
}

/// The operator binary as a subprocess, killed when dropped.
struct OperatorProcess(std::process::Child);

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether the API server allows the ServiceAccount `namespace/name` to `verb` `resource` in
/// `in_namespace`.
async fn allowed(
    client: &Client,
    account: (&str, &str),
    verb: &str,
    group: &str,
    resource: &str,
    in_namespace: &str,
) -> bool {
    let api: Api<SubjectAccessReview> = Api::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{}:{}", account.0, account.1)),
            groups: Some(vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", account.0),
            ]),
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(in_namespace.to_owned()),
                verb: Some(verb.to_owned()),
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &review)
        .await
        .expect("SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

#[tokio::test]
async fn in_namespace_mode_the_charts_rbac_runs_installs_in_its_namespaces_only() {
    let client = testkit::client().await;
    install_crds(&client).await;
    let release = namespace(&client, "ten-ns-op").await;
    let catalog = namespace(&client, "ten-ns-cat").await;
    let a = namespace(&client, "ten-ns-a").await;
    let b = namespace(&client, "ten-ns-b").await;
    let c = namespace(&client, "ten-ns-c").await;
    // A release of its own name, so its cluster-wide objects do not meet tests/deploy.rs's.
    let fullname = release.name.clone();
    let documents = render(
        &release.name,
        &[
            format!("fullnameOverride={fullname}"),
            format!("operator.namespaces={{{},{}}}", a.name, b.name),
            format!("operator.catalogNamespace={}", catalog.name),
            "crds.enabled=false".into(),
            "rbac.aggregateToDefaultRoles=false".into(),
        ],
    );
    let rbac: Vec<Value> = documents
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .cloned()
        .collect();
    // Cluster-wide, only what exists only there: TokenReview and SubjectAccessReview.
    let cluster_rules: Vec<Value> = rbac
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
        .collect();
    let cluster_resources: Vec<&str> = cluster_rules
        .iter()
        .flat_map(|r| r["resources"].as_array().expect("resources").iter())
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        cluster_resources,
        ["tokenreviews", "subjectaccessreviews"],
        "{cluster_rules:?}"
    );
    let role_namespaces: Vec<&str> = rbac
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == fullname.as_str())
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    let mut expected = vec![a.name.as_str(), b.name.as_str(), catalog.name.as_str()];
    expected.sort();
    let mut got = role_namespaces.clone();
    got.sort();
    assert_eq!(got, expected);
    apply_all(&client, &rbac).await;

    // The operator, with the ServiceAccount's token only, run as the chart would run it.
    let args: Vec<String> = documents
        .iter()
        .find(|d| d["kind"] == "Deployment")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .cloned()
        })
        .expect("the Deployment's args")
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    assert!(
        args.contains(&format!("--namespace={},{}", a.name, b.name)),
        "{args:?}"
    );
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &release.name);
    let token = wait_until("a token for the operator", DEADLINE, || async {
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: Vec::new(),
                expiration_seconds: Some(3600),
                ..Default::default()
            },
            ..Default::default()
        };
        sas.create_token_request(&fullname, &PostParams::default(), &request)
            .await
            .map_err(|e| e.to_string())?
            .status
            .map(|s| s.token)
            .ok_or_else(|| "no token".to_owned())
    })
    .await;
    let cluster_dir = testkit::local_kubeconfig_path()
        .parent()
        .expect("cluster dir")
        .to_path_buf();
    let kubeconfig = cluster_dir.join("operator-namespaced.kubeconfig");
    std::fs::write(&kubeconfig, token_kubeconfig(&token)).expect("write kubeconfig");
    let admin_port = free_port();
    let api_port = free_port();
    let log_path = cluster_dir.join("logs/operator-tenancy-namespaces.log");
    let log = std::fs::File::create(&log_path).expect("the operator's log");
    // The chart's arguments, with local addresses, without leader election (one replica).
    let run_args: Vec<String> = args
        .iter()
        .filter(|a| {
            !a.starts_with("--api-addr")
                && !a.starts_with("--admin-addr")
                && !a.starts_with("--lease-")
                && *a != "--log-json"
        })
        .cloned()
        .chain([
            format!("--api-addr=127.0.0.1:{api_port}"),
            format!("--admin-addr=127.0.0.1:{admin_port}"),
            "--no-leader-election".to_owned(),
        ])
        .collect();
    let _operator = OperatorProcess(
        Command::new(env!("CARGO_BIN_EXE_plugin-operator"))
            .args(&run_args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,plugin_operator=debug")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start plugin-operator"),
    );
    wait_until("the operator ready", DEADLINE, || async {
        match reqwest::get(format!("http://127.0.0.1:{admin_port}/readyz")).await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("readyz answered {}", r.status())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;

    // A plugin of the catalog, installed in a, b and c.
    plugin(&client, &catalog.name, "echo").await;
    version(&client, &catalog.name, "echo", "1.0.0", "ready").await;
    let spec = json!({"plugin": {"name": "echo", "namespace": catalog.name}});
    for ns in [&a, &b, &c] {
        install(&client, &ns.name, "echo", spec.clone()).await;
    }
    for ns in [&a, &b] {
        let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
        assert!(deployment(&client, &ns.name, "echo").await.is_some());
        assert_eq!(
            condition(&active, READY).map(|c| c.status.as_str()),
            Some("True")
        );
    }
    // c is not the operator's: it has no rights there, and did nothing there.
    let account = (release.name.as_str(), fullname.as_str());
    for (verb, group, resource) in [
        ("list", "plugin-operator.dev", "plugininstalls"),
        ("patch", "plugin-operator.dev", "plugininstalls/status"),
        ("create", "apps", "deployments"),
        ("get", "", "secrets"),
        ("create", "", "serviceaccounts/token"),
    ] {
        assert!(
            allowed(&client, account, verb, group, resource, &a.name).await,
            "{verb} {resource} in a"
        );
        assert!(
            !allowed(&client, account, verb, group, resource, &c.name).await,
            "{verb} {group}/{resource} in c must be refused"
        );
    }
    // The install in c stays untouched: no status, no children, while a and b run.
    let in_c = get_install(&client, &c.name, "echo").await;
    assert!(in_c.status.is_none(), "{:?}", in_c.status);
    assert!(deployment(&client, &c.name, "echo").await.is_none());
    // And the operator was never refused anything: it asked only where it may.
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("forbidden") || l.contains(" 403"))
        .collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
}
