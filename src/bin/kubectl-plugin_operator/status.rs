//! `status`: one line per install, once or followed (`-w`).
use std::{collections::BTreeMap, io::IsTerminal};

use futures::{StreamExt, future::Either, stream};
use k8s_openapi::{api::apps::v1::Deployment, jiff::Timestamp};
use kube::{
    Api, Client, ResourceExt,
    api::ListParams,
    runtime::{WatchStreamExt, watcher},
};
use plugin_operator::resources::{PluginInstall, conditions, names::labels};
use serde::Serialize;

use super::{
    Failure, INSTALLS, Output, StatusArgs, classify,
    output::{age, as_data, colour_phases, dash, line, table, widths},
    print,
};

/// One install, as `status` prints it.
#[derive(Serialize, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    pub namespace: String,
    pub name: String,
    /// `name`, or `namespace/name` for a Plugin of another namespace (the catalog).
    pub plugin: String,
    pub version: Option<String>,
    pub target: Option<String>,
    pub available: Option<String>,
    pub phase: Option<String>,
    /// When the phase last changed (`status.phaseChangedAt`; for a status written before the
    /// operator kept it, when `Ready` last changed).
    pub phase_since: Option<Timestamp>,
    /// `ready/desired` replicas of the install's Deployment, when it has one and it can be read.
    pub ready: Option<String>,
    pub restarts: i32,
    pub upgrade_mode: String,
    pub last_failure: Option<String>,
    pub last_failure_at: Option<Timestamp>,
    pub last_failure_message: Option<String>,
    pub endpoint: Option<String>,
}

type Key = (String, String);

const HEADER: &[&str] = &[
    "NAMESPACE",
    "NAME",
    "PLUGIN",
    "VERSION",
    "TARGET",
    "AVAILABLE",
    "PHASE",
    "SINCE",
    "READY",
    "RESTARTS",
    "LAST-FAILURE",
];
const WIDE: &[&str] = &["UPGRADE", "ENDPOINT", "MESSAGE"];

fn header(wide: bool) -> Vec<&'static str> {
    let mut header = HEADER.to_vec();
    if wide {
        header.extend(WIDE);
    }
    header
}

/// The namespace of `-n` (or the context's), or `None` with `-A`.
fn scope(client: &Client, args: &StatusArgs) -> Option<String> {
    (!args.all_namespaces).then(|| {
        args.namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned())
    })
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

pub async fn status(client: &Client, args: StatusArgs) -> Result<String, Failure> {
    let namespace = scope(client, &args);
    let rows = rows(client, namespace.as_deref()).await?;
    render(&rows, args.output, namespace.as_deref())
}

async fn rows(client: &Client, namespace: Option<&str>) -> Result<Vec<StatusRow>, Failure> {
    let mut installs = api::<PluginInstall>(client, namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| classify(e, INSTALLS, None))?
        .items;
    installs.sort_by_key(|i| (i.namespace().unwrap_or_default(), i.name_any()));
    let ready = ready_replicas(client, namespace).await;
    Ok(installs
        .iter()
        .map(|install| status_row(install, &ready))
        .collect())
}

fn render(
    rows: &[StatusRow],
    output: Option<Output>,
    namespace: Option<&str>,
) -> Result<String, Failure> {
    if let Some(data) = as_data(&rows, output)? {
        return Ok(data);
    }
    if rows.is_empty() {
        return Ok(match namespace {
            Some(ns) => format!("No plugin installs in namespace {ns}.\n"),
            None => "No plugin installs.\n".to_owned(),
        });
    }
    let wide = output == Some(Output::Wide);
    let now = Timestamp::now();
    let lines: Vec<Vec<String>> = rows.iter().map(|row| cells(row, wide, now)).collect();
    Ok(colour(table(&header(wide), &lines)))
}

fn colour(text: String) -> String {
    if std::io::stdout().is_terminal() {
        colour_phases(&text)
    } else {
        text
    }
}

/// The cells of one line; ages are counted to `now`.
fn cells(row: &StatusRow, wide: bool, now: Timestamp) -> Vec<String> {
    let ago = |t: Option<Timestamp>| t.map_or_else(|| "-".to_owned(), |t| age(t, now));
    let failure = match (&row.last_failure, row.last_failure_at) {
        (Some(reason), Some(at)) => format!("{reason} ({} ago)", age(at, now)),
        (Some(reason), None) => reason.clone(),
        (None, _) => "-".to_owned(),
    };
    let mut cells = vec![
        row.namespace.clone(),
        row.name.clone(),
        row.plugin.clone(),
        dash(&row.version),
        dash(&row.target),
        dash(&row.available),
        dash(&row.phase),
        ago(row.phase_since),
        dash(&row.ready),
        row.restarts.to_string(),
        failure,
    ];
    if wide {
        cells.extend([
            row.upgrade_mode.clone(),
            dash(&row.endpoint),
            dash(&row.last_failure_message),
        ]);
    }
    cells
}

