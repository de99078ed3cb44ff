//! The container timeline of a simulated pod: given its behavior, the current epoch and the
//! time, what state its containers are in. Pure; times are milliseconds since the Unix epoch.
use super::behavior::Behavior;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// How long a freshly bound pod shows `ContainerCreating`.
pub const CREATING: Millis = 500;
/// When a `ready` pod becomes Ready, counted from the start of its epoch.
pub const READY_AFTER: Millis = 1_000;
/// How long a crash-looping container runs before it exits.
pub const CRASH_RUN: Millis = 1_000;
/// How long a failed image pull shows `ErrImagePull` before backing off.
pub const PULL_ATTEMPT: Millis = 1_000;
/// How long a pod stays unready after a crash requested by annotation.
pub const CRASH_UNREADY: Millis = 3_000;
/// The first back-off between restarts (and pull attempts); it doubles up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Millis = 1_000;
/// The longest back-off, kept short so tests are fast.
pub const BACKOFF_CAP: Millis = 5_000;

/// Exit code and reason of a crashed container.
pub const CRASH_EXIT_CODE: i32 = 1;
pub const CRASH_REASON: &str = "Error";

/// The back-off after the `n`th failure (0-based): 1 s, 2 s, 4 s, then 5 s.
pub fn backoff(n: u32) -> Millis {
    BACKOFF_BASE
        .checked_shl(n.min(20))
        .unwrap_or(BACKOFF_CAP)
        .min(BACKOFF_CAP)
}

/// A container instance that has exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// Which instance exited (0 for the first run; it is the restart count while it ran).
    pub instance: i32,
    pub started_at: Millis,
    pub finished_at: Millis,
    pub exit_code: i32,
    pub reason: String,
}

/// A stretch of the pod's life that starts with its containers (re)starting: when the pod is
/// first seen bound, and again after each crash requested by annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub start: Millis,
    /// How long the containers show `ContainerCreating` before they run.
    pub creating: Millis,
    /// The restart count when the epoch starts.
    pub restarts: i32,
    /// The last exited instance when the epoch starts.
    pub last: Option<Termination>,
    /// The containers are not Ready before `start + unready_for`, whatever the behavior.
    pub unready_for: Millis,
}

impl Epoch {
    /// The first epoch of a pod seen bound at `now`.
    pub fn first(now: Millis) -> Self {
        Self {
            start: now,
            creating: CREATING,
            restarts: 0,
            last: None,
            unready_for: 0,
        }
    }
}

/// The state of the containers at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Being created (the image is being pulled).
    Creating,
    /// Running since the given time.
    Running { since: Millis },
    /// Exited and waiting to be restarted (`CrashLoopBackOff`).
    CrashBackOff { backoff: Millis },
    /// A pull attempt has just failed (`ErrImagePull`).
    PullFailed,
    /// Waiting to retry the pull (`ImagePullBackOff`).
    PullBackOff,
}

/// What the containers look like at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub state: State,
    pub ready: bool,
    pub restarts: i32,
    pub last: Option<Termination>,
}

impl Snapshot {
    /// Whether the pod's phase is Running (a container has run), as opposed to Pending.
    pub fn has_run(&self) -> bool {
        matches!(
            self.state,
            State::Running { .. } | State::CrashBackOff { .. }
        ) || self.restarts > 0
    }

    /// The instance the containers are in (for container IDs).
    pub fn instance(&self) -> i32 {
        self.restarts
    }
}

/// The containers' state at `now` within `epoch`.
pub fn snapshot(behavior: &Behavior, epoch: &Epoch, now: Millis) -> Snapshot {
    let creating = Snapshot {
        state: State::Creating,
        ready: false,
        restarts: epoch.restarts,
        last: epoch.last.clone(),
    };
    let run_start = epoch.start.saturating_add(epoch.creating);
    if now < run_start {
        return creating;
    }
    let ready_after =
        |delay: Millis| now >= epoch.start.saturating_add(delay.max(epoch.unready_for));
    match behavior {
        Behavior::Ready => running(epoch, run_start, ready_after(READY_AFTER)),
        Behavior::Slow { millis } => running(epoch, run_start, ready_after(*millis)),
        Behavior::NeverReady => running(epoch, run_start, false),
        Behavior::Crash => crash_loop(epoch, run_start, now),
        Behavior::PullError => pull_loop(epoch, run_start, now),
    }
}

