//! Answers seed 003: jobs (`/api/v2/plugin-services/jobs`), work items for an install that a
//! caller creates and the plugin settles, kept as PluginJobs.

use axum::{
    Json,
    extract::{Request, State},
    http::StatusCode,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::{
    api::{
        ApiState,
        error::{ApiError, Issue},
        extract::{json_object, type_name},
        is_uid,
    },
    resources::{
        Attachment, JobStatus, PluginJob, PluginJobSpec, PluginJobStatus,
        names::{self, FIELD_MANAGER},
    },
    runtime::call::with_timeout,
};

use super::{Data, ErrorBody, Result, ServiceCaller, kube_failed, plugin_name};

/// `{id, name, identifier}` of a job.
#[derive(Serialize, ToSchema)]
pub struct JobRef {
    /// The PluginJob's metadata.uid.
    pub id: String,
    pub name: String,
    pub identifier: String,
}

impl JobRef {
    fn of(job: &PluginJob) -> Self {
        Self {
            id: job.meta().uid.clone().unwrap_or_default(),
            name: job.spec.name.clone(),
            identifier: job.spec.identifier.clone(),
        }
    }
}

fn required_str(body: &Map<String, Value>, name: &str, issues: &mut Vec<Issue>) -> Option<String> {
    match body.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_)) => {
            issues.push(Issue::new(name, "required: must not be empty"));
            None
        }
        None | Some(Value::Null) => {
            issues.push(Issue::new(name, "required"));
            None
        }
        Some(other) => {
            issues.push(Issue::new(
                name,
                format!("expected a string, got {}", type_name(other)),
            ));
            None
        }
    }
}

/// Create a job for an install.
///
/// A Kubernetes token allowed to `create pluginjobs` in the install's namespace, or the
/// install's own plugin token. The job is a PluginJob in the install's namespace, owned by it
/// (`kubectl get plgj`), `pending` until the plugin settles it, deleted
/// `ttl_seconds_after_finished` (optional; the operator's default when absent) after that.
#[utoipa::path(
    post,
    path = "/api/v2/plugin-services/jobs",
    tag = "seed 003",
    request_body(content = Object, description = "`{install_id, name, identifier, payload, ttl_seconds_after_finished}`"),
    responses(
        (status = 201, body = Object, description = "`{data: {id, name, identifier}}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn create_job(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    request: Request,
) -> Result<(StatusCode, Json<Data<JobRef>>)> {
    let body = json_object(request).await?;
    let mut issues = Vec::new();
    let install_id = required_str(&body, "install_id", &mut issues);
    let name = required_str(&body, "name", &mut issues);
    let identifier = required_str(&body, "identifier", &mut issues);
    let payload = match body.get("payload") {
        None | Some(Value::Null) => None,
        Some(Value::Object(o)) => Some(Value::Object(o.clone())),
        Some(other) => {
            issues.push(Issue::new(
                "payload",
                format!("expected an object, got {}", type_name(other)),
            ));
            None
        }
    };
    let ttl_seconds_after_finished = match body.get("ttl_seconds_after_finished") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.as_i64().is_some_and(|n| n >= 0) => n.as_i64(),
        Some(other) => {
            issues.push(Issue::new(
                "ttl_seconds_after_finished",
                format!("expected a whole number of seconds, 0 or more, got {other}"),
            ));
            None
        }
    };
    let (Some(install_id), Some(name), Some(identifier), true) =
        (install_id, name, identifier, issues.is_empty())
    else {
        return Err(ApiError::Invalid(issues).into());
    };
    let install = caller
        .install(&state, "install_id", &install_id, "create", "pluginjobs")
        .await?;
    let namespace = install.namespace().unwrap_or_default();
    let install_name = install.name_any();
    let mut job = PluginJob::new(
        "",
        PluginJobSpec {
            install: install_name.clone(),
            name,
            identifier,
            payload,
            ttl_seconds_after_finished,
        },
    );
    job.metadata = ObjectMeta {
        generate_name: Some(format!("{install_name}-")),
        namespace: Some(namespace.clone()),
        labels: Some(names::child_labels(
            &plugin_name(&state, &install),
            &install_name,
        )),
        owner_references: install.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    };
    let api: Api<PluginJob> = Api::namespaced(state.client().clone(), &namespace);
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let created = with_timeout(api.create(&params, &job))
        .await
        .map_err(kube_failed("create PluginJob"))?;
    let status = json!({"status": PluginJobStatus::default()});
    let patch_params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    // The status starts `pending` (best effort: an absent status reads as pending too).
    if let Err(err) =
        with_timeout(api.patch_status(&created.name_any(), &patch_params, &Patch::Merge(&status)))
            .await
    {
        tracing::warn!(job = %created.name_any(), %namespace, error = %err, "could not mark the job pending");
    }
    Ok((
        StatusCode::CREATED,
        Json(Data {
            data: JobRef::of(&created),
        }),
    ))
}

