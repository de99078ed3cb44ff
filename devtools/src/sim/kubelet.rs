//! The pod side of the simulator: the scheduler (binding pending pods to the node) and the
//! kubelet (reporting their status, deleting terminating pods).
//!
//! One loop owns all state. It wakes on pod watch events and every tick, asks the pure
//! [`decide`] what each pod needs, and hands at most one request per pod at a time to a
//! worker; the worker's answer comes back to the loop. Nothing is written when a pod already
//! shows what it should.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    pin::pin,
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{Binding, ConfigMap, ObjectReference, Pod, PodStatus},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::{debug, info, trace, warn};

use super::{
    Error, NodeConfig,
    behavior::{self, OVERRIDES_CONFIG_MAP},
    scheduling::{self, Unfit},
    status::{self, PodSim},
    stopped, timed,
    timeline::{self, CrashRequest, Millis},
};

/// Set to `true` on a running pod to make it crash once.
pub const CRASH_ANNOTATION: &str = "sim.plugin-operator.dev/crash";

/// How long to wait for a binding to show up in the cache before binding again.
const BIND_RETRY: Millis = 5_000;
/// The longest wait before retrying a failed request for a pod.
const MAX_RETRY: Millis = 10_000;
/// Requests in flight at once.
const MAX_IN_FLIGHT: usize = 32;
/// The soonest a watch event triggers another pass after the previous one.
const MIN_PASS_INTERVAL: Duration = Duration::from_millis(50);

/// A request to the API server for one pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Bind the pod to the node (`pods/binding`).
    Bind,
    /// Write these status fields (strategic merge on `pods/status`).
    PatchStatus(Box<PodStatus>),
    /// Remove the crash annotation: the crash it asked for has happened.
    RemoveCrashAnnotation,
    /// Delete the terminating pod at once, as a kubelet does once its containers stopped.
    Delete,
}

/// Which [`Action`] a request was, for its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bind,
    PatchStatus,
    RemoveCrashAnnotation,
    Delete,
}

impl Action {
    fn kind(&self) -> Kind {
        match self {
            Action::Bind => Kind::Bind,
            Action::PatchStatus(_) => Kind::PatchStatus,
            Action::RemoveCrashAnnotation => Kind::RemoveCrashAnnotation,
            Action::Delete => Kind::Delete,
        }
    }
}

/// What the loop remembers about one pod (by UID).
#[derive(Debug, Default)]
pub struct Tracked {
    /// The simulation, once the pod is seen bound to the node.
    pub sim: Option<PodSim>,
    /// The pod as the last write returned it: newer than the cache until the watch catches up.
    pub written: Option<Arc<Pod>>,
    /// When a binding was last sent.
    pub bind_sent_at: Option<Millis>,
    /// A grace-period-0 delete went through (the pod may linger for its finalizers).
    pub deleted: bool,
    /// A crash was simulated; its annotation is still to be removed.
    pub crash_pending: bool,
    in_flight: bool,
    failures: u32,
    retry_at: Millis,
}

/// The node as the pure decisions see it.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub name: String,
    pub host_ip: String,
    pub labels: BTreeMap<String, String>,
}

/// Pod IPs from 10.244.0.0/16, unique among the pods the simulator runs.
#[derive(Debug, Default)]
pub struct IpPool {
    next: u32,
    in_use: HashSet<Ipv4Addr>,
}

impl IpPool {
    const SIZE: u32 = 1 << 16;

    /// Claims `existing` (a pod's current IP, after a restart of the simulator) if it is free,
    /// otherwise the next free address.
    pub fn claim(&mut self, existing: Option<Ipv4Addr>) -> Ipv4Addr {
        if let Some(ip) = existing.filter(|ip| !self.in_use.contains(ip)) {
            self.in_use.insert(ip);
            return ip;
        }
        for _ in 0..Self::SIZE {
            let offset = self.next;
            self.next = (self.next + 1) % Self::SIZE;
            let [_, _, x, y] = offset.to_be_bytes();
            if y == 0 || y == 255 {
                continue;
            }
            let ip = Ipv4Addr::new(10, 244, x, y);
            if self.in_use.insert(ip) {
                return ip;
            }
        }
        // More than 65k pods: share addresses rather than fail.
        Ipv4Addr::new(10, 244, 255, 254)
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.in_use.remove(&ip);
    }
}

