//! `trace NS/NAME`: the tree from an install to everything it depends on and owns, each object
//! with its health and the condition or state that explains it. Objects are read with the
//! user's permissions; one that may not be read shows as `Forbidden`, and the tree goes on.
//! The credentials Secret is read as metadata only: its data never reaches this process.
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, ReplicaSet},
        core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, Resource, ResourceExt, api::ListParams};
use plugin_operator::resources::{
    ConnectionMode, Plugin, PluginInstall, PluginJob, PluginVersion, conditions,
    names::{self, labels},
};
use serde::Serialize;

use super::{
    Failure, INSTALLS, ObjectArgs, classify, inspect,
    output::{as_data, table},
    split_object,
};

/// One object of the tree.
#[derive(Serialize, Debug, PartialEq)]
pub struct Node {
    /// `Kind namespace/name`, or `Kind name` in the install's namespace.
    pub object: String,
    /// One word: a phase, `Accepted`, `Available`, `Present`, `Missing`, `Forbidden`, ….
    pub health: String,
    /// Why: the condition, state or counts behind the health.
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Node>,
}

impl Node {
    fn new(object: String, health: &str, detail: impl Into<String>) -> Self {
        Self {
            object,
            health: health.to_owned(),
            detail: detail.into(),
            children: Vec::new(),
        }
    }

    /// The tree's lines: the object with its branch, the health and the detail.
    fn rows(&self, prefix: &str, branch: &str, rows: &mut Vec<Vec<String>>) {
        rows.push(vec![
            format!("{prefix}{branch}{}", self.object),
            self.health.clone(),
            self.detail.clone(),
        ]);
        let inner = match branch {
            "├── " => format!("{prefix}│   "),
            "└── " => format!("{prefix}    "),
            _ => prefix.to_owned(),
        };
        for (i, child) in self.children.iter().enumerate() {
            let last = i + 1 == self.children.len();
            child.rows(&inner, if last { "└── " } else { "├── " }, rows);
        }
    }
}

pub async fn trace(client: &Client, args: ObjectArgs) -> Result<String, Failure> {
    let (namespace, name) = split_object(client, &args.object, args.namespace);
    let installs: Api<PluginInstall> = Api::namespaced(client.clone(), &namespace);
    let install = installs
        .get(&name)
        .await
        .map_err(|e| classify(e, INSTALLS, Some(&format!("{namespace}/{name}"))))?;
    let tree = tree(client, &install).await;
    if let Some(data) = as_data(&tree, args.output)? {
        return Ok(data);
    }
    let mut rows = Vec::new();
    tree.rows("", "", &mut rows);
    Ok(table(&["OBJECT", "HEALTH", "DETAIL"], &rows))
}

async fn tree(client: &Client, install: &PluginInstall) -> Node {
    let namespace = install.namespace().unwrap_or_default();
    let name = install.name_any();
    let uid = install.uid().unwrap_or_default();
    let status = install.status.clone().unwrap_or_default();
    let ready = conditions::find_condition(&status.conditions, conditions::READY);
    let mut root = Node::new(
        format!("PluginInstall {namespace}/{name}"),
        status.phase.map_or("Unknown", |p| p.as_str()),
        ready.map_or_else(
            || "not yet seen by the operator".to_owned(),
            |c| c.message.clone(),
        ),
    );

    let (plugin_node, mode) = plugin_node(client, install).await;
    root.children.push(plugin_node);

    let supervised = mode != Some(ConnectionMode::External);
    root.children
        .push(deployment_node(client, install, &namespace, &name, &uid, supervised).await);
    let own = |kind: &str, child: &str| format!("{kind} {child}");
    let service = meta::<Service>(client, &namespace, &name).await;
    root.children.push(owned_node(
        own("Service", &name),
        service,
        &uid,
        status.endpoint.clone().unwrap_or_default(),
    ));
    let account = meta::<ServiceAccount>(client, &namespace, &name).await;
    root.children.push(owned_node(
        own("ServiceAccount", &name),
        account,
        &uid,
        String::new(),
    ));
    let config_name = names::config_map_name(&name);
    let config = meta::<ConfigMap>(client, &namespace, &config_name).await;
    root.children.push(owned_node(
        own("ConfigMap", &config_name),
        config,
        &uid,
        "config.json: spec.config with the schema's defaults".to_owned(),
    ));
    let secret_name = names::credentials_secret_name(&name);
    let secret = meta::<Secret>(client, &namespace, &secret_name).await;
    let rotation = names::credentials_rotation(install);
    let detail = if rotation.is_empty() {
        "credentials (data not shown)".to_owned()
    } else {
        format!("credentials (data not shown), rotation {rotation}")
    };
    root.children.push(owned_node(
        own("Secret", &secret_name),
        secret,
        &uid,
        detail,
    ));
    root.children
        .extend(job_nodes(client, &namespace, &name).await);
    root
}

