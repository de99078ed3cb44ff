//! `node-sim`: plays the kubelet and the scheduler for the local control plane (SPEC §6).
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use devtools::sim::{self, NodeConfig};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

/// Registers a simulated node, binds pending pods to it and reports the pod states a kubelet
/// would. Uses KUBECONFIG (or the in-cluster config); logs as RUST_LOG says (default: info).
#[derive(Parser, Debug)]
#[command(name = "node-sim", version)]
struct Args {
    /// The simulated node's name.
    #[arg(long, env = "SIM_NODE_NAME", default_value = "sim-node")]
    node_name: String,
    /// The node's address (every pod's hostIP).
    #[arg(long, env = "SIM_HOST_IP", default_value = "127.0.0.1")]
    host_ip: String,
    /// How often every pod is looked at, in milliseconds, besides when it changes.
    #[arg(long, default_value_t = 250)]
    tick_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server (is KUBECONFIG set?)")?;
    let (stop, shutdown) = watch::channel(false);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping");
        let _ = stop.send(true);
    });
    let server = client
        .apiserver_version()
        .await
        .context("reading the API server's version")?;
    let config = NodeConfig {
        name: args.node_name,
        host_ip: args.host_ip,
        tick: Duration::from_millis(args.tick_ms.max(10)),
        kubelet_version: server.git_version,
    };
    sim::run(client, config, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
