//! `kubectl plugin-operator`: a kubectl plugin for the people who run plugins. It reads the
//! custom resources with the user's kubeconfig and permissions (no operator API) and answers
//! "what is going on with this install?" in one screen.
//!
//! It may use only `resources` and `lifecycle` of the library (src/layers.rs checks it). It never
//! reads a Secret, so it cannot print one.
use std::{
    collections::BTreeMap,
    io::{IsTerminal, Write},
    process::ExitCode,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, Client, ResourceExt, api::ListParams};
use plugin_operator::resources::{Plugin, PluginInstall, PluginVersion, conditions, names::labels};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(
    name = "kubectl-plugin_operator",
    bin_name = "kubectl plugin-operator",
    version,
    about = "Inspect plugin-operator installs and versions with your kubeconfig",
    after_help = EXIT_CODES_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES_HELP: &str = "Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, \
4 forbidden or unauthorized, 5 the plugin-operator CRDs are not installed.";

#[derive(Subcommand, Debug)]
enum Command {
    /// One line per install: plugin, running version, target, available upgrade, phase, ready
    /// replicas and the last failure.
    #[command(after_help = "Examples:\n  \
        kubectl plugin-operator status -n team-a\n  \
        kubectl plugin-operator status -A -o wide\n  \
        kubectl plugin-operator status -n team-a -o json | jq '.[] | select(.phase == \"Error\")'")]
    Status(StatusArgs),
    /// The versions of a plugin: formal or draft, accepted, and which installs run each.
    #[command(after_help = "Example:\n  kubectl plugin-operator versions plugin-catalog/billing")]
    Versions(ObjectArgs),
    /// The rollout history and the failed versions of an install.
    #[command(after_help = "Example:\n  kubectl plugin-operator history team-a/billing")]
    History(ObjectArgs),
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
    Other(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Self::Other(_) => 1,
            Self::NotFound(_) => 3,
            Self::Forbidden(_) => 4,
            Self::CrdsMissing(_) => 5,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::NotFound(what) => format!("{what} not found"),
            Self::Forbidden(message) => format!("forbidden: {message}"),
            Self::CrdsMissing(resource) => format!(
                "the plugin-operator CRDs are not installed in this cluster ({resource} is unknown)"
            ),
            Self::Other(message) => message.clone(),
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
    let text = match cli.command {
        Command::Status(args) => status(&client, args).await?,
        Command::Versions(args) => versions(&client, args).await?,
        Command::History(args) => history(&client, args).await?,
    };
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

/// One install, as `status` prints it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct StatusRow {
    namespace: String,
    name: String,
    /// `name`, or `namespace/name` for a Plugin of another namespace (the catalog).
    plugin: String,
    version: Option<String>,
    target: Option<String>,
    available: Option<String>,
    phase: Option<String>,
    /// `ready/desired` replicas of the install's Deployment, when it has one and it can be read.
    ready: Option<String>,
    restarts: i32,
    upgrade_mode: String,
    last_failure: Option<String>,
    last_failure_message: Option<String>,
    endpoint: Option<String>,
}

async fn status(client: &Client, args: StatusArgs) -> Result<String, Failure> {
    let namespace = (!args.all_namespaces).then(|| {
        args.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned())
    });
    let installs: Api<PluginInstall> = match &namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut installs = installs
        .list(&ListParams::default())
        .await
        .map_err(|e| classify(e, INSTALLS, None))?
        .items;
    installs.sort_by_key(|i| (i.namespace().unwrap_or_default(), i.name_any()));
    let ready = ready_replicas(client, namespace.as_deref()).await;
    let rows: Vec<StatusRow> = installs
        .iter()
        .map(|install| status_row(install, &ready))
        .collect();
    if let Some(data) = as_data(&rows, args.output)? {
        return Ok(data);
    }
    let wide = args.output == Some(Output::Wide);
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "PLUGIN",
        "VERSION",
        "TARGET",
        "AVAILABLE",
        "PHASE",
        "READY",
        "LAST-FAILURE",
    ];
    if wide {
        header.extend(["RESTARTS", "UPGRADE", "ENDPOINT", "MESSAGE"]);
    }
    let colour = std::io::stdout().is_terminal();
    let lines = rows
        .iter()
        .map(|row| {
            let mut line = vec![
                row.namespace.clone(),
                row.name.clone(),
                row.plugin.clone(),
                dash(&row.version),
                dash(&row.target),
                dash(&row.available),
                dash(&row.phase),
                dash(&row.ready),
                dash(&row.last_failure),
            ];
            if wide {
                line.extend([
                    row.restarts.to_string(),
                    row.upgrade_mode.clone(),
                    dash(&row.endpoint),
                    dash(&row.last_failure_message),
                ]);
            }
            line
        })
        .collect::<Vec<_>>();
    let mut text = table(&header, &lines);
    if colour {
        text = colour_phases(&text);
    }
    if rows.is_empty() {
        text = match &namespace {
            Some(ns) => format!("No plugin installs in namespace {ns}.\n"),
            None => "No plugin installs.\n".to_owned(),
        };
    }
    Ok(text)
}

