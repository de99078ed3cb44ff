//! Leadership under faults, end to end, with replicas of the real binary behind fault proxies
//! (devtools::fault_proxy) on the local control plane:
//! 1. a leader whose renewals hang (only its election connection frozen) stops writing before
//!    another replica takes over, and comes back as a standby without taking the Lease back;
//! 2. a leader cut off from the API server is replaced within the lease duration + 2 s, with
//!    no child duplicated or lost;
//! 3. chaos: replicas killed at random while installs churn; everything converges, then a
//!    60 s idle window has no write.
//!
//! Ignored by `cargo test`: `just e2e-faults` runs them one at a time (their timings are the
//! subject) on a cluster of their own. One more, quick, runs with `just e2e`: the fence of an
//! in-process election closes at the renew deadline while its renewal hangs.
mod support;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use devtools::{
    fault_proxy::FaultProxy,
    testkit::{self, wait_until},
};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service, ServiceAccount},
};
use kube::{Api, Client, api::ListParams};
use plugin_operator::resources::Phase;
use serde_json::json;
use support::{
    replica::{Replica, Write, holder, lease, writes_in},
    *,
};

/// Short Lease timings keep the tests fast: a 6 s Lease, a 4 s renew deadline.
const LEASE_DURATION: u64 = 6;
const RENEW_BEFORE: u64 = 2;

fn flags(namespace: &str, extra: &[String]) -> Vec<String> {
    [
        "--lease-namespace",
        namespace,
        "--namespace",
        namespace,
        "--lease-duration",
        &LEASE_DURATION.to_string(),
        "--lease-renew-before",
        &RENEW_BEFORE.to_string(),
    ]
    .into_iter()
    .map(str::to_owned)
    .chain(extra.iter().cloned())
    .collect()
}

/// The API server's address, from the local cluster's kubeconfig.
fn api_server() -> (SocketAddr, String) {
    let kubeconfig = kube::config::Kubeconfig::read_from(testkit::local_kubeconfig_path())
        .expect("the local cluster's kubeconfig");
    let server = kubeconfig.clusters[0]
        .cluster
        .as_ref()
        .and_then(|c| c.server.clone())
        .expect("a server URL");
    let addr = server
        .trim_start_matches("https://")
        .trim_end_matches('/')
        .parse()
        .expect("https://<ip>:<port>");
    (addr, server)
}

/// A copy of the local kubeconfig whose server is `proxy` (all of a replica's traffic), beside
/// it (`cluster.sh down` removes it with the cluster).
fn kubeconfig_through(proxy: &FaultProxy, name: &str) -> PathBuf {
    let path = testkit::local_kubeconfig_path();
    let (_, server) = api_server();
    let text = std::fs::read_to_string(&path).expect("kubeconfig");
    let through = path.with_file_name(format!("kubeconfig-{name}"));
    std::fs::write(
        &through,
        text.replace(&server, &format!("https://{}", proxy.addr())),
    )
    .expect("write kubeconfig");
    through
}

async fn count_children(client: &Client, namespace: &str, install: &str) -> [usize; 4] {
    let lp = ListParams::default().labels(&format!("plugin-operator.dev/install={install}"));
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace);
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), namespace);
    let (deployments, services, accounts, config_maps) = tokio::join!(
        deployments.list(&lp),
        services.list(&lp),
        accounts.list(&lp),
        config_maps.list(&lp),
    );
    [
        deployments.expect("deployments").items.len(),
        services.expect("services").items.len(),
        accounts.expect("accounts").items.len(),
        config_maps.expect("config maps").items.len(),
    ]
}

async fn wait_holder(
    client: &Client,
    namespace: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    wait_until(what, DEADLINE, || async {
        match holder(client, namespace).await {
            Some(h) if ok(&h) => Ok(h),
            other => Err(format!("holder {other:?}")),
        }
    })
    .await
}

