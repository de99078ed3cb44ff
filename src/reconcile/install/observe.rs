//! Observe: everything one reconcile of an install reads, as a plain value.
use std::sync::Arc;

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{Api, ResourceExt};
use serde_json::{Map, Value};

use super::super::{Context, Error};
use crate::{
    lifecycle::access::Refusal,
    resources::{
        ConnectionMode, FailureReason, Plugin, PluginInstall, PluginVersion,
        names::{self, consent},
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
    /// Whether the install's Service is there: in the cache, or created in the background and
    /// not cached yet ([`ServiceCreates`](crate::reconcile::service_creates::ServiceCreates)).
    pub service: bool,
    /// Pods labelled with the install's name.
    pub pods: Vec<Arc<Pod>>,
    /// Values of `configFrom` Secrets, merged; or why they could not be used.
    pub secret_config: Result<Map<String, Value>, SecretConfigError>,
    /// For an active external plugin with an endpoint: whether it answered a health check.
    pub external_health: Option<Result<(), String>>,
    /// The metadata of the install's credentials Secret (`None`: there is none); or why it
    /// could not be read. Read only once the install's Plugin is known.
    pub credentials: Result<Option<ObjectMeta>, ReadError>,
    /// Objects found under a child's name that the install does not own (the credentials
    /// Secret's always; the other children's when they are about to be applied and are not in
    /// the caches yet). The plan then stops the install: the operator never adopts.
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

impl ForeignObject {
    fn of(kind: &str, name: &str, owners: &[OwnerReference]) -> Self {
        Self {
            kind: kind.to_owned(),
            name: name.to_owned(),
            owner: owners
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| format!("{}/{}", o.kind, o.name)),
        }
    }
}

/// Why the `configFrom` Secrets cannot be used: the failure reason (`SecretNotFound`,
/// `SecretNotShared`, `ConfigInvalid`) and the field and message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretConfigError {
    pub reason: FailureReason,
    pub error: FieldError,
}

impl SecretConfigError {
    fn new(reason: FailureReason, field: String, message: String) -> Self {
        Self {
            reason,
            error: FieldError::new(field, message),
        }
    }
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
    let pods = ctx.caches.pods_of(&namespace, &name);
    let service = cache::get(&ctx.caches.services, &namespace, &name).is_some()
        || ctx.service_creates.created(&namespace, &name);
    let secret_config = match &plugin {
        Ok(p) if install.spec.active => read_config_secrets(ctx, install, p).await?,
        _ => Ok(Map::new()),
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
    let uid = install.uid().unwrap_or_default();
    let mut foreign = Vec::new();
    let credentials_name = names::credentials_secret_name(&name);
    // The credentials Secret from the cache of the Secrets the operator labelled; one that is
    // not there is looked up by name (it may be someone else's, never cached), so steady state
    // makes no request.
    let credentials = async {
        match &plugin {
            Ok(_) => match cache::get(&ctx.caches.secrets, &namespace, &credentials_name) {
                Some(cached) => Ok(Some(cached.metadata.clone())),
                None => {
                    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
                    with_timeout(api.get_metadata_opt(&credentials_name))
                        .await
                        .map(|found| found.map(|secret| secret.metadata))
                        .map_err(|error| ReadError::from(&error))
                }
            },
            Err(_) => Ok(None),
        }
    };
    // Looked up together: for a new install neither the credentials Secret nor any child is
    // cached yet, and one round trip after the other would be most of its first reconcile.
    let children = async {
        let Ok(p) = &plugin else {
            return Ok(Vec::new());
        };
        if !install.spec.active {
            return Ok(Vec::new());
        }
        match p.spec.connection.mode {
            ConnectionMode::Supervised => foreign_children(ctx, &namespace, &name, &uid).await,
            // An external install applies only its ServiceAccount.
            ConnectionMode::External => {
                let owners = owners_of::<ServiceAccount>(
                    ctx,
                    &namespace,
                    &name,
                    cache::get(&ctx.caches.service_accounts, &namespace, &name)
                        .map(|o| o.owner_references().to_vec()),
                )
                .await?;
                Ok(owners
                    .filter(|owners| !names::owned_by(Some(owners.as_slice()), &uid))
                    .map(|owners| ForeignObject::of("ServiceAccount", &name, &owners))
                    .into_iter()
                    .collect())
            }
        }
    };
    let (credentials, foreign_children) = futures::join!(credentials, children);
    if let Ok(Some(secret)) = &credentials
        && !names::owned_by(secret.owner_references.as_deref(), &uid)
    {
        let owners = secret.owner_references.clone().unwrap_or_default();
        foreign.push(ForeignObject::of("Secret", &credentials_name, &owners));
    }
    foreign.extend(foreign_children?);
    Ok(World {
        install: install.clone(),
        plugin,
        versions,
        deployment,
        service,
        pods,
        secret_config,
        external_health,
        credentials,
        foreign,
        fresh_client_secret: random::secret()?,
        now: ctx.clock.now_in_seconds(),
    })
}

/// Which of the children a supervised install applies are taken by objects it does not own.
/// A child in the caches (label-filtered: what the operator labelled) is checked there; one
/// that is not is looked up by name, since a foreign object is never in the caches. Steady
/// state, with every child cached, makes no request.
async fn foreign_children(
    ctx: &Context,
    namespace: &str,
    name: &str,
    uid: &str,
) -> Result<Vec<ForeignObject>, Error> {
    let caches = &ctx.caches;
    let config_map = names::config_map_name(name);
    // Looked up together: for a new install none is cached, and four round trips one after
    // the other would be most of its first reconcile.
    let (account, config, service, deployment) = futures::try_join!(
        owners_of::<ServiceAccount>(
            ctx,
            namespace,
            name,
            cache::get(&caches.service_accounts, namespace, name)
                .map(|o| o.owner_references().to_vec()),
        ),
        owners_of::<ConfigMap>(
            ctx,
            namespace,
            &config_map,
            cache::get(&caches.config_maps, namespace, &config_map)
                .map(|o| o.owner_references().to_vec()),
        ),
        owners_of::<Service>(
            ctx,
            namespace,
            name,
            cache::get(&caches.services, namespace, name).map(|o| o.owner_references().to_vec()),
        ),
        owners_of::<Deployment>(
            ctx,
            namespace,
            name,
            cache::get(&caches.deployments, namespace, name).map(|o| o.owner_references().to_vec()),
        ),
    )?;
    let found = [
        ("ServiceAccount", name, account),
        ("ConfigMap", config_map.as_str(), config),
        ("Service", name, service),
        ("Deployment", name, deployment),
    ];
    Ok(found
        .into_iter()
        .filter_map(|(kind, child, owners)| {
            let owners = owners?;
            (!names::owned_by(Some(owners.as_slice()), uid))
                .then(|| ForeignObject::of(kind, child, &owners))
        })
        .collect())
}

/// The owner references of the object `namespace/name` of kind `K`: the cached ones, or when
/// the cache has none, the API server's (a metadata-only GET); `None` when there is no object.
async fn owners_of<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    cached: Option<Vec<OwnerReference>>,
) -> Result<Option<Vec<OwnerReference>>, Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    if cached.is_some() {
        return Ok(cached);
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let found = with_timeout(api.get_metadata_opt(name)).await?;
    Ok(found.map(|o| o.metadata.owner_references.unwrap_or_default()))
}