pub fn status_row(install: &PluginInstall, ready: &BTreeMap<Key, String>) -> StatusRow {
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
    let phase_since = status.phase_changed_at.as_ref().map(|t| t.0).or_else(|| {
        conditions::find_condition(&status.conditions, conditions::READY)
            .map(|c| c.last_transition_time.0)
    });
    StatusRow {
        ready: ready.get(&(namespace.clone(), name.clone())).cloned(),
        namespace,
        name,
        plugin,
        version: status.version,
        target: status.target_version,
        available: status.available_version,
        phase: status.phase.map(|p| p.as_str().to_owned()),
        phase_since,
        restarts: status.restarts,
        upgrade_mode,
        last_failure: status.last_failure.as_ref().map(|f| f.reason.clone()),
        last_failure_at: status.last_failure.as_ref().map(|f| f.time.0),
        last_failure_message: status.last_failure.map(|f| f.message),
        endpoint: status.endpoint,
    }
}

/// The selector of the Deployments the operator runs installs as.
fn managed() -> String {
    format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)
}

/// `(namespace, install)` and `ready/desired` of one of those Deployments.
fn ready_of(deployment: &Deployment) -> Option<(Key, String)> {
    let install = deployment.labels().get(labels::INSTALL)?.clone();
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = deployment
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    Some((
        (deployment.namespace().unwrap_or_default(), install),
        format!("{ready}/{desired}"),
    ))
}

/// `ready/desired` of the Deployments the operator runs installs as, by (namespace, install).
/// The install's status has no replica counts, so they are read from its Deployment; a user who
/// may not list Deployments still gets the rest of the table (READY shows `-`).
async fn ready_replicas(client: &Client, namespace: Option<&str>) -> BTreeMap<Key, String> {
    let Ok(list) = api::<Deployment>(client, namespace)
        .list(&ListParams::default().labels(&managed()))
        .await
    else {
        return BTreeMap::new();
    };
    list.items.iter().filter_map(ready_of).collect()
}

/// `status -w`: the table, then each install's line again whenever it changes (its data, not
/// the ages), from watches of the installs and their Deployments. A deleted install is printed
/// once more with phase `Deleted`. Runs until interrupted.
pub async fn follow(client: &Client, args: StatusArgs) -> Result<(), Failure> {
    let namespace = scope(client, &args);
    let first = rows(client, namespace.as_deref()).await?;
    print(&render(&first, args.output, namespace.as_deref())?)?;
    let wide = args.output == Some(Output::Wide);
    let header = header(wide);
    let now = Timestamp::now();
    let firsts: Vec<Vec<String>> = first.iter().map(|r| cells(r, wide, now)).collect();
    let widths = widths(&header, &firsts);
    let mut printed: BTreeMap<Key, StatusRow> = first
        .into_iter()
        .map(|r| ((r.namespace.clone(), r.name.clone()), r))
        .collect();

    let installs = watcher(
        api::<PluginInstall>(client, namespace.as_deref()),
        watcher::Config::default(),
    )
    .default_backoff()
    .map(Either::Left)
    .boxed();
    let deployments = watcher(
        api::<Deployment>(client, namespace.as_deref()),
        watcher::Config::default().labels(&managed()),
    )
    .default_backoff()
    .map(Either::Right)
    .boxed();
    let mut events = stream::select(installs, deployments);
    let mut current: BTreeMap<Key, PluginInstall> = BTreeMap::new();
    let mut ready: BTreeMap<Key, String> = BTreeMap::new();
    let key_of = |i: &PluginInstall| (i.namespace().unwrap_or_default(), i.name_any());
    while let Some(event) = events.next().await {
        let (changed, deleted) = match event {
            Either::Left(Ok(
                watcher::Event::Apply(install) | watcher::Event::InitApply(install),
            )) => {
                let key = key_of(&install);
                current.insert(key.clone(), install);
                (Some(key), None)
            }
            Either::Left(Ok(watcher::Event::Delete(install))) => {
                let key = key_of(&install);
                current.remove(&key);
                (None, Some((key, install)))
            }
            Either::Right(Ok(
                watcher::Event::Apply(deployment) | watcher::Event::InitApply(deployment),
            )) => match ready_of(&deployment) {
                Some((key, counts)) => {
                    ready.insert(key.clone(), counts);
                    (Some(key), None)
                }
                None => (None, None),
            },
            Either::Right(Ok(watcher::Event::Delete(deployment))) => match ready_of(&deployment) {
                Some((key, _)) => {
                    ready.remove(&key);
                    (Some(key), None)
                }
                None => (None, None),
            },
            // Init and InitDone mark a (re)list; errors are retried by the watcher.
            Either::Left(_) | Either::Right(_) => (None, None),
        };
        let row = match (changed, deleted) {
            (Some(key), _) => match current.get(&key) {
                Some(install) => status_row(install, &ready),
                None => continue,
            },
            (None, Some((_, install))) => StatusRow {
                phase: Some("Deleted".to_owned()),
                ..status_row(&install, &ready)
            },
            (None, None) => continue,
        };
        let key = (row.namespace.clone(), row.name.clone());
        if printed.get(&key) == Some(&row) {
            continue;
        }
        let text = match args.output {
            Some(Output::Json) => serde_json::to_string(&row)
                .map(|s| s + "\n")
                .map_err(|e| Failure::Other(e.to_string()))?,
            Some(Output::Yaml) => format!(
                "---\n{}",
                serde_yaml::to_string(&row).map_err(|e| Failure::Other(e.to_string()))?
            ),
            Some(Output::Wide) | None => {
                colour(line(&cells(&row, wide, Timestamp::now()), &widths))
            }
        };
        print(&text)?;
        printed.insert(key, row);
    }
    Ok(())
}
