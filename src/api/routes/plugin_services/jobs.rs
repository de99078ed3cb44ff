//! Answers seed 003: jobs (`/api/v2/plugin-services/jobs`), work items for an install that a
//! caller creates and the plugin settles, kept as PluginJobs.

use axum::{
    Json,
    extract::{Request, State},
    http::StatusCode,
};
use futures::StreamExt;
use kube::{
    Api, Resource, ResourceExt,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::{
    api::{
        ApiState,
        error::{ApiError, Issue},
        extract::{SeedQuery, json_object, type_name},
        is_uid,
    },
    resources::{
        Attachment, JobStatus, PluginJob, PluginJobSpec, PluginJobStatus,
        names::{self, FIELD_MANAGER},
    },
    runtime::call::with_timeout,
};

use super::{Data, ErrorBody, Errors, Result, ServiceCaller, kube_failed, plugin_name};

/// The longest a long poll (`waitSeconds`) waits.
pub const MAX_WAIT_SECONDS: u64 = 60;
/// Jobs per page when `limit` is absent, and the most a page holds.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 500;

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

/// A job as the plugin sees it in a list.
#[derive(Serialize, ToSchema)]
pub struct JobItem {
    /// The PluginJob's metadata.uid (the `jobId` to settle it with).
    pub id: String,
    pub name: String,
    pub identifier: String,
    /// What the caller gave with the job (an object), `{}` when nothing.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// `pending`, `done`, `ignored` or `failed`.
    pub status: String,
    /// When the job was created (RFC 3339).
    pub created_at: String,
}

impl JobItem {
    fn of(job: &PluginJob) -> Self {
        Self {
            id: job.meta().uid.clone().unwrap_or_default(),
            name: job.spec.name.clone(),
            identifier: job.spec.identifier.clone(),
            payload: job.spec.payload.clone().unwrap_or_else(|| json!({})),
            status: job
                .status
                .as_ref()
                .map(|s| s.status)
                .unwrap_or_default()
                .as_str()
                .to_owned(),
            created_at: job
                .meta()
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        }
    }
}

/// A page of jobs.
#[derive(Serialize, ToSchema)]
pub struct JobPage {
    pub data: Vec<JobItem>,
    /// Pass as `continue` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#continue: Option<String>,
}

/// What `GET /api/v2/plugin-services/jobs` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct JobQuery {
    /// Only jobs in this state (all when absent).
    pub status: Option<JobStatus>,
    pub limit: u32,
    pub continue_token: Option<String>,
    /// Long poll: wait up to this long for a first job when there is none (0: answer at once).
    pub wait_seconds: u64,
}

/// Parses the list query, every wrong parameter named.
pub fn parse_job_query(
    params: &std::collections::BTreeMap<String, String>,
) -> std::result::Result<JobQuery, ApiError> {
    let mut issues = Vec::new();
    let status = match params.get("status").map(String::as_str) {
        None | Some("") => None,
        Some("pending") => Some(JobStatus::Pending),
        Some("done") => Some(JobStatus::Done),
        Some("ignored") => Some(JobStatus::Ignored),
        Some("failed") => Some(JobStatus::Failed),
        Some(other) => {
            issues.push(Issue::new(
                "status",
                format!("{other:?}: one of pending, done, ignored, failed"),
            ));
            None
        }
    };
    let limit = match params.get("limit").map(|l| l.parse::<u32>()) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            issues.push(Issue::new(
                "limit",
                format!("a whole number from 1 to {MAX_LIMIT}"),
            ));
            DEFAULT_LIMIT
        }
    };
    let continue_token = params.get("continue").filter(|c| !c.is_empty()).cloned();
    let wait_seconds = match params.get("waitSeconds").map(|w| w.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) if n <= MAX_WAIT_SECONDS => n,
        Some(_) => {
            issues.push(Issue::new(
                "waitSeconds",
                format!("a whole number of seconds from 0 to {MAX_WAIT_SECONDS}"),
            ));
            0
        }
    };
    if wait_seconds > 0 && continue_token.is_some() {
        issues.push(Issue::new(
            "waitSeconds",
            "a long poll waits for a first page: not with continue",
        ));
    }
    if issues.is_empty() {
        Ok(JobQuery {
            status,
            limit,
            continue_token,
            wait_seconds,
        })
    } else {
        Err(ApiError::Invalid(issues))
    }
}

/// The field selector of an install's jobs in one state. A job whose status was never written
/// reads as pending, so pending is "none of the settled states".
pub fn job_selector(install: &str, status: Option<JobStatus>) -> String {
    let mut selector = format!("spec.install={install}");
    match status {
        None => {}
        Some(JobStatus::Pending) => {
            for settled in [JobStatus::Done, JobStatus::Ignored, JobStatus::Failed] {
                selector.push_str(&format!(",status.status!={}", settled.as_str()));
            }
        }
        Some(other) => selector.push_str(&format!(",status.status={}", other.as_str())),
    }
    selector
}