/// Reads the `configFrom` Secrets. A missing Secret is a config error (unless optional), and
/// so is one that does not consent to this install ([`names::consent`]): its values are not
/// read. An API failure is transient.
async fn read_config_secrets(
    ctx: &Context,
    install: &PluginInstall,
    plugin: &Plugin,
) -> Result<Result<Map<String, Value>, SecretConfigError>, Error> {
    let mut merged = Map::new();
    if install.spec.config_from.is_empty() {
        return Ok(Ok(merged));
    }
    let namespace = install.namespace().unwrap_or_default();
    let install_name = install.name_any();
    let plugin_namespace = plugin.namespace().unwrap_or_default();
    let plugin_name = plugin.name_any();
    let reader = consent::Reader {
        install: &install_name,
        plugin_namespace: &plugin_namespace,
        plugin: &plugin_name,
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for (index, source) in install.spec.config_from.iter().enumerate() {
        let secret = with_timeout(api.get_opt(&source.name)).await?;
        let optional = source.optional.unwrap_or(false);
        let Some(secret) = secret else {
            if optional {
                continue;
            }
            return Ok(Err(SecretConfigError::new(
                FailureReason::SecretNotFound,
                format!("spec.configFrom[{index}].name"),
                format!("Secret {} not found", source.name),
            )));
        };
        if !consent::allows(secret.metadata.annotations.as_ref(), &namespace, &reader) {
            return Ok(Err(SecretConfigError::new(
                FailureReason::SecretNotShared,
                format!("spec.configFrom[{index}].name"),
                format!(
                    "Secret {} does not allow install {install_name} (plugin {plugin_namespace}/{plugin_name}) to use it: {}",
                    source.name,
                    consent::RULE
                ),
            )));
        }
        let data = secret.data.unwrap_or_default();
        for (key, value) in &data {
            if !source.keys.is_empty() && !source.keys.contains(key) {
                continue;
            }
            let Ok(text) = String::from_utf8(value.0.clone()) else {
                return Ok(Err(SecretConfigError::new(
                    FailureReason::SecretNotFound,
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
            return Ok(Err(SecretConfigError::new(
                FailureReason::SecretNotFound,
                format!("spec.configFrom[{index}].keys"),
                format!("Secret {} has no key {missing}", source.name),
            )));
        }
    }
    Ok(Ok(merged))
}
