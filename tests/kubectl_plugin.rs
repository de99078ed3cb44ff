//! `kubectl plugin-operator` (issue 18), end to end: the built binary run against the local
//! control plane with its kubeconfig, on an Active install and a crash-looping one, its output
//! compared to the expected text, its JSON parsed, and its exit codes for the error cases.
mod support;

use std::path::Path;

use devtools::testkit::{self, wait_until};
use kube::Api;
use plugin_operator::resources::{Phase, PluginVersion};
use serde_json::{Value, json};
use support::*;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the plugin binary with `kubeconfig`; stdout is a pipe, so the output is plain.
async fn kubectl_plugin_with(kubeconfig: &Path, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubectl-plugin_operator"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await
        .expect("run kubectl-plugin_operator");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn kubectl_plugin(args: &[&str]) -> Run {
    kubectl_plugin_with(&testkit::local_kubeconfig_path(), args).await
}

/// Runs a command that must succeed and returns its stdout.
async fn ok(args: &[&str]) -> String {
    let run = kubectl_plugin(args).await;
    assert_eq!(
        run.code,
        Some(0),
        "{args:?} failed: {}{}",
        run.stdout,
        run.stderr
    );
    run.stdout
}

async fn wait_accepted(client: &kube::Client, namespace: &str, name: &str) {
    let api: Api<PluginVersion> = Api::namespaced(client.clone(), namespace);
    wait_until(&format!("version {name} accepted"), DEADLINE, || async {
        let version = api.get(name).await.map_err(|e| e.to_string())?;
        let accepted = version
            .status
            .iter()
            .flat_map(|s| &s.conditions)
            .any(|c| c.type_ == "Accepted" && c.status == "True");
        if accepted {
            Ok(())
        } else {
            Err(format!("status: {:?}", version.status))
        }
    })
    .await;
}

#[tokio::test]
async fn status_versions_and_history_of_an_active_and_a_crash_looping_install() {
    let client = setup().await;
    let ns = namespace(&client, "kplugin").await;
    let n = ns.name.as_str();
    plugin(&client, n, "echo").await;
    version(&client, n, "echo", "1.0.0", "ready").await;
    version_with(
        &client,
        n,
        "echo",
        "1.1.0",
        "ready",
        json!({"attribution": "draft"}),
    )
    .await;
    plugin(&client, n, "crash").await;
    version(&client, n, "crash", "1.0.0", "crash").await;
    install(
        &client,
        n,
        "echo",
        json!({"plugin": "echo", "version": "1.0.0"}),
    )
    .await;
    install(
        &client,
        n,
        "crash",
        json!({"plugin": "crash", "progressDeadlineSeconds": 600}),
    )
    .await;
    wait_phase(&client, n, "echo", Phase::Active).await;
    wait_phase(&client, n, "crash", Phase::Error).await;
    wait_accepted(&client, n, "echo-1.1.0").await;

    // status: one line per install, aligned, plain (stdout is a pipe). The crash-looping pod
    // never becomes ready, the active one is.
    let w = "NAMESPACE".len().max(n.len());
    let expected = format!(
        "{:<w$}   NAME    PLUGIN   VERSION   TARGET   AVAILABLE   PHASE    READY   LAST-FAILURE\n\
         {n:<w$}   crash   crash    -         1.0.0    -           Error    0/1     CrashLoop\n\
         {n:<w$}   echo    echo     1.0.0     -        -           Active   1/1     -\n",
        "NAMESPACE"
    );
    assert_eq!(ok(&["status", "-n", n]).await, expected);

    // -o json: the same rows as data.
    let rows: Value =
        serde_json::from_str(&ok(&["status", "-n", n, "-o", "json"]).await).expect("json");
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (crash, echo) = (&rows[0], &rows[1]);
    assert_eq!(echo["namespace"], n);
    assert_eq!(echo["name"], "echo");
    assert_eq!(echo["plugin"], "echo");
    assert_eq!(echo["version"], "1.0.0");
    assert_eq!(echo["phase"], "Active");
    assert_eq!(echo["ready"], "1/1");
    assert_eq!(echo["restarts"], 0);
    assert_eq!(echo["lastFailure"], Value::Null);
    assert_eq!(crash["name"], "crash");
    assert_eq!(crash["phase"], "Error");
    assert_eq!(crash["version"], Value::Null);
    assert_eq!(crash["target"], "1.0.0");
    assert_eq!(crash["lastFailure"], "CrashLoop");
    let message = crash["lastFailureMessage"].as_str().expect("a message");
    assert!(message.contains("CrashLoopBackOff"), "{message}");

    // -o wide adds the restarts, the upgrade mode, the endpoint and the failure message.
    let wide = ok(&["status", "-n", n, "-o", "wide"]).await;
    let header: Vec<&str> = wide
        .lines()
        .next()
        .expect("a header")
        .split_whitespace()
        .collect();
    assert_eq!(
        &header[9..],
        &["RESTARTS", "UPGRADE", "ENDPOINT", "MESSAGE"]
    );
    assert!(wide.contains("CrashLoopBackOff"), "{wide}");

    // versions: formal and draft, accepted, and which install runs each.
    let versions = ok(&["versions", &format!("{n}/echo")]).await;
    let lines: Vec<Vec<&str>> = versions
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        ["VERSION", "KIND", "ACCEPTED", "REASON", "INSTALLS"]
    );
    assert_eq!(lines.len(), 3, "{versions}");
    assert_eq!(
        (lines[1][0], lines[1][1], lines[1][2], lines[1][4]),
        ("1.0.0", "formal", "True", format!("{n}/echo").as_str())
    );
    assert_eq!(
        (lines[2][0], lines[2][1], lines[2][2], lines[2][4]),
        ("1.1.0", "draft", "True", "-")
    );
    let data: Value =
        serde_json::from_str(&ok(&["versions", &format!("{n}/echo"), "-o", "json"]).await)
            .expect("json");
    assert_eq!(data[0]["version"], "1.0.0");
    assert_eq!(data[0]["formal"], true);
    assert_eq!(data[0]["installs"], json!([format!("{n}/echo")]));
    assert_eq!(data[1]["version"], "1.1.0");
    assert_eq!(data[1]["formal"], false);
    assert_eq!(data[1]["installs"], json!([]));

    // history: the rollout of 1.0.0 succeeded; nothing failed.
    let history = ok(&["history", &format!("{n}/echo")]).await;
    let lines: Vec<Vec<&str>> = history
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["VERSION", "OUTCOME", "FROM", "TO"]);
    assert_eq!((lines[1][0], lines[1][1]), ("1.0.0", "Succeeded"));
    assert_eq!(history.lines().last(), Some("Failed versions: -"));
    // The crash-looping install's failed versions are the ones its status names.
    let crash = get_install(&client, n, "crash").await;
    let failed = crash.status.expect("status").failed_versions;
    let expected = if failed.is_empty() {
        "-".to_owned()
    } else {
        failed.join(", ")
    };
    let history = ok(&["history", "crash", "-n", n]).await;
    assert_eq!(
        history.lines().last(),
        Some(format!("Failed versions: {expected}").as_str())
    );
}