/// Writes of replica `old` that reached the API server after the first successful write of
/// `new` (its taking of the Lease): none may have passed; a Lease write of `old` delivered late
/// is allowed only if the API server refused it (it was written on a stale resource version).
fn stale_writes(namespace: &str, old: &str, new: &str) -> (Vec<Write>, Vec<Write>) {
    let writes = writes_in(namespace);
    let taken = writes
        .iter()
        .find(|w| w.by(new) && w.succeeded())
        .unwrap_or_else(|| panic!("{new} wrote nothing"))
        .received;
    let late: Vec<Write> = writes
        .into_iter()
        .filter(|w| w.by(old) && w.received > taken)
        .collect();
    late.into_iter()
        .partition(|w| w.is_lease() && !w.succeeded())
}

/// Watches the Lease for `window`: its holder must stay `holder` and it must change hands
/// no more (a flapping replica would take it back).
async fn holder_stays(client: &Client, namespace: &str, holder_identity: &str, window: Duration) {
    let transitions = |l: Option<k8s_openapi::api::coordination::v1::Lease>| {
        l.and_then(|l| l.spec).and_then(|s| s.lease_transitions)
    };
    let before = transitions(lease(client, namespace).await);
    let start = Instant::now();
    // A deliberate observation window: the subject is that nothing happens in it.
    while start.elapsed() < window {
        assert_eq!(
            holder(client, namespace).await.as_deref(),
            Some(holder_identity),
            "the Lease changed hands {:.1?} into the window",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(transitions(lease(client, namespace).await), before);
}

#[tokio::test]
#[ignore = "fault tier: just e2e-faults"]
async fn a_leader_whose_renewals_hang_stops_writing_before_another_takes_over() {
    let client = testkit::client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "hung").await;
    let (upstream, _) = api_server();
    let identities = ["hung-a", "hung-b"];
    let mut proxies = Vec::new();
    let mut replicas = Vec::new();
    for identity in identities {
        let proxy = FaultProxy::start(upstream).await.expect("proxy");
        let election = format!("https://{}", proxy.addr());
        replicas.push(Replica::start(
            identity,
            &flags(&ns.name, &["--election-server".into(), election]),
            &testkit::local_kubeconfig_path(),
        ));
        proxies.push(proxy);
    }
    let first = wait_holder(&client, &ns.name, "a leader", |_| true).await;
    let old = identities.iter().position(|i| *i == first).expect("ours");
    let second_identity = identities[1 - old];

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

    // Hang the leader's renewals; its watches and writes still reach the API server.
    proxies[old].freeze();
    let frozen = Instant::now();
    // Keep work coming, so that a leader that did not stop would write: an install every
    // half second until another replica holds the Lease.
    let mut created = 3;
    let second = loop {
        match holder(&client, &ns.name).await {
            Some(h) if h != first => break h,
            _ => {}
        }
        assert!(frozen.elapsed() < DEADLINE, "nobody took over");
        install(
            &client,
            &ns.name,
            &format!("echo-{created}"),
            json!({"plugin": "echo"}),
        )
        .await;
        created += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let took = frozen.elapsed();
    println!(
        "hung renewal: {first}'s election frozen, {second} holds the Lease after {took:.1?} \
         (lease {LEASE_DURATION}s, renew deadline {}s); {created} installs",
        LEASE_DURATION - RENEW_BEFORE
    );
    assert_eq!(second, second_identity);
    for i in 0..created {
        wait_phase(&client, &ns.name, &format!("echo-{i}"), Phase::Active).await;
    }
    let converged = frozen.elapsed();

    // Deliver what was held: late renewals of the old leader arrive now.
    proxies[old].restore();
    holder_stays(
        &client,
        &ns.name,
        &second,
        Duration::from_secs(3 * LEASE_DURATION),
    )
    .await;

    let (refused_lease_writes, stale) = stale_writes(&ns.name, &first, &second);
    let earlier = writes_in(&ns.name)
        .into_iter()
        .filter(|w| w.by(&first) && !w.is_lease() && w.succeeded())
        .count();
    println!(
        "hung renewal: {first} wrote {earlier} objects while leading; after {second} took over: \
         {} writes, {} late Lease writes refused; all {created} Active {converged:.1?} after the freeze",
        stale.len(),
        refused_lease_writes.len()
    );
    assert!(earlier > 0, "{first} reconciled before the fault");
    assert!(
        stale.is_empty(),
        "writes of {first} after {second} took over:\n{}",
        stale
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for i in 0..created {
        let name = format!("echo-{i}");
        assert_eq!(
            count_children(&client, &ns.name, &name).await,
            [1, 1, 1, 1],
            "{name}"
        );
    }

    // The old leader is a standby again: it takes over when the new one dies.
    replicas[1 - old].kill();
    let killed = Instant::now();
    wait_holder(&client, &ns.name, "the old leader back", |h| h == first).await;
    println!(
        "hung renewal: {first} took the Lease back {:.1?} after {second} was killed",
        killed.elapsed()
    );
}

#[tokio::test]
#[ignore = "fault tier: just e2e-faults"]
async fn a_leader_cut_off_is_replaced_within_the_lease_duration() {
    let client = testkit::client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "cut").await;
    let (upstream, _) = api_server();
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    // All of the first replica's traffic goes through the proxy; it leads before the other
    // one starts.
    let _a = Replica::start(
        "cut-a",
        &flags(&ns.name, &[]),
        &kubeconfig_through(&proxy, "cut-a"),
    );
    wait_holder(&client, &ns.name, "cut-a to lead", |h| h == "cut-a").await;
    let _b = Replica::start(
        "cut-b",
        &flags(&ns.name, &[]),
        &testkit::local_kubeconfig_path(),
    );

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

    proxy.cut();
    let cut = Instant::now();
    wait_holder(&client, &ns.name, "cut-b to take over", |h| h == "cut-b").await;
    let took = cut.elapsed();
    println!(
        "cut leader: cut-a cut off, cut-b holds the Lease after {took:.1?} (lease {LEASE_DURATION}s)"
    );
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
    println!(
        "cut leader: new install Active and a crash restarted {:.1?} after the cut",
        cut.elapsed()
    );

    // Reconnected, the old leader stays a standby.
    proxy.restore();
    holder_stays(
        &client,
        &ns.name,
        "cut-b",
        Duration::from_secs(2 * LEASE_DURATION),
    )
    .await;
    let (_, stale) = stale_writes(&ns.name, "cut-a", "cut-b");
    assert!(
        stale.is_empty(),
        "writes of cut-a after cut-b took over:\n{}",
        stale
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    for i in 0..4 {
        let name = format!("echo-{i}");
        assert_eq!(
            count_children(&client, &ns.name, &name).await,
            [1, 1, 1, 1],
            "{name}"
        );
        assert_eq!(
            phase_of(&get_install(&client, &ns.name, &name).await),
            Some(Phase::Active)
        );
    }
}

/// SplitMix64: a seeded generator, so that a failing chaos schedule can be replayed
/// (`CHAOS_SEED=<seed>`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// In `range` (half open).
    fn within(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start)
    }
}

/// What the test last asked of an install.
#[derive(Clone, Debug)]
struct Wanted {
    version: &'static str,
    active: bool,
    deleted: bool,
}

/// Children per install in the namespace: [Deployments, Services, ServiceAccounts, ConfigMaps].
async fn children_by_install(
    client: &Client,
    namespace: &str,
) -> std::collections::HashMap<String, [usize; 4]> {
    fn install_of(meta: &kube::api::ObjectMeta) -> Option<String> {
        meta.labels
            .as_ref()?
            .get("plugin-operator.dev/install")
            .cloned()
    }
    async fn labelled<K>(client: &Client, namespace: &str) -> Vec<kube::api::ObjectMeta>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let lp = ListParams::default().labels("plugin-operator.dev/install");
        Api::<K>::namespaced(client.clone(), namespace)
            .list(&lp)
            .await
            .expect("list children")
            .items
            .into_iter()
            .map(|o| o.meta().clone())
            .collect()
    }
    let (deployments, services, accounts, config_maps) = tokio::join!(
        labelled::<Deployment>(client, namespace),
        labelled::<Service>(client, namespace),
        labelled::<ServiceAccount>(client, namespace),
        labelled::<ConfigMap>(client, namespace),
    );
    let mut counts = std::collections::HashMap::<String, [usize; 4]>::new();
    for (kind, metas) in [deployments, services, accounts, config_maps]
        .into_iter()
        .enumerate()
    {
        for meta in metas {
            if let Some(install) = install_of(&meta) {
                counts.entry(install).or_default()[kind] += 1;
            }
        }
    }
    counts
}