/// What to do next for `pod` (the newest version known), given what the loop remembers about
/// it. Pure apart from logging: it may start the pod's simulation (choosing its behavior and
/// IP) and simulate a requested crash.
pub fn decide(
    pod: &Pod,
    tracked: &mut Tracked,
    node: &NodeView,
    overrides: Option<&ConfigMap>,
    ips: &mut IpPool,
    now: Millis,
) -> Option<Action> {
    let spec = pod.spec.as_ref()?;
    let node_name = spec.node_name.as_deref().unwrap_or_default();
    if pod.metadata.deletion_timestamp.is_some() {
        // Unbound pods are deleted by the API server itself.
        return (node_name == node.name && !tracked.deleted).then_some(Action::Delete);
    }
    if node_name.is_empty() {
        if !scheduling::is_ours(pod) {
            return None;
        }
        return match scheduling::fits(pod, &node.name, &node.labels) {
            Ok(()) => {
                let waiting = tracked
                    .bind_sent_at
                    .is_some_and(|at| now.saturating_sub(at) < BIND_RETRY);
                (!waiting).then_some(Action::Bind)
            }
            Err(Unfit(message)) => {
                let wanted = status::unschedulable(pod, &message, now);
                (wanted != status::unschedulable_view(pod.status.as_ref()))
                    .then(|| Action::PatchStatus(Box::new(wanted)))
            }
        };
    }
    if node_name != node.name {
        return None;
    }
    let sim = tracked
        .sim
        .get_or_insert_with(|| start(pod, node, overrides, ips, now));
    let crash_requested = pod
        .annotations()
        .get(CRASH_ANNOTATION)
        .is_some_and(|v| v == "true");
    if !crash_requested {
        tracked.crash_pending = false;
    } else if tracked.crash_pending {
        return Some(Action::RemoveCrashAnnotation);
    } else {
        match timeline::crash(&sim.behavior, &sim.epoch, now) {
            CrashRequest::Crashed(epoch) => {
                info!(pod = %key(pod), restarts = epoch.restarts, "simulating a crash as annotated");
                sim.epoch = epoch;
                tracked.crash_pending = true;
                return Some(Action::RemoveCrashAnnotation);
            }
            CrashRequest::Defer => {}
            CrashRequest::NotRunning => {
                warn!(pod = %key(pod), behavior = %sim.behavior, "crash annotation on a pod whose containers never run; ignoring it");
                tracked.crash_pending = true;
                return Some(Action::RemoveCrashAnnotation);
            }
        }
    }
    let wanted = status::desired(pod, sim, &node.host_ip, now);
    let current = status::managed_view(pod.status.as_ref());
    if wanted == current {
        return None;
    }
    trace!(pod = %key(pod), ?current, ?wanted, "status differs");
    Some(Action::PatchStatus(Box::new(wanted)))
}

