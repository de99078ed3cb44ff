//! The pod status a kubelet (or the scheduler) would report, computed from the pod, the
//! simulator's state for it and the time. Pure: the caller compares the result with what the
//! pod shows ([`managed_view`]) and writes only a difference.
use std::net::Ipv4Addr;

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, Pod, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

use super::{
    behavior::Behavior,
    timeline::{self, Epoch, Millis, Snapshot, State, Termination},
};

pub const POD_SCHEDULED: &str = "PodScheduled";
pub const INITIALIZED: &str = "Initialized";
pub const CONTAINERS_READY: &str = "ContainersReady";
pub const READY: &str = "Ready";
/// The conditions the simulator owns, in the order a kubelet writes them.
const MANAGED_CONDITIONS: [&str; 4] = [INITIALIZED, READY, CONTAINERS_READY, POD_SCHEDULED];

pub const UNSCHEDULABLE: &str = "Unschedulable";
const CONTAINERS_NOT_READY: &str = "ContainersNotReady";
const READINESS_GATES_NOT_READY: &str = "ReadinessGatesNotReady";

/// What the simulator remembers about a pod bound to its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSim {
    pub behavior: Behavior,
    pub epoch: Epoch,
    pub pod_ip: Ipv4Addr,
    /// The pod's `status.startTime`.
    pub start_time: Millis,
}

impl PodSim {
    /// The simulator's state for a pod it sees bound for the first time at `now`. When the pod
    /// already reports containers (the simulator restarted), it picks up from there instead of
    /// starting them over.
    pub fn new(pod: &Pod, behavior: Behavior, pod_ip: Ipv4Addr, now: Millis) -> Self {
        let status = pod.status.as_ref();
        let start_time = status
            .and_then(|s| s.start_time.as_ref())
            .map(millis)
            .unwrap_or(now);
        let first = status
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|statuses| statuses.first());
        let epoch = match first {
            None => Epoch::first(now),
            Some(cs) => {
                let since = cs
                    .state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .and_then(|r| r.started_at.as_ref())
                    .map(millis);
                let last = cs
                    .last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .map(|t| Termination {
                        instance: cs.restart_count.saturating_sub(1),
                        started_at: t.started_at.as_ref().map(millis).unwrap_or(now),
                        finished_at: t.finished_at.as_ref().map(millis).unwrap_or(now),
                        exit_code: t.exit_code,
                        reason: t.reason.clone().unwrap_or_default(),
                    });
                Epoch {
                    start: since.unwrap_or(now),
                    creating: 0,
                    restarts: cs.restart_count.max(0),
                    last,
                    unready_for: 0,
                }
            }
        };
        Self {
            behavior,
            epoch,
            pod_ip,
            start_time,
        }
    }
}

/// The part of a pod's status the simulator owns, in a canonical shape, so that it can be
/// compared with [`desired`]: phase, IPs, start time, the four kubelet conditions and the
/// container statuses.
pub fn managed_view(status: Option<&PodStatus>) -> PodStatus {
    let Some(status) = status else {
        return PodStatus::default();
    };
    let mut conditions: Vec<PodCondition> = status
        .conditions
        .iter()
        .flatten()
        .filter(|c| MANAGED_CONDITIONS.contains(&c.type_.as_str()))
        .cloned()
        .collect();
    conditions.sort_by_key(|c| MANAGED_CONDITIONS.iter().position(|t| *t == c.type_));
    PodStatus {
        phase: status.phase.clone(),
        host_ip: status.host_ip.clone(),
        pod_ip: status.pod_ip.clone(),
        pod_ips: status.pod_ips.clone(),
        start_time: status.start_time.clone(),
        conditions: Some(conditions).filter(|c| !c.is_empty()),
        init_container_statuses: status.init_container_statuses.clone(),
        container_statuses: status.container_statuses.clone(),
        ..Default::default()
    }
}

