//! The install lifecycle of SPEC §3 (seed 002): from what the cluster shows about a supervised
//! install's Deployment and pods, and the phase it had, to the phase it has now and what the
//! operator must do. Pure: observations and the clock come in as values.
use k8s_openapi::jiff::Timestamp;

use crate::resources::{FailureReason, Phase};

/// Waiting reasons that count as a failure as soon as they are seen.
const FAILING_WAITING_REASONS: &[(&str, FailureReason)] = &[
    ("CrashLoopBackOff", FailureReason::CrashLoop),
    ("ImagePullBackOff", FailureReason::ImagePullFailed),
    ("ErrImagePull", FailureReason::ImagePullFailed),
    ("ErrImageNeverPull", FailureReason::ImagePullFailed),
    ("InvalidImageName", FailureReason::ImagePullFailed),
    (
        "CreateContainerConfigError",
        FailureReason::ContainerConfigError,
    ),
    ("CreateContainerError", FailureReason::ContainerConfigError),
    ("RunContainerError", FailureReason::ContainerConfigError),
];

/// What the Deployment's status says, reduced to what the lifecycle needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeploymentView {
    /// The Deployment carries the pod template the operator wants now.
    pub has_desired_template: bool,
    /// The deployment controller has seen the latest spec (`observedGeneration >= generation`).
    pub observed: bool,
    pub replicas: i32,
    pub status_replicas: i32,
    pub updated_replicas: i32,
    pub available_replicas: i32,
    /// `Progressing=False, reason=ProgressDeadlineExceeded` for the latest spec.
    pub deadline_exceeded: bool,
}

/// One pod of the desired template.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodView {
    pub name: String,
    pub ready: bool,
    /// Every container is running (it may not be ready yet).
    pub running: bool,
    /// A container's waiting reason, e.g. `CrashLoopBackOff`.
    pub waiting_reason: Option<String>,
    pub waiting_message: Option<String>,
    /// When a container of the pod last terminated, if it did.
    pub last_termination: Option<Timestamp>,
    pub restart_count: i32,
}

/// A failure someone reported (seed 000 `notify-failure`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedFailure {
    pub reported_by: String,
    pub at: Timestamp,
    pub message: String,
}

/// Everything the decision reads.
#[derive(Clone, Debug)]
pub struct Observation<'a> {
    /// The phase in status, or `None` when the spec changed since it was written (a spec change
    /// ends Error and starts over).
    pub previous: Option<Phase>,
    /// When the install last became Active (`Ready` turned True).
    pub active_since: Option<Timestamp>,
    pub deployment: Option<&'a DeploymentView>,
    pub pods: &'a [PodView],
    pub reported_failure: Option<&'a ReportedFailure>,
}

/// How the running pods are doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// The desired template runs with every replica ready and nothing older left.
    Available,
    /// No container of the desired template runs yet.
    Starting,
    /// Containers run; readiness does not pass yet.
    Connecting,
    /// Running, but a pod failed after it was ready (a restart, unready, or a report).
    Disturbed(Failure),
    /// It cannot start: crash loop, image pull error or progress deadline.
    Failed(Failure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub reason: FailureReason,
    pub message: String,
    pub reported_by: Option<String>,
}

/// What the operator does about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    /// Restart the pods once (a new pod-template restart annotation).
    Restart(Failure),
    /// The rollout failed: record the failure (and, when an upgrade failed, revert it).
    Fail(Failure),
}

/// The outcome of one decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub phase: Phase,
    pub action: Action,
}