/// A read that may fail: the failure as the health and detail of a node.
fn failed(object: String, error: &kube::Error) -> Node {
    match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            Node::new(object, "Forbidden", status.message.clone())
        }
        kube::Error::Api(status) if status.code == 404 => Node::new(object, "Missing", "not found"),
        other => Node::new(object, "Unknown", other.to_string()),
    }
}

async fn plugin_node(client: &Client, install: &PluginInstall) -> (Node, Option<ConnectionMode>) {
    let namespace = install.namespace().unwrap_or_default();
    let reference = &install.spec.plugin;
    let plugin_ns = reference.namespace_or(&namespace).to_owned();
    let plugin_name = reference.name().to_owned();
    let object = format!("Plugin {plugin_ns}/{plugin_name}");
    let plugin = match Api::<Plugin>::namespaced(client.clone(), &plugin_ns)
        .get(&plugin_name)
        .await
    {
        Ok(plugin) => plugin,
        Err(error) => return (failed(object, &error), None),
    };
    let mode = plugin.spec.connection.mode;
    let catalog = if plugin_ns == namespace {
        ""
    } else {
        ", from another namespace (catalog)"
    };
    let detail = match mode {
        ConnectionMode::External => format!(
            "external at {}{catalog}",
            plugin.spec.connection.endpoint.as_deref().unwrap_or("-")
        ),
        ConnectionMode::Supervised => format!("supervised{catalog}"),
    };
    let mut node = Node::new(object, "Found", detail);
    node.children = version_nodes(client, install, &plugin_ns, &plugin_name).await;
    (node, Some(mode))
}

/// The versions the install runs, rolls out or may upgrade to.
async fn version_nodes(
    client: &Client,
    install: &PluginInstall,
    plugin_ns: &str,
    plugin: &str,
) -> Vec<Node> {
    let status = install.status.clone().unwrap_or_default();
    let wanted: Vec<(String, &str)> = [
        (status.version.clone(), "running"),
        (status.target_version.clone(), "target"),
        (status.available_version.clone(), "available"),
    ]
    .into_iter()
    .filter_map(|(v, role)| v.map(|v| (v, role)))
    .collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let versions = match Api::<PluginVersion>::namespaced(client.clone(), plugin_ns)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => return vec![failed("PluginVersion".to_owned(), &error)],
    };
    let users = inspect::installs_of(client, plugin_ns, plugin)
        .await
        .unwrap_or_default();
    wanted
        .into_iter()
        .map(|(number, role)| {
            let Some(version) = versions
                .iter()
                .find(|v| v.spec.plugin == plugin && v.spec.version == number)
            else {
                return Node::new(
                    format!("PluginVersion {number} ({role})"),
                    "Missing",
                    "no PluginVersion of the plugin has this version",
                );
            };
            let accepted = version
                .status
                .as_ref()
                .and_then(|s| conditions::find_condition(&s.conditions, conditions::ACCEPTED));
            let health = match accepted.map(|c| c.status.as_str()) {
                Some("True") => "Accepted",
                Some("False") => "NotAccepted",
                _ => "Unknown",
            };
            let used_by: Vec<&str> = users
                .iter()
                .filter(|(_, running)| running.as_deref() == Some(number.as_str()))
                .map(|(install, _)| install.as_str())
                .collect();
            let mut detail = format!(
                "{} {number}, {role}; run by {}",
                if version.spec.is_formal() {
                    "formal"
                } else {
                    "draft"
                },
                if used_by.is_empty() {
                    "none".to_owned()
                } else {
                    used_by.join(",")
                }
            );
            if let Some(c) = accepted.filter(|c| c.status != "True") {
                detail.push_str(&format!("; {}: {}", c.reason, c.message));
            }
            Node::new(
                format!("PluginVersion {plugin_ns}/{}", version.name_any()),
                health,
                detail,
            )
        })
        .collect()
}

