//! The writes of the reconcilers, with the one field manager: server-side apply of children and
//! status, the in-use finalizer, the credentials Secret. Each write happens only when what is
//! built differs from what is there (the caches, or the Secret's metadata observed).
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Secret, Service},
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::reflector::Store,
};
use serde::{Serialize, de::DeserializeOwned};

use std::sync::Arc;

use super::{Context, Error, build::Children, install::CredentialsPlan, service_creates::Outcome};
use crate::{
    resources::{
        Plugin, PluginInstall, PluginInstallStatus, PluginStatus, PluginVersion,
        PluginVersionStatus,
        names::{self, FIELD_MANAGER, annotations},
    },
    runtime::{cache, call::with_timeout},
};

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Creates or rotates an install's credentials Secret, as planned. Created, never overwritten:
/// a Secret that exists already (made meanwhile) is left alone and not read (it may be
/// someone else's; the next observe checks whose it is). A rotation replaces it only if
/// it is still the one observed (its resourceVersion): a refresh token the API recorded
/// meanwhile fails it with a conflict, and the next reconcile decides again.
pub async fn credentials(ctx: &Context, plan: &CredentialsPlan) -> Result<(), Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let (secret, rotate) = match plan {
        CredentialsPlan::Keep => return Ok(()),
        CredentialsPlan::Create(secret) => (secret, false),
        CredentialsPlan::Rotate(secret) => (secret, true),
    };
    let namespace = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    if rotate {
        with_timeout(api.replace(&name, &params, secret)).await?;
        tracing::info!(%namespace, secret = %name, "credentials rotated; refresh tokens revoked");
    } else {
        match with_timeout(api.create(&params, secret)).await {
            Ok(_) => tracing::info!(%namespace, secret = %name, "credentials created"),
            Err(err) if err.is_conflict() => return Ok(()),
            Err(err) => return Err(err.into()),
        }
    }
    ctx.metrics.wrote("Secret");
    Ok(())
}

/// Applies every child whose applied hash differs from the cached one, and the credentials
/// Secret as planned.
///
/// The Deployment goes once its ServiceAccount, ConfigMap and credentials Secret are there
/// (those three together: a new install waits one round trip, not three), beside the Service:
/// the pods do not need the Service, and the API server may take seconds to create one (see
/// [`service_creates`](super::service_creates)). A Service that is not there yet is created in
/// the background when `service_in_background` (a new install's first tries), and how that
/// went is read on a later reconcile
/// ([`ServiceCreates::answer`](super::service_creates::ServiceCreates::answer): a refusal is
/// returned here then); else it is written here. Either way the install is not Active until its
/// Service is there (the plan reads [`World::service`](super::install::World)).
pub async fn children(
    ctx: &Arc<Context>,
    install: &PluginInstall,
    children: &Children,
    credentials: &CredentialsPlan,
    service_in_background: bool,
) -> Result<(), Error> {
    let Children {
        service_account,
        config_map,
        service,
        deployment,
        template_hash: _,
    } = children;
    let caches = &ctx.caches;
    let deployment = async {
        futures::try_join!(
            apply_if_changed(ctx, service_account, &caches.service_accounts),
            apply_if_changed(ctx, config_map, &caches.config_maps),
            async {
                credentials_or_warn(ctx, credentials).await;
                Ok(())
            },
        )?;
        apply_if_changed(ctx, deployment, &caches.deployments).await
    };
    let namespace = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let service = async {
        if cache::get(&caches.services, &namespace, &name).is_some() {
            ctx.service_creates.forget(&namespace, &name);
            return apply_if_changed(ctx, service, &caches.services).await;
        }
        match ctx.service_creates.answer(&namespace, &name) {
            Some(Outcome::Failed(error)) => Err(error),
            Some(Outcome::Created | Outcome::Pending) => Ok(()),
            None if service_in_background => {
                ctx.service_creates.create(ctx, install, service);
                Ok(())
            }
            None => {
                self::service(ctx, service).await?;
                ctx.service_creates.written(install, service);
                Ok(())
            }
        }
    };
    futures::try_join!(deployment, service).map(|_| ())
}

/// Writes a Service (what [`children`] hands to the background).
pub async fn service(ctx: &Context, service: &Service) -> Result<(), Error> {
    apply_if_changed(ctx, service, &ctx.caches.services).await
}

/// [`credentials`], a failure logged and not returned: without credentials (e.g. RBAC without
/// `create secrets`) the plugin still runs (the volume is optional); the next reconcile tries
/// again.
pub async fn credentials_or_warn(ctx: &Context, plan: &CredentialsPlan) {
    if let Err(error) = credentials(ctx, plan).await {
        tracing::warn!(%error, "cannot create or rotate the credentials Secret");
    }
}

