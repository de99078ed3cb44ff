//! Kubernetes Events for lifecycle transitions, so `kubectl describe` and `kubectl get events`
//! tell the story of an install.
use kube::{
    Client, Resource,
    runtime::events::{Event, EventType, Recorder, Reporter},
};

use crate::resources::{Phase, PluginInstall, PluginInstallStatus};

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

    fn event(&self) -> Event {
        let warning = matches!(self.to, Phase::Error | Phase::Restarting);
        let from = self.from.map_or("new", Phase::as_str);
        Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: self.reason.clone(),
            note: Some(truncate(
                &format!("{from} → {}: {}", self.to, self.message),
                1000,
            )),
            action: self.to.as_str().to_owned(),
            secondary: None,
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((index, _)) => format!("{}…", &text[..index]),
        None => text.to_owned(),
    }
}

/// Publishes events as the operator.
#[derive(Clone)]
pub struct Events {
    recorder: Recorder,
}

impl Events {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "plugin-operator".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Best effort: a lost event is logged, never fails the reconcile.
    pub async fn publish(&self, install: &PluginInstall, transition: &Transition) {
        let reference = install.object_ref(&());
        let result = tokio::time::timeout(
            super::API_TIMEOUT,
            self.recorder.publish(&transition.event(), &reference),
        )
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "could not publish an event"),
            Err(_) => tracing::warn!("publishing an event timed out"),
        }
    }
}
