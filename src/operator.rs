//! Wires the parts together for `plugin-operator run`.
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{cli::RunArgs, runtime::admin};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build a Kubernetes client (KUBECONFIG or in-cluster): {0}")]
    Client(#[source] kube::Error),
    #[error("cannot reach the API server: {0}")]
    ApiServer(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let client = kube::Client::try_default()
        .await
        .map_err(RunError::Client)?;
    let version = client
        .apiserver_version()
        .await
        .map_err(RunError::ApiServer)?;
    tracing::info!(server = %version.git_version, "connected to the API server");

    let registry = Registry::default();
    let admin_state = admin::AdminState::new(registry);
    let listener = TcpListener::bind(args.admin_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: args.admin_addr,
            source,
        })?;
    tracing::info!(addr = %args.admin_addr, "admin server listening");
    admin_state.set_ready(true);
    axum::serve(listener, admin::router(admin_state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(RunError::Serve)?;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
