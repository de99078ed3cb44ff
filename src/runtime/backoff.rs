//! Growing retry delays per object: each failure in a row doubles the delay, up to a cap, with
//! jitter so that objects that failed together do not retry together.
//!
//! Written here rather than taken from a crate: the state is a counter per object kept between
//! reconciles (kube's controller asks for one delay per failure), and the delay is one formula;
//! the backoff crates model a retry loop that owns its iterator.
use std::{collections::HashMap, sync::Mutex, time::Duration};

/// The first delay after a failure that may pass on the next try (timeout, conflict, 5xx).
pub const TRANSIENT_FIRST: Duration = Duration::from_secs(1);
/// The first delay after the API server refused a write (quota, RBAC, admission, invalid).
pub const REFUSED_FIRST: Duration = Duration::from_secs(5);
/// No delay grows past this.
pub const CAP: Duration = Duration::from_secs(300);

/// Failures in a row, per object key.
#[derive(Default)]
pub struct Backoffs {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoffs {
    /// Records a failure of `key` and returns how long to wait before the next try.
    pub fn failed(&self, key: &str, refused: bool) -> Duration {
        let count = {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            let count = failures.entry(key.to_owned()).or_default();
            *count = count.saturating_add(1);
            *count
        };
        let first = if refused {
            REFUSED_FIRST
        } else {
            TRANSIENT_FIRST
        };
        with_jitter(delay(first, count), jitter_fraction())
    }

    /// Forgets `key`'s failures: its next failure starts from the first delay again.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(key);
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
}