/// Starts simulating a pod seen bound to the node for the first time.
fn start(
    pod: &Pod,
    node: &NodeView,
    overrides: Option<&ConfigMap>,
    ips: &mut IpPool,
    now: Millis,
) -> PodSim {
    let choice = behavior::choose(pod, overrides);
    if let Some(unknown) = &choice.unknown {
        warn!(pod = %key(pod), source = %choice.source, "{unknown}; behaving as ready");
    }
    let host_network = pod
        .spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false);
    let host_ip = node.host_ip.parse().ok().filter(|_| host_network);
    let ip = host_ip.unwrap_or_else(|| {
        let existing = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        ips.claim(existing)
    });
    info!(pod = %key(pod), behavior = %choice.behavior, source = %choice.source, %ip, "running pod");
    PodSim::new(pod, choice.behavior, ip, now)
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// The newer of the cached pod and the one our last write returned. Resource versions are
/// compared as numbers, which they are on an etcd-backed API server; when they are not, the
/// cache wins.
fn newest(cached: &Arc<Pod>, written: Option<&Arc<Pod>>) -> Arc<Pod> {
    let version = |p: &Pod| {
        p.metadata
            .resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match written {
        Some(w) if matches!((version(w), version(cached)), (Some(a), Some(b)) if a > b) => {
            w.clone()
        }
        _ => cached.clone(),
    }
}

struct Outcome {
    uid: String,
    kind: Kind,
    result: Result<Option<Pod>, Error>,
}

/// Runs the scheduler and kubelet for `node` until `shutdown` turns true.
pub async fn run(
    client: Client,
    node: &NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let (overrides, overrides_writer) = reflector::store::<ConfigMap>();
    let overrides_stream = watcher(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={OVERRIDES_CONFIG_MAP}")),
    )
    .backoff(super::watch_backoff())
    .modify(|cm| cm.managed_fields_mut().clear())
    .reflect(overrides_writer);
    let overrides_task = tokio::spawn(overrides_stream.for_each(|event| async move {
        if let Err(err) = event {
            warn!(error = %err, "watching {OVERRIDES_CONFIG_MAP} ConfigMaps");
        }
    }));

    let (pods, pods_writer) = reflector::store::<Pod>();
    let pod_stream = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
        .backoff(super::watch_backoff())
        .modify(|pod| pod.managed_fields_mut().clear())
        .reflect(pods_writer);
    let mut pod_stream = pin!(pod_stream);

    // Behaviors chosen before the overrides are known would be wrong: wait for them first.
    tokio::select! {
        _ = stopped(&mut shutdown) => { overrides_task.abort(); return Ok(()); }
        ready = overrides.wait_until_ready() => {
            if ready.is_err() {
                warn!("the {OVERRIDES_CONFIG_MAP} ConfigMap watch ended early");
            }
        }
    }

    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Outcome>();
    let mut kubelet = Kubelet {
        client,
        node: NodeView {
            name: node.name.clone(),
            host_ip: node.host_ip.clone(),
            labels: node.labels(),
        },
        pods,
        overrides,
        tracked: HashMap::new(),
        ips: IpPool::default(),
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        done: done_tx,
    };

    let mut ticker = tokio::time::interval(node.tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pass = tokio::time::Instant::now();
    let mut dirty = false;
    info!(node = %node.name, "scheduling and running pods");
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut shutdown) => break,
            Some(outcome) = done_rx.recv() => {
                kubelet.finish(outcome);
                dirty = true;
            }
            event = pod_stream.next() => match event {
                Some(Ok(_)) => dirty = true,
                Some(Err(err)) => warn!(error = %err, "watching pods"),
                None => break,
            },
            _ = ticker.tick() => {
                kubelet.pass();
                last_pass = tokio::time::Instant::now();
                dirty = false;
            }
            _ = tokio::time::sleep_until(last_pass + MIN_PASS_INTERVAL), if dirty => {
                kubelet.pass();
                last_pass = tokio::time::Instant::now();
                dirty = false;
            }
        }
    }
    overrides_task.abort();
    Ok(())
}

struct Kubelet {
    client: Client,
    node: NodeView,
    pods: Store<Pod>,
    overrides: Store<ConfigMap>,
    tracked: HashMap<String, Tracked>,
    ips: IpPool,
    permits: Arc<Semaphore>,
    done: mpsc::UnboundedSender<Outcome>,
}

impl Kubelet {
    /// One pass over all pods.
    fn pass(&mut self) {
        let now = Timestamp::now().as_millisecond();
        let pods = self.pods.state();
        let mut seen = HashSet::with_capacity(pods.len());
        for cached in pods {
            let Some(uid) = cached.metadata.uid.clone() else {
                continue;
            };
            seen.insert(uid.clone());
            let tracked = self.tracked.entry(uid.clone()).or_default();
            if tracked.in_flight || now < tracked.retry_at {
                continue;
            }
            let pod = newest(&cached, tracked.written.as_ref());
            if Arc::ptr_eq(&pod, &cached) {
                // The cache has caught up with our last write.
                tracked.written = None;
            }
            let overrides = pod.namespace().and_then(|ns| {
                self.overrides
                    .get(&ObjectRef::new(OVERRIDES_CONFIG_MAP).within(&ns))
            });
            let Some(action) = decide(
                &pod,
                tracked,
                &self.node,
                overrides.as_deref(),
                &mut self.ips,
                now,
            ) else {
                continue;
            };
            if action == Action::Bind {
                tracked.bind_sent_at = Some(now);
            }
            tracked.in_flight = true;
            self.spawn(uid, &pod, action);
        }
        let ips = &mut self.ips;
        self.tracked.retain(|uid, tracked| {
            let keep = tracked.in_flight || seen.contains(uid);
            if !keep && let Some(sim) = &tracked.sim {
                // A host-network pod's IP is the node's, never in the pool: a no-op for it.
                ips.release(sim.pod_ip);
            }
            keep
        });
    }