/// The status a kubelet would report for `pod` (bound to this node) at `now`, in the shape of
/// [`managed_view`]. Condition transition times are kept from the pod's current status while a
/// condition's status is unchanged.
pub fn desired(pod: &Pod, sim: &PodSim, host_ip: &str, now: Millis) -> PodStatus {
    let snap = timeline::snapshot(&sim.behavior, &sim.epoch, now);
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let spec = pod.spec.as_ref();
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let init_containers = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();

    let container_statuses: Vec<ContainerStatus> = containers
        .iter()
        .map(|c| {
            let image = c.image.as_deref().unwrap_or_default();
            container_status(pod, uid, &c.name, image, &snap)
        })
        .collect();
    let init_container_statuses: Vec<ContainerStatus> = init_containers
        .iter()
        .map(|c| {
            completed_init_container(uid, &c.name, c.image.as_deref().unwrap_or_default(), sim)
        })
        .collect();

    let current = pod.status.as_ref();
    let unready: Vec<&str> = if snap.ready {
        Vec::new()
    } else {
        containers.iter().map(|c| c.name.as_str()).collect()
    };
    let containers_ready = if unready.is_empty() {
        condition(current, CONTAINERS_READY, true, None, None, now)
    } else {
        let message = format!("containers with unready status: [{}]", unready.join(" "));
        condition(
            current,
            CONTAINERS_READY,
            false,
            Some(CONTAINERS_NOT_READY),
            Some(message),
            now,
        )
    };
    let missing_gates: Vec<&str> = spec
        .and_then(|s| s.readiness_gates.as_ref())
        .into_iter()
        .flatten()
        .map(|g| g.condition_type.as_str())
        .filter(|gate| !condition_is_true(current, gate))
        .collect();
    let ready = if !unready.is_empty() {
        let mut c = containers_ready.clone();
        c.type_ = READY.to_string();
        keep_transition_time(current, c, now)
    } else if let Some(gate) = missing_gates.first() {
        let message =
            format!("corresponding condition of pod readiness gate \"{gate}\" is not True");
        condition(
            current,
            READY,
            false,
            Some(READINESS_GATES_NOT_READY),
            Some(message),
            now,
        )
    } else {
        condition(current, READY, true, None, None, now)
    };
    let conditions = vec![
        condition(current, INITIALIZED, true, None, None, now),
        ready,
        containers_ready,
        condition(current, POD_SCHEDULED, true, None, None, now),
    ];

    let ip = sim.pod_ip.to_string();
    PodStatus {
        phase: Some(if snap.has_run() { "Running" } else { "Pending" }.to_string()),
        host_ip: Some(host_ip.to_string()),
        pod_ip: Some(ip.clone()),
        pod_ips: Some(vec![PodIP { ip }]),
        start_time: Some(time(sim.start_time)),
        conditions: Some(conditions),
        init_container_statuses: Some(init_container_statuses).filter(|s| !s.is_empty()),
        container_statuses: Some(container_statuses).filter(|s| !s.is_empty()),
        ..Default::default()
    }
}

/// The scheduler's verdict on a pod that does not fit the node, in the shape of
/// [`unschedulable_view`].
pub fn unschedulable(pod: &Pod, message: &str, now: Millis) -> PodStatus {
    PodStatus {
        conditions: Some(vec![condition(
            pod.status.as_ref(),
            POD_SCHEDULED,
            false,
            Some(UNSCHEDULABLE),
            Some(message.to_string()),
            now,
        )]),
        ..Default::default()
    }
}

/// The part of an unbound pod's status the scheduler owns: its PodScheduled condition.
pub fn unschedulable_view(status: Option<&PodStatus>) -> PodStatus {
    PodStatus {
        conditions: status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == POD_SCHEDULED))
            .map(|c| vec![c.clone()]),
        ..Default::default()
    }
}

