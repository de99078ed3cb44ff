//! The names the operator gives and reads: the field manager, the labels and annotations on
//! installs and their children, the names of an install's children, and the keys of its
//! credentials Secret. Shared by the controllers, the watch caches and the HTTP API.
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
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
    /// On an install: a new value (any string; `kubectl plugin-operator retry` writes the time)
    /// asks for one more try of an install in `Error`, without a change of its spec.
    pub const RETRY: &str = "plugin-operator.dev/retry";
    /// On a PluginVersion: the user who last created it or changed its spec (seed 004
    /// `op_user`), stamped by the API server at admission (the chart's MutatingAdmissionPolicy
    /// `plugin-operator-version-author`).
    pub const CHANGED_BY: &str = "plugin-operator.dev/changed-by";
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

/// Whether an object's owner references name the install with this uid as its controller:
/// what tells a child this install made from an object that only has its name.
pub fn owned_by(owners: Option<&[OwnerReference]>, install_uid: &str) -> bool {
    owners.unwrap_or_default().iter().any(|owner| {
        owner.uid == install_uid && owner.kind == "PluginInstall" && owner.controller == Some(true)
    })
}

/// The consent of a Secret to be read by `configFrom` (SPEC §3, Safety): an install may use a
/// Secret only when one of the Secret's annotations names it.
pub mod consent {
    use std::collections::BTreeMap;

    /// On a Secret: the installs of its namespace that may use it, comma-separated; `*`: all.
    pub const INSTALLS_ANNOTATION: &str = "plugin-operator.dev/allow-installs";
    /// On a Secret: the plugins whose installs (in the Secret's namespace) may use it,
    /// comma-separated, each `<plugin>` (a Plugin of the Secret's namespace) or
    /// `<namespace>/<plugin>` (e.g. `plugin-catalog/billing`).
    pub const PLUGINS_ANNOTATION: &str = "plugin-operator.dev/allow-plugins";

    /// The rule, for messages.
    pub const RULE: &str = "a Secret is used by configFrom only when its annotation plugin-operator.dev/allow-installs names the install (or is \"*\") or plugin-operator.dev/allow-plugins names its plugin (<plugin> in the same namespace, or <namespace>/<plugin>)";

    /// Who asks to read a Secret: an install of the Secret's namespace and the plugin it runs.
    pub struct Reader<'a> {
        pub install: &'a str,
        pub plugin_namespace: &'a str,
        pub plugin: &'a str,
    }

    /// Whether a Secret of `secret_namespace` with these annotations consents to `reader`.
    /// Pure.
    pub fn allows(
        annotations: Option<&BTreeMap<String, String>>,
        secret_namespace: &str,
        reader: &Reader<'_>,
    ) -> bool {
        let Some(annotations) = annotations else {
            return false;
        };
        let entries = |key: &str| -> Vec<String> {
            annotations
                .get(key)
                .map(|v| {
                    v.split(',')
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty())
                        .collect()
                })
                .unwrap_or_default()
        };
        let install = entries(INSTALLS_ANNOTATION)
            .iter()
            .any(|e| e == "*" || e == reader.install);
        let plugin = entries(PLUGINS_ANNOTATION)
            .iter()
            .any(|e| match e.split_once('/') {
                Some((namespace, name)) => {
                    namespace == reader.plugin_namespace && name == reader.plugin
                }
                None => reader.plugin_namespace == secret_namespace && e == reader.plugin,
            });
        install || plugin
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn annotated(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }

        const LOCAL: Reader<'static> = Reader {
            install: "billing",
            plugin_namespace: "team-a",
            plugin: "echo",
        };
        const CATALOG: Reader<'static> = Reader {
            install: "billing",
            plugin_namespace: "plugin-catalog",
            plugin: "echo",
        };

        #[test]
        fn a_secret_without_annotations_consents_to_nobody() {
            assert!(!allows(None, "team-a", &LOCAL));
            assert!(!allows(Some(&BTreeMap::new()), "team-a", &LOCAL));
            let other = annotated(&[("plugin-operator.dev/allow", "billing")]);
            assert!(!allows(Some(&other), "team-a", &LOCAL));
        }

        #[test]
        fn installs_are_named_or_all() {
            let named = annotated(&[(INSTALLS_ANNOTATION, "other, billing")]);
            assert!(allows(Some(&named), "team-a", &LOCAL));
            let others = annotated(&[(INSTALLS_ANNOTATION, "other,billing-2")]);
            assert!(!allows(Some(&others), "team-a", &LOCAL));
            let all = annotated(&[(INSTALLS_ANNOTATION, "*")]);
            assert!(allows(Some(&all), "team-a", &CATALOG));
        }

        #[test]
        fn a_plain_plugin_name_means_a_plugin_of_the_secrets_namespace() {
            let plain = annotated(&[(PLUGINS_ANNOTATION, "echo")]);
            assert!(allows(Some(&plain), "team-a", &LOCAL));
            // A catalog plugin of the same name is another plugin (another image's author).
            assert!(!allows(Some(&plain), "team-a", &CATALOG));
            let qualified = annotated(&[(PLUGINS_ANNOTATION, "plugin-catalog/echo")]);
            assert!(allows(Some(&qualified), "team-a", &CATALOG));
            assert!(!allows(Some(&qualified), "team-a", &LOCAL));
        }
    }
}