    fn spawn(&self, uid: String, pod: &Pod, action: Action) {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let name = pod.name_any();
        let node = self.node.name.clone();
        let permits = self.permits.clone();
        let done = self.done.clone();
        let kind = action.kind();
        debug!(pod = %key(pod), action = ?kind, "sending");
        tokio::spawn(async move {
            let result = match permits.acquire_owned().await {
                Ok(_permit) => execute(&api, &name, &uid, &node, action).await,
                Err(_) => Ok(None),
            };
            // The loop may have stopped; then nobody needs the answer.
            let _ = done.send(Outcome { uid, kind, result });
        });
    }

    /// Takes in a worker's answer.
    fn finish(&mut self, outcome: Outcome) {
        let Some(tracked) = self.tracked.get_mut(&outcome.uid) else {
            return;
        };
        tracked.in_flight = false;
        match outcome.result {
            Ok(written) => {
                tracked.failures = 0;
                tracked.retry_at = 0;
                if outcome.kind == Kind::Delete {
                    tracked.deleted = true;
                }
                if let Some(pod) = written {
                    tracked.written = Some(Arc::new(pod));
                }
            }
            Err(err) => {
                let wait = (250i64 << tracked.failures.min(6)).min(MAX_RETRY);
                tracked.failures = tracked.failures.saturating_add(1);
                tracked.retry_at = Timestamp::now().as_millisecond() + wait;
                if outcome.kind == Kind::Bind {
                    tracked.bind_sent_at = None;
                }
                warn!(uid = %outcome.uid, action = ?outcome.kind, error = %err, retry_in_ms = wait, "request failed");
            }
        }
    }
}

/// Sends one request; returns the pod as written when the API answers with it.
async fn execute(
    api: &Api<Pod>,
    name: &str,
    uid: &str,
    node: &str,
    action: Action,
) -> Result<Option<Pod>, Error> {
    match action {
        Action::Bind => {
            let binding = Binding {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_string()),
                    uid: Some(uid.to_string()),
                    ..Default::default()
                },
                target: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Node".into()),
                    name: Some(node.to_string()),
                    ..Default::default()
                },
            };
            let bound = timed(
                "bind pod",
                api.create_subresource::<_, serde_json::Value>(
                    "binding",
                    name,
                    &PostParams::default(),
                    &binding,
                ),
            )
            .await;
            match bound {
                Ok(_) => {
                    debug!(pod = name, node, "bound");
                    Ok(None)
                }
                // Bound meanwhile, or gone: either way there is nothing left to bind.
                Err(err) if err.is_conflict() || err.is_not_found() => Ok(None),
                Err(err) => Err(err),
            }
        }
        Action::PatchStatus(status) => {
            let patch = Patch::Strategic(status_patch(&status));
            gone_is_fine(
                timed(
                    "patch pod status",
                    api.patch_status(name, &PatchParams::default(), &patch),
                )
                .await,
            )
        }
        Action::RemoveCrashAnnotation => {
            let patch =
                Patch::Merge(json!({ "metadata": { "annotations": { CRASH_ANNOTATION: null } } }));
            gone_is_fine(
                timed(
                    "remove crash annotation",
                    api.patch(name, &PatchParams::default(), &patch),
                )
                .await,
            )
        }
        Action::Delete => {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(uid.to_string()),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match timed("delete pod", api.delete(name, &params)).await {
                Ok(_) => {
                    debug!(pod = name, "deleted");
                    Ok(None)
                }
                Err(err) if err.is_conflict() || err.is_not_found() => Ok(None),
                Err(err) => Err(err),
            }
        }
    }
}