/// Reads the health of a supervised install from its Deployment and pods.
pub fn health(observation: &Observation<'_>) -> Health {
    let pods = observation.pods;
    if let Some(failure) = pods.iter().find_map(failing_pod) {
        return Health::Failed(failure);
    }
    let Some(deployment) = observation
        .deployment
        .filter(|d| d.has_desired_template && d.observed)
    else {
        return Health::Starting;
    };
    if deployment.deadline_exceeded {
        return Health::Failed(Failure {
            reason: FailureReason::ProgressDeadlineExceeded,
            message: "the plugin did not become ready within progressDeadlineSeconds".into(),
            reported_by: None,
        });
    }
    let rolled_out = deployment.updated_replicas == deployment.replicas
        && deployment.status_replicas == deployment.replicas
        && deployment.available_replicas >= deployment.replicas;
    let all_ready = pods.iter().all(|p| p.ready) && pods.len() as i32 >= deployment.replicas;
    if observation.previous == Some(Phase::Active)
        && let Some(failure) = disturbance(observation)
    {
        return Health::Disturbed(failure);
    }
    if rolled_out && all_ready {
        Health::Available
    } else if pods.iter().any(|p| p.running) {
        Health::Connecting
    } else {
        Health::Starting
    }
}

fn failing_pod(pod: &PodView) -> Option<Failure> {
    let waiting = pod.waiting_reason.as_deref()?;
    let (_, reason) = FAILING_WAITING_REASONS
        .iter()
        .find(|(w, _)| *w == waiting)?;
    let detail = pod
        .waiting_message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Some(Failure {
        reason: *reason,
        message: format!("pod {} is in {waiting}{detail}", pod.name),
        reported_by: None,
    })
}

/// A failure of an Active install: a report, a container that restarted, or a pod gone unready.
fn disturbance(observation: &Observation<'_>) -> Option<Failure> {
    let since = observation.active_since;
    if let Some(report) = observation
        .reported_failure
        .filter(|r| since.is_none_or(|s| r.at > s))
    {
        return Some(Failure {
            reason: FailureReason::FailureReported,
            message: report.message.clone(),
            reported_by: Some(report.reported_by.clone()),
        });
    }
    if let Some(pod) = observation.pods.iter().find(|p| {
        p.last_termination
            .is_some_and(|t| since.is_none_or(|s| t > s))
    }) {
        return Some(Failure {
            reason: FailureReason::ContainerRestarted,
            message: format!(
                "a container of pod {} restarted (restarts: {})",
                pod.name, pod.restart_count
            ),
            reported_by: None,
        });
    }
    observation
        .pods
        .iter()
        .find(|p| !p.ready)
        .map(|pod| Failure {
            reason: FailureReason::PodUnready,
            message: format!("pod {} is not ready", pod.name),
            reported_by: None,
        })
}

