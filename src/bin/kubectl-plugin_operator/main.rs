//! `kubectl plugin-operator`: a kubectl plugin for the people who run plugins. It reads and
//! writes the custom resources with the user's kubeconfig and permissions (no operator API) and
//! answers "what is going on with this install?" in one screen.
//!
//! It may use only `resources` and `lifecycle` of the library (src/layers.rs checks it). It never
//! reads a Secret's data, so it cannot print one: the credentials Secret is read as metadata.
mod actions;
mod inspect;
mod output;
mod status;
mod trace;

use std::{io::Write, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use kube::Client;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-plugin_operator",
    bin_name = "kubectl plugin-operator",
    version,
    about = "Inspect and steer plugin-operator installs with your kubeconfig",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES_HELP: &str = "Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, \
4 forbidden or unauthorized, 5 the plugin-operator CRDs are not installed, 6 the rollout failed \
and was reverted, 7 timed out waiting for the operator.";

#[derive(Subcommand, Debug)]
enum Command {
    /// One line per install: plugin, running version, target, available upgrade, phase and for
    /// how long, ready replicas, restarts and the last failure.
    #[command(after_help = "Examples:\n  \
        kubectl plugin-operator status -n team-a\n  \
        kubectl plugin-operator status -A -o wide\n  \
        kubectl plugin-operator status -n team-a -w\n  \
        kubectl plugin-operator status -n team-a -o json | jq '.[] | select(.phase == \"Error\")'")]
    Status(StatusArgs),
    /// The tree from an install to everything it depends on and owns, each with its health.
    #[command(after_help = "Example:\n  kubectl plugin-operator trace team-a/billing")]
    Trace(ObjectArgs),
    /// Approve the available upgrade of a Manual install and follow the rollout until it is
    /// Active (exit 0) or reverted (exit 6).
    #[command(after_help = "Examples:\n  \
        kubectl plugin-operator approve team-a/billing\n  \
        kubectl plugin-operator approve team-a/billing 1.3.0 --timeout 10m")]
    Approve(ApproveArgs),
    /// Ask the operator to try an install in Error once more, without changing its spec.
    #[command(after_help = "Example:\n  kubectl plugin-operator retry team-a/billing")]
    Retry(WaitArgs),
    /// The rollout history and the failed versions of an install.
    #[command(after_help = "Example:\n  kubectl plugin-operator history team-a/billing")]
    History(ObjectArgs),
    /// Give an install new credentials (a new client secret; refresh tokens revoked) and wait
    /// until the new Secret is in place.
    #[command(after_help = "Example:\n  kubectl plugin-operator rotate-credentials team-a/billing")]
    RotateCredentials(WaitArgs),
    /// The versions of a plugin: formal or draft, accepted, and which installs run each.
    #[command(after_help = "Example:\n  kubectl plugin-operator versions plugin-catalog/billing")]
    Versions(ObjectArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Namespace of the installs (default: the kubeconfig context's).
    #[arg(short, long, conflicts_with = "all_namespaces")]
    namespace: Option<String>,
    /// Installs of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Output format: a table (default), a wider table, or the rows as JSON or YAML.
    #[arg(short, long, value_enum)]
    output: Option<Output>,
    /// After the table, print each install again whenever its line changes (Ctrl-C ends).
    /// With -o json or yaml, one document per change.
    #[arg(short, long)]
    watch: bool,
}

#[derive(Args, Debug)]
struct ObjectArgs {
    /// The object as NAMESPACE/NAME, or NAME in the namespace of -n (or of the context).
    object: String,
    /// Namespace, when OBJECT has none.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Output format: a table (default) or the rows as JSON or YAML.
    #[arg(short, long, value_enum)]
    output: Option<Output>,
}

#[derive(Args, Debug)]
struct WaitArgs {
    /// The install as NAMESPACE/NAME, or NAME in the namespace of -n (or of the context).
    object: String,
    /// Namespace, when OBJECT has none.
    #[arg(short, long)]
    namespace: Option<String>,
    /// How long to wait for the operator (90s, 5m, 1h30m).
    #[arg(long, default_value = "2m", value_parser = output::parse_duration)]
    timeout: Duration,
}

#[derive(Args, Debug)]
struct ApproveArgs {
    /// The install as NAMESPACE/NAME, or NAME in the namespace of -n (or of the context).
    object: String,
    /// The version to approve (default: the install's `status.availableVersion`).
    version: Option<String>,
    /// Namespace, when OBJECT has none.
    #[arg(short, long)]
    namespace: Option<String>,
    /// How long to follow the rollout (90s, 5m, 1h30m); the default allows the install's
    /// progress deadline (5 min unless set) and a revert.
    #[arg(long, default_value = "12m", value_parser = output::parse_duration)]
    timeout: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Wide,
    Json,
    Yaml,
}

/// Why a command failed, each with its exit code (README "kubectl plugin").
#[derive(Debug)]
enum Failure {
    NotFound(String),
    Forbidden(String),
    CrdsMissing(String),
    /// The approved rollout failed and the operator went back to the version that ran.
    Reverted(String),
    TimedOut(String),
    Other(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Other(_) => 1,
            Self::NotFound(_) => 3,
            Self::Forbidden(_) => 4,
            Self::CrdsMissing(_) => 5,
            Self::Reverted(_) => 6,
            Self::TimedOut(_) => 7,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::NotFound(what) => format!("{what} not found"),
            Self::Forbidden(message) => format!("forbidden: {message}"),
            Self::CrdsMissing(resource) => format!(
                "the plugin-operator CRDs are not installed in this cluster ({resource} is unknown)"
            ),
            Self::Reverted(message) | Self::TimedOut(message) | Self::Other(message) => {
                message.clone()
            }
        }
    }
}

/// Classifies an API error. A 404 names an object when its details carry a name; without one,
/// the resource type itself is unknown: the CRD is missing.
fn classify(err: kube::Error, resource: &str, object: Option<&str>) -> Failure {
    match err {
        kube::Error::Api(status) => match status.code {
            404 => {
                let named = status.details.as_ref().is_some_and(|d| !d.name.is_empty());
                match object {
                    Some(object) if named => Failure::NotFound(format!("{resource} \"{object}\"")),
                    _ => Failure::CrdsMissing(resource.to_owned()),
                }
            }
            401 | 403 => Failure::Forbidden(status.message),
            _ => Failure::Other(status.message),
        },
        other => Failure::Other(other.to_string()),
    }
}

const INSTALLS: &str = "plugininstalls.plugin-operator.dev";
const VERSIONS: &str = "pluginversions.plugin-operator.dev";
const PLUGINS: &str = "plugins.plugin-operator.dev";

/// The field manager of this tool's writes, so `managedFields` tell them from the operator's.
const FIELD_MANAGER: &str = "kubectl-plugin_operator";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("error: {}", failure.message());
            ExitCode::from(failure.code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let client = Client::try_default()
        .await
        .map_err(|e| Failure::Other(format!("kubeconfig: {e}")))?;
    match cli.command {
        Command::Status(args) if args.watch => status::follow(&client, args).await,
        Command::Status(args) => print(&status::status(&client, args).await?),
        Command::Trace(args) => print(&trace::trace(&client, args).await?),
        Command::Approve(args) => actions::approve(&client, args).await,
        Command::Retry(args) => actions::retry(&client, args).await,
        Command::History(args) => print(&inspect::history(&client, args).await?),
        Command::RotateCredentials(args) => actions::rotate_credentials(&client, args).await,
        Command::Versions(args) => print(&inspect::versions(&client, args).await?),
    }
}

/// Writes to stdout and flushes (a closed pipe is an error, not a panic).
fn print(text: &str) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Other(format!("writing the output: {e}")))
}

