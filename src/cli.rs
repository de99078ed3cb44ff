//! The command line: `plugin-operator run` and `plugin-operator crds`.
use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::api::server::{Limits, Rate};

#[derive(Parser, Debug)]
#[command(
    name = "plugin-operator",
    version,
    about = "Runs plugins on a Kubernetes cluster"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the operator: controllers (on the Lease holder), HTTP API and admin server.
    Run(Box<RunArgs>),
    /// Print the CustomResourceDefinitions as YAML (or write one file per kind).
    Crds(CrdsArgs),
}

#[derive(Args, Debug, Clone, Default)]
pub struct CrdsArgs {
    /// Write one file per kind into this directory instead of printing one stream:
    /// plugin.yaml, pluginversion.yaml, plugininstall.yaml and pluginjob.yaml.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<std::path::PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Address of the plugin HTTP API.
    #[arg(long, env = "PLUGIN_OPERATOR_API_ADDR", default_value = "0.0.0.0:8080")]
    pub api_addr: SocketAddr,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(
        long,
        env = "PLUGIN_OPERATOR_ADMIN_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub admin_addr: SocketAddr,
    /// Namespace whose Plugins and PluginVersions every namespace may install.
    #[arg(
        long,
        env = "PLUGIN_OPERATOR_CATALOG_NAMESPACE",
        default_value = "plugin-catalog"
    )]
    pub catalog_namespace: String,
    /// Watch only these namespaces (repeat the flag or separate with commas); all when empty.
    /// The catalog namespace's Plugins and PluginVersions are watched too.
    #[arg(long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Run without leader election (a single replica that always reconciles).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "PLUGIN_OPERATOR_LOG_JSON")]
    pub log_json: bool,
    /// Namespace of the leader-election Lease (in a cluster: the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Seconds the Lease stays valid after its last renewal; a crashed leader is replaced
    /// after at most this long.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..))]
    pub lease_duration: u64,
    /// Seconds of margin before the Lease expires: a leader that has not renewed it within
    /// `--lease-duration` minus this stops reconciling at once (its writes are refused) and
    /// competes again.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_renew_before: u64,
    /// Send the leader election's requests (and only those) to this URL instead of the API
    /// server of the kubeconfig, still checking the API server's certificate for its own name.
    /// Meant for fault-injection tests (a proxy that can hang the election alone); hidden.
    #[arg(long, value_name = "URL", hide = true)]
    pub election_server: Option<String>,
    /// This replica's name in the Lease and in Events (in a cluster: the pod name).
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    pub identity: String,
    /// Seconds a plugin's access token from `POST /a/auth/v0/token` lives (seed 003; the API
    /// server issues no token for less than 600).
    #[arg(long, default_value_t = 43_200, value_parser = clap::value_parser!(i64).range(600..))]
    pub plugin_access_token_seconds: i64,
    /// Seconds a plugin's refresh token lives (seed 003).
    #[arg(long, default_value_t = 259_200, value_parser = clap::value_parser!(i64).range(1..))]
    pub plugin_refresh_token_seconds: i64,
    /// Refresh tokens kept per install (seed 003); issuing one more revokes the oldest.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_refresh_tokens: u64,
    /// Seconds a settled PluginJob is kept before it is deleted, unless its
    /// `spec.ttlSecondsAfterFinished` says otherwise.
    #[arg(long, default_value_t = 604_800, value_parser = clap::value_parser!(i64).range(0..))]
    pub job_ttl_seconds: i64,
    /// Seconds after which a settled object is reconciled again without a change (what a lost
    /// trigger waits at most). Shorter costs reads and CPU, never writes.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_seconds: u64,
    /// Reconciles run at once, per kind. Most of a reconcile is waiting for the API server,
    /// so more than the cores helps until the API server is the limit.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub reconcile_concurrency: u16,
    /// Name of the leader-election Lease (two releases in one namespace need two names).
    #[arg(
        long,
        env = "PLUGIN_OPERATOR_LEASE_NAME",
        default_value = "plugin-operator-leader"
    )]
    pub lease_name: String,
    /// Seconds a client has to send a request's head to the HTTP API; a keep-alive connection
    /// idle this long is closed too.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_header_read_timeout_seconds: u64,
    /// Seconds within which the HTTP API answers a request, reading its body included (503
    /// with `Retry-After` after that).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_request_timeout_seconds: u64,
    /// Largest request body the HTTP API reads, in bytes (at most 1 MiB, the default).
    #[arg(long, default_value_t = 1_048_576, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub api_body_limit_bytes: u64,
    /// Requests the HTTP API handles at once; one more is answered 503 with `Retry-After`
    /// at once instead of waiting.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub api_max_concurrent_requests: u64,
    /// `POST /a/auth/v0/token` requests per minute per client id (after the burst).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_rate_per_client: u32,
    /// `POST /a/auth/v0/token` requests a client id may make at once before the rate applies.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_burst_per_client: u32,
    /// `POST /a/auth/v0/token` requests per minute per peer IP address (after the burst).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_rate_per_peer: u32,
    /// `POST /a/auth/v0/token` requests a peer IP address may make at once.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_burst_per_peer: u32,
}

impl RunArgs {
    /// `plugin-operator run` with these flags (and the defaults for the rest): for tests.
    pub fn from_flags<'a>(flags: impl IntoIterator<Item = &'a str>) -> Result<Self, clap::Error> {
        let cli = Cli::try_parse_from(["plugin-operator", "run"].into_iter().chain(flags))?;
        match cli.command {
            Command::Run(args) => Ok(*args),
            Command::Crds(_) => Err(clap::Error::new(clap::error::ErrorKind::InvalidSubcommand)),
        }
    }

    /// The HTTP API's limits these flags set.
    pub fn api_limits(&self) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(self.api_header_read_timeout_seconds),
            request_timeout: Duration::from_secs(self.api_request_timeout_seconds),
            body_limit: usize::try_from(self.api_body_limit_bytes).unwrap_or(usize::MAX),
            max_concurrent_requests: usize::try_from(self.api_max_concurrent_requests)
                .unwrap_or(usize::MAX),
            token_rate_per_client: Rate::new(
                self.token_rate_per_client,
                self.token_burst_per_client,
            ),
            token_rate_per_peer: Rate::new(self.token_rate_per_peer, self.token_burst_per_peer),
        }
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "plugin-operator".to_owned());
    format!("{host}-{}", std::process::id())
}