/// List the caller's jobs.
///
/// Needs a plugin token: it lists the jobs of the token's own install, oldest first within a
/// page, `limit` at a time (default 100, at most 500), `continue` taking the previous page's
/// `continue`. With `waitSeconds` (at most 60; not with `continue`) and no job to answer, the
/// request waits (a watch on the install's jobs) and answers as soon as one exists, or with an
/// empty page when the time is up.
#[utoipa::path(
    get,
    path = "/api/v2/plugin-services/jobs",
    tag = "seed 003",
    params(
        ("status" = Option<String>, Query, description = "`pending`, `done`, `ignored` or `failed`; all when absent"),
        ("limit" = Option<u32>, Query, description = "Jobs per page, 1-500 (default 100)"),
        ("continue" = Option<String>, Query, description = "The previous page's `continue`"),
        ("waitSeconds" = Option<u64>, Query, description = "Long poll: wait up to this many seconds (0-60) for a first job"),
    ),
    responses(
        (status = 200, body = JobPage, description = "`{data: [{id, name, identifier, payload, status, created_at}], continue?}`"),
        (status = 400, body = ErrorBody, description = "A parameter is wrong, or `continue` is expired or not from this list"),
        (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "Not a plugin token"),
    ),
    security(("bearer" = []))
)]
pub async fn list_jobs(
    State(state): State<ApiState>,
    caller: ServiceCaller,
    query: SeedQuery<Errors>,
) -> Result<Json<JobPage>> {
    let own = caller.own_install(&state, "listing jobs")?;
    let query = parse_job_query(&query.params)?;
    let namespace = own.namespace().unwrap_or_default();
    let api: Api<PluginJob> = Api::namespaced(state.client().clone(), &namespace);
    let selector = job_selector(&own.name_any(), query.status);
    let (page, resource_version) = list_page(&api, &selector, &query).await?;
    if !page.data.is_empty() || page.r#continue.is_some() || query.wait_seconds == 0 {
        return Ok(Json(page));
    }
    // Nothing yet: watch from the list's version, so a job created after the list is seen
    // however soon; the first one that matches ends the wait and the list is read again.
    let params = WatchParams::default()
        .fields(&selector)
        .timeout(u32::try_from(query.wait_seconds).unwrap_or(60));
    let arrived = async {
        let mut events = api
            .watch(&params, &resource_version)
            .await
            .map_err(|e| kube_failed("watch PluginJobs")(crate::runtime::call::CallError::Kube(e)))?
            .boxed();
        tracing::debug!(%namespace, install = %own.name_any(), %resource_version, "long poll: no job yet, watching for one");
        while let Some(event) = events.next().await {
            match event {
                Ok(WatchEvent::Added(_) | WatchEvent::Modified(_)) => return Ok(true),
                Ok(WatchEvent::Bookmark(_) | WatchEvent::Deleted(_)) => {}
                // Expired version or a broken watch: a list tells the truth.
                Ok(WatchEvent::Error(_)) | Err(_) => return Ok(true),
            }
        }
        Ok::<_, crate::api::error::SeedError<Errors>>(false)
    };
    let wait = std::time::Duration::from_secs(query.wait_seconds);
    match tokio::time::timeout(wait, arrived).await {
        Ok(Ok(true)) => Ok(Json(list_page(&api, &selector, &query).await?.0)),
        Ok(Err(err)) => Err(err),
        Ok(Ok(false)) | Err(_) => Ok(Json(page)),
    }
}