fn status_row(install: &PluginInstall, ready: &BTreeMap<(String, String), String>) -> StatusRow {
    let namespace = install.namespace().unwrap_or_default();
    let name = install.name_any();
    let status = install.status.clone().unwrap_or_default();
    let reference = &install.spec.plugin;
    let plugin = match reference.namespace() {
        Some(ns) if ns != namespace => format!("{ns}/{}", reference.name()),
        _ => reference.name().to_owned(),
    };
    let upgrade_mode = serde_json::to_value(install.spec.upgrade_mode)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    StatusRow {
        ready: ready.get(&(namespace.clone(), name.clone())).cloned(),
        namespace,
        name,
        plugin,
        version: status.version,
        target: status.target_version,
        available: status.available_version,
        phase: status.phase.map(|p| p.as_str().to_owned()),
        restarts: status.restarts,
        upgrade_mode,
        last_failure: status.last_failure.as_ref().map(|f| f.reason.clone()),
        last_failure_message: status.last_failure.map(|f| f.message),
        endpoint: status.endpoint,
    }
}

/// `ready/desired` of the Deployments the operator runs installs as, by (namespace, install).
/// The install's status has no replica counts, so they are read from its Deployment; a user who
/// may not list Deployments still gets the rest of the table (READY shows `-`).
async fn ready_replicas(
    client: &Client,
    namespace: Option<&str>,
) -> BTreeMap<(String, String), String> {
    let api: Api<Deployment> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let selector = format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
    let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
        return BTreeMap::new();
    };
    list.items
        .into_iter()
        .filter_map(|d| {
            let install = d.labels().get(labels::INSTALL)?.clone();
            let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            Some((
                (d.namespace().unwrap_or_default(), install),
                format!("{ready}/{desired}"),
            ))
        })
        .collect()
}

/// One version of a plugin, as `versions` prints it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct VersionRow {
    version: String,
    name: String,
    formal: bool,
    /// `True`, `False` or `Unknown` (not yet seen by the operator).
    accepted: String,
    reason: Option<String>,
    /// The installs whose running version (`status.version`) this is, as `namespace/name`.
    installs: Vec<String>,
}

async fn versions(client: &Client, args: ObjectArgs) -> Result<String, Failure> {
    let (namespace, plugin) = split_object(client, &args.object, args.namespace);
    let plugins: Api<Plugin> = Api::namespaced(client.clone(), &namespace);
    plugins
        .get(&plugin)
        .await
        .map_err(|e| classify(e, PLUGINS, Some(&format!("{namespace}/{plugin}"))))?;
    let versions: Api<PluginVersion> = Api::namespaced(client.clone(), &namespace);
    let mut versions: Vec<PluginVersion> = versions
        .list(&ListParams::default())
        .await
        .map_err(|e| classify(e, VERSIONS, None))?
        .items
        .into_iter()
        .filter(|v| v.spec.plugin == plugin)
        .collect();
    versions.sort_by(|a, b| {
        a.spec
            .number()
            .cmp(&b.spec.number())
            .then_with(|| a.spec.version.cmp(&b.spec.version))
    });
    let installs = installs_of(client, &namespace, &plugin).await?;
    let rows: Vec<VersionRow> = versions
        .iter()
        .map(|v| {
            let accepted = v.status.as_ref().and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == conditions::ACCEPTED)
            });
            VersionRow {
                version: v.spec.version.clone(),
                name: v.name_any(),
                formal: v.spec.is_formal(),
                accepted: accepted.map_or_else(|| "Unknown".to_owned(), |c| c.status.clone()),
                reason: accepted.map(|c| c.reason.clone()),
                installs: installs
                    .iter()
                    .filter(|(_, running)| running.as_deref() == Some(v.spec.version.as_str()))
                    .map(|(install, _)| install.clone())
                    .collect(),
            }
        })
        .collect();
    if let Some(data) = as_data(&rows, args.output)? {
        return Ok(data);
    }
    if rows.is_empty() {
        return Ok(format!("Plugin {namespace}/{plugin} has no versions.\n"));
    }
    let lines = rows
        .iter()
        .map(|r| {
            vec![
                r.version.clone(),
                if r.formal { "formal" } else { "draft" }.to_owned(),
                r.accepted.clone(),
                dash(&r.reason),
                if r.installs.is_empty() {
                    "-".to_owned()
                } else {
                    r.installs.join(",")
                },
            ]
        })
        .collect::<Vec<_>>();
    Ok(table(
        &["VERSION", "KIND", "ACCEPTED", "REASON", "INSTALLS"],
        &lines,
    ))
}