/// `NS/NAME`, or `NAME` in `-n` or the context's namespace.
fn split_object(client: &Client, object: &str, namespace: Option<String>) -> (String, String) {
    match object.split_once('/') {
        Some((ns, name)) => (ns.to_owned(), name.to_owned()),
        None => (
            namespace.unwrap_or_else(|| client.default_namespace().to_owned()),
            object.to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_404_without_an_object_name_means_the_crd_is_missing() {
        let status = |name: &str| {
            kube::Error::Api(
                kube::core::Status::failure("x", "NotFound")
                    .with_code(404)
                    .with_details(
                        serde_json::from_value(serde_json::json!({ "name": name }))
                            .expect("details"),
                    )
                    .boxed(),
            )
        };
        assert_eq!(
            classify(status(""), INSTALLS, Some("ns/a")).code(),
            5,
            "no name: the type is unknown"
        );
        assert_eq!(classify(status("a"), INSTALLS, Some("ns/a")).code(), 3);
        assert_eq!(classify(status("a"), INSTALLS, None).code(), 5);
    }

    #[test]
    fn every_command_has_an_example() {
        use clap::CommandFactory;
        for command in Cli::command().get_subcommands() {
            let help = command
                .get_after_help()
                .map(ToString::to_string)
                .unwrap_or_default();
            assert!(
                help.contains("kubectl plugin-operator"),
                "{} has no example",
                command.get_name()
            );
        }
    }
}