fn container_status(
    pod: &Pod,
    uid: &str,
    name: &str,
    image: &str,
    snap: &Snapshot,
) -> ContainerStatus {
    let id = |instance: i32| Some(container_id(uid, name, instance));
    let waiting = |reason: &str, message: String| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.to_string()),
            message: Some(message).filter(|m| !m.is_empty()),
        }),
        ..Default::default()
    };
    let (state, container_id, started) = match &snap.state {
        State::Creating => (
            waiting("ContainerCreating", String::new()),
            snap.last.as_ref().and_then(|l| id(l.instance)),
            false,
        ),
        State::Running { since } => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(time(*since)),
                }),
                ..Default::default()
            },
            id(snap.instance()),
            true,
        ),
        State::CrashBackOff { backoff } => (
            waiting(
                "CrashLoopBackOff",
                format!(
                    "back-off {}s restarting failed container={name} pod={}_{}({uid})",
                    backoff / 1000,
                    pod.metadata.name.as_deref().unwrap_or_default(),
                    pod.metadata.namespace.as_deref().unwrap_or_default(),
                ),
            ),
            snap.last.as_ref().and_then(|l| id(l.instance)),
            false,
        ),
        State::PullFailed => (
            waiting(
                "ErrImagePull",
                format!("simulated: failed to pull image \"{image}\": not found"),
            ),
            None,
            false,
        ),
        State::PullBackOff => (
            waiting(
                "ImagePullBackOff",
                format!("Back-off pulling image \"{image}\""),
            ),
            None,
            false,
        ),
    };
    let has_image = snap.has_run();
    ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: if has_image {
            image_id(image)
        } else {
            String::new()
        },
        container_id,
        ready: snap.ready,
        started: Some(started),
        restart_count: snap.restarts,
        state: Some(state),
        // A kubelet always reports lastState, empty when there is none.
        last_state: Some(
            snap.last
                .as_ref()
                .map(|t| terminated(uid, name, t))
                .unwrap_or_default(),
        ),
        ..Default::default()
    }
}

fn terminated(uid: &str, name: &str, t: &Termination) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            reason: Some(t.reason.clone()).filter(|r| !r.is_empty()),
            started_at: Some(time(t.started_at)),
            finished_at: Some(time(t.finished_at)),
            container_id: Some(container_id(uid, name, t.instance)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Init containers complete as soon as the pod is seen bound.
fn completed_init_container(uid: &str, name: &str, image: &str, sim: &PodSim) -> ContainerStatus {
    let id = container_id(uid, name, 0);
    ContainerStatus {
        name: name.to_string(),
        image: image.to_string(),
        image_id: image_id(image),
        container_id: Some(id.clone()),
        ready: true,
        started: Some(false),
        restart_count: 0,
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: 0,
                reason: Some("Completed".to_string()),
                started_at: Some(time(sim.start_time)),
                finished_at: Some(time(sim.start_time)),
                container_id: Some(id),
                ..Default::default()
            }),
            ..Default::default()
        }),
        last_state: Some(ContainerState::default()),
        ..Default::default()
    }
}

/// A condition with the given status, keeping the pod's current transition time for it while
/// the status is unchanged.
fn condition(
    current: Option<&PodStatus>,
    type_: &str,
    status: bool,
    reason: Option<&str>,
    message: Option<String>,
    now: Millis,
) -> PodCondition {
    keep_transition_time(
        current,
        PodCondition {
            type_: type_.to_string(),
            status: if status { "True" } else { "False" }.to_string(),
            reason: reason.map(str::to_string),
            message,
            ..Default::default()
        },
        now,
    )
}

fn keep_transition_time(
    current: Option<&PodStatus>,
    mut wanted: PodCondition,
    now: Millis,
) -> PodCondition {
    let previous = current
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == wanted.type_));
    wanted.last_transition_time = match previous {
        Some(p) if p.status == wanted.status && p.last_transition_time.is_some() => {
            p.last_transition_time.clone()
        }
        _ => Some(time(now)),
    };
    wanted.last_probe_time = previous
        .filter(|p| p.status == wanted.status)
        .and_then(|p| p.last_probe_time.clone());
    wanted
}

fn condition_is_true(current: Option<&PodStatus>, type_: &str) -> bool {
    current
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_))
        .is_some_and(|c| c.status == "True")
}

