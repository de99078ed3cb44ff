//! Kubernetes Events for lifecycle transitions and for writes the API server refused, so
//! `kubectl describe` and `kubectl get events` tell the story of an install.
use k8s_openapi::{
    api::events::v1::Event,
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, Resource, ResourceExt, api::PostParams};

use crate::{
    resources::{Phase, PluginInstall, PluginInstallStatus, names::FIELD_MANAGER},
    runtime::call::API_TIMEOUT,
};

/// A change of phase, described for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Option<Phase>,
    pub to: Phase,
    pub reason: String,
    pub message: String,
}

impl Transition {
    /// Reads the reason and message from the Ready condition the plan just set.
    pub fn new(from: Option<Phase>, to: Phase, status: &PluginInstallStatus) -> Self {
        let ready = crate::resources::conditions::find_condition(
            &status.conditions,
            crate::resources::conditions::READY,
        );
        Self {
            from,
            to,
            reason: ready.map_or_else(|| to.as_str().to_owned(), |c| c.reason.clone()),
            message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        }
    }
}

/// What an Event says: its type, reason, action and note.
pub trait Announce {
    fn warning(&self) -> bool;
    fn reason(&self) -> &str;
    fn action(&self) -> &str;
    fn note(&self) -> String;
}

impl Announce for Transition {
    fn warning(&self) -> bool {
        matches!(self.to, Phase::Error | Phase::Restarting)
    }
    fn reason(&self) -> &str {
        &self.reason
    }
    fn action(&self) -> &str {
        self.to.as_str()
    }
    fn note(&self) -> String {
        let from = self.from.map_or("new", Phase::as_str);
        format!("{from} → {}: {}", self.to, self.message)
    }
}

/// The API server refused a write of the install's children (reason: a
/// [`ApiRefusal`](crate::runtime::call::ApiRefusal)'s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    pub message: String,
}

impl Announce for Refused {
    fn warning(&self) -> bool {
        true
    }
    fn reason(&self) -> &str {
        &self.reason
    }
    fn action(&self) -> &str {
        "Apply"
    }
    fn note(&self) -> String {
        self.message.clone()
    }
}

fn event(
    what: &impl Announce,
    install: &PluginInstall,
    reporter: &Reporter,
    now: Timestamp,
) -> Event {
    Event {
        metadata: ObjectMeta {
            // Named as kubelet and kube-rs name theirs: object name, then a unique suffix.
            name: Some(format!("{}.{:x}", install.name_any(), now.as_nanosecond())),
            namespace: install.namespace(),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        type_: Some(if what.warning() { "Warning" } else { "Normal" }.to_owned()),
        reason: Some(what.reason().to_owned()),
        action: Some(what.action().to_owned()),
        note: Some(truncate(&what.note(), 1000)),
        regarding: Some(install.object_ref(&())),
        reporting_controller: Some(reporter.controller.clone()),
        reporting_instance: Some(reporter.instance.clone()),
        ..Default::default()
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

/// Who publishes the events.
#[derive(Clone, Debug)]
struct Reporter {
    controller: String,
    instance: String,
}

/// Publishes one events.k8s.io/v1 Event per transition. (kube's `Recorder` folds events with the
/// same reason and action into one series for minutes, which would hide a second transition to
/// the same phase.)
#[derive(Clone)]
pub struct Events {
    client: Client,
    reporter: Reporter,
}

impl Events {
    pub fn new(client: Client, instance: String) -> Self {
        Self {
            client,
            reporter: Reporter {
                controller: "plugin-operator.dev/operator".into(),
                instance,
            },
        }
    }

    /// Best effort: a lost event is logged, never fails the reconcile.
    pub async fn publish(&self, install: &PluginInstall, what: &impl Announce, now: Timestamp) {
        let api: Api<Event> = Api::namespaced(
            self.client.clone(),
            &install.namespace().unwrap_or_default(),
        );
        let event = event(what, install, &self.reporter, now);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match tokio::time::timeout(API_TIMEOUT, api.create(&params, &event)).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not publish an event"),
            Err(_) => tracing::warn!("publishing an event timed out"),
        }
    }
}
