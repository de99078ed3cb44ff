//! The names the operator gives and reads: the field manager, the labels and annotations on
//! installs and their children, the names of an install's children, and the keys of its
//! credentials Secret. Shared by the controllers, the watch caches and the HTTP API.
use std::collections::BTreeMap;

use kube::ResourceExt;

use super::PluginInstall;

/// The one field manager of every write (SPEC §1).
pub const FIELD_MANAGER: &str = "plugin-operator";

/// Labels on every child object (SPEC §1), and on pods the template they were made from.
pub mod labels {
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const MANAGED_BY_VALUE: &str = "plugin-operator";
    pub const PLUGIN: &str = "plugin-operator.dev/plugin";
    pub const INSTALL: &str = "plugin-operator.dev/install";
    pub const VERSION: &str = "plugin-operator.dev/version";
    /// On pods: the hash of the pod template they were made from, so the lifecycle looks only at
    /// pods of the template it wants.
    pub const TEMPLATE: &str = "plugin-operator.dev/template";
}

/// Annotations the operator writes on children, and reads on installs.
pub mod annotations {
    /// On every child: the hash of what the operator last applied. Equal hash, no write.
    pub const APPLIED: &str = "plugin-operator.dev/applied";
    /// On the pod template: bumped to restart the pods (the operator's one restart).
    pub const RESTART: &str = "plugin-operator.dev/restart";
    /// On the pod template: the config's hash, so a config change rolls the pods.
    pub const CONFIG: &str = "plugin-operator.dev/config";
    /// On an install: a failure a caller reported (seed 000 `notify-failure`), as JSON
    /// `{"reportedBy": "...", "at": "<RFC 3339>", "message": "..."}`.
    pub const REPORTED_FAILURE: &str = "plugin-operator.dev/reported-failure";
}

/// The install's credentials Secret (seed 003): keys and annotations.
pub mod credentials {
    pub const CLIENT_ID: &str = "client_id";
    pub const CLIENT_SECRET: &str = "client_secret";
    /// SHA-256 (hex) of each live refresh token → its expiry (Unix seconds), as JSON.
    pub const REFRESH_TOKENS: &str = "refresh_tokens";
    /// On the install: a new value rotates the credentials (new secret, refresh tokens revoked).
    pub const ROTATE_ANNOTATION: &str = "plugin-operator.dev/rotate-credentials";
    /// On the Secret: the `rotate-credentials` value its secret was generated for.
    pub const ROTATION_ANNOTATION: &str = "plugin-operator.dev/credentials-rotation";
}

/// Name of the Secret that holds an install's credentials.
pub fn credentials_secret_name(install: &str) -> String {
    format!("{install}-credentials")
}

/// The client id of an install: `<namespace>.<install>` (a namespace has no dots).
pub fn client_id(namespace: &str, install: &str) -> String {
    format!("{namespace}.{install}")
}

/// The `rotate-credentials` annotation of an install ("" without): the credentials rotation it
/// asks for.
pub fn credentials_rotation(install: &PluginInstall) -> String {
    install
        .annotations()
        .get(credentials::ROTATE_ANNOTATION)
        .cloned()
        .unwrap_or_default()
}

/// Name of the ConfigMap that holds an install's config.
pub fn config_map_name(install: &str) -> String {
    format!("{install}-config")
}

/// The in-cluster URL of a supervised install.
pub fn service_endpoint(install: &str, namespace: &str, port: i32) -> String {
    format!("http://{install}.{namespace}.svc:{port}")
}

/// The labels every child carries (SPEC §1).
pub fn child_labels(plugin: &str, install: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::PLUGIN.to_owned(), plugin.to_owned()),
        (labels::INSTALL.to_owned(), install.to_owned()),
    ])
}

/// The label selector of everything the operator manages.
pub fn managed_selector() -> String {
    format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE)
}