/// A stable container ID for one instance of a container of a pod.
pub fn container_id(uid: &str, name: &str, instance: i32) -> String {
    format!("sim://{}", hex_digest(&format!("{uid}/{name}/{instance}")))
}

/// A stable, digest-looking image ID for an image reference.
pub fn image_id(image: &str) -> String {
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rfind(':') {
        Some(i) if !repo[i..].contains('/') => &repo[..i],
        _ => repo,
    };
    format!("{repo}@sha256:{}", hex_digest(image))
}

/// 64 hex characters derived from `input` (FNV-1a, four lanes): looks like a digest, is stable.
fn hex_digest(input: &str) -> String {
    (0u64..4)
        .map(|lane| {
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325 ^ lane.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for byte in input.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            format!("{hash:016x}")
        })
        .collect()
}

/// A Kubernetes time (whole seconds, as the API stores them) from milliseconds.
pub fn time(ms: Millis) -> Time {
    Time(Timestamp::from_second(ms.div_euclid(1000)).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Milliseconds from a Kubernetes time.
pub fn millis(time: &Time) -> Millis {
    time.0.as_millisecond()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodReadinessGate, PodSpec};
    use kube::api::ObjectMeta;

    use super::*;
    use crate::sim::timeline::{CRASH_UNREADY, CREATING, CrashRequest, crash};

    const T0: Millis = 1_700_000_000_000;
    const HOST: &str = "127.0.0.1";

    fn pod(containers: &[&str]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: containers
                    .iter()
                    .map(|n| Container {
                        name: n.to_string(),
                        image: Some(format!("registry.local/{n}:1.0")),
                        ..Default::default()
                    })
                    .collect(),
                node_name: Some("sim-node".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn sim(behavior: Behavior) -> PodSim {
        PodSim::new(&pod(&["a"]), behavior, Ipv4Addr::new(10, 244, 0, 7), T0)
    }

    /// Applies a computed status to the pod as the API server would store it.
    fn written(mut pod: Pod, status: PodStatus) -> Pod {
        let json = serde_json::to_value(&status).expect("serializes");
        pod.status = Some(serde_json::from_value(json).expect("round-trips"));
        pod
    }

    fn cond<'a>(s: &'a PodStatus, t: &str) -> &'a PodCondition {
        s.conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == t)
            .expect("condition present")
    }

    fn container(s: &PodStatus, i: usize) -> &ContainerStatus {
        &s.container_statuses.as_ref().expect("container statuses")[i]
    }

    #[test]
    fn a_ready_pod_goes_pending_running_ready_and_then_stays_put() {
        let s = sim(Behavior::Ready);
        let p = pod(&["a", "b"]);
        let creating = desired(&p, &s, HOST, T0);
        assert_eq!(creating.phase.as_deref(), Some("Pending"));
        assert_eq!(creating.pod_ip.as_deref(), Some("10.244.0.7"));
        assert_eq!(creating.host_ip.as_deref(), Some(HOST));
        let waiting = container(&creating, 0)
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref());
        assert_eq!(
            waiting.and_then(|w| w.reason.as_deref()),
            Some("ContainerCreating")
        );
        assert_eq!(cond(&creating, READY).status, "False");
        assert_eq!(
            cond(&creating, READY).message.as_deref(),
            Some("containers with unready status: [a b]")
        );
        assert_eq!(cond(&creating, INITIALIZED).status, "True");

        let p = written(p, creating);
        let running = desired(&p, &s, HOST, T0 + CREATING);
        assert_eq!(running.phase.as_deref(), Some("Running"));
        assert_eq!(container(&running, 1).started, Some(true));
        assert!(!container(&running, 1).ready);
        assert!(!container(&running, 1).image_id.is_empty());
        assert!(container(&running, 1).container_id.is_some());

        let p = written(p, running);
        let ready = desired(&p, &s, HOST, T0 + 1_700);
        assert_eq!(cond(&ready, READY).status, "True");
        assert_eq!(cond(&ready, CONTAINERS_READY).status, "True");
        assert_eq!(
            cond(&ready, READY).last_transition_time,
            Some(time(T0 + 1_700))
        );
        // Initialized has been True all along: its transition time is from the first write.
        assert_eq!(
            cond(&ready, INITIALIZED).last_transition_time,
            Some(time(T0))
        );

        // Steady state: later computations equal what the pod shows, so nothing is written.
        let p = written(p, ready);
        for later in [2_000, 60_000, 3_600_000] {
            assert_eq!(
                desired(&p, &s, HOST, T0 + later),
                managed_view(p.status.as_ref()),
                "at +{later} ms"
            );
        }
    }

    #[test]
    fn managed_view_ignores_what_others_own_and_condition_order() {
        let s = sim(Behavior::Ready);
        let p = pod(&["a"]);
        let status = desired(&p, &s, HOST, T0 + 5_000);
        let mut stored = status.clone();
        stored.qos_class = Some("BestEffort".into());
        if let Some(cs) = stored.conditions.as_mut() {
            cs.reverse();
            cs.push(PodCondition {
                type_: "example.com/gate".into(),
                status: "True".into(),
                ..Default::default()
            });
        }
        let p = written(p, stored);
        assert_eq!(managed_view(p.status.as_ref()), status);
    }

    #[test]
    fn a_slow_pod_becomes_ready_after_its_delay() {
        let s = sim(Behavior::Slow { millis: 4_000 });
        let p = pod(&["a"]);
        let early = desired(&p, &s, HOST, T0 + 3_000);
        assert_eq!(early.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&early, READY).status, "False");
        assert_eq!(
            cond(&desired(&p, &s, HOST, T0 + 4_000), READY).status,
            "True"
        );
    }

    #[test]
    fn a_never_ready_pod_runs_unready() {
        let s = sim(Behavior::NeverReady);
        let p = pod(&["a"]);
        let st = desired(&p, &s, HOST, T0 + 600_000);
        assert_eq!(st.phase.as_deref(), Some("Running"));
        assert_eq!(cond(&st, READY).status, "False");
        assert_eq!(
            cond(&st, READY).reason.as_deref(),
            Some("ContainersNotReady")
        );
        assert!(
            container(&st, 0)
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some())
        );
    }

    #[test]
    fn a_crashing_pod_shows_crash_loop_back_off_and_its_last_exit() {
        let s = sim(Behavior::Crash);
        let p = pod(&["a"]);
        let st = desired(&p, &s, HOST, T0 + CREATING + 4_000);
        assert_eq!(st.phase.as_deref(), Some("Running"));
        let c = container(&st, 0);
        assert_eq!(c.restart_count, 2);
        assert!(!c.ready);
        assert_eq!(c.started, Some(false));
        let waiting = c
            .state
            .as_ref()
            .and_then(|s| s.waiting.as_ref())
            .expect("waiting");
        assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
        let last = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .expect("terminated");
        assert_eq!((last.exit_code, last.reason.as_deref()), (1, Some("Error")));
        assert_eq!(last.container_id, c.container_id);
        // Each run has its own container ID.
        let running = desired(&p, &s, HOST, T0 + CREATING + 5_500);
        assert_ne!(container(&running, 0).container_id, c.container_id);
    }

    #[test]
    fn a_pull_error_pod_stays_pending_with_image_pull_errors() {
        let s = sim(Behavior::PullError);
        let p = pod(&["a"]);
        let reasons: Vec<_> = [CREATING + 100, CREATING + 1_500]
            .into_iter()
            .map(|t| {
                let st = desired(&p, &s, HOST, T0 + t);
                assert_eq!(st.phase.as_deref(), Some("Pending"));
                let c = container(&st, 0);
                assert!(!c.ready && c.image_id.is_empty() && c.container_id.is_none());
                c.state
                    .as_ref()
                    .and_then(|s| s.waiting.as_ref())
                    .and_then(|w| w.reason.clone())
            })
            .collect();
        assert_eq!(
            reasons,
            vec![Some("ErrImagePull".into()), Some("ImagePullBackOff".into())]
        );
    }

    #[test]
    fn the_crash_annotation_restarts_once_and_the_pod_recovers() {
        let mut s = sim(Behavior::Ready);
        let p = pod(&["a"]);
        let p = written(p.clone(), desired(&p, &s, HOST, T0 + 10_000));
        let CrashRequest::Crashed(epoch) = crash(&s.behavior, &s.epoch, T0 + 20_000) else {
            panic!("crashes")
        };
        s.epoch = epoch;
        let st = desired(&p, &s, HOST, T0 + 20_000);
        let c = container(&st, 0);
        assert_eq!((c.restart_count, c.ready), (1, false));
        assert!(
            c.last_state
                .as_ref()
                .is_some_and(|l| l.terminated.is_some())
        );
        assert_eq!(cond(&st, READY).status, "False");
        assert_eq!(
            cond(&st, READY).last_transition_time,
            Some(time(T0 + 20_000))
        );
        let p = written(p, st);
        let st = desired(&p, &s, HOST, T0 + 20_000 + CRASH_UNREADY);
        assert_eq!(cond(&st, READY).status, "True");
        assert_eq!(container(&st, 0).restart_count, 1);
    }

    #[test]
    fn readiness_gates_hold_ready_back() {
        let s = sim(Behavior::Ready);
        let mut p = pod(&["a"]);
        if let Some(spec) = p.spec.as_mut() {
            spec.readiness_gates = Some(vec![PodReadinessGate {
                condition_type: "example.com/gate".into(),
            }]);
        }
        let st = desired(&p, &s, HOST, T0 + 5_000);
        assert_eq!(cond(&st, CONTAINERS_READY).status, "True");
        assert_eq!(cond(&st, READY).status, "False");
        assert_eq!(
            cond(&st, READY).reason.as_deref(),
            Some("ReadinessGatesNotReady")
        );
    }

    #[test]
    fn init_containers_are_completed() {
        let s = sim(Behavior::Ready);
        let mut p = pod(&["a"]);
        if let Some(spec) = p.spec.as_mut() {
            spec.init_containers = Some(vec![Container {
                name: "init".into(),
                image: Some("busybox".into()),
                ..Default::default()
            }]);
        }
        let st = desired(&p, &s, HOST, T0);
        let init = &st.init_container_statuses.as_ref().expect("init statuses")[0];
        let terminated = init.state.as_ref().and_then(|s| s.terminated.as_ref());
        assert_eq!(terminated.map(|t| t.exit_code), Some(0));
        assert_eq!(cond(&st, INITIALIZED).status, "True");
    }

    #[test]
    fn picks_up_a_running_pod_after_a_simulator_restart() {
        let s = sim(Behavior::Ready);
        let p = pod(&["a"]);
        let p = written(p.clone(), desired(&p, &s, HOST, T0 + 60_000));
        // A new simulator sees the pod an hour later: it must not restart or flap it.
        let later = T0 + 3_600_000;
        let again = PodSim::new(&p, Behavior::Ready, Ipv4Addr::new(10, 244, 0, 7), later);
        assert_eq!(
            desired(&p, &again, HOST, later),
            managed_view(p.status.as_ref())
        );
    }

    #[test]
    fn unschedulable_keeps_its_transition_time() {
        let p = pod(&["a"]);
        let st = unschedulable(&p, "0/1 nodes are available", T0);
        let c = cond(&st, POD_SCHEDULED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some(UNSCHEDULABLE))
        );
        let p = written(p, st.clone());
        assert_eq!(unschedulable(&p, "0/1 nodes are available", T0 + 9_000), st);
        assert_eq!(unschedulable_view(p.status.as_ref()), st);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(container_id("u", "a", 0), container_id("u", "a", 0));
        assert_ne!(container_id("u", "a", 0), container_id("u", "a", 1));
        assert_eq!(container_id("u", "a", 0).len(), "sim://".len() + 64);
        assert!(
            image_id("registry.local:5000/app:1.0").starts_with("registry.local:5000/app@sha256:")
        );
        assert!(image_id("nginx").starts_with("nginx@sha256:"));
    }
}
