//! Growing retry delays per object: each failure in a row doubles the delay, up to a cap, with
//! jitter so that objects that failed together do not retry together.
//!
//! Written here rather than taken from a crate: the state is a counter per object kept between
//! reconciles (kube's controller asks for one delay per failure), and the delay is one formula;
//! the backoff crates model a retry loop that owns its iterator.
use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// The first delay after a failure that may pass on the next try (timeout, conflict, 5xx).
pub const TRANSIENT_FIRST: Duration = Duration::from_secs(1);
/// The first delay after the API server refused a write (quota, RBAC, admission, invalid).
pub const REFUSED_FIRST: Duration = Duration::from_secs(5);
/// No delay grows past this.
pub const CAP: Duration = Duration::from_secs(300);

/// Failures in a row, per object key, and the retries held back after a refusal.
#[derive(Default)]
pub struct Backoffs {
    failures: Mutex<HashMap<String, Failures>>,
}

#[derive(Default)]
struct Failures {
    count: u32,
    held: Option<Held>,
}

/// No try before `until` unless what the user set of the object changes (`input`, a hash).
struct Held {
    until: Instant,
    input: u64,
}

impl Backoffs {
    /// Records a failure of `key` and returns how long to wait before the next try.
    pub fn failed(&self, key: &str, refused: bool) -> Duration {
        let count = {
            let mut failures = self.lock();
            let entry = failures.entry(key.to_owned()).or_default();
            entry.count = entry.count.saturating_add(1);
            entry.count
        };
        let first = if refused {
            REFUSED_FIRST
        } else {
            TRANSIENT_FIRST
        };
        with_jitter(delay(first, count), jitter_fraction())
    }

    /// Holds `key`'s tries back until `until`, unless `input` (what the user set) changes: a
    /// refused write waits out its delay rather than being retried on every event of the
    /// object's own making (its pods starting, a status written).
    pub fn hold(&self, key: &str, input: u64, until: Instant) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.held = Some(Held { until, input });
        }
    }

    /// How long `key`'s next try is still held back, if it is and `input` is unchanged.
    pub fn held(&self, key: &str, input: u64, now: Instant) -> Option<Duration> {
        let failures = self.lock();
        let held = failures.get(key)?.held.as_ref()?;
        (held.input == input && now < held.until).then(|| held.until - now)
    }

    /// Whether `key`'s last try failed.
    pub fn failing(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Forgets `key`'s failures: its next failure starts from the first delay again.
    pub fn succeeded(&self, key: &str) {
        self.lock().remove(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `first` doubled for each failure after the first, capped at [`CAP`].
pub fn delay(first: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(CAP)
}

/// `delay` moved by `fraction` (in [-1, 1]) of a fifth of it: ±20 %.
pub fn with_jitter(delay: Duration, fraction: f64) -> Duration {
    delay.mul_f64(1.0 + 0.2 * fraction.clamp(-1.0, 1.0))
}

/// A number in [-1, 1] from the OS's generator (0 when it has none: then no jitter).
fn jitter_fraction() -> f64 {
    getrandom::u32().map_or(0.0, |n| f64::from(n) / f64::from(u32::MAX) * 2.0 - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_failure_up_to_the_cap() {
        let secs = |failures| delay(REFUSED_FIRST, failures).as_secs();
        assert_eq!([secs(1), secs(2), secs(3), secs(4)], [5, 10, 20, 40]);
        assert_eq!(secs(7), 300);
        assert_eq!(secs(1000), 300);
        assert_eq!(delay(TRANSIENT_FIRST, 1), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let d = Duration::from_secs(10);
        assert_eq!(with_jitter(d, -1.0), Duration::from_secs(8));
        assert_eq!(with_jitter(d, 1.0), Duration::from_secs(12));
        assert_eq!(with_jitter(d, 7.0), Duration::from_secs(12));
    }

    #[test]
    fn failures_count_per_object_and_a_success_resets_them() {
        let backoffs = Backoffs::default();
        let first = backoffs.failed("a", true);
        let second = backoffs.failed("a", true);
        let third = backoffs.failed("a", true);
        assert!(first <= Duration::from_secs(6) && first >= Duration::from_secs(4));
        assert!(second >= Duration::from_secs(8) && second <= Duration::from_secs(12));
        assert!(third >= Duration::from_secs(16) && third <= Duration::from_secs(24));
        let other = backoffs.failed("b", false);
        assert!(other <= Duration::from_millis(1200), "{other:?}");
        backoffs.succeeded("a");
        assert!(backoffs.failed("a", true) <= Duration::from_secs(6));
    }

    #[test]
    fn a_held_retry_waits_unless_the_user_changes_the_object() {
        let backoffs = Backoffs::default();
        let now = Instant::now();
        // Nothing failed: nothing to hold.
        backoffs.hold("a", 1, now + Duration::from_secs(5));
        assert_eq!(backoffs.held("a", 1, now), None);
        assert!(!backoffs.failing("a"));

        backoffs.failed("a", true);
        backoffs.hold("a", 1, now + Duration::from_secs(5));
        assert!(backoffs.failing("a"));
        assert_eq!(backoffs.held("a", 1, now), Some(Duration::from_secs(5)));
        assert_eq!(
            backoffs.held("a", 1, now + Duration::from_secs(2)),
            Some(Duration::from_secs(3))
        );
        assert_eq!(backoffs.held("a", 1, now + Duration::from_secs(5)), None);
        // Another spec, labels or annotations: tried at once.
        assert_eq!(backoffs.held("a", 2, now), None);
        assert_eq!(backoffs.held("b", 1, now), None);
        // A success forgets the hold with the failures.
        backoffs.succeeded("a");
        assert_eq!(backoffs.held("a", 1, now), None);
        assert!(!backoffs.failing("a"));
    }
}