/// The Plugin and PluginVersion statuses that do not yet describe the installs as they are:
/// a version's `InUse` names the installs that run it, a plugin's `installs` counts those that
/// name it. They follow the installs' statuses, so they are the last writes of a convergence.
async fn catalog_behind(
    client: &Client,
    namespace: &str,
    installs: &std::collections::HashMap<String, plugin_operator::resources::PluginInstall>,
) -> Vec<String> {
    use plugin_operator::{
        reconcile::catalog::holders,
        resources::{Plugin, PluginVersion, conditions},
    };
    let installs: Vec<_> = installs
        .values()
        .cloned()
        .map(std::sync::Arc::new)
        .collect();
    let mut behind = Vec::new();
    let versions = Api::<PluginVersion>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list versions");
    for version in versions.items {
        let name = kube::ResourceExt::name_any(&version);
        let held = holders(&version, &installs, "plugin-catalog");
        let in_use = version
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == conditions::IN_USE));
        let current = match in_use {
            Some(c) if held.is_empty() => c.status == "False",
            Some(c) => c.status == "True" && c.message.ends_with(&held.join(", ")),
            None => false,
        };
        if !current {
            behind.push(format!("version {name}: InUse does not name {held:?} yet"));
        }
    }
    let plugins = Api::<Plugin>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
        .expect("list plugins");
    for plugin in plugins.items {
        let name = kube::ResourceExt::name_any(&plugin);
        let naming = installs
            .iter()
            .filter(|i| i.spec.plugin.name() == name)
            .count();
        let counted = plugin.status.as_ref().map(|s| s.installs);
        if counted != Some(i32::try_from(naming).expect("few installs")) {
            behind.push(format!(
                "plugin {name}: installs {counted:?}, want {naming}"
            ));
        }
    }
    behind
}

