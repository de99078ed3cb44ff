//! `PluginJob`: a work item for one install (seed 003's jobs). A caller creates it, the plugin
//! settles it (`done`, `ignored` or `failed`). It lives in the install's namespace, owned by the
//! install, so it survives operator restarts and `kubectl get plgj` lists it.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A work item for an install.
// Clippy reads the repeated `type_ = "string"` of the print columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "plugin-operator.dev",
    version = "v1alpha1",
    kind = "PluginJob",
    namespaced,
    status = "PluginJobStatus",
    shortname = "plgj",
    category = "plugins",
    derive = "PartialEq",
    doc = "A work item for one install of a plugin: created by a caller of the plugin-services \
           API, settled by the plugin.",
    // `GET /api/v2/plugin-services/jobs` lists an install's pending jobs with a field selector on
    // these, so Kubernetes pages them (`limit`/`continue`) and a watch wakes a long poll.
    selectable = ".spec.install",
    selectable = ".status.status",
    printcolumn(name = "Install", type_ = "string", json_path = ".spec.install"),
    printcolumn(name = "Name", type_ = "string", json_path = ".spec.name"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.status"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginJobSpec {
    /// The PluginInstall (in this namespace) the job is for.
    pub install: String,
    /// What kind of work (e.g. `entry_sign_in`).
    pub name: String,
    /// What the work is about (e.g. `vr:entry:19`).
    pub identifier: String,
    /// Anything the plugin needs to do the work (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::resources::schema::free_form_object")]
    pub payload: Option<serde_json::Value>,
    /// Seconds after the job is settled (`done`, `ignored` or `failed`) at which it is
    /// deleted, as a Job's `ttlSecondsAfterFinished`: 0 deletes it as soon as it is settled.
    /// When absent, the operator's `--job-ttl-seconds` (7 days unless changed). A pending job is
    /// never deleted by this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,
}

/// Where a job is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    #[default]
    Pending,
    Done,
    Ignored,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Done => "done",
            Self::Ignored => "ignored",
            Self::Failed => "failed",
        }
    }
}

/// What the plugin reported.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PluginJobStatus {
    /// `pending` until the plugin settles it as `done`, `ignored` or `failed`.
    #[serde(default)]
    pub status: JobStatus,
    /// Why the status was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_message: Option<String>,
    /// For `failed` and `ignored`: the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_reason: Option<String>,
    /// Results the plugin attached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// When the plugin settled it; the job's time to live counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<Time>,
    /// Who settled it: the username of the plugin token's ServiceAccount
    /// (`system:serviceaccount:<namespace>:<install>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_by: Option<String>,
}

/// A result attached to a settled job.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct Attachment {
    pub label: String,
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub value: String,
}

impl PluginJob {
    /// When the job was settled: `status.settledAt`, or for a job settled before that field
    /// existed, its creation time. `None` while pending.
    pub fn settled_at(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        let status = self.status.as_ref()?;
        if status.status == JobStatus::Pending {
            return None;
        }
        status
            .settled_at
            .as_ref()
            .or(self.metadata.creation_timestamp.as_ref())
            .map(|t| t.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_crd_has_its_names_and_status() {
        let crd = PluginJob::crd();
        assert_eq!(crd.spec.names.short_names, Some(vec!["plgj".to_owned()]));
        assert_eq!(crd.spec.names.categories, Some(vec!["plugins".to_owned()]));
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some())
        );
        let job: PluginJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "plugin-operator.dev/v1alpha1", "kind": "PluginJob",
            "metadata": {"name": "j"},
            "spec": {"install": "i", "name": "n", "identifier": "x", "payload": {"a": [1]}},
            "status": {"status": "failed", "statusMessage": "m",
                       "attachments": [{"label": "l", "type": "url", "value": "https://x"}]}
        }))
        .expect("reads");
        assert_eq!(job.status.map(|s| s.status), Some(JobStatus::Failed));
    }
}