fn running(epoch: &Epoch, since: Millis, ready: bool) -> Snapshot {
    Snapshot {
        state: State::Running { since },
        ready,
        restarts: epoch.restarts,
        last: epoch.last.clone(),
    }
}

/// Walks a cycle of `active` (the run, or the failed pull) followed by a back-off that grows as
/// [`backoff`] does, and returns which cycle `now` is in, when it started, and whether `now` is in
/// its back-off part.
fn cycle(start: Millis, active: Millis, now: Millis) -> (u32, Millis, bool) {
    let mut k: u32 = 0;
    let mut cycle_start = start;
    loop {
        let pause = backoff(k);
        let period = active + pause;
        if pause == BACKOFF_CAP && now >= cycle_start + period {
            // From here on every cycle is the same length: skip whole ones.
            let skip = (now - cycle_start) / period;
            k = k.saturating_add(u32::try_from(skip).unwrap_or(u32::MAX));
            cycle_start += skip * period;
            continue;
        }
        if now < cycle_start + active {
            return (k, cycle_start, false);
        }
        if now < cycle_start + period {
            return (k, cycle_start, true);
        }
        k += 1;
        cycle_start += period;
    }
}

fn crash_loop(epoch: &Epoch, run_start: Millis, now: Millis) -> Snapshot {
    let (k, started, backing_off) = cycle(run_start, CRASH_RUN, now);
    let k = i32::try_from(k).unwrap_or(i32::MAX);
    let exited = |run: i32, started_at: Millis| Termination {
        instance: epoch.restarts.saturating_add(run),
        started_at,
        finished_at: started_at + CRASH_RUN,
        exit_code: CRASH_EXIT_CODE,
        reason: CRASH_REASON.to_string(),
    };
    if backing_off {
        return Snapshot {
            state: State::CrashBackOff {
                backoff: backoff(u32::try_from(k).unwrap_or(u32::MAX)),
            },
            ready: false,
            restarts: epoch.restarts.saturating_add(k).saturating_add(1),
            last: Some(exited(k, started)),
        };
    }
    let last = if k == 0 {
        epoch.last.clone()
    } else {
        // The previous run started one cycle earlier.
        let previous_start =
            started - backoff(u32::try_from(k - 1).unwrap_or(u32::MAX)) - CRASH_RUN;
        Some(exited(k - 1, previous_start))
    };
    Snapshot {
        state: State::Running { since: started },
        ready: false,
        restarts: epoch.restarts.saturating_add(k),
        last,
    }
}

fn pull_loop(epoch: &Epoch, run_start: Millis, now: Millis) -> Snapshot {
    let (_, _, backing_off) = cycle(run_start, PULL_ATTEMPT, now);
    Snapshot {
        state: if backing_off {
            State::PullBackOff
        } else {
            State::PullFailed
        },
        ready: false,
        restarts: epoch.restarts,
        last: epoch.last.clone(),
    }
}

/// What to do about a crash requested (by annotation) at `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CrashRequest {
    /// The containers crashed and restarted: the pod continues in this epoch.
    Crashed(Epoch),
    /// Not running yet (being created, or backing off): try again later.
    Defer,
    /// The containers never run (the image does not pull): nothing to crash.
    NotRunning,
}

