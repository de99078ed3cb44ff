//! Wires the parts together for `plugin-operator run`.
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{
    api,
    cli::RunArgs,
    reconcile::{self, Context, HealthChecker, events::Events},
    runtime::{
        admin,
        cache::{Caches, Scope},
        clock::Clock,
        leader::{Election, LeaderState, LeaseTimings, fenced_client},
        metrics::{HttpMetrics, InstallMetrics, Metrics},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot build a Kubernetes client (KUBECONFIG or in-cluster): {0}")]
    Client(#[source] kube::Error),
    #[error("cannot read the Kubernetes client configuration (KUBECONFIG or in-cluster): {0}")]
    ClientConfig(#[source] kube::config::InferConfigError),
    #[error("cannot reach the API server: {0}")]
    ApiServer(#[source] kube::Error),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error(
        "--lease-renew-before ({renew_before}s) must be shorter than --lease-duration ({duration}s)"
    )]
    LeaseTimings { duration: u64, renew_before: u64 },
    #[error("cannot build the HTTP client of the health checks: {0}")]
    HealthChecker(#[source] reqwest::Error),
    #[error("--election-server {0}: not an http(s) URL with a host")]
    ElectionServer(String),
}

/// `plugin-operator/<version> (<identity>)`; without the identity if it cannot be a header value.
fn user_agent(identity: &str) -> axum::http::HeaderValue {
    let product = format!("plugin-operator/{}", env!("CARGO_PKG_VERSION"));
    axum::http::HeaderValue::from_str(&format!("{product} ({identity})"))
        .or_else(|_| axum::http::HeaderValue::from_str(&product))
        .unwrap_or(axum::http::HeaderValue::from_static("plugin-operator"))
}

/// Sends the election's requests to `server` (`--election-server`, for fault tests: a proxy in
/// front of the API server), still verifying the API server's certificate for its own name.
fn election_route(config: &mut kube::Config, server: &str) -> Result<(), RunError> {
    let invalid = || RunError::ElectionServer(server.to_owned());
    let url: axum::http::Uri = server.parse().map_err(|_| invalid())?;
    if !matches!(url.scheme_str(), Some("http" | "https")) || url.host().is_none() {
        return Err(invalid());
    }
    if config.tls_server_name.is_none()
        && let Some(host) = config.cluster_url.host()
        && Some(host) != url.host()
    {
        config.tls_server_name = Some(host.trim_matches(['[', ']']).to_owned());
    }
    config.cluster_url = url;
    Ok(())
}

/// Runs until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> Result<(), RunError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(RunError::ClientConfig)?;
    // kube sends no User-Agent: name the replica, so the API server's audit log and metrics
    // tell the operator's requests apart, and one replica's from another's.
    config
        .headers
        .push((axum::http::header::USER_AGENT, user_agent(&args.identity)));
    // The election has a client of its own, so that its connection is not shared with the
    // watches and reconciles (a fault of one is not a fault of the other), and every Lease call
    // gives up in time to be retried before the renew deadline.
    let election_config = {
        let mut election = config.clone();
        let timeout = LeaseTimings {
            duration: args.lease_duration,
            renew_before: args.lease_renew_before,
        }
        .call_timeout();
        election.connect_timeout = Some(timeout);
        election.read_timeout = Some(timeout);
        election.write_timeout = Some(timeout);
        if let Some(server) = &args.election_server {
            election_route(&mut election, server)?;
        }
        election
    };
    let client = kube::Client::try_from(config).map_err(RunError::Client)?;
    let version = client
        .apiserver_version()
        .await
        .map_err(RunError::ApiServer)?;
    tracing::info!(server = %version.git_version, "connected to the API server");

    // `--namespace a,b`: installs and their children in these; Plugins and PluginVersions in
    // these and the catalog's.
    let scope = Scope::of(&args.namespaces);
    tracing::info!(?scope, catalog = %args.catalog_namespace, "watching");
    let (caches, feeds, drivers) = Caches::new(&client, &scope, &args.catalog_namespace);
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let http_metrics = HttpMetrics::register(&mut registry);
    InstallMetrics::register(&mut registry, caches.installs.clone());
    let admin_state = admin::AdminState::new(registry);
    let clock = Clock::system();

    let identity = args.identity.clone();
    let (leader, election, _always) = if args.no_leader_election {
        let (state, sender) = LeaderState::always();
        (state, None, Some(sender))
    } else {
        if args.lease_renew_before >= args.lease_duration {
            return Err(RunError::LeaseTimings {
                duration: args.lease_duration,
                renew_before: args.lease_renew_before,
            });
        }
        let timings = LeaseTimings {
            duration: args.lease_duration,
            renew_before: args.lease_renew_before,
        };
        let election_client = kube::Client::try_from(election_config).map_err(RunError::Client)?;
        let election = Election::start(
            election_client,
            &args.lease_namespace,
            &args.lease_name,
            &identity,
            timings,
        );
        (election.state.clone(), Some(election), None)
    };
    // The reconcilers, the PluginJob TTL and Events write through the fence: nothing of theirs
    // reaches the API server once this replica stops leading. The HTTP API and the watches use
    // the client itself (every replica serves the API; reads are never fenced).
    let writer = fenced_client(client.clone(), leader.clone());

    // Settled PluginJobs go after their time to live (the Lease holder deletes them); a
    // controller per watched namespace.
    let job_ttl = futures::future::join_all(scope.apis(&writer).into_iter().map(|api| {
        reconcile::jobs::run(reconcile::jobs::JobTtl {
            api,
            leader: leader.clone(),
            clock: clock.clone(),
            default_ttl_seconds: args.job_ttl_seconds,
        })
    }));
    let ctx = Arc::new(Context {
        client: writer.clone(),
        caches: caches.clone(),
        catalog_namespace: args.catalog_namespace.clone(),
        leader,
        events: Events::new(writer, identity),
        metrics,
        clock: clock.clone(),
        health_checker: HealthChecker::new().map_err(RunError::HealthChecker)?,
        recent: Default::default(),
        backoffs: Default::default(),
        service_creates: Default::default(),
        resync: std::time::Duration::from_secs(args.resync_seconds),
    });

    let admin_listener =
        TcpListener::bind(args.admin_addr)
            .await
            .map_err(|source| RunError::Bind {
                addr: args.admin_addr,
                source,
            })?;
    tracing::info!(addr = %args.admin_addr, "admin server listening");
    let limits = args.api_limits();
    // The admin port has its own server, so /readyz and /metrics answer while the API sheds.
    let admin_server = api::server::serve(
        admin_listener,
        admin::router(admin_state.clone()),
        limits.header_read_timeout,
        shutdown_signal(),
    );

    // Every replica serves the HTTP API from its caches (SPEC §4).
    let api_state = api::ApiState::new(
        client.clone(),
        caches.clone(),
        args.catalog_namespace,
        clock,
    );
    let api_listener = TcpListener::bind(args.api_addr)
        .await
        .map_err(|source| RunError::Bind {
            addr: args.api_addr,
            source,
        })?;
    tracing::info!(addr = %args.api_addr, "HTTP API listening");
    let api_router = api::router(api_state.clone()).layer(
        api::routes::plugin_services::Settings {
            access_token_seconds: args.plugin_access_token_seconds,
            refresh_token_seconds: args.plugin_refresh_token_seconds,
            max_refresh_tokens: usize::try_from(args.max_refresh_tokens).unwrap_or(usize::MAX),
        }
        .extension(),
    );
    let api_server = api::server::serve(
        api_listener,
        api::server::app(api_router, &limits, http_metrics),
        limits.header_read_timeout,
        shutdown_signal(),
    );

    let readiness = {
        let caches = caches.clone();
        let admin_state = admin_state.clone();
        async move {
            if caches.ready().await {
                tracing::info!("caches synced");
                api_state.set_ready(true);
                admin_state.set_ready(true);
            }
        }
    };
    tokio::spawn(readiness);
    // Subscribe the controllers before the watches start, so they see the first lists.
    let controllers = reconcile::run(ctx, feeds, args.reconcile_concurrency);
    for driver in drivers {
        tokio::spawn(driver);
    }
    let controllers = tokio::spawn(controllers);
    let job_ttl = tokio::spawn(job_ttl);

    let (admin_served, api_served) = tokio::join!(admin_server, api_server);
    controllers.abort();
    job_ttl.abort();
    if let Some(election) = election {
        election.step_down().await;
    }
    admin_served.map_err(RunError::Serve)?;
    api_served.map_err(RunError::Serve)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_election_server_replaces_the_url_and_keeps_the_tls_name() {
        let mut config = kube::Config::new("https://10.0.0.1:6443".parse().expect("url"));
        election_route(&mut config, "https://127.0.0.1:41000").expect("valid");
        assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:41000/");
        assert_eq!(config.tls_server_name.as_deref(), Some("10.0.0.1"));
        // Same host (a proxy on another port of it): the name does not change.
        let mut config = kube::Config::new("https://127.0.0.1:6443".parse().expect("url"));
        election_route(&mut config, "https://127.0.0.1:41000").expect("valid");
        assert_eq!(config.tls_server_name, None);
        assert!(matches!(
            election_route(&mut config, "127.0.0.1:41000"),
            Err(RunError::ElectionServer(_))
        ));
    }

    #[test]
    fn the_user_agent_names_the_replica() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            user_agent("plugin-operator-7d9f-x2"),
            format!("plugin-operator/{version} (plugin-operator-7d9f-x2)")
        );
        // A control character cannot go into a header: the product alone.
        assert_eq!(
            user_agent("bad\nidentity"),
            format!("plugin-operator/{version}")
        );
    }
}
