//! Lookups the controllers and the HTTP API share, answered from the caches.
use std::sync::Arc;

use kube::{Resource, ResourceExt};

use k8s_openapi::api::core::v1::Pod;

use super::cache::{self, Caches, Indexes};
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
        self.indexes
            .versions
            .get(&Indexes::plugin(namespace, plugin))
    }

    /// The versions of a Plugin.
    pub fn versions_of_plugin(&self, plugin: &Plugin) -> Vec<Arc<PluginVersion>> {
        self.versions_of(access::namespace_of(plugin), &plugin.name_any())
    }

    /// Installs that name the Plugin `namespace/plugin` and may use it (of its namespace, or
    /// of the catalog the indexes were made for), sorted by namespace and name.
    pub fn installs_of(&self, namespace: &str, plugin: &str) -> Vec<Arc<PluginInstall>> {
        self.indexes
            .installs
            .get(&Indexes::plugin(namespace, plugin))
    }

    /// The installs of a namespace, sorted by name.
    pub fn installs_in(&self, namespace: &str) -> Vec<Arc<PluginInstall>> {
        self.indexes.installs.get(&Indexes::namespace(namespace))
    }

    /// An install by `metadata.uid`, in any namespace.
    pub fn install_by_uid(&self, uid: &str) -> Option<Arc<PluginInstall>> {
        self.indexes
            .installs
            .get(&Indexes::uid(uid))
            .into_iter()
            .find(|i| i.meta().uid.as_deref() == Some(uid))
    }

    /// The pods of the install `namespace/install` (by its label).
    pub fn pods_of(&self, namespace: &str, install: &str) -> Vec<Arc<Pod>> {
        self.indexes.pods.get(&Indexes::install(namespace, install))
    }
}