/// One page of the list, and the list's resourceVersion (where a watch starts).
async fn list_page(
    api: &Api<PluginJob>,
    selector: &str,
    query: &JobQuery,
) -> Result<(JobPage, String)> {
    let mut params = ListParams::default().fields(selector).limit(query.limit);
    if let Some(token) = &query.continue_token {
        params = params.continue_token(token);
    }
    let list = with_timeout(api.list(&params))
        .await
        .map_err(|err| match &err {
            // An expired or foreign continue token: Kubernetes answers 410 Gone or 400.
            crate::runtime::call::CallError::Kube(kube::Error::Api(s))
                if query.continue_token.is_some() && matches!(s.code, 400 | 410) =>
            {
                ApiError::invalid("continue", s.message.clone()).into()
            }
            _ => kube_failed("list PluginJobs")(err),
        })?;
    let resource_version = list.metadata.resource_version.clone().unwrap_or_default();
    let mut items = list.items;
    items.sort_by(|a, b| {
        (
            a.meta().creation_timestamp.as_ref().map(|t| t.0),
            a.meta().name.as_deref(),
        )
            .cmp(&(
                b.meta().creation_timestamp.as_ref().map(|t| t.0),
                b.meta().name.as_deref(),
            ))
    });
    Ok((
        JobPage {
            data: items.iter().map(JobItem::of).collect(),
            r#continue: list.metadata.continue_.filter(|c| !c.is_empty()),
        },
        resource_version,
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
    if matches!(status, Some(JobStatus::Failed | JobStatus::Ignored))
        && failure_reason
            .as_deref()
            .is_none_or(|r| r.trim().is_empty())
        && !issues.iter().any(|i| i.field == "failure_reason")
    {
        issues.push(Issue::new(
            "failure_reason",
            "required when status is failed or ignored",
        ));
    }
    match (status, issues.is_empty()) {
        (Some(status), true) => Ok(PluginJobStatus {
            status,
            status_message,
            failure_reason,
            attachments,
            settled_at: None,
            settled_by: None,
        }),
        _ => Err(ApiError::Invalid(issues)),
    }
}

/// Settle a job.
///
/// Needs the plugin token of the job's install. Writes the PluginJob's status (`done`,
/// `ignored` or `failed`, `status_message`, `failure_reason` (required for `failed` and
/// `ignored`), `attachments`), with who settled it (`settledBy`, the token's ServiceAccount)
/// and when (`settledAt`). A job settles once: a job no longer pending answers 409.
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
        (status = 409, body = ErrorBody, description = "The job is already settled"),
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
    status.settled_by = caller.username();
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
    let settled = |job: &PluginJob| {
        ApiError::Conflict(format!(
            "job {id} is already {}; a job settles once",
            job.status
                .as_ref()
                .map(|s| s.status)
                .unwrap_or_default()
                .as_str()
        ))
    };
    if job
        .status
        .as_ref()
        .is_some_and(|s| s.status != JobStatus::Pending)
    {
        return Err(settled(&job).into());
    }
    // The resourceVersion makes the write conditional on the job being as read (pending): of
    // two settles at once, the API server refuses the second with 409.
    let patch = json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "status": status,
    });
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..Default::default()
    };
    let patched = with_timeout(api.patch_status(&job.name_any(), &params, &Patch::Merge(&patch)))
        .await
        .map_err(|err| match &err {
            crate::runtime::call::CallError::Kube(kube::Error::Api(s)) if s.code == 409 => {
                settled(&job).into()
            }
            _ => kube_failed("patch PluginJob status")(err),
        })?;
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
        for status in ["failed", "ignored"] {
            let err = parse_settle(&object(json!({"status": status, "status_message": "m"})))
                .expect_err("failure_reason is required");
            assert_eq!(err.field(), Some("failure_reason"));
            let err = parse_settle(&object(
                json!({"status": status, "status_message": "m", "failure_reason": " "}),
            ))
            .expect_err("failure_reason must not be blank");
            assert_eq!(err.field(), Some("failure_reason"));
        }
        let done = parse_settle(&object(json!({"status": "done", "status_message": "m"})))
            .expect("done needs no failure_reason");
        assert_eq!(done.failure_reason, None);
    }

    fn query(pairs: &[(&str, &str)]) -> std::result::Result<JobQuery, ApiError> {
        parse_job_query(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn list_queries() {
        assert_eq!(
            query(&[]).expect("defaults"),
            JobQuery {
                status: None,
                limit: 100,
                continue_token: None,
                wait_seconds: 0
            }
        );
        let q =
            query(&[("status", "pending"), ("limit", "2"), ("waitSeconds", "60")]).expect("valid");
        assert_eq!(
            (q.status, q.limit, q.wait_seconds),
            (Some(JobStatus::Pending), 2, 60)
        );
        for (pairs, field) in [
            (&[("waitSeconds", "61")][..], "waitSeconds"),
            (&[("waitSeconds", "-1")][..], "waitSeconds"),
            (&[("limit", "0")][..], "limit"),
            (&[("limit", "501")][..], "limit"),
            (&[("status", "open")][..], "status"),
            (
                &[("continue", "t"), ("waitSeconds", "5")][..],
                "waitSeconds",
            ),
        ] {
            assert_eq!(
                query(pairs).expect_err("invalid").field(),
                Some(field),
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn selectors() {
        assert_eq!(job_selector("a", None), "spec.install=a");
        assert_eq!(
            job_selector("a", Some(JobStatus::Done)),
            "spec.install=a,status.status=done"
        );
        assert_eq!(
            job_selector("a", Some(JobStatus::Pending)),
            "spec.install=a,status.status!=done,status.status!=ignored,status.status!=failed"
        );
    }
}
