//! Observe: everything one reconcile of an install reads, as a plain value.
use std::sync::Arc;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{Pod, Secret},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{Api, ResourceExt};
use serde_json::{Map, Value};

use super::super::{Context, Error};
use crate::{
    lifecycle::access::Refusal,
    resources::{
        ConnectionMode, Plugin, PluginInstall, PluginVersion,
        names::{self, labels},
        validate::FieldError,
    },
    runtime::{
        cache,
        call::{CallError, with_timeout},
        random,
    },
};

/// Everything [`super::plan()`] reads. A plain value: tests write one by hand.
#[derive(Clone, Debug)]
pub struct World {
    pub install: Arc<PluginInstall>,
    /// The Plugin the install names, or why it may not use it.
    pub plugin: Result<Arc<Plugin>, Refusal>,
    /// Versions of the plugin (in the plugin's namespace).
    pub versions: Vec<Arc<PluginVersion>>,
    pub deployment: Option<Arc<Deployment>>,
    /// Pods labelled with the install's name.
    pub pods: Vec<Arc<Pod>>,
    /// Values of `configFrom` Secrets, merged; or why they could not be read.
    pub secret_config: Result<Map<String, Value>, FieldError>,
    /// For an active external plugin with an endpoint: whether it answered a health check.
    pub external_health: Option<Result<(), String>>,
    /// The metadata of the install's credentials Secret (`None`: there is none); or why it
    /// could not be read. Read only once the install's Plugin is known.
    pub credentials: Result<Option<ObjectMeta>, ReadError>,
    /// Objects found under a child's name that the install does not own. Nothing looks for them
    /// yet: the ownership check (issue 14) fills this, and the plan then stops the install.
    pub foreign: Vec<ForeignObject>,
    /// A client secret for credentials made in this reconcile (used only when they are due).
    pub fresh_client_secret: String,
    pub now: Timestamp,
}

/// Something observe could not read, and kept going without.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadError {
    /// The HTTP status the API server answered, when it answered: what tells a transient error
    /// from a permanent one (issue 11 classifies it).
    pub status: Option<u16>,
    pub message: String,
}

impl From<&CallError> for ReadError {
    fn from(error: &CallError) -> Self {
        Self {
            status: error.status_code(),
            message: error.to_string(),
        }
    }
}

/// An object under the name of one of the install's children that the install does not own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForeignObject {
    pub kind: String,
    pub name: String,
    /// Who owns it instead (`kind/name` of its controller), if anyone.
    pub owner: Option<String>,
}

/// Reads the [`World`] of one install.
pub async fn observe(install: &Arc<PluginInstall>, ctx: &Context) -> Result<World, Error> {
    let namespace = install.namespace().unwrap_or_default();
    let name = install.name_any();
    let plugin = ctx.caches.plugin_of(install, &ctx.catalog_namespace);
    let versions = match &plugin {
        Ok(p) => ctx.caches.versions_of_plugin(p),
        Err(_) => Vec::new(),
    };
    let deployment = cache::get(&ctx.caches.deployments, &namespace, &name);
    let pods = cache::select(&ctx.caches.pods, |p| {
        cache::in_namespace(p, &namespace) && p.labels().get(labels::INSTALL) == Some(&name)
    });
    let secret_config = if install.spec.active {
        read_config_secrets(ctx, install).await?
    } else {
        Ok(Map::new())
    };
    let external_health = match &plugin {
        Ok(p) if install.spec.active && p.spec.connection.mode == ConnectionMode::External => {
            match p.spec.connection.endpoint.as_deref() {
                Some(endpoint) => Some(ctx.health_checker.check(endpoint).await),
                None => None,
            }
        }
        _ => None,
    };
    let credentials = match &plugin {
        Ok(_) => {
            let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            with_timeout(api.get_metadata_opt(&names::credentials_secret_name(&name)))
                .await
                .map(|found| found.map(|secret| secret.metadata))
                .map_err(|error| ReadError::from(&error))
        }
        Err(_) => Ok(None),
    };
    Ok(World {
        install: install.clone(),
        plugin,
        versions,
        deployment,
        pods,
        secret_config,
        external_health,
        credentials,
        foreign: Vec::new(),
        fresh_client_secret: random::secret()?,
        now: ctx.clock.now_in_seconds(),
    })
}

/// Reads the `configFrom` Secrets. A missing Secret is a config error (unless optional); an
/// API failure is transient.
async fn read_config_secrets(
    ctx: &Context,
    install: &PluginInstall,
) -> Result<Result<Map<String, Value>, FieldError>, Error> {
    let mut merged = Map::new();
    if install.spec.config_from.is_empty() {
        return Ok(Ok(merged));
    }
    let api: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &install.namespace().unwrap_or_default());
    for (index, source) in install.spec.config_from.iter().enumerate() {
        let secret = with_timeout(api.get_opt(&source.name)).await?;
        let optional = source.optional.unwrap_or(false);
        let Some(secret) = secret else {
            if optional {
                continue;
            }
            return Ok(Err(FieldError::new(
                format!("spec.configFrom[{index}].name"),
                format!("Secret {} not found", source.name),
            )));
        };
        let data = secret.data.unwrap_or_default();
        for (key, value) in &data {
            if !source.keys.is_empty() && !source.keys.contains(key) {
                continue;
            }
            let Ok(text) = String::from_utf8(value.0.clone()) else {
                return Ok(Err(FieldError::new(
                    format!("spec.configFrom[{index}].keys"),
                    format!("Secret {} key {key} is not UTF-8 text", source.name),
                )));
            };
            merged.insert(key.clone(), Value::String(text));
        }
        if let Some(missing) = source
            .keys
            .iter()
            .find(|k| !data.contains_key(*k))
            .filter(|_| !optional)
        {
            return Ok(Err(FieldError::new(
                format!("spec.configFrom[{index}].keys"),
                format!("Secret {} has no key {missing}", source.name),
            )));
        }
    }
    Ok(Ok(merged))
}