/// Parses a settle body.
pub fn parse_settle(body: &Map<String, Value>) -> std::result::Result<PluginJobStatus, ApiError> {
    let mut issues = Vec::new();
    let status = match required_str(body, "status", &mut issues).as_deref() {
        Some("done") => Some(JobStatus::Done),
        Some("ignored") => Some(JobStatus::Ignored),
        Some("failed") => Some(JobStatus::Failed),
        Some(other) => {
            issues.push(Issue::new(
                "status",
                format!("{other:?}: one of done, ignored, failed"),
            ));
            None
        }
        None => None,
    };
    let status_message = required_str(body, "status_message", &mut issues);
    let failure_reason = match body.get("failure_reason") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            issues.push(Issue::new(
                "failure_reason",
                format!("expected a string, got {}", type_name(other)),
            ));
            None
        }
    };
    let mut attachments = Vec::new();
    match body.get("attachments") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                let Value::Object(item) = item else {
                    issues.push(Issue::new(
                        format!("attachments[{index}]"),
                        "expected an object",
                    ));
                    continue;
                };
                let mut inner = Vec::new();
                let label = required_str(item, "label", &mut inner);
                let type_ = required_str(item, "type", &mut inner);
                let value = match item.get("value") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                };
                issues.extend(
                    inner.into_iter().map(|i| {
                        Issue::new(format!("attachments[{index}].{}", i.field), i.message)
                    }),
                );
                if let (Some(label), Some(type_)) = (label, type_) {
                    attachments.push(Attachment {
                        label,
                        type_,
                        value,
                    });
                }
            }
        }
        Some(other) => issues.push(Issue::new(
            "attachments",
            format!("expected an array, got {}", type_name(other)),
        )),
    }
    match (status, issues.is_empty()) {
        (Some(status), true) => Ok(PluginJobStatus {
            status,
            status_message,
            failure_reason,
            attachments,
            settled_at: None,
        }),
        _ => Err(ApiError::Invalid(issues)),
    }
}

/// Settle a job.
///
/// Needs the plugin token of the job's install. Writes the PluginJob's status (`done`,
/// `ignored` or `failed`, `status_message`, `failure_reason`, `attachments`).
#[utoipa::path(
    patch,
    path = "/api/v2/plugin-services/jobs/{jobId}",
    tag = "seed 003",
    params(("jobId" = String, Path, description = "The PluginJob's metadata.uid")),
    request_body(content = Object, description = "`{status, status_message, failure_reason?, attachments?}`"),
    responses(
        (status = 200, body = Object, description = "`{data: {id, name, identifier}}`"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn settle_job(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    axum::extract::Path(id): axum::extract::Path<String>,
    request: Request,
) -> Result<Json<Data<JobRef>>> {
    let own = caller.own_install(&state, "settling a job")?;
    if !is_uid(&id) {
        return Err(ApiError::invalid("jobId", format!("{id:?} is not a job id (a UUID)")).into());
    }
    let body = json_object(request).await?;
    let mut status = parse_settle(&body)?;
    status.settled_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        state.now(),
    ));
    let namespace = own.namespace().unwrap_or_default();
    let api: Api<PluginJob> = Api::namespaced(state.client().clone(), &namespace);
    let jobs = with_timeout(api.list(&ListParams::default()))
        .await
        .map_err(kube_failed("list PluginJobs"))?;
    let job = jobs
        .items
        .into_iter()
        .find(|j| j.meta().uid.as_deref() == Some(id.as_str()))
        .ok_or_else(|| ApiError::NotFound(format!("no job with id {id}")))?;
    if job.spec.install != own.name_any() {
        return Err(ApiError::Forbidden(format!(
            "job {id} belongs to another install; a plugin token settles only its own install's jobs"
        ))
        .into());
    }
    let patch = json!({"status": status});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let patched = with_timeout(api.patch_status(&job.name_any(), &params, &Patch::Merge(&patch)))
        .await
        .map_err(kube_failed("patch PluginJob status"))?;
    Ok(Json(Data {
        data: JobRef::of(&patched),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(o) => o,
            _ => panic!("an object"),
        }
    }

    #[test]
    fn settle_bodies() {
        let ok = parse_settle(&object(json!({
            "status": "failed", "status_message": "m", "failure_reason": "r",
            "attachments": [{"label": "l", "type": "url", "value": "https://x"}]
        })))
        .expect("valid");
        assert_eq!(ok.status, JobStatus::Failed);
        assert_eq!(ok.attachments[0].type_, "url");
        let err = parse_settle(&object(json!({"status": "pending"}))).expect_err("invalid");
        let fields: Vec<_> = err.issues().iter().map(|i| i.field.as_str()).collect();
        assert_eq!(fields, ["status", "status_message"]);
        let err = parse_settle(&object(json!({"status": "done", "status_message": "m",
            "attachments": [{"label": "l"}]})))
        .expect_err("invalid");
        assert_eq!(err.field(), Some("attachments[0].type"));
    }
}
