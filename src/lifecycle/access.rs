//! Which plugin an install may use (SPEC §1): a Plugin of its own namespace, or one of the shared
//! catalog namespace. The controllers, the caches' lookups and the HTTP API all ask here.
use kube::ResourceExt;

use crate::resources::{FailureReason, PluginInstall};

/// Why an install cannot use the plugin it names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: FailureReason,
    pub message: String,
}

/// The namespace an object is in ("" for none: cluster-scoped objects are never installs).
pub fn namespace_of<K: ResourceExt>(object: &K) -> &str {
    object.meta().namespace.as_deref().unwrap_or_default()
}

/// The namespace of the Plugin an install names, when it may use plugins there: its own, or
/// the catalog's.
pub fn plugin_namespace<'a>(install: &'a PluginInstall, catalog: &str) -> Result<&'a str, Refusal> {
    let own = namespace_of(install);
    let reference = &install.spec.plugin;
    let plugin_ns = reference.namespace_or(own);
    if plugin_ns == own || plugin_ns == catalog {
        Ok(plugin_ns)
    } else {
        Err(Refusal {
            reason: FailureReason::PluginNotInstallable,
            message: format!(
                "spec.plugin: {reference} is in namespace {plugin_ns}; only plugins of this namespace or of the catalog namespace {catalog} can be installed"
            ),
        })
    }
}

/// Whether an install names the Plugin `namespace/name` and may use it.
pub fn uses_plugin(install: &PluginInstall, namespace: &str, name: &str, catalog: &str) -> bool {
    install.spec.plugin.name() == name && plugin_namespace(install, catalog) == Ok(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::{PluginInstallSpec, PluginRef};

    fn install(namespace: &str, plugin: PluginRef) -> PluginInstall {
        let mut install = PluginInstall::new("i", PluginInstallSpec::for_plugin(plugin));
        install.metadata.namespace = Some(namespace.into());
        install
    }

    fn reference(name: &str, namespace: Option<&str>) -> PluginRef {
        PluginRef {
            name: name.into(),
            namespace: namespace.map(str::to_owned),
        }
    }

    #[test]
    fn an_install_uses_plugins_of_its_namespace_or_of_the_catalog() {
        let own = install("team-a", reference("p", None));
        assert_eq!(plugin_namespace(&own, "catalog"), Ok("team-a"));
        assert!(uses_plugin(&own, "team-a", "p", "catalog"));
        assert!(!uses_plugin(&own, "team-a", "q", "catalog"));
        let shared = install("team-a", reference("p", Some("catalog")));
        assert_eq!(plugin_namespace(&shared, "catalog"), Ok("catalog"));
        assert!(uses_plugin(&shared, "catalog", "p", "catalog"));
        assert!(!uses_plugin(&shared, "team-a", "p", "catalog"));
    }

    #[test]
    fn a_plugin_of_another_tenant_is_refused() {
        let other = install("team-a", reference("p", Some("team-b")));
        let refusal = plugin_namespace(&other, "catalog").expect_err("refused");
        assert_eq!(refusal.reason, FailureReason::PluginNotInstallable);
        assert!(refusal.message.contains("team-b"), "{}", refusal.message);
        assert!(!uses_plugin(&other, "team-b", "p", "catalog"));
    }
}
