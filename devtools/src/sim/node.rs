//! The simulated node: registered (and registered again when deleted), with a heartbeat on its
//! Ready condition and on its Lease in `kube-node-lease`, as a kubelet keeps them.
use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{Node, NodeAddress, NodeCondition, NodeStatus, NodeSystemInfo},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, OwnerReference, Time},
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::{Error, NodeConfig, stopped, timed};

/// The namespace of node heartbeat Leases.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";
const LEASE_DURATION_SECONDS: i32 = 40;
/// How often the Lease is renewed.
const LEASE_RENEW: Duration = Duration::from_secs(10);
/// How often the Ready condition's heartbeat is refreshed. The Lease is the frequent heartbeat,
/// as with a kubelet; the status one is rarer to keep the API server's write load low.
const STATUS_HEARTBEAT: Duration = Duration::from_secs(60);
/// How soon to retry registering after a failure.
const REGISTER_RETRY: Duration = Duration::from_secs(2);

/// The labels a kubelet puts on its node.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), "amd64".to_string()),
        (
            "node.plugin-operator.dev/simulated".to_string(),
            "true".to_string(),
        ),
    ])
}

/// The node's conditions: Ready, and no pressure of any kind. `since` is when they last changed.
pub fn conditions(heartbeat: Timestamp, since: Timestamp) -> Vec<NodeCondition> {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message.to_string()),
        last_heartbeat_time: Some(Time(heartbeat)),
        last_transition_time: Some(Time(since)),
    };
    vec![
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure",
        ),
        condition(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available",
        ),
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        ),
    ]
}

