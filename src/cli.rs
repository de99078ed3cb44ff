//! The command line: `plugin-operator run` and `plugin-operator crds`.
use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

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
    Run(RunArgs),
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
    /// Seconds before the Lease expires at which the leader renews it.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub lease_renew_before: u64,
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
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "plugin-operator".to_owned());
    format!("{host}-{}", std::process::id())
}
