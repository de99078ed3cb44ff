//! The one clock of the process, injected into the controllers and the HTTP API so that tests
//! and benchmarks can fix or move it.
use std::sync::Arc;

use k8s_openapi::jiff::Timestamp;

/// The time.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Timestamp + Send + Sync>);

impl Clock {
    /// The wall clock.
    pub fn system() -> Self {
        Self(Arc::new(Timestamp::now))
    }

    /// A clock that reads `now`.
    pub fn new(now: impl Fn() -> Timestamp + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// A clock that always reads `at`.
    pub fn fixed(at: Timestamp) -> Self {
        Self::new(move || at)
    }

    pub fn now(&self) -> Timestamp {
        (self.0)()
    }

    /// The time in whole seconds (what `metav1.Time` keeps), so that a status built from it
    /// compares equal to the one read back.
    pub fn now_in_seconds(&self) -> Timestamp {
        let now = self.now();
        // Whole seconds of a valid timestamp are a valid timestamp: the fallback never runs.
        Timestamp::from_second(now.as_second()).unwrap_or(now)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_clock_reads_whole_seconds_for_status() {
        let at: Timestamp = "2024-05-01T10:00:00.750Z".parse().expect("timestamp");
        let clock = Clock::fixed(at);
        assert_eq!(clock.now(), at);
        assert_eq!(clock.now_in_seconds().to_string(), "2024-05-01T10:00:00Z");
    }
}
