//! The node simulator (SPEC §6): with no container runtime, kubelet or scheduler in the local
//! control plane, it registers one node, binds pending pods to it, and reports the pod states a
//! kubelet would, as each pod's behavior says (see [`behavior`]).
//!
//! The decisions are pure functions of the pod, the simulator's memory of it and the time
//! ([`timeline`], [`status`], [`scheduling`], [`kubelet::decide`]); [`kubelet::run`] and
//! [`node::run`] only watch and write.
use std::{collections::BTreeMap, future::Future, time::Duration};

use kube::Client;
use tokio::sync::watch;

pub mod behavior;
pub mod kubelet;
pub mod node;
pub mod scheduling;
pub mod status;
pub mod timeline;

/// How long one request to the API server may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The watches' backoff, as short as the operator's (250 ms doubling, jittered, at most 5 s), so
/// that after an API server restart the simulated kubelet is back within seconds, as a real one
/// is, and fault tests time the operator rather than the simulator.
pub fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_millis(2500))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// The simulated node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node's name.
    pub name: String,
    /// The node's address, reported as every pod's hostIP.
    pub host_ip: String,
    /// How often every pod is looked at, besides when it changes.
    pub tick: Duration,
    /// The kubelet version the node reports: the API server's own, as a kubelet of the same
    /// release would (`kubectl get nodes` shows it).
    pub kubelet_version: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "sim-node".to_string(),
            host_ip: "127.0.0.1".to_string(),
            tick: Duration::from_millis(250),
            kubelet_version: "v0.0.0-sim".to_string(),
        }
    }
}

impl NodeConfig {
    /// The node's labels, which pods' node selectors are matched against.
    pub fn labels(&self) -> BTreeMap<String, String> {
        node::labels(&self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: no answer within {REQUEST_TIMEOUT:?}")]
    Timeout { what: &'static str },
    #[error("{what}: {source}")]
    Kube {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    fn status_code(&self) -> Option<u16> {
        match self {
            Error::Kube {
                source: kube::Error::Api(status),
                ..
            } => Some(status.code),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status_code() == Some(404)
    }

    pub fn is_conflict(&self) -> bool {
        self.status_code() == Some(409)
    }
}

/// Runs a request with [`REQUEST_TIMEOUT`].
async fn timed<T>(
    what: &'static str,
    request: impl Future<Output = kube::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|source| Error::Kube { what, source }),
        Err(_) => Err(Error::Timeout { what }),
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Runs the simulator — the node and its pods — until `shutdown` turns true.
pub async fn run(
    client: Client,
    config: NodeConfig,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let node = node::run(client.clone(), &config, shutdown.clone());
    let pods = kubelet::run(client, &config, shutdown);
    let (node, pods) = tokio::join!(node, pods);
    node.and(pods)
}