#[tokio::test]
async fn a_missing_object_and_a_forbidden_namespace_have_their_own_exit_codes() {
    let client = setup().await;
    let ns = namespace(&client, "kplugin-err").await;
    let n = ns.name.as_str();

    let missing = kubectl_plugin(&["history", &format!("{n}/nothing")]).await;
    assert_eq!(missing.code, Some(3), "{}", missing.stderr);
    assert_eq!(
        missing.stderr,
        format!("error: plugininstalls.plugin-operator.dev \"{n}/nothing\" not found\n")
    );
    let missing = kubectl_plugin(&["versions", &format!("{n}/nothing")]).await;
    assert_eq!(missing.code, Some(3), "{}", missing.stderr);

    // A user without any role in the namespace: the admin kubeconfig impersonating a
    // ServiceAccount nobody granted anything.
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(testkit::local_kubeconfig_path()).expect("kubeconfig"),
    )
    .expect("kubeconfig yaml");
    for user in kubeconfig["users"].as_sequence_mut().expect("users") {
        user["user"]["as"] = format!("system:serviceaccount:{n}:nobody").into();
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kubeconfig-{n}"));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig).expect("yaml")).expect("write");
    let forbidden = kubectl_plugin_with(&path, &["status", "-n", n]).await;
    let _ = std::fs::remove_file(&path);
    assert_eq!(forbidden.code, Some(4), "{}", forbidden.stderr);
    assert_eq!(forbidden.stderr.lines().count(), 1, "{}", forbidden.stderr);
    assert!(
        forbidden.stderr.starts_with("error: forbidden: "),
        "{}",
        forbidden.stderr
    );
    assert!(forbidden.stdout.is_empty(), "{}", forbidden.stdout);
}