/// The Node object a kubelet would register.
pub fn node(config: &NodeConfig, now: Timestamp) -> Node {
    let resources = BTreeMap::from([
        ("cpu".to_string(), Quantity("64".into())),
        ("memory".to_string(), Quantity("256Gi".into())),
        ("pods".to_string(), Quantity("1000".into())),
        ("ephemeral-storage".to_string(), Quantity("1Ti".into())),
    ]);
    Node {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            labels: Some(config.labels()),
            annotations: Some(BTreeMap::from([(
                "node.alpha.kubernetes.io/ttl".to_string(),
                "0".to_string(),
            )])),
            ..Default::default()
        },
        spec: None,
        status: Some(NodeStatus {
            addresses: Some(vec![
                NodeAddress {
                    type_: "InternalIP".into(),
                    address: config.host_ip.clone(),
                },
                NodeAddress {
                    type_: "Hostname".into(),
                    address: config.name.clone(),
                },
            ]),
            allocatable: Some(resources.clone()),
            capacity: Some(resources),
            conditions: Some(conditions(now, now)),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                boot_id: format!("sim-{}", now.as_second()),
                container_runtime_version: "sim://0.1.0".into(),
                kernel_version: "simulated".into(),
                kube_proxy_version: String::new(),
                kubelet_version: config.kubelet_version.clone(),
                machine_id: "sim".into(),
                operating_system: "linux".into(),
                os_image: "plugin-operator node simulator".into(),
                system_uuid: "sim".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

fn lease(config: &NodeConfig, owner_uid: &str, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(config.name.clone()),
            namespace: Some(LEASE_NAMESPACE.to_string()),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: config.name.clone(),
                uid: owner_uid.to_string(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(config.name.clone()),
            lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    }
}

/// The node as registered: its UID (the Lease's owner) and when its conditions last changed.
struct Registered {
    uid: String,
    since: Timestamp,
}

/// Keeps the node registered and alive until `shutdown` turns true.
pub async fn run(
    client: Client,
    config: &NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let leases: Api<Lease> = Api::namespaced(client, LEASE_NAMESPACE);
    let events = watcher(
        nodes.clone(),
        watcher::Config::default().fields(&format!("metadata.name={}", config.name)),
    )
    .backoff(super::watch_backoff());
    let mut events = std::pin::pin!(events);
    let mut registered: Option<Registered> = None;
    let mut lease_ticker = tokio::time::interval(LEASE_RENEW);
    let mut status_ticker = tokio::time::interval(STATUS_HEARTBEAT);
    let mut register_retry = tokio::time::interval(REGISTER_RETRY);
    for ticker in [&mut lease_ticker, &mut status_ticker, &mut register_retry] {
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => return Ok(()),
            _ = register_retry.tick(), if registered.is_none() => {
                match register(&nodes, config).await {
                    Ok(node) => {
                        renew_lease(&leases, config, &node.uid).await;
                        registered = Some(node);
                    }
                    Err(err) => warn!(error = %err, node = %config.name, "registering the node"),
                }
            }
            event = events.next() => match event {
                Some(Ok(watcher::Event::Delete(_))) => {
                    warn!(node = %config.name, "the node was deleted; registering it again");
                    registered = None;
                    register_retry.reset_immediately();
                }
                Some(Ok(watcher::Event::Apply(node) | watcher::Event::InitApply(node))) => {
                    // Recreated by someone else, or seen after a restart: follow its UID.
                    if let Some(r) = registered.as_mut()
                        && let Some(uid) = node.uid()
                        && uid != r.uid
                    {
                        r.uid = uid;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(err)) => warn!(error = %err, "watching the node"),
                None => return Ok(()),
            },
            _ = status_ticker.tick(), if registered.is_some() => {
                if let Some(r) = &registered {
                    match heartbeat(&nodes, config, r.since).await {
                        Ok(()) => {}
                        Err(err) if err.is_not_found() => {
                            warn!(node = %config.name, "the node is gone; registering it again");
                            registered = None;
                            register_retry.reset_immediately();
                        }
                        Err(err) => warn!(error = %err, "node heartbeat"),
                    }
                }
            }
            _ = lease_ticker.tick(), if registered.is_some() => {
                if let Some(r) = &registered {
                    renew_lease(&leases, config, &r.uid).await;
                }
            }
        }
    }
}

/// Creates the node, or takes over an existing one (refreshing its labels and heartbeat).
async fn register(nodes: &Api<Node>, config: &NodeConfig) -> Result<Registered, Error> {
    let now = Timestamp::now();
    let existing = timed("get node", nodes.get_opt(&config.name)).await?;
    let node = match existing {
        Some(node) => {
            let patch = Patch::Merge(json!({ "metadata": { "labels": config.labels() } }));
            timed(
                "label node",
                nodes.patch(&config.name, &PatchParams::default(), &patch),
            )
            .await?;
            node
        }
        None => {
            let node = timed(
                "create node",
                nodes.create(&PostParams::default(), &node(config, now)),
            )
            .await?;
            info!(node = %config.name, "registered the node");
            node
        }
    };
    let since = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .and_then(|c| c.last_transition_time.as_ref())
        .map(|t| t.0)
        .unwrap_or(now);
    // The status may have been dropped on create, or be stale: write it now.
    heartbeat(nodes, config, since).await?;
    Ok(Registered {
        uid: node.uid().unwrap_or_default(),
        since,
    })
}

async fn heartbeat(nodes: &Api<Node>, config: &NodeConfig, since: Timestamp) -> Result<(), Error> {
    let status = node(config, since).status.map(|mut status| {
        status.conditions = Some(conditions(Timestamp::now(), since));
        status
    });
    let patch = Patch::Strategic(json!({ "status": status }));
    timed(
        "node heartbeat",
        nodes.patch_status(&config.name, &PatchParams::default(), &patch),
    )
    .await?;
    debug!(node = %config.name, "heartbeat");
    Ok(())
}

/// Renews the node's Lease, creating it when missing. Best effort: a cluster without the
/// `kube-node-lease` namespace has no Leases.
async fn renew_lease(leases: &Api<Lease>, config: &NodeConfig, owner_uid: &str) {
    let now = Timestamp::now();
    let patch = Patch::Merge(json!({
        "spec": {
            "holderIdentity": config.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": MicroTime(now),
        }
    }));
    let renewed = timed(
        "renew lease",
        leases.patch(&config.name, &PatchParams::default(), &patch),
    )
    .await;
    let result = match renewed {
        Err(err) if err.is_not_found() => timed(
            "create lease",
            leases.create(&PostParams::default(), &lease(config, owner_uid, now)),
        )
        .await
        .map(|_| ()),
        other => other.map(|_| ()),
    };
    match result {
        Ok(()) => debug!(node = %config.name, "renewed the lease"),
        Err(err) if err.is_not_found() => {
            debug!("no {LEASE_NAMESPACE} namespace; not keeping a lease")
        }
        Err(err) => warn!(error = %err, "renewing the node lease"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_is_ready_linux_and_roomy() {
        let config = NodeConfig::default();
        let now = Timestamp::UNIX_EPOCH;
        let node = node(&config, now);
        let labels = node.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("kubernetes.io/hostname").map(String::as_str),
            Some("sim-node")
        );
        assert_eq!(
            labels.get("kubernetes.io/os").map(String::as_str),
            Some("linux")
        );
        assert_eq!(
            labels.get("kubernetes.io/arch").map(String::as_str),
            Some("amd64")
        );
        let status = node.status.expect("status");
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .expect("Ready");
        assert_eq!(ready.status, "True");
        let capacity = status.capacity.unwrap_or_default();
        assert_eq!(capacity.get("pods"), Some(&Quantity("1000".into())));
        assert_eq!(capacity.get("cpu"), Some(&Quantity("64".into())));
    }

    #[test]
    fn the_lease_belongs_to_the_node() {
        let lease = lease(&NodeConfig::default(), "uid-1", Timestamp::UNIX_EPOCH);
        let owner = &lease.metadata.owner_references.unwrap_or_default()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Node", "uid-1"));
        assert_eq!(
            lease.spec.and_then(|s| s.holder_identity),
            Some("sim-node".to_string())
        );
    }
}