async fn deployment_node(
    client: &Client,
    install: &PluginInstall,
    namespace: &str,
    name: &str,
    uid: &str,
    supervised: bool,
) -> Node {
    let object = format!("Deployment {name}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let deployment = match deployments.get(name).await {
        Ok(deployment) => deployment,
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let why = if !supervised {
                "an external plugin runs elsewhere: no Deployment"
            } else if !install.spec.active {
                "the install is inactive: no Deployment"
            } else {
                "not made yet"
            };
            let health = if supervised && install.spec.active {
                "Missing"
            } else {
                "None"
            };
            return Node::new(object, health, why);
        }
        Err(error) => return failed(object, &error),
    };
    if !names::owned_by(deployment.meta().owner_references.as_deref(), uid) {
        return Node::new(
            object,
            "NotOwned",
            "held by an object the install did not make (NameConflict)",
        );
    }
    let spec_replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let status = deployment.status.clone().unwrap_or_default();
    let ready = status.ready_replicas.unwrap_or(0);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let version = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(labels::VERSION))
        .cloned()
        .unwrap_or_default();
    let stalled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.status == "False")
        .map(|c| {
            format!(
                "; {}: {}",
                c.reason.as_deref().unwrap_or(&c.type_),
                c.message.as_deref().unwrap_or("")
            )
        })
        .unwrap_or_default();
    let health = if available >= spec_replicas && updated == spec_replicas {
        "Available"
    } else {
        "Progressing"
    };
    let mut node = Node::new(
        object,
        health,
        format!("{ready}/{spec_replicas} ready, version {version}{stalled}"),
    );
    node.children = replica_set_nodes(client, namespace, name, deployment.uid().as_deref()).await;
    node
}

async fn replica_set_nodes(
    client: &Client,
    namespace: &str,
    install: &str,
    deployment_uid: Option<&str>,
) -> Vec<Node> {
    let selector = format!("{}={install}", labels::INSTALL);
    let params = ListParams::default().labels(&selector);
    let sets = match Api::<ReplicaSet>::namespaced(client.clone(), namespace)
        .list(&params)
        .await
    {
        Ok(list) => list.items,
        Err(error) => return vec![failed("ReplicaSet".to_owned(), &error)],
    };
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await
        .map(|l| l.items);
    let revision = |rs: &ReplicaSet| {
        rs.annotations()
            .get("deployment.kubernetes.io/revision")
            .and_then(|r| r.parse::<i64>().ok())
            .unwrap_or(0)
    };
    let mut sets: Vec<ReplicaSet> = sets
        .into_iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| Some(o.uid.as_str()) == deployment_uid)
        })
        .collect();
    sets.sort_by_key(|rs| std::cmp::Reverse(revision(rs)));
    sets.iter()
        .enumerate()
        .filter(|(i, rs)| {
            *i == 0
                || rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0
                || rs.status.as_ref().is_some_and(|s| s.replicas > 0)
        })
        .map(|(i, rs)| {
            let desired = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
            let ready = rs
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            let version = rs
                .labels()
                .get(labels::VERSION)
                .cloned()
                .unwrap_or_default();
            let mut node = Node::new(
                format!("ReplicaSet {}", rs.name_any()),
                if i == 0 { "Current" } else { "Old" },
                format!("{ready}/{desired} ready, version {version}"),
            );
            node.children = match &pods {
                Ok(pods) => pods
                    .iter()
                    .filter(|p| {
                        p.owner_references()
                            .iter()
                            .any(|o| Some(&o.uid) == rs.uid().as_ref())
                    })
                    .map(pod_node)
                    .collect(),
                Err(error) => vec![failed("Pod".to_owned(), error)],
            };
            node
        })
        .collect()
}

