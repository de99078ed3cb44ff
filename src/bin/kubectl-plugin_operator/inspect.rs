//! `versions` and `history`: what a plugin offers and what an install has been through.
use kube::{Api, Client, ResourceExt, api::ListParams};
use plugin_operator::resources::{Plugin, PluginInstall, PluginVersion, conditions};
use serde::Serialize;

use super::{
    Failure, INSTALLS, ObjectArgs, PLUGINS, VERSIONS, classify,
    output::{as_data, dash, table},
    split_object,
};

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

pub async fn versions(client: &Client, args: ObjectArgs) -> Result<String, Failure> {
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
pub async fn installs_of(
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

pub async fn history(client: &Client, args: ObjectArgs) -> Result<String, Failure> {
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