/// One crash at `now`: the running containers exit, restart at once with the restart count one
/// higher, and stay unready for [`CRASH_UNREADY`]; then the behavior goes on.
pub fn crash(behavior: &Behavior, epoch: &Epoch, now: Millis) -> CrashRequest {
    let snap = snapshot(behavior, epoch, now);
    match snap.state {
        State::Running { since } => CrashRequest::Crashed(Epoch {
            start: now,
            creating: 0,
            restarts: snap.restarts.saturating_add(1),
            last: Some(Termination {
                instance: snap.restarts,
                started_at: since,
                finished_at: now,
                exit_code: CRASH_EXIT_CODE,
                reason: CRASH_REASON.to_string(),
            }),
            unready_for: CRASH_UNREADY,
        }),
        State::Creating | State::CrashBackOff { .. } => CrashRequest::Defer,
        State::PullFailed | State::PullBackOff => CrashRequest::NotRunning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Millis = 1_700_000_000_000;

    fn at(behavior: &Behavior, after: Millis) -> Snapshot {
        snapshot(behavior, &Epoch::first(T0), T0 + after)
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let b: Vec<_> = (0..6).map(backoff).collect();
        assert_eq!(b, vec![1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn ready_creates_then_runs_then_is_ready_after_a_second() {
        let b = Behavior::Ready;
        assert_eq!(at(&b, 0).state, State::Creating);
        assert!(!at(&b, 0).has_run());
        let running = at(&b, CREATING);
        assert_eq!(
            running.state,
            State::Running {
                since: T0 + CREATING
            }
        );
        assert!(!running.ready);
        assert!(at(&b, READY_AFTER).ready);
        assert!(at(&b, 3_600_000).ready);
        assert_eq!(at(&b, 3_600_000).restarts, 0);
    }

    #[test]
    fn slow_is_ready_only_after_its_delay() {
        let b = Behavior::Slow { millis: 5_000 };
        assert!(matches!(at(&b, 1_000).state, State::Running { .. }));
        assert!(!at(&b, 1_000).ready);
        assert!(!at(&b, 4_999).ready);
        assert!(at(&b, 5_000).ready);
        // slow:0 is as fast as it gets: Ready once running.
        assert!(at(&Behavior::Slow { millis: 0 }, CREATING).ready);
    }

    #[test]
    fn never_ready_runs_forever_unready() {
        let b = Behavior::NeverReady;
        for after in [CREATING, 2_000, 60_000, 86_400_000] {
            let s = at(&b, after);
            assert!(matches!(s.state, State::Running { .. }), "{s:?}");
            assert!(!s.ready);
            assert_eq!(s.restarts, 0);
        }
    }

    #[test]
    fn crash_loops_with_growing_capped_backoff() {
        let b = Behavior::Crash;
        let run = T0 + CREATING;
        // Run 0: [0, 1s), back-off 1s, run 1: [2s, 3s), back-off 2s, run 2: [5s, 6s), back-off 4s,
        // run 3: [10s, 11s), back-off 5s, run 4: [16s, 17s), ...
        let s = at(&b, CREATING + 500);
        assert_eq!(s.state, State::Running { since: run });
        assert_eq!((s.restarts, s.ready, s.last.clone()), (0, false, None));

        let s = at(&b, CREATING + 1_500);
        assert_eq!(s.state, State::CrashBackOff { backoff: 1_000 });
        assert_eq!(s.restarts, 1);
        let last = s.last.clone().expect("last state after a crash");
        assert_eq!(
            (last.instance, last.started_at, last.finished_at),
            (0, run, run + 1_000)
        );
        assert_eq!((last.exit_code, last.reason.as_str()), (1, "Error"));
        assert!(s.has_run());

        let s = at(&b, CREATING + 2_500);
        assert_eq!(s.state, State::Running { since: run + 2_000 });
        assert_eq!(s.restarts, 1);
        assert_eq!(s.last.as_ref().map(|l| l.instance), Some(0));

        let s = at(&b, CREATING + 4_000);
        assert_eq!(s.state, State::CrashBackOff { backoff: 2_000 });
        assert_eq!(s.restarts, 2);
        let last = s.last.clone().expect("last state");
        assert_eq!((last.instance, last.started_at), (1, run + 2_000));

        let s = at(&b, CREATING + 10_500);
        assert_eq!(
            s.state,
            State::Running {
                since: run + 10_000
            }
        );
        assert_eq!(s.restarts, 3);
        assert_eq!(s.last.as_ref().map(|l| l.started_at), Some(run + 5_000));

        let s = at(&b, CREATING + 12_000);
        assert_eq!(s.state, State::CrashBackOff { backoff: 5_000 });
        assert_eq!(s.restarts, 4);

        // Long after: capped cycles of 6 s, computed without walking them one by one.
        let s = at(&b, CREATING + 16_000 + 6_000 * 1_000_000 + 200);
        assert_eq!(
            s.state,
            State::Running {
                since: run + 16_000 + 6_000 * 1_000_000
            }
        );
        assert_eq!(s.restarts, 4 + 1_000_000);
        assert!(!s.ready);
    }

    #[test]
    fn pull_error_alternates_and_never_runs() {
        let b = Behavior::PullError;
        assert_eq!(at(&b, 0).state, State::Creating);
        assert_eq!(at(&b, CREATING + 100).state, State::PullFailed);
        assert_eq!(at(&b, CREATING + 1_500).state, State::PullBackOff);
        assert_eq!(at(&b, CREATING + 2_100).state, State::PullFailed);
        assert_eq!(at(&b, CREATING + 3_500).state, State::PullBackOff);
        let s = at(&b, 1_000_000);
        assert!(!s.ready && !s.has_run() && s.restarts == 0);
    }

    #[test]
    fn crash_request_restarts_once_and_stays_unready_for_a_while() {
        let b = Behavior::Ready;
        let epoch = Epoch::first(T0);
        let when = T0 + 10_000;
        let CrashRequest::Crashed(next) = crash(&b, &epoch, when) else {
            panic!("a running pod crashes")
        };
        assert_eq!(next.restarts, 1);
        let last = next.last.clone().expect("last state");
        assert_eq!(
            (last.instance, last.started_at, last.finished_at),
            (0, T0 + CREATING, when)
        );

        let s = snapshot(&b, &next, when);
        assert_eq!(s.state, State::Running { since: when });
        assert_eq!((s.restarts, s.ready), (1, false));
        assert!(!snapshot(&b, &next, when + CRASH_UNREADY - 1).ready);
        assert!(snapshot(&b, &next, when + CRASH_UNREADY).ready);

        // A second crash counts on.
        let CrashRequest::Crashed(again) = crash(&b, &next, when + 5_000) else {
            panic!("crashes again")
        };
        assert_eq!(again.restarts, 2);
        assert_eq!(again.last.map(|l| l.instance), Some(1));
    }

    #[test]
    fn crash_request_keeps_a_slow_pod_unready_for_its_delay() {
        let b = Behavior::Slow { millis: 5_000 };
        let CrashRequest::Crashed(next) = crash(&b, &Epoch::first(T0), T0 + 20_000) else {
            panic!("crashes")
        };
        assert!(!snapshot(&b, &next, T0 + 24_000).ready);
        assert!(snapshot(&b, &next, T0 + 25_000).ready);
    }

    #[test]
    fn crash_request_waits_for_running_containers() {
        let epoch = Epoch::first(T0);
        assert_eq!(crash(&Behavior::Ready, &epoch, T0), CrashRequest::Defer);
        assert_eq!(
            crash(&Behavior::Crash, &epoch, T0 + CREATING + 1_500),
            CrashRequest::Defer
        );
        assert_eq!(
            crash(&Behavior::PullError, &epoch, T0 + 10_000),
            CrashRequest::NotRunning
        );
        // A crash-looping pod that is running crashes once more: its loop starts over.
        let CrashRequest::Crashed(next) = crash(&Behavior::Crash, &epoch, T0 + CREATING + 500)
        else {
            panic!("crashes")
        };
        assert_eq!(next.restarts, 1);
        let s = snapshot(&Behavior::Crash, &next, T0 + CREATING + 1_000);
        assert_eq!((s.restarts, s.ready), (1, false));
    }
}
