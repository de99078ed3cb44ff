//! Leader election end to end: two operator processes share a Lease; only the holder
//! reconciles. `kill -9` the holder: the other takes over within the lease duration (measured),
//! and no child is duplicated or lost. Runs the real binary, not an in-process operator.
mod support;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use devtools::testkit::{self, wait_until};
use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Service, ServiceAccount},
};
use kube::{Api, Client, api::ListParams};
use plugin_operator::resources::Phase;
use serde_json::json;
use support::*;

const LEASE_DURATION: u64 = 6;

/// An operator process, killed when dropped.
struct Operator {
    identity: String,
    child: Child,
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(identity: &str, lease_namespace: &str) -> Operator {
    let logs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/local-cluster/logs");
    let _ = std::fs::create_dir_all(&logs);
    let log = std::fs::File::create(logs.join(format!("operator-failover-{identity}.log")))
        .expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_plugin-operator"))
        .args([
            "run",
            "--identity",
            identity,
            "--lease-namespace",
            lease_namespace,
        ])
        .args([
            "--lease-duration",
            &LEASE_DURATION.to_string(),
            "--lease-renew-before",
            "2",
        ])
        .args(["--api-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
        .env("KUBECONFIG", testkit::local_kubeconfig_path())
        .env("RUST_LOG", "info,plugin_operator=debug")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start plugin-operator");
    Operator {
        identity: identity.to_owned(),
        child,
    }
}

async fn holder(client: &Client, namespace: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let lease = leases
        .get_opt(plugin_operator::runtime::leader::LEASE_NAME)
        .await
        .ok()??;
    lease.spec?.holder_identity.filter(|h| !h.is_empty())
}

async fn count_children(client: &Client, namespace: &str, install: &str) -> [usize; 4] {
    let lp = ListParams::default().labels(&format!("plugin-operator.dev/install={install}"));
    [
        Api::<Deployment>::namespaced(client.clone(), namespace)
            .list(&lp)
            .await
            .expect("deployments")
            .items
            .len(),
        Api::<Service>::namespaced(client.clone(), namespace)
            .list(&lp)
            .await
            .expect("services")
            .items
            .len(),
        Api::<ServiceAccount>::namespaced(client.clone(), namespace)
            .list(&lp)
            .await
            .expect("accounts")
            .items
            .len(),
        Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .list(&lp)
            .await
            .expect("config maps")
            .items
            .len(),
    ]
}

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_is_killed() {
    let client = testkit::client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "failover").await;
    let mut operators = vec![start("op-a", &ns.name), start("op-b", &ns.name)];

    let first = wait_until("a leader", DEADLINE, || async {
        holder(&client, &ns.name)
            .await
            .ok_or_else(|| "no holder yet".to_owned())
    })
    .await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    for i in 0..3 {
        install(
            &client,
            &ns.name,
            &format!("echo-{i}"),
            json!({"plugin": "echo"}),
        )
        .await;
    }
    for i in 0..3 {
        wait_phase(&client, &ns.name, &format!("echo-{i}"), Phase::Active).await;
    }

    // kill -9 the leader: it cannot release the Lease.
    let index = operators
        .iter()
        .position(|o| o.identity == first)
        .expect("the holder is one of ours");
    let mut leader = operators.remove(index);
    leader.child.kill().expect("kill -9");
    let killed = Instant::now();
    let second = wait_until("another holder", DEADLINE, || async {
        match holder(&client, &ns.name).await {
            Some(h) if h != first => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await;
    let took = killed.elapsed();
    println!(
        "failover: {first} killed, {second} holds the Lease after {took:.1?} (lease duration {LEASE_DURATION}s)"
    );
    assert_eq!(second, operators[0].identity);
    assert!(
        took <= Duration::from_secs(LEASE_DURATION + 2),
        "took {took:?}, lease duration {LEASE_DURATION}s"
    );

    // The new leader reconciles: a new install comes up, and a crash is restarted.
    install(&client, &ns.name, "echo-3", json!({"plugin": "echo"})).await;
    wait_phase(&client, &ns.name, "echo-3", Phase::Active).await;
    crash_pods(&client, &ns.name, "echo-0").await;
    wait_install(
        &client,
        &ns.name,
        "echo-0",
        "restarted by the new leader",
        |i| {
            i.status.as_ref().is_some_and(|s| s.restarts == 1) && phase_of(i) == Some(Phase::Active)
        },
    )
    .await;
    for i in 0..4 {
        let name = format!("echo-{i}");
        assert_eq!(
            count_children(&client, &ns.name, &name).await,
            [1, 1, 1, 1],
            "children of {name}"
        );
        assert_eq!(
            phase_of(&get_install(&client, &ns.name, &name).await),
            Some(Phase::Active)
        );
    }
    drop(leader);
}