/// Why the namespace has not converged to `wanted` yet (`None` when it has): every install
/// that is not deleted is in its phase, at its version, its status up to date with its spec,
/// with one of each child (no Deployment when inactive); a deleted install has no child left.
async fn not_converged(
    client: &Client,
    namespace: &str,
    wanted: &std::collections::BTreeMap<String, Wanted>,
) -> Option<String> {
    let installs: Api<plugin_operator::resources::PluginInstall> =
        Api::namespaced(client.clone(), namespace);
    let listed: std::collections::HashMap<_, _> = installs
        .list(&ListParams::default())
        .await
        .expect("list installs")
        .items
        .into_iter()
        .map(|i| (kube::ResourceExt::name_any(&i), i))
        .collect();
    let children = children_by_install(client, namespace).await;
    let mut waiting = Vec::new();
    for (name, want) in wanted {
        let counts = children.get(name).copied().unwrap_or_default();
        let install = listed.get(name);
        let problem = match (install, want.deleted) {
            (Some(_), true) => Some("not deleted yet".to_owned()),
            (None, true) if counts != [0; 4] => Some(format!("children left {counts:?}")),
            (None, true) => None,
            (None, false) => Some("missing".to_owned()),
            (Some(install), false) => {
                let status = install.status.clone().unwrap_or_default();
                let phase = if want.active {
                    Phase::Active
                } else {
                    Phase::Inactive
                };
                if status.observed_generation != install.metadata.generation {
                    Some("status not up to date".to_owned())
                } else if status.phase != Some(phase) {
                    Some(format!("phase {:?}, want {phase}", status.phase))
                } else if want.active && status.version.as_deref() != Some(want.version) {
                    Some(format!(
                        "version {:?}, want {}",
                        status.version, want.version
                    ))
                } else if want.active && counts != [1; 4] {
                    Some(format!("children {counts:?}"))
                } else if !want.active && (counts[0] != 0 || counts.iter().any(|c| *c > 1)) {
                    Some(format!("inactive with children {counts:?}"))
                } else {
                    None
                }
            }
        };
        if let Some(problem) = problem {
            waiting.push(format!("{name}: {problem}"));
        }
    }
    // Children of no install the test made would be strays.
    let strays: Vec<_> = children
        .keys()
        .filter(|k| !wanted.contains_key(*k))
        .collect();
    if !strays.is_empty() {
        waiting.push(format!("children of unknown installs {strays:?}"));
    }
    waiting.extend(catalog_behind(client, namespace, &listed).await);
    (!waiting.is_empty()).then(|| {
        format!(
            "{} not converged, e.g. {}",
            waiting.len(),
            waiting
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        )
    })
}

