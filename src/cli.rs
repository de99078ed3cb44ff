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
    /// Print the CustomResourceDefinitions as YAML.
    Crds,
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
    #[arg(long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Run without leader election (a single replica that always reconciles).
    #[arg(long)]
    pub no_leader_election: bool,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, env = "PLUGIN_OPERATOR_LOG_JSON")]
    pub log_json: bool,
}