/// The installs of the plugin `namespace/plugin` (`namespace/name`) with their running version.
/// A catalog plugin is used from other namespaces, so every namespace is listed; a user who may
/// list installs only in the plugin's namespace sees those.
async fn installs_of(
    client: &Client,
    namespace: &str,
    plugin: &str,
) -> Result<Vec<(String, Option<String>)>, Failure> {
    let all: Api<PluginInstall> = Api::all(client.clone());
    let installs = match all.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let own: Api<PluginInstall> = Api::namespaced(client.clone(), namespace);
            own.list(&ListParams::default())
                .await
                .map_err(|e| classify(e, INSTALLS, None))?
                .items
        }
        Err(e) => return Err(classify(e, INSTALLS, None)),
    };
    let mut out: Vec<(String, Option<String>)> = installs
        .into_iter()
        .filter_map(|i| {
            let install_ns = i.namespace().unwrap_or_default();
            let reference = &i.spec.plugin;
            (reference.name() == plugin && reference.namespace_or(&install_ns) == namespace).then(
                || {
                    (
                        format!("{install_ns}/{}", i.name_any()),
                        i.status.and_then(|s| s.version),
                    )
                },
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// One rollout, as `history` prints it.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct HistoryRow {
    version: String,
    outcome: String,
    from: String,
    to: Option<String>,
    /// Whether the version is in `status.failedVersions` (not rolled out again by itself).
    failed_version: bool,
}

async fn history(client: &Client, args: ObjectArgs) -> Result<String, Failure> {
    let (namespace, name) = split_object(client, &args.object, args.namespace);
    let api: Api<PluginInstall> = Api::namespaced(client.clone(), &namespace);
    let install = api
        .get(&name)
        .await
        .map_err(|e| classify(e, INSTALLS, Some(&format!("{namespace}/{name}"))))?;
    let status = install.status.unwrap_or_default();
    let rows: Vec<HistoryRow> = status
        .history
        .iter()
        .map(|h| HistoryRow {
            version: h.version.clone(),
            outcome: format!("{:?}", h.outcome),
            from: h.from.0.to_string(),
            to: h.to.as_ref().map(|t| t.0.to_string()),
            failed_version: status.failed_versions.contains(&h.version),
        })
        .collect();
    if let Some(data) = as_data(&rows, args.output)? {
        return Ok(data);
    }
    let lines = rows
        .iter()
        .map(|r| {
            vec![
                r.version.clone(),
                r.outcome.clone(),
                r.from.clone(),
                dash(&r.to),
            ]
        })
        .collect::<Vec<_>>();
    let mut text = if rows.is_empty() {
        format!("Install {namespace}/{name} has no rollouts yet.\n")
    } else {
        table(&["VERSION", "OUTCOME", "FROM", "TO"], &lines)
    };
    let failed = if status.failed_versions.is_empty() {
        "-".to_owned()
    } else {
        status.failed_versions.join(", ")
    };
    text.push_str(&format!("Failed versions: {failed}\n"));
    Ok(text)
}

/// The rows as JSON or YAML when asked for, else `None` (a table is printed).
fn as_data<T: Serialize>(rows: &T, output: Option<Output>) -> Result<Option<String>, Failure> {
    match output {
        Some(Output::Json) => serde_json::to_string_pretty(rows)
            .map(|s| Some(s + "\n"))
            .map_err(|e| Failure::Other(e.to_string())),
        Some(Output::Yaml) => serde_yaml::to_string(rows)
            .map(Some)
            .map_err(|e| Failure::Other(e.to_string())),
        Some(Output::Wide) | None => Ok(None),
    }
}

fn dash(value: &Option<String>) -> String {
    value.clone().unwrap_or_else(|| "-".to_owned())
}

/// Columns aligned as kubectl aligns them: each as wide as its widest cell, three spaces apart,
/// no trailing spaces.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    std::iter::once(&header)
        .chain(rows)
        .map(|row| {
            let line = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect::<Vec<_>>()
                .join("   ");
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// Phases coloured on a terminal: Active green, Error red, the ones in between yellow. Applied
/// after alignment so the escape codes do not count as width.
fn colour_phases(text: &str) -> String {
    const PHASES: &[(&str, &str)] = &[
        (" Active ", "32"),
        (" Error ", "31"),
        (" Restarting ", "33"),
        (" Starting ", "33"),
        (" Connecting ", "33"),
    ];
    text.lines()
        .map(|line| {
            let mut line = line.to_owned();
            for (phase, code) in PHASES {
                if let Some(at) = line.find(phase) {
                    let word = phase.trim();
                    let start = at + 1;
                    line.replace_range(
                        start..start + word.len(),
                        &format!("\x1b[{code}m{word}\x1b[0m"),
                    );
                    break;
                }
            }
            line + "\n"
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let rows = vec![
            vec!["a".to_owned(), "-".to_owned()],
            vec!["longer".to_owned(), "x".to_owned()],
        ];
        assert_eq!(
            table(&["NAME", "V"], &rows),
            "NAME     V\na        -\nlonger   x\n"
        );
    }

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
}
