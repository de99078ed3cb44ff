//! The HTTP API of SPEC §4, its routes named by what they serve ([`routes`](mod@routes)). Every replica
//! serves it.
//!
//! Handlers answer from the watch caches ([`Caches`]) where the caches hold the answer. They
//! call the API server for what no cache holds, each call with a timeout:
//! - who the caller is and what they may do: TokenReview and SubjectAccessReview (cached by
//!   token hash, [`auth`]); a plugin token's TokenReview (seed 003, cached too);
//! - tokens for plugins: TokenRequest (seed 000 cached while fresh; seed 003 per login);
//! - reads that must be current: the install before a config merge and its credentials Secret
//!   (seed 003), the storage ConfigMaps and PluginJobs;
//! - the writes the caller asks for (patches and creates with the field manager
//!   `plugin-operator`, so kubectl and the API agree), and a refresh token recorded in the
//!   install's credentials Secret. The API never creates or rotates credentials: the controller
//!   does.
//!
//! One error type ([`error::ApiError`]) and one mapper ([`error::SeedError`]) serve every route;
//! each seed keeps its own error body ([`error::ErrorShape`]). `/openapi.json` is generated from
//! the same route definitions as the router.
pub mod auth;
pub mod backend;
pub mod error;
pub mod extract;
pub mod observe;
pub mod routes;
pub mod server;
pub mod token_limit;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use semver::Version;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    lifecycle,
    resources::{Plugin, PluginInstall, PluginVersion},
    runtime::{cache::Caches, clock::Clock},
};

use auth::Auth;
use backend::{Backend, KubeBackend};
use routes::{endpoints, instances, plugin_services, registry, versions};

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState(Arc<Shared>);

struct Shared {
    client: Client,
    caches: Caches,
    catalog_namespace: String,
    auth: Auth,
    backend: Arc<dyn Backend>,
    tokens: routes::endpoints::IssuedTokens,
    clock: Clock,
    ready: AtomicBool,
}

impl ApiState {
    /// The API as `plugin-operator run` serves it: the operator's client asks the API server.
    pub fn new(client: Client, caches: Caches, catalog_namespace: String, clock: Clock) -> Self {
        let backend = Arc::new(KubeBackend::new(client.clone()));
        Self::with_backend(client, caches, catalog_namespace, backend, clock)
    }

    /// With another [`Backend`] and clock (tests, the benchmark). `client` is used for writes
    /// only.
    pub fn with_backend(
        client: Client,
        caches: Caches,
        catalog_namespace: String,
        backend: Arc<dyn Backend>,
        clock: Clock,
    ) -> Self {
        Self(Arc::new(Shared {
            client,
            caches,
            catalog_namespace,
            auth: Auth::new(backend.clone(), clock.clone()),
            backend,
            tokens: routes::endpoints::IssuedTokens::default(),
            clock,
            ready: AtomicBool::new(false),
        }))
    }

    /// Requests are answered once the caches are synced (before, 503).
    pub fn set_ready(&self, ready: bool) {
        self.0.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    pub fn auth(&self) -> &Auth {
        &self.0.auth
    }

    pub fn caches(&self) -> &Caches {
        &self.0.caches
    }

    pub fn client(&self) -> &Client {
        &self.0.client
    }

    pub fn catalog_namespace(&self) -> &str {
        &self.0.catalog_namespace
    }

    pub(crate) fn backend(&self) -> &Arc<dyn Backend> {
        &self.0.backend
    }

    pub(crate) fn tokens(&self) -> &routes::endpoints::IssuedTokens {
        &self.0.tokens
    }

    pub fn now(&self) -> Timestamp {
        self.0.clock.now()
    }

    /// An install by `metadata.uid`, in any namespace.
    pub fn install_by_uid(&self, uid: &str) -> Option<Arc<PluginInstall>> {
        self.0.caches.install_by_uid(uid)
    }

    /// The Plugin an install runs, if it may use it.
    pub fn plugin_of(&self, install: &PluginInstall) -> Option<Arc<Plugin>> {
        self.0
            .caches
            .plugin_of(install, &self.0.catalog_namespace)
            .ok()
    }

    /// A version of a plugin, by number (build metadata aside).
    pub fn version_of(&self, plugin: &Plugin, wanted: &Version) -> Option<Arc<PluginVersion>> {
        self.0
            .caches
            .versions_of_plugin(plugin)
            .into_iter()
            .find(|v| {
                lifecycle::versions::number(v).is_some_and(|n| n.cmp_precedence(wanted).is_eq())
            })
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "plugin-operator",
        description = "The plugin API of plugin-operator (SPEC §4): seeds 000, 001, 002 and 004. \
                       Every route but this document needs a Kubernetes token (ServiceAccount or \
                       user) whose RBAC allows the verb the route maps to; see docs/api.md."
    ),
    modifiers(&Security),
    tags(
        (name = "seed 000", description = "Plugin endpoints and failure reports"),
        (name = "seed 001", description = "Plugins registered per account (namespace)"),
        (name = "seed 002", description = "Installed plugins: active state and configuration"),
        (name = "seed 004", description = "Version details"),
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "x_auth_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Auth-Token"))),
        );
    }
}

fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(endpoints::get_endpoint))
        .routes(routes!(endpoints::notify_failure))
        .routes(routes!(registry::list_plugins, registry::register_plugin))
        .routes(routes!(registry::get_plugin, registry::delete_plugin))
        .routes(routes!(instances::list_plugins))
        .routes(routes!(instances::set_active))
        .routes(routes!(instances::set_config))
        .routes(routes!(versions::detail_route))
        .merge(plugin_services::routes())
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = routes().split_for_parts();
    let path = utoipa::openapi::path::PathItem::new(
        utoipa::openapi::HttpMethod::Get,
        utoipa::openapi::path::OperationBuilder::new()
            .summary(Some("This document"))
            .response(
                "200",
                utoipa::openapi::ResponseBuilder::new().description("The OpenAPI document"),
            )
            .build(),
    );
    doc.paths.paths.insert(OPENAPI_PATH.to_owned(), path);
    doc
}

/// Where the OpenAPI document is served (without authentication).
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The router of the API.
pub fn router(state: ApiState) -> Router {
    let (router, _) = routes().split_for_parts();
    // The document is made of the route definitions alone, and a unit test serializes it
    // (`the_openapi_document_lists_every_route`): the fallback never serves.
    let document = openapi().to_json().unwrap_or_else(|_| "{}".to_owned());
    router
        .route(
            OPENAPI_PATH,
            get(move || {
                let document = document.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], document) }
            }),
        )
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        axum::Json(serde_json::json!({
            "error": "not_found",
            "message": format!("no such route; the routes are listed at {OPENAPI_PATH}"),
        })),
    )
}

/// Whether `name` can name a namespace (a DNS label).
pub fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `id` looks like a Kubernetes uid (a UUID).
pub fn is_uid(id: &str) -> bool {
    id.len() == 36
        && id.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc = openapi();
        let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/plugin/v1/plugin/{plugin_id}/get-endpoint",
            "/plugin/v1/plugin/{plugin_id}/notify-failure",
            "/v1/accounts/{account_id}/plugins",
            "/v1/plugins/{plugin_id}",
            "/plugins",
            "/plugins/{id}/active",
            "/plugins/{id}/config",
            "/v1/{domain_id}/agent-plugin/detail",
            OPENAPI_PATH,
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        assert_eq!(paths.len(), 14, "{paths:?}");
        let accounts = &doc.paths.paths["/v1/accounts/{account_id}/plugins"];
        assert!(accounts.get.is_some() && accounts.post.is_some());
        let by_id = &doc.paths.paths["/v1/plugins/{plugin_id}"];
        assert!(by_id.get.is_some() && by_id.delete.is_some());
        let json = doc.to_json().expect("serializes");
        assert!(json.contains("X-Auth-Token"));
    }

    #[test]
    fn ids_and_namespaces() {
        assert!(is_uid("497f6eca-6276-4993-bfeb-53cbbbba6f08"));
        assert!(!is_uid("497f6eca62764993bfeb53cbbbba6f08"));
        assert!(!is_uid("497f6eca-6276-4993-bfeb-53cbbbba6f0g"));
        assert!(is_namespace_name("team-a"));
        assert!(!is_namespace_name("Team_A"));
        assert!(!is_namespace_name(&"a".repeat(64)));
    }
}