#[tokio::test]
#[ignore = "fault tier: just e2e-faults"]
async fn chaos_kills_while_installs_churn_and_everything_converges() {
    let churn = Duration::from_secs(
        std::env::var("CHAOS_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(180),
    );
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
    println!("chaos: seed {seed} (CHAOS_SEED={seed} replays it), churn {churn:?}");
    let mut rng = Rng(seed);
    let client = testkit::client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "chaos").await;
    // Stable identities, as a StatefulSet's pods have: a replica comes back under its name.
    let replicas: Vec<Replica> = (0..3)
        .map(|i| {
            Replica::start(
                &format!("chaos-{i}"),
                &flags(&ns.name, &[]),
                &testkit::local_kubeconfig_path(),
            )
        })
        .collect();
    wait_holder(&client, &ns.name, "a leader", |_| true).await;
    plugin(&client, &ns.name, "echo").await;
    version(&client, &ns.name, "echo", "1.0.0", "ready").await;
    version(&client, &ns.name, "echo", "2.0.0", "ready").await;

    // kill -9 a replica at random every 10-30 s and start it again 0-7 s later, until the
    // churn ends; a killed holder's Lease is taken within the lease duration (or at once by its
    // own restart, which has the holder's name).
    let killer = {
        let client = client.clone();
        let namespace = ns.name.clone();
        let mut rng = Rng(seed ^ 0x5EED);
        let mut replicas = replicas;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut kills = Vec::new();
            loop {
                // The chaos schedule itself: the wait is the subject, not a condition.
                let next = start.elapsed() + Duration::from_secs(rng.within(10..31));
                if next >= churn {
                    tokio::time::sleep(churn.saturating_sub(start.elapsed())).await;
                    return (replicas, kills);
                }
                tokio::time::sleep(next.saturating_sub(start.elapsed())).await;
                // The holder half the time (the interesting victim), else any replica.
                let held = holder(&client, &namespace).await;
                let holder_index = replicas
                    .iter()
                    .position(|r| Some(r.identity.as_str()) == held.as_deref());
                let victim = match (rng.within(0..2), holder_index) {
                    (0, Some(index)) => index,
                    _ => rng.within(0..3) as usize,
                };
                let was_holder = Some(victim) == holder_index;
                let before = lease(&client, &namespace)
                    .await
                    .and_then(|l| l.spec)
                    .and_then(|s| s.renew_time);
                replicas[victim].kill();
                let killed = Instant::now();
                // Back after 0-7 s: before the lease duration its own name takes the Lease
                // back at once, after it another replica has taken it. Meanwhile, for a killed
                // holder: how long the Lease goes without a renewal.
                let back_after = Duration::from_secs(rng.within(0..8));
                let mut restarted = None;
                let mut renewed_after = None;
                while restarted.is_none() || (was_holder && renewed_after.is_none()) {
                    if restarted.is_none() && killed.elapsed() >= back_after {
                        replicas[victim].restart();
                        restarted = Some(killed.elapsed());
                    }
                    if was_holder && renewed_after.is_none() {
                        let now = lease(&client, &namespace)
                            .await
                            .and_then(|l| l.spec)
                            .and_then(|s| s.renew_time);
                        if now.is_some() && now != before {
                            renewed_after = Some(killed.elapsed());
                        }
                    }
                    assert!(killed.elapsed() < DEADLINE, "the Lease was not renewed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let restarted = restarted.unwrap_or_default();
                let holder_now = holder(&client, &namespace).await;
                println!(
                    "chaos: {:>5.1?} killed {}, back after {:.1?}{}",
                    start.elapsed(),
                    replicas[victim].identity,
                    restarted,
                    renewed_after.map_or(String::new(), |t| format!(
                        " (the holder; the Lease renewed again after {t:.1?}, held by {:?})",
                        holder_now
                    ))
                );
                kills.push((replicas[victim].identity.clone(), renewed_after));
            }
        })
    };

    // Churn: 200 installs created, upgraded, deactivated, reactivated and deleted at random.
    let mut wanted = std::collections::BTreeMap::<String, Wanted>::new();
    let installs: Api<plugin_operator::resources::PluginInstall> =
        Api::namespaced(client.clone(), &ns.name);
    let start = Instant::now();
    let mut created = 0;
    let ticks = churn.as_millis() as u64 / 300;
    for tick in 0..ticks {
        let due = Duration::from_millis(tick * 300);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        // Two ticks in three create an install until there are 200 (half the churn).
        let live: Vec<String> = wanted
            .iter()
            .filter(|(_, w)| !w.deleted)
            .map(|(n, _)| n.clone())
            .collect();
        if created < 200 && (rng.within(0..3) < 2 || live.is_empty()) {
            let name = format!("echo-{created}");
            install(
                &client,
                &ns.name,
                &name,
                json!({"plugin": "echo", "version": "1.0.0"}),
            )
            .await;
            wanted.insert(
                name,
                Wanted {
                    version: "1.0.0",
                    active: true,
                    deleted: false,
                },
            );
            created += 1;
            continue;
        }
        let name = live[rng.within(0..live.len() as u64) as usize].clone();
        let want = wanted.get_mut(&name).expect("live");
        match rng.within(0..100) {
            0..40 => {
                let to = if want.version == "1.0.0" {
                    "2.0.0"
                } else {
                    "1.0.0"
                };
                patch_install(&client, &ns.name, &name, json!({"spec": {"version": to}})).await;
                want.version = to;
            }
            40..65 => {
                let active = !want.active;
                patch_install(
                    &client,
                    &ns.name,
                    &name,
                    json!({"spec": {"active": active}}),
                )
                .await;
                want.active = active;
            }
            65..80 => {
                installs
                    .delete(&name, &Default::default())
                    .await
                    .expect("delete install");
                want.deleted = true;
            }
            _ => {} // a quiet tick
        }
    }
    let (replicas, kills) = killer.await.expect("the killer");
    let churned = start.elapsed();
    let counts = |f: fn(&Wanted) -> bool| wanted.values().filter(|w| f(w)).count();
    println!(
        "chaos: churn over after {churned:.1?}: {created} installs, {} deleted, {} inactive, {} at 2.0.0; {} kills ({} of the holder)",
        counts(|w| w.deleted),
        counts(|w| !w.deleted && !w.active),
        counts(|w| !w.deleted && w.version == "2.0.0"),
        kills.len(),
        kills.iter().filter(|(_, t)| t.is_some()).count()
    );
    assert!(!kills.is_empty(), "the chaos killed nobody");

    let converge_deadline = Duration::from_secs(300);
    let quiet = Instant::now();
    wait_until("everything to converge", converge_deadline, || async {
        match not_converged(&client, &ns.name, &wanted).await {
            None => Ok(()),
            Some(why) => Err(why),
        }
    })
    .await;
    println!(
        "chaos: converged {:.1?} after the churn stopped",
        quiet.elapsed()
    );

    // Idle: no write of any replica for 60 s (the Lease renewals apart: the election's).
    let idle_from = chrono::Utc::now();
    // The idle window is the subject: nothing may happen in it.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let writes: Vec<Write> = writes_in(&ns.name)
        .into_iter()
        .filter(|w| w.user_agent.starts_with("plugin-operator/") && !w.is_lease())
        .filter(|w| w.received > idle_from)
        .collect();
    assert!(
        writes.is_empty(),
        "writes in the idle window:\n{}",
        writes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(not_converged(&client, &ns.name, &wanted).await, None);
    println!("chaos: 60 s idle window without a write");
    drop(replicas);
}

#[tokio::test]
async fn the_fence_closes_at_the_renew_deadline_while_the_renewal_hangs() {
    use plugin_operator::runtime::leader::{
        Election, LEASE_NAME, LeaseTimings, NotLeader, fenced_client,
    };
    let client = testkit::client().await;
    let ns = namespace(&client, "fence").await;
    let (upstream, _) = api_server();
    let proxy = FaultProxy::start(upstream).await.expect("proxy");
    let timings = LeaseTimings {
        duration: LEASE_DURATION,
        renew_before: RENEW_BEFORE,
    };
    // The election's client goes through the proxy, as `--election-server` sends it.
    let kubeconfig =
        kube::config::Kubeconfig::read_from(testkit::local_kubeconfig_path()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.cluster_url = format!("https://{}", proxy.addr()).parse().expect("url");
    config.read_timeout = Some(timings.call_timeout());
    config.connect_timeout = Some(timings.call_timeout());
    let election = Election::start(
        Client::try_from(config).expect("client"),
        &ns.name,
        LEASE_NAME,
        "fence-a",
        timings,
    );
    let state = election.state.clone();
    wait_until("leading", DEADLINE, || async {
        if state.is_leader() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    let config_maps: Api<ConfigMap> =
        Api::namespaced(fenced_client(client.clone(), state.clone()), &ns.name);
    let config_map = |name: &str| -> ConfigMap {
        serde_json::from_value(json!({"metadata": {"name": name}})).expect("config map")
    };
    config_maps
        .create(&Default::default(), &config_map("before"))
        .await
        .expect("a leader writes");

    // Hang the renewals: writes pass until the renew deadline, by this process's clock, then
    // are refused before they are sent, though the renewal call has not failed yet.
    proxy.freeze();
    let frozen = Instant::now();
    let mut written = vec!["before".to_owned()];
    let refused_after = loop {
        let name = format!("w-{}", written.len());
        match config_maps
            .create(&Default::default(), &config_map(&name))
            .await
        {
            Ok(_) => written.push(name),
            Err(kube::Error::Service(e)) if e.is::<NotLeader>() => break frozen.elapsed(),
            Err(other) => panic!("write {name}: {other}"),
        }
        assert!(frozen.elapsed() < DEADLINE, "never fenced");
        // Paces the writes; the loop ends on the refusal, not on time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let deadline = timings.renew_deadline();
    println!(
        "fence: writes refused {refused_after:.2?} after the renewals hung (renew deadline \
         {deadline:?}, retry period {:?}); {} writes passed before",
        timings.retry_period(),
        written.len() - 1
    );
    // The last renewal was at most one retry period (and a call) before the freeze.
    assert!(
        refused_after <= deadline + Duration::from_millis(500),
        "{refused_after:?}"
    );
    assert!(
        refused_after + timings.retry_period() + timings.call_timeout() >= deadline,
        "{refused_after:?}"
    );
    assert!(!state.is_leader());
    // Reads pass the fence; the refused write never reached the API server.
    let mut stored: Vec<String> = config_maps
        .list(&ListParams::default())
        .await
        .expect("reads pass")
        .items
        .into_iter()
        .map(|c| kube::ResourceExt::name_any(&c))
        .filter(|n| n == "before" || n.starts_with("w-"))
        .collect();
    stored.sort();
    written.sort();
    assert_eq!(stored, written);

    // Back: nobody else competes, so it renews its own Lease and writes again.
    proxy.restore();
    wait_until("leading again", DEADLINE, || async {
        if state.is_leader() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
    config_maps
        .create(&Default::default(), &config_map("after"))
        .await
        .expect("the leader writes again");
    election.step_down().await;
    assert_eq!(holder(&client, &ns.name).await, None, "released");
}