fn pod_node(pod: &Pod) -> Node {
    let status = pod.status.clone().unwrap_or_default();
    let containers = status.container_statuses.clone().unwrap_or_default();
    let waiting = containers
        .iter()
        .find_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone());
    let ready = containers.iter().all(|c| c.ready) && !containers.is_empty();
    let health = match (ready, waiting) {
        (true, _) => "Ready".to_owned(),
        (false, Some(reason)) => reason,
        (false, None) => status.phase.clone().unwrap_or_else(|| "Pending".to_owned()),
    };
    let detail = if containers.is_empty() {
        "no container started yet".to_owned()
    } else {
        containers
            .iter()
            .map(|c| {
                let state = c.state.clone().unwrap_or_default();
                let what = if state.running.is_some() {
                    if c.ready {
                        "running, ready".to_owned()
                    } else {
                        "running, not ready".to_owned()
                    }
                } else if let Some(w) = state.waiting {
                    format!("waiting ({})", w.reason.unwrap_or_default())
                } else if let Some(t) = state.terminated {
                    format!("terminated ({})", t.reason.unwrap_or_default())
                } else {
                    "unknown".to_owned()
                };
                format!("{}: {what}, {} restarts", c.name, c.restart_count)
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    Node::new(format!("Pod {}", pod.name_any()), &health, detail)
}

/// The metadata of a child by name, or the error of its read.
async fn meta<K>(client: &Client, namespace: &str, name: &str) -> Result<ObjectMeta, kube::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_metadata(name)
        .await
        .map(|m| m.metadata)
}

fn owned_node(
    object: String,
    meta: Result<ObjectMeta, kube::Error>,
    uid: &str,
    detail: String,
) -> Node {
    match meta {
        Ok(meta) if names::owned_by(meta.owner_references.as_deref(), uid) => {
            Node::new(object, "Present", detail)
        }
        Ok(_) => Node::new(
            object,
            "NotOwned",
            "held by an object the install did not make (NameConflict)",
        ),
        Err(error) => failed(object, &error),
    }
}

async fn job_nodes(client: &Client, namespace: &str, install: &str) -> Vec<Node> {
    let jobs = match Api::<PluginJob>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list.items,
        Err(error) => return vec![failed("PluginJob".to_owned(), &error)],
    };
    let mut jobs: Vec<&PluginJob> = jobs.iter().filter(|j| j.spec.install == install).collect();
    jobs.sort_by_key(|j| j.name_any());
    jobs.into_iter()
        .map(|job| {
            let status = job.status.clone().unwrap_or_default();
            let mut detail = format!("{} {}", job.spec.name, job.spec.identifier);
            if let Some(reason) = &status.failure_reason {
                detail.push_str(&format!("; {reason}"));
            }
            let health = status.status.as_str();
            let mut chars = health.chars();
            let health = chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect::<String>())
                .unwrap_or_default();
            Node::new(format!("PluginJob {}", job.name_any()), &health, detail)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_is_drawn_with_branches_and_continuations() {
        let mut root = Node::new("PluginInstall a/b".into(), "Active", "ok");
        let mut deployment = Node::new("Deployment b".into(), "Available", "1/1");
        let mut rs = Node::new("ReplicaSet b-1".into(), "Current", "1/1");
        rs.children
            .push(Node::new("Pod b-1-x".into(), "Ready", "c"));
        deployment.children.push(rs);
        root.children.push(deployment);
        root.children
            .push(Node::new("Service b".into(), "Present", ""));
        let mut rows = Vec::new();
        root.rows("", "", &mut rows);
        let text = table(&["OBJECT", "HEALTH", "DETAIL"], &rows);
        assert_eq!(
            text,
            "OBJECT                   HEALTH      DETAIL\n\
             PluginInstall a/b        Active      ok\n\
             ├── Deployment b         Available   1/1\n\
             │   └── ReplicaSet b-1   Current     1/1\n\
             │       └── Pod b-1-x    Ready       c\n\
             └── Service b            Present\n"
        );
    }
}