/// The lifecycle's transition: from the previous phase and the health, the next phase and the
/// action. One restart is attempted for an Active install that fails; a failure while starting or
/// restarting is an Error (the reconciler turns a failed upgrade into a revert); Error lasts until
/// the spec changes (`previous: None`) or the plugin turns Active by itself.
pub fn decide(previous: Option<Phase>, health: Health) -> Decision {
    use Phase::*;
    match (previous, health) {
        (_, Health::Available) => Decision {
            phase: Active,
            action: Action::None,
        },
        (Some(Active), Health::Disturbed(f) | Health::Failed(f)) => Decision {
            phase: Restarting,
            action: Action::Restart(f),
        },
        (Some(Error), _) => Decision {
            phase: Error,
            action: Action::None,
        },
        (_, Health::Failed(f)) => Decision {
            phase: Error,
            action: Action::Fail(f),
        },
        (Some(Restarting), _) => Decision {
            phase: Restarting,
            action: Action::None,
        },
        (_, Health::Connecting | Health::Disturbed(_)) => Decision {
            phase: Connecting,
            action: Action::None,
        },
        (_, Health::Starting) => Decision {
            phase: Starting,
            action: Action::None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + secs).expect("valid timestamp")
    }

    fn rolled_out(replicas: i32) -> DeploymentView {
        DeploymentView {
            has_desired_template: true,
            observed: true,
            replicas,
            status_replicas: replicas,
            updated_replicas: replicas,
            available_replicas: replicas,
            deadline_exceeded: false,
        }
    }

    fn ready_pod(name: &str) -> PodView {
        PodView {
            name: name.into(),
            ready: true,
            running: true,
            ..Default::default()
        }
    }

    fn obs<'a>(
        previous: Option<Phase>,
        deployment: Option<&'a DeploymentView>,
        pods: &'a [PodView],
    ) -> Observation<'a> {
        Observation {
            previous,
            active_since: Some(at(0)),
            deployment,
            pods,
            reported_failure: None,
        }
    }

    #[test]
    fn no_deployment_yet_is_starting() {
        let o = obs(None, None, &[]);
        assert_eq!(health(&o), Health::Starting);
        assert_eq!(decide(None, health(&o)).phase, Phase::Starting);
    }

    #[test]
    fn a_deployment_not_yet_observed_or_with_an_old_template_is_starting() {
        let pods = [ready_pod("a")];
        let unobserved = DeploymentView {
            observed: false,
            ..rolled_out(1)
        };
        assert_eq!(
            health(&obs(None, Some(&unobserved), &pods)),
            Health::Starting
        );
        let old = DeploymentView {
            has_desired_template: false,
            ..rolled_out(1)
        };
        assert_eq!(health(&obs(None, Some(&old), &pods)), Health::Starting);
    }

    #[test]
    fn running_but_unready_is_connecting() {
        let d = DeploymentView {
            available_replicas: 0,
            ..rolled_out(1)
        };
        let pods = [PodView {
            name: "a".into(),
            running: true,
            ..Default::default()
        }];
        let o = obs(Some(Phase::Starting), Some(&d), &pods);
        assert_eq!(health(&o), Health::Connecting);
        assert_eq!(
            decide(Some(Phase::Starting), health(&o)),
            Decision {
                phase: Phase::Connecting,
                action: Action::None
            }
        );
    }

    #[test]
    fn all_ready_is_active() {
        let d = rolled_out(2);
        let pods = [ready_pod("a"), ready_pod("b")];
        let o = obs(Some(Phase::Connecting), Some(&d), &pods);
        assert_eq!(
            decide(Some(Phase::Connecting), health(&o)).phase,
            Phase::Active
        );
    }

    #[test]
    fn old_pods_still_serving_is_not_yet_active() {
        let d = DeploymentView {
            status_replicas: 2,
            ..rolled_out(1)
        };
        let pods = [PodView {
            name: "new".into(),
            running: true,
            ..Default::default()
        }];
        assert_eq!(
            health(&obs(Some(Phase::Starting), Some(&d), &pods)),
            Health::Connecting
        );
    }

    #[test]
    fn crash_loop_and_pull_errors_fail_at_once() {
        for (waiting, reason) in [
            ("CrashLoopBackOff", FailureReason::CrashLoop),
            ("ImagePullBackOff", FailureReason::ImagePullFailed),
            ("ErrImagePull", FailureReason::ImagePullFailed),
        ] {
            let pods = [PodView {
                name: "a".into(),
                waiting_reason: Some(waiting.into()),
                ..Default::default()
            }];
            let h = health(&obs(Some(Phase::Starting), None, &pods));
            let Health::Failed(f) = h.clone() else {
                panic!("{waiting}: {h:?}")
            };
            assert_eq!(f.reason, reason);
            assert_eq!(decide(Some(Phase::Starting), h).phase, Phase::Error);
        }
    }

    #[test]
    fn ordinary_waiting_is_not_a_failure() {
        let pods = [PodView {
            name: "a".into(),
            waiting_reason: Some("ContainerCreating".into()),
            ..Default::default()
        }];
        assert_eq!(
            health(&obs(Some(Phase::Starting), None, &pods)),
            Health::Starting
        );
    }

    #[test]
    fn the_progress_deadline_is_a_failure() {
        let d = DeploymentView {
            deadline_exceeded: true,
            available_replicas: 0,
            ..rolled_out(1)
        };
        let pods = [PodView {
            name: "a".into(),
            running: true,
            ..Default::default()
        }];
        let h = health(&obs(Some(Phase::Connecting), Some(&d), &pods));
        assert!(
            matches!(&h, Health::Failed(f) if f.reason == FailureReason::ProgressDeadlineExceeded)
        );
        assert_eq!(decide(Some(Phase::Connecting), h).phase, Phase::Error);
    }

    #[test]
    fn an_active_install_that_fails_restarts_once() {
        let d = rolled_out(1);
        let unready = [PodView {
            name: "a".into(),
            running: true,
            ..Default::default()
        }];
        let h = health(&obs(Some(Phase::Active), Some(&d), &unready));
        assert!(matches!(&h, Health::Disturbed(f) if f.reason == FailureReason::PodUnready));
        assert!(matches!(
            decide(Some(Phase::Active), h),
            Decision {
                phase: Phase::Restarting,
                action: Action::Restart(_)
            }
        ));

        let restarted = [PodView {
            last_termination: Some(at(5)),
            restart_count: 1,
            ..ready_pod("a")
        }];
        let h = health(&obs(Some(Phase::Active), Some(&d), &restarted));
        assert!(
            matches!(&h, Health::Disturbed(f) if f.reason == FailureReason::ContainerRestarted)
        );

        let crash_looping = [PodView {
            waiting_reason: Some("CrashLoopBackOff".into()),
            ..Default::default()
        }];
        let h = health(&obs(Some(Phase::Active), Some(&d), &crash_looping));
        assert!(matches!(
            decide(Some(Phase::Active), h),
            Decision {
                phase: Phase::Restarting,
                action: Action::Restart(_)
            }
        ));
    }

    #[test]
    fn restarts_before_activation_do_not_count() {
        let d = rolled_out(1);
        let pods = [PodView {
            last_termination: Some(at(-5)),
            restart_count: 1,
            ..ready_pod("a")
        }];
        assert_eq!(
            health(&obs(Some(Phase::Active), Some(&d), &pods)),
            Health::Available
        );
    }

    #[test]
    fn a_reported_failure_restarts_an_active_install() {
        let d = rolled_out(1);
        let pods = [ready_pod("a")];
        let report = ReportedFailure {
            reported_by: "supervisor-1".into(),
            at: at(10),
            message: "no heartbeat".into(),
        };
        let o = Observation {
            reported_failure: Some(&report),
            ..obs(Some(Phase::Active), Some(&d), &pods)
        };
        let Health::Disturbed(f) = health(&o) else {
            panic!("not disturbed")
        };
        assert_eq!(f.reported_by.as_deref(), Some("supervisor-1"));
        let stale = ReportedFailure {
            at: at(-1),
            ..report
        };
        let o = Observation {
            reported_failure: Some(&stale),
            ..obs(Some(Phase::Active), Some(&d), &pods)
        };
        assert_eq!(health(&o), Health::Available);
    }

    #[test]
    fn restarting_ends_active_or_in_error() {
        assert_eq!(
            decide(Some(Phase::Restarting), Health::Connecting).phase,
            Phase::Restarting
        );
        assert_eq!(
            decide(Some(Phase::Restarting), Health::Starting).phase,
            Phase::Restarting
        );
        assert_eq!(
            decide(Some(Phase::Restarting), Health::Available).phase,
            Phase::Active
        );
        let f = Failure {
            reason: FailureReason::CrashLoop,
            message: String::new(),
            reported_by: None,
        };
        assert!(matches!(
            decide(Some(Phase::Restarting), Health::Failed(f)),
            Decision {
                phase: Phase::Error,
                action: Action::Fail(_)
            }
        ));
    }

    #[test]
    fn error_stays_until_active_or_a_spec_change() {
        assert_eq!(
            decide(Some(Phase::Error), Health::Connecting),
            Decision {
                phase: Phase::Error,
                action: Action::None
            }
        );
        let f = Failure {
            reason: FailureReason::CrashLoop,
            message: String::new(),
            reported_by: None,
        };
        assert_eq!(
            decide(Some(Phase::Error), Health::Failed(f.clone())),
            Decision {
                phase: Phase::Error,
                action: Action::None
            }
        );
        assert_eq!(
            decide(Some(Phase::Error), Health::Available).phase,
            Phase::Active
        );
        assert_eq!(decide(None, Health::Connecting).phase, Phase::Connecting);
        assert!(matches!(
            decide(None, Health::Failed(f)).action,
            Action::Fail(_)
        ));
    }
}