/// The strategic merge patch that makes a pod's status show `status`. Conditions are merged
/// field by field (by type), so fields a condition no longer has are removed explicitly.
pub fn status_patch(status: &PodStatus) -> serde_json::Value {
    let mut status = serde_json::to_value(status).unwrap_or_default();
    if let Some(conditions) = status
        .get_mut("conditions")
        .and_then(serde_json::Value::as_array_mut)
    {
        for condition in conditions
            .iter_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            for field in ["reason", "message"] {
                condition.entry(field).or_insert(serde_json::Value::Null);
            }
        }
    }
    json!({ "status": status })
}

fn gone_is_fine(result: Result<Pod, Error>) -> Result<Option<Pod>, Error> {
    match result {
        Ok(pod) => Ok(Some(pod)),
        Err(err) if err.is_not_found() => Ok(None),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::core::v1::{Container, EnvVar, PodSpec},
        apimachinery::pkg::apis::meta::v1::Time,
    };
    use kube::api::ObjectMeta;

    use super::*;
    use crate::sim::{
        behavior::{Behavior, INSTALL_LABEL},
        timeline::{CRASH_UNREADY, CREATING},
    };

    const T0: Millis = 1_700_000_000_000;

    fn node() -> NodeView {
        NodeView {
            name: "sim-node".into(),
            host_ip: "127.0.0.1".into(),
            labels: BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]),
        }
    }

    fn pod(node_name: Option<&str>, env: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-1".into()),
                resource_version: Some("10".into()),
                labels: Some(BTreeMap::from([(INSTALL_LABEL.into(), "demo".into())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node_name.map(str::to_string),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("app:1".into()),
                    env: env.map(|v| {
                        vec![EnvVar {
                            name: "SIM_BEHAVIOR".into(),
                            value: Some(v.into()),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Applies an action to the pod as the API server would.
    fn apply(mut pod: Pod, action: &Action) -> Pod {
        match action {
            Action::PatchStatus(status) => {
                pod.status = Some(strategic_merge(pod.status.take(), status));
            }
            Action::RemoveCrashAnnotation => {
                pod.annotations_mut().remove(CRASH_ANNOTATION);
            }
            Action::Bind => {
                if let Some(spec) = pod.spec.as_mut() {
                    spec.node_name = Some("sim-node".into());
                }
            }
            Action::Delete => {}
        }
        pod
    }

    /// Applies a status patch as the API server does: top-level fields are replaced, conditions
    /// merged by type field by field (null removes a field).
    fn strategic_merge(current: Option<PodStatus>, status: &PodStatus) -> PodStatus {
        use serde_json::Value;
        let mut merged = serde_json::to_value(current.unwrap_or_default()).expect("serializes");
        let patch = status_patch(status);
        for (field, value) in patch["status"].as_object().expect("an object") {
            if field != "conditions" {
                merged[field.as_str()] = value.clone();
                continue;
            }
            let mut conditions = merged["conditions"].as_array().cloned().unwrap_or_default();
            for wanted in value.as_array().expect("a list") {
                let index = conditions.iter().position(|c| c["type"] == wanted["type"]);
                let index = index.unwrap_or_else(|| {
                    conditions.push(Value::Object(Default::default()));
                    conditions.len() - 1
                });
                let target = conditions[index].as_object_mut().expect("an object");
                for (k, v) in wanted.as_object().expect("an object") {
                    if v.is_null() {
                        target.remove(k);
                    } else {
                        target.insert(k.clone(), v.clone());
                    }
                }
            }
            merged["conditions"] = Value::Array(conditions);
        }
        serde_json::from_value(merged).expect("a pod status")
    }

    /// Runs decisions until nothing more is to be done at `now`; returns the actions taken.
    fn settle(pod: &mut Pod, tracked: &mut Tracked, ips: &mut IpPool, now: Millis) -> Vec<Action> {
        let mut actions = Vec::new();
        while let Some(action) = decide(pod, tracked, &node(), None, ips, now) {
            *pod = apply(pod.clone(), &action);
            actions.push(action);
            assert!(actions.len() < 5, "no steady state: {actions:?}");
        }
        actions
    }

    fn ready(pod: &Pod) -> Option<bool> {
        pod.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| c.status == "True")
    }

    fn restarts(pod: &Pod) -> Option<i32> {
        Some(
            pod.status
                .as_ref()?
                .container_statuses
                .as_ref()?
                .first()?
                .restart_count,
        )
    }

    #[test]
    fn binds_a_pending_pod_then_runs_it_with_few_writes() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        let mut p = pod(None, None);
        let first = settle(&mut p, &mut t, &mut ips, T0);
        assert!(
            matches!(first.as_slice(), [Action::Bind, Action::PatchStatus(_)]),
            "{first:?}"
        );
        // Bound: the status is written once per visible change, then never again.
        let mut writes = 0;
        for ms in (0..30_000).step_by(250) {
            writes += settle(&mut p, &mut t, &mut ips, T0 + ms).len();
        }
        assert_eq!(writes, 2, "running, then ready");
        assert_eq!(ready(&p), Some(true));
        assert_eq!(
            t.sim.as_ref().map(|s| s.behavior.clone()),
            Some(Behavior::Ready)
        );
    }

    #[test]
    fn does_not_bind_twice_while_the_cache_catches_up() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        let p = pod(None, None);
        assert_eq!(
            decide(&p, &mut t, &node(), None, &mut ips, T0),
            Some(Action::Bind)
        );
        t.bind_sent_at = Some(T0);
        assert_eq!(
            decide(&p, &mut t, &node(), None, &mut ips, T0 + 1_000),
            None
        );
        assert_eq!(
            decide(&p, &mut t, &node(), None, &mut ips, T0 + BIND_RETRY),
            Some(Action::Bind)
        );
    }

    #[test]
    fn a_pod_that_does_not_fit_is_marked_unschedulable_once() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        let mut p = pod(None, None);
        if let Some(spec) = p.spec.as_mut() {
            spec.node_selector = Some(BTreeMap::from([("disktype".into(), "ssd".into())]));
        }
        let actions = settle(&mut p, &mut t, &mut ips, T0);
        assert_eq!(actions.len(), 1);
        let scheduled = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .expect("PodScheduled");
        assert_eq!(scheduled.status, "False");
        assert_eq!(scheduled.reason.as_deref(), Some("Unschedulable"));
        assert!(settle(&mut p, &mut t, &mut ips, T0 + 60_000).is_empty());
    }

    #[test]
    fn ignores_pods_of_other_nodes_and_schedulers() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        assert_eq!(
            decide(
                &pod(Some("other"), None),
                &mut t,
                &node(),
                None,
                &mut ips,
                T0
            ),
            None
        );
        let mut p = pod(None, None);
        if let Some(spec) = p.spec.as_mut() {
            spec.scheduler_name = Some("my-scheduler".into());
        }
        assert_eq!(decide(&p, &mut t, &node(), None, &mut ips, T0), None);
    }

    #[test]
    fn deletes_a_terminating_pod_once() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        let mut p = pod(Some("sim-node"), None);
        p.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        assert_eq!(
            decide(&p, &mut t, &node(), None, &mut ips, T0),
            Some(Action::Delete)
        );
        t.deleted = true;
        assert_eq!(decide(&p, &mut t, &node(), None, &mut ips, T0), None);
    }

    #[test]
    fn the_crash_annotation_crashes_once_per_setting() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        let mut p = pod(Some("sim-node"), None);
        settle(&mut p, &mut t, &mut ips, T0);
        settle(&mut p, &mut t, &mut ips, T0 + 5_000);
        assert_eq!((ready(&p), restarts(&p)), (Some(true), Some(0)));

        p.annotations_mut()
            .insert(CRASH_ANNOTATION.into(), "true".into());
        let crash_at = T0 + 10_000;
        // The annotation's removal fails at first: no second crash while it is retried.
        assert_eq!(
            decide(&p, &mut t, &node(), None, &mut ips, crash_at),
            Some(Action::RemoveCrashAnnotation)
        );
        assert_eq!(
            decide(&p, &mut t, &node(), None, &mut ips, crash_at + 300),
            Some(Action::RemoveCrashAnnotation)
        );
        p = apply(p, &Action::RemoveCrashAnnotation);
        settle(&mut p, &mut t, &mut ips, crash_at + 300);
        assert_eq!((ready(&p), restarts(&p)), (Some(false), Some(1)));
        settle(&mut p, &mut t, &mut ips, crash_at + CRASH_UNREADY + 100);
        assert_eq!((ready(&p), restarts(&p)), (Some(true), Some(1)));

        // Set again: another crash.
        p.annotations_mut()
            .insert(CRASH_ANNOTATION.into(), "true".into());
        settle(&mut p, &mut t, &mut ips, crash_at + 20_000);
        assert_eq!((ready(&p), restarts(&p)), (Some(false), Some(2)));
    }

    #[test]
    fn a_crash_annotation_waits_until_the_containers_run() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        let mut p = pod(Some("sim-node"), None);
        p.annotations_mut()
            .insert(CRASH_ANNOTATION.into(), "true".into());
        let actions = settle(&mut p, &mut t, &mut ips, T0);
        assert!(
            matches!(actions.as_slice(), [Action::PatchStatus(_)]),
            "{actions:?}"
        );
        let actions = settle(&mut p, &mut t, &mut ips, T0 + CREATING);
        assert_eq!(actions.first(), Some(&Action::RemoveCrashAnnotation));
        assert_eq!(restarts(&p), Some(1));
    }

    #[test]
    fn overrides_apply_to_pods_started_afterwards() {
        let mut ips = IpPool::default();
        let overrides = ConfigMap {
            data: Some(BTreeMap::from([("demo".into(), "never-ready".into())])),
            ..Default::default()
        };
        let mut t = Tracked::default();
        let p = pod(Some("sim-node"), Some("crash"));
        decide(&p, &mut t, &node(), Some(&overrides), &mut ips, T0);
        assert_eq!(
            t.sim.as_ref().map(|s| s.behavior.clone()),
            Some(Behavior::NeverReady)
        );
        // The behavior is chosen once: a later override does not change a running pod.
        let later = ConfigMap {
            data: Some(BTreeMap::from([("demo".into(), "ready".into())])),
            ..Default::default()
        };
        decide(&p, &mut t, &node(), Some(&later), &mut ips, T0 + 1_000);
        assert_eq!(
            t.sim.as_ref().map(|s| s.behavior.clone()),
            Some(Behavior::NeverReady)
        );
    }

    #[test]
    fn host_network_pods_get_the_node_ip() {
        let mut ips = IpPool::default();
        let mut t = Tracked::default();
        let mut p = pod(Some("sim-node"), None);
        if let Some(spec) = p.spec.as_mut() {
            spec.host_network = Some(true);
        }
        decide(&p, &mut t, &node(), None, &mut ips, T0);
        assert_eq!(t.sim.map(|s| s.pod_ip), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(
            ips.claim(None),
            Ipv4Addr::new(10, 244, 0, 1),
            "the pool is untouched"
        );
    }

    #[test]
    fn the_newest_known_pod_wins() {
        let cached = Arc::new(pod(None, None));
        let mut newer = pod(Some("sim-node"), None);
        newer.metadata.resource_version = Some("11".into());
        let newer = Arc::new(newer);
        assert!(Arc::ptr_eq(&newest(&cached, Some(&newer)), &newer));
        assert!(Arc::ptr_eq(&newest(&newer, Some(&cached)), &newer));
        assert!(Arc::ptr_eq(&newest(&cached, None), &cached));
    }

    #[test]
    fn pod_ips_are_unique_and_reused_after_release() {
        let mut ips = IpPool::default();
        let a = ips.claim(None);
        let b = ips.claim(None);
        assert_ne!(a, b);
        assert_eq!(a, Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(
            ips.claim(Some(a)),
            Ipv4Addr::new(10, 244, 0, 3),
            "taken: the next one"
        );
        let kept = Ipv4Addr::new(10, 244, 7, 7);
        assert_eq!(ips.claim(Some(kept)), kept);
        ips.release(a);
        assert_eq!(ips.claim(Some(a)), a);
        let all: HashSet<_> = (0..1_000).map(|_| ips.claim(None)).collect();
        assert_eq!(all.len(), 1_000);
        assert!(
            all.iter()
                .all(|ip| ip.octets()[3] != 0 && ip.octets()[3] != 255)
        );
    }
}