async fn apply_if_changed<K, C>(ctx: &Context, desired: &K, cached: &Store<C>) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Serialize
        + DeserializeOwned
        + Clone
        + std::fmt::Debug,
    C: Resource<DynamicType = ()> + Clone + 'static,
{
    let namespace = desired.namespace().unwrap_or_default();
    let name = desired.name_any();
    let want = desired.annotations().get(annotations::APPLIED);
    let have = cache::get(cached, &namespace, &name)
        .and_then(|c| c.annotations().get(annotations::APPLIED).cloned());
    if want.is_some() && want == have.as_ref() {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    with_timeout(api.patch(&name, &apply_params(), &Patch::Apply(desired)))
        .await
        .map_err(|source| Error::Write {
            what: format!("{} {namespace}/{name}", K::kind(&())),
            source,
        })?;
    ctx.metrics.wrote(K::kind(&()).as_ref());
    tracing::debug!(kind = %K::kind(&()), %namespace, %name, "applied");
    Ok(())
}

/// An active external install's children: its ServiceAccount, and no Deployment.
pub async fn external(
    ctx: &Context,
    install: &PluginInstall,
    service_account: &k8s_openapi::api::core::v1::ServiceAccount,
) -> Result<(), Error> {
    apply_if_changed(ctx, service_account, &ctx.caches.service_accounts).await?;
    remove_deployment(ctx, install).await
}

/// Removes an install's Deployment (inactive or external installs run none); only one the
/// install owns.
pub async fn remove_deployment(ctx: &Context, install: &PluginInstall) -> Result<(), Error> {
    let namespace = install.namespace().unwrap_or_default();
    let name = install.name_any();
    let uid = install.uid().unwrap_or_default();
    let owned = cache::get(&ctx.caches.deployments, &namespace, &name)
        .is_some_and(|d| names::owned_by(Some(d.owner_references()), &uid));
    if !owned {
        return Ok(());
    }
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    match with_timeout(api.delete(&name, &DeleteParams::background())).await {
        Ok(_) => {
            ctx.metrics.wrote("Deployment");
            Ok(())
        }
        Err(err) if err.is_not_found() => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Adds (`present`) or removes this operator's finalizer with a JSON patch that first tests
/// the list it changes, so a concurrent change of the finalizers fails instead of being lost.
/// (It was needed on 1.20, whose managedFields did not tell the main resource from its status,
/// so status applies took a server-side-applied finalizer's ownership away. Since 1.22 that is
/// no longer so; the patch stays because it is one request that changes one list entry and
/// fails on a concurrent change, and it works the same on every server.)
pub async fn finalizer<K>(
    ctx: &Context,
    object: &K,
    finalizer: &str,
    present: bool,
) -> Result<(), Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let current = object.finalizers();
    let index = current.iter().position(|f| f == finalizer);
    let operations = match (present, index) {
        (true, Some(_)) | (false, None) => return Ok(()),
        (true, None) if current.is_empty() => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
        ]),
        (true, None) => serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
        ]),
        (false, Some(i)) => serde_json::json!([
            {"op": "test", "path": format!("/metadata/finalizers/{i}"), "value": finalizer},
            {"op": "remove", "path": format!("/metadata/finalizers/{i}")},
        ]),
    };
    let patch: json_patch::Patch =
        serde_json::from_value(operations).map_err(super::build::BuildError::from)?;
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    match with_timeout(api.patch(
        &object.name_any(),
        &PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        },
        &Patch::Json::<()>(patch),
    ))
    .await
    {
        Ok(_) => {}
        Err(err) if err.is_not_found() => {}
        Err(err) => return Err(err.into()),
    }
    ctx.metrics.wrote(K::kind(&()).as_ref());
    Ok(())
}

/// Writes an object's status when it differs from the one it has, and remembers the result
/// (see [`cache::Recent`]).
pub async fn status<K>(
    ctx: &Context,
    recent: &cache::Recent<K>,
    object: &K,
    desired: &K::Status,
) -> Result<(), Error>
where
    K: HasStatus
        + Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    K::Status: Serialize + PartialEq,
{
    if object.status() == Some(desired) {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": desired,
    });
    let written =
        with_timeout(api.patch_status(&object.name_any(), &apply_params(), &Patch::Apply(&patch)))
            .await?;
    ctx.metrics.wrote(&format!("{}/status", K::kind(&())));
    recent.wrote(object, written);
    Ok(())
}

/// A custom resource with a status.
pub trait HasStatus {
    type Status;
    fn status(&self) -> Option<&Self::Status>;
}

impl HasStatus for PluginInstall {
    type Status = PluginInstallStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl HasStatus for Plugin {
    type Status = PluginStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}

impl HasStatus for PluginVersion {
    type Status = PluginVersionStatus;
    fn status(&self) -> Option<&Self::Status> {
        self.status.as_ref()
    }
}
