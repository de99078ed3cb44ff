//! Lookups the controllers and the HTTP API share, answered from the caches.
use std::sync::Arc;

use kube::{Resource, ResourceExt};

use super::cache::{self, Caches};
use crate::{
    lifecycle::access::{self, Refusal},
    resources::{FailureReason, Plugin, PluginInstall, PluginVersion},
};

impl Caches {
    /// The Plugin an install names, if it may use it (one of its own namespace or of the
    /// catalog), or why not.
    pub fn plugin_of(
        &self,
        install: &PluginInstall,
        catalog: &str,
    ) -> Result<Arc<Plugin>, Refusal> {
        let namespace = access::plugin_namespace(install, catalog)?;
        let name = install.spec.plugin.name();
        cache::get(&self.plugins, namespace, name).ok_or_else(|| Refusal {
            reason: FailureReason::PluginNotFound,
            message: format!("spec.plugin: there is no Plugin {name} in namespace {namespace}"),
        })
    }

    /// The versions of the Plugin `namespace/plugin`.
    pub fn versions_of(&self, namespace: &str, plugin: &str) -> Vec<Arc<PluginVersion>> {
        cache::select(&self.versions, |v| {
            cache::in_namespace(v, namespace) && v.spec.plugin == plugin
        })
    }

    /// The versions of a Plugin.
    pub fn versions_of_plugin(&self, plugin: &Plugin) -> Vec<Arc<PluginVersion>> {
        self.versions_of(access::namespace_of(plugin), &plugin.name_any())
    }

    /// Installs that name the Plugin `namespace/plugin` and may use it.
    pub fn installs_of(
        &self,
        namespace: &str,
        plugin: &str,
        catalog: &str,
    ) -> Vec<Arc<PluginInstall>> {
        cache::select(&self.installs, |i| {
            access::uses_plugin(i, namespace, plugin, catalog)
        })
    }

    /// An install by `metadata.uid`, in any namespace.
    pub fn install_by_uid(&self, uid: &str) -> Option<Arc<PluginInstall>> {
        cache::select(&self.installs, |i| i.meta().uid.as_deref() == Some(uid))
            .into_iter()
            .next()
    }
}
