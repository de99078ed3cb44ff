//! A new install's Service, created outside the reconcile that asked for it.
//!
//! kube-apiserver creates Services one at a time: its ClusterIP allocator holds one lock over
//! each allocation, an IPAddress write included (`MetaAllocator::AllocateNextService`,
//! Kubernetes 1.33+). Under load a create waits seconds behind the others (the bench measured
//! 2–4 s, about 10 a second, while every other create took tens of milliseconds). A reconcile
//! that waited for it would hold its slot that long, and new installs would queue behind
//! Services that are not theirs. So the first reconcile of a new install hands its Service
//! create to a task here, applies the rest (the Deployment included) and returns; the task
//! wakes the install when the write is done, and the next reconcile reads how it went:
//! created (the install may turn Active once its pods are ready), or refused (reported like
//! any refused write, and retried in the reconcile, on its delays).
//!
//! At most [`IN_FLIGHT`] creates are sent at once; the others wait here, not in the API
//! server's queue.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::Stream;
use k8s_openapi::api::core::v1::Service;
use kube::{ResourceExt, runtime::reflector::ObjectRef};
use tokio::sync::{Semaphore, mpsc};

use super::{Context, Error, apply};
use crate::resources::PluginInstall;

/// Creates sent to the API server at once.
pub const IN_FLIGHT: usize = 16;

/// Namespace and name of a Service.
type Key = (String, String);

/// Where a Service create handed to [`ServiceCreates`] stands.
#[derive(Debug)]
enum State {
    Sent,
    Created,
    Failed(Error),
}

/// What the reconcile learns of a Service create it handed over.
#[derive(Debug)]
pub enum Outcome {
    /// Sent now or earlier, not answered yet.
    Pending,
    /// The API server created it (the cache may not show it yet).
    Created,
    /// The API server refused it or did not answer; the error is handed over once.
    Failed(Error),
}

pub struct ServiceCreates {
    permits: Arc<Semaphore>,
    states: Arc<Mutex<HashMap<Key, State>>>,
    wake: mpsc::UnboundedSender<ObjectRef<PluginInstall>>,
    woken: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<PluginInstall>>>>,
}

impl Default for ServiceCreates {
    fn default() -> Self {
        let (wake, woken) = mpsc::unbounded_channel();
        Self {
            permits: Arc::new(Semaphore::new(IN_FLIGHT)),
            states: Arc::default(),
            wake,
            woken: Mutex::new(Some(woken)),
        }
    }
}

impl ServiceCreates {
    /// The installs whose Service create was answered, for their controller to reconcile.
    /// Taken once (by the install controller).
    pub fn woken(&self) -> impl Stream<Item = ObjectRef<PluginInstall>> + Send + 'static {
        let receiver = self.woken.lock().unwrap_or_else(|p| p.into_inner()).take();
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            let next = receiver.recv().await?;
            Some((next, Some(receiver)))
        })
    }

    /// Whether the API server created this Service after it was handed over here (what the
    /// cache may not show yet).
    pub fn created(&self, namespace: &str, name: &str) -> bool {
        matches!(
            self.lock().get(&(namespace.to_owned(), name.to_owned())),
            Some(State::Created)
        )
    }

    /// How the create handed over earlier went, if one was: a result is answered once, then
    /// forgotten; one not answered yet stays [`Outcome::Pending`].
    pub fn answer(&self, namespace: &str, name: &str) -> Option<Outcome> {
        let key = (namespace.to_owned(), name.to_owned());
        let mut states = self.lock();
        match states.remove(&key)? {
            State::Sent => {
                states.insert(key, State::Sent);
                Some(Outcome::Pending)
            }
            State::Created => Some(Outcome::Created),
            State::Failed(error) => Some(Outcome::Failed(error)),
        }
    }

    /// Creates `service` of `install` in a task; its install is woken when it is answered.
    pub fn create(&self, ctx: &Arc<Context>, install: &PluginInstall, service: &Service) {
        let key = (service.namespace().unwrap_or_default(), service.name_any());
        self.lock().insert(key.clone(), State::Sent);
        let (ctx, service) = (ctx.clone(), service.clone());
        let install = ObjectRef::from_obj(install);
        let (permits, states, wake) =
            (self.permits.clone(), self.states.clone(), self.wake.clone());
        tokio::spawn(async move {
            let result = match permits.acquire_owned().await {
                Ok(_permit) => apply::service(&ctx, &service).await,
                // Closed only when the process stops.
                Err(_) => return,
            };
            let state = match result {
                Ok(()) => State::Created,
                Err(error) => State::Failed(error),
            };
            states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, state);
            let _ = wake.send(install);
        });
    }

    /// A Service that was not cached was written by the reconcile itself (a retry): known as
    /// created, and its install woken, as after a create in the background (the plan of the
    /// reconcile that wrote it still saw no Service).
    pub fn written(&self, install: &PluginInstall, service: &Service) {
        let key = (service.namespace().unwrap_or_default(), service.name_any());
        self.lock().insert(key, State::Created);
        let _ = self.wake.send(ObjectRef::from_obj(install));
    }

    /// Forgets what is known of this Service's create: the cache shows it, or its install is
    /// gone.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&(namespace.to_owned(), name.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
}
