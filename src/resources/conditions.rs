//! The one place conditions are merged: `lastTransitionTime` moves only when a status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// PluginInstall: the plugin is Active on its target version.
pub const READY: &str = "Ready";
/// PluginInstall: a start or a rollout is in progress.
pub const PROGRESSING: &str = "Progressing";
/// PluginInstall: the plugin failed (restarting, error, or a reverted rollout).
pub const DEGRADED: &str = "Degraded";
/// PluginInstall: the config (with its Secrets) satisfies the version's configSchema.
pub const CONFIG_VALID: &str = "ConfigValid";
/// PluginInstall: a newer formal version in range is not running yet.
pub const UPGRADE_AVAILABLE: &str = "UpgradeAvailable";
/// Plugin and PluginVersion: the spec is valid (and, for a version, its Plugin exists, its
/// number is unique and its configSchema compiles).
pub const ACCEPTED: &str = "Accepted";
/// PluginVersion: installs run it or roll out to it, so it cannot be deleted yet.
pub const IN_USE: &str = "InUse";

/// Reasons: why a condition has its status. CamelCase, as `metav1.Condition` requires.
pub mod reason {
    // Phases, for `Ready`.
    pub const INACTIVE: &str = "Inactive";
    pub const STARTING: &str = "Starting";
    pub const CONNECTING: &str = "Connecting";
    pub const ACTIVE: &str = "Active";
    pub const RESTARTING: &str = "Restarting";
    pub const ERROR: &str = "Error";
    pub const RUNNING: &str = "Running";
    pub const UNUSED: &str = "Unused";

    use super::FailureReason as F;

    // Failures ([`F`]), for `Degraded`, `Ready` and `status.lastFailure`.
    pub const IMAGE_PULL_FAILED: &str = F::ImagePullFailed.as_str();
    pub const CRASH_LOOP: &str = F::CrashLoop.as_str();
    pub const CONTAINER_CONFIG_ERROR: &str = F::ContainerConfigError.as_str();
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = F::ProgressDeadlineExceeded.as_str();
    pub const CONTAINER_RESTARTED: &str = F::ContainerRestarted.as_str();
    pub const POD_UNREADY: &str = F::PodUnready.as_str();
    pub const FAILURE_REPORTED: &str = F::FailureReported.as_str();
    pub const UNSUPPORTED_EXECUTION: &str = F::UnsupportedExecution.as_str();
    pub const PLUGIN_NOT_FOUND: &str = F::PluginNotFound.as_str();
    pub const PLUGIN_NOT_INSTALLABLE: &str = F::PluginNotInstallable.as_str();
    pub const VERSION_NOT_FOUND: &str = F::VersionNotFound.as_str();
    pub const NO_MATCHING_VERSION: &str = F::NoMatchingVersion.as_str();
    pub const INVALID_SPEC: &str = F::InvalidSpec.as_str();
    pub const HEALTHY: &str = "Healthy";
    // Ready=False when the API server refused a write of the install's children (a retry alone
    // cannot fix these; the operator still retries, with growing delays).
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const INVALID: &str = "Invalid";
    pub const NOT_FOUND: &str = "NotFound";
    // Ready=False when a child's name is taken by an object the install does not own: the
    // operator never adopts it, and the install waits until the name is free.
    pub const NAME_CONFLICT: &str = "NameConflict";

    // `Progressing`.
    pub const ROLLED_BACK: &str = "RolledBack";

    // `ConfigValid`.
    pub const CONFIG_VALID: &str = "ConfigValid";
    pub const CONFIG_INVALID: &str = F::ConfigInvalid.as_str();
    pub const SECRET_NOT_FOUND: &str = F::SecretNotFound.as_str();
    pub const SECRET_NOT_SHARED: &str = F::SecretNotShared.as_str();

    // `UpgradeAvailable`.
    pub const NEWER_VERSION: &str = "NewerVersion";
    pub const AWAITING_APPROVAL: &str = "AwaitingApproval";
    pub const UP_TO_DATE: &str = "UpToDate";

    // `Accepted`.
    pub const ACCEPTED: &str = "Accepted";
    pub const DUPLICATE_VERSION: &str = "DuplicateVersion";
    pub const INVALID_CONFIG_SCHEMA: &str = "InvalidConfigSchema";
    pub const SPEC_CHANGED: &str = "SpecChanged";
}

/// Why an install failed: the reason of `status.lastFailure`, of `Degraded` and of a failed
/// `Ready`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureReason {
    // The plugin failed at run time.
    ImagePullFailed,
    CrashLoop,
    ContainerConfigError,
    ProgressDeadlineExceeded,
    ContainerRestarted,
    PodUnready,
    FailureReported,
    /// An external plugin's endpoint did not answer its health check after a reported failure.
    EndpointUnreachable,
    // What the spec names is wrong or missing.
    InvalidSpec,
    PluginNotFound,
    PluginNotInstallable,
    VersionNotFound,
    NoMatchingVersion,
    UnsupportedExecution,
    ConfigInvalid,
    SecretNotFound,
    /// A `configFrom` Secret does not consent to this install (see `names::consent`).
    SecretNotShared,
}

/// Where a failure comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureOrigin {
    /// What the spec names (a Plugin, a version, a config, a Secret) is wrong or missing: a
    /// change of the spec, or of what it names, ends it.
    Input,
    /// The plugin failed at run time.
    Runtime,
}

impl FailureReason {
    pub const ALL: [Self; 17] = [
        Self::ImagePullFailed,
        Self::CrashLoop,
        Self::ContainerConfigError,
        Self::ProgressDeadlineExceeded,
        Self::ContainerRestarted,
        Self::PodUnready,
        Self::FailureReported,
        Self::EndpointUnreachable,
        Self::InvalidSpec,
        Self::PluginNotFound,
        Self::PluginNotInstallable,
        Self::VersionNotFound,
        Self::NoMatchingVersion,
        Self::UnsupportedExecution,
        Self::ConfigInvalid,
        Self::SecretNotFound,
        Self::SecretNotShared,
    ];

    /// As written in status (CamelCase, as `metav1.Condition` requires).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::ImagePullFailed => "ImagePullFailed",
            Self::CrashLoop => "CrashLoop",
            Self::ContainerConfigError => "ContainerConfigError",
            Self::ProgressDeadlineExceeded => "ProgressDeadlineExceeded",
            Self::ContainerRestarted => "ContainerRestarted",
            Self::PodUnready => "PodUnready",
            Self::FailureReported => "FailureReported",
            Self::EndpointUnreachable => "EndpointUnreachable",
            Self::InvalidSpec => "InvalidSpec",
            Self::PluginNotFound => "PluginNotFound",
            Self::PluginNotInstallable => "PluginNotInstallable",
            Self::VersionNotFound => "VersionNotFound",
            Self::NoMatchingVersion => "NoMatchingVersion",
            Self::UnsupportedExecution => "UnsupportedExecution",
            Self::ConfigInvalid => "ConfigInvalid",
            Self::SecretNotFound => "SecretNotFound",
            Self::SecretNotShared => "SecretNotShared",
        }
    }

    /// Reads a reason as written in status; `None` for any other text.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    pub const fn origin(self) -> FailureOrigin {
        match self {
            Self::ImagePullFailed
            | Self::CrashLoop
            | Self::ContainerConfigError
            | Self::ProgressDeadlineExceeded
            | Self::ContainerRestarted
            | Self::PodUnready
            | Self::FailureReported
            | Self::EndpointUnreachable => FailureOrigin::Runtime,
            Self::InvalidSpec
            | Self::PluginNotFound
            | Self::PluginNotInstallable
            | Self::VersionNotFound
            | Self::NoMatchingVersion
            | Self::UnsupportedExecution
            | Self::ConfigInvalid
            | Self::SecretNotFound
            | Self::SecretNotShared => FailureOrigin::Input,
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// As written in `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

impl ConditionStatus {
    /// Reads a status as written (`True`, `False`; anything else is `Unknown`).
    pub fn parse(status: &str) -> Self {
        match status {
            "True" => Self::True,
            "False" => Self::False,
            _ => Self::Unknown,
        }
    }

    /// The status of a condition.
    pub fn of(condition: &Condition) -> Self {
        Self::parse(&condition.status)
    }
}

impl From<bool> for ConditionStatus {
    fn from(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }
}

/// A condition as a reconciler decides it; [`set_condition`] stamps the transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewCondition {
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

impl NewCondition {
    pub fn new(
        type_: &str,
        status: impl Into<ConditionStatus>,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_: type_.to_owned(),
            status: status.into(),
            reason: reason.to_owned(),
            message: message.into(),
            observed_generation: None,
        }
    }

    /// Sets the `metadata.generation` the condition was decided from.
    pub fn observed_generation(mut self, generation: Option<i64>) -> Self {
        self.observed_generation = generation;
        self
    }
}

/// Sets `new` in `conditions`, replacing the one of the same type. `lastTransitionTime` becomes
/// `now` when the condition is new or its status changed, and is kept otherwise. Returns whether
/// anything changed.
pub fn set_condition(conditions: &mut Vec<Condition>, new: NewCondition, now: Time) -> bool {
    let NewCondition {
        type_,
        status,
        reason,
        message,
        observed_generation,
    } = new;
    let status = status.as_str();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        None => {
            conditions.push(Condition {
                type_,
                status: status.to_owned(),
                reason,
                message,
                observed_generation,
                last_transition_time: now,
            });
            true
        }
        Some(existing) => {
            let transition = existing.status != status;
            let changed = transition
                || existing.reason != reason
                || existing.message != message
                || existing.observed_generation != observed_generation;
            if transition {
                existing.status = status.to_owned();
                existing.last_transition_time = now;
            }
            existing.reason = reason;
            existing.message = message;
            existing.observed_generation = observed_generation;
            changed
        }
    }
}

/// The condition of type `type_`, if any.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of type `type_` is `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_)
        .is_some_and(|c| ConditionStatus::of(c) == ConditionStatus::True)
}

/// Removes the condition of type `type_`. Returns whether there was one.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    conditions.len() != before
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(second).expect("valid timestamp"))
    }

    fn ready(status: bool, reason: &str, message: &str) -> NewCondition {
        NewCondition::new(READY, status, reason, message).observed_generation(Some(1))
    }

    #[test]
    fn failure_reasons_read_back_and_know_their_origin() {
        for reason in FailureReason::ALL {
            assert_eq!(FailureReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(FailureReason::parse("Healthy"), None);
        assert_eq!(
            FailureReason::parse("SecretNotFound").map(FailureReason::origin),
            Some(FailureOrigin::Input)
        );
        assert_eq!(FailureReason::CrashLoop.origin(), FailureOrigin::Runtime);
    }

    #[test]
    fn statuses_are_read_typed() {
        assert_eq!(ConditionStatus::parse("True"), ConditionStatus::True);
        assert_eq!(ConditionStatus::parse("False"), ConditionStatus::False);
        assert_eq!(ConditionStatus::parse("maybe"), ConditionStatus::Unknown);
    }

    #[test]
    fn a_new_condition_is_added_with_now() {
        let mut conditions = Vec::new();
        assert!(set_condition(
            &mut conditions,
            ready(true, reason::ACTIVE, "up"),
            at(10)
        ));
        assert_eq!(conditions.len(), 1);
        let c = &conditions[0];
        assert_eq!(c.type_, "Ready");
        assert_eq!(c.status, "True");
        assert_eq!(c.reason, "Active");
        assert_eq!(c.message, "up");
        assert_eq!(c.observed_generation, Some(1));
        assert_eq!(c.last_transition_time, at(10));
    }

    #[test]
    fn the_same_condition_again_changes_nothing() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, ready(true, reason::ACTIVE, "up"), at(10));
        let before = conditions.clone();
        assert!(!set_condition(
            &mut conditions,
            ready(true, reason::ACTIVE, "up"),
            at(20)
        ));
        assert_eq!(conditions, before);
    }

    #[test]
    fn same_status_keeps_the_transition_time_but_takes_reason_message_generation() {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ready(false, reason::STARTING, "starting"),
            at(10),
        );
        let next = NewCondition::new(READY, false, reason::CONNECTING, "connecting")
            .observed_generation(Some(2));
        assert!(set_condition(&mut conditions, next, at(20)));
        let c = &conditions[0];
        assert_eq!(c.reason, "Connecting");
        assert_eq!(c.message, "connecting");
        assert_eq!(c.observed_generation, Some(2));
        assert_eq!(c.last_transition_time, at(10));
    }

    #[test]
    fn a_generation_change_alone_is_a_change() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, ready(true, reason::ACTIVE, "up"), at(10));
        let next = ready(true, reason::ACTIVE, "up").observed_generation(Some(3));
        assert!(set_condition(&mut conditions, next, at(20)));
        assert_eq!(conditions[0].observed_generation, Some(3));
        assert_eq!(conditions[0].last_transition_time, at(10));
    }

    #[test]
    fn a_status_change_moves_the_transition_time() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, ready(true, reason::ACTIVE, "up"), at(10));
        assert!(set_condition(
            &mut conditions,
            ready(false, reason::CRASH_LOOP, "down"),
            at(20)
        ));
        assert_eq!(conditions[0].status, "False");
        assert_eq!(conditions[0].last_transition_time, at(20));
        let unknown = NewCondition::new(READY, ConditionStatus::Unknown, reason::STARTING, "");
        assert!(set_condition(&mut conditions, unknown, at(30)));
        assert_eq!(conditions[0].status, "Unknown");
        assert_eq!(conditions[0].last_transition_time, at(30));
    }

    #[test]
    fn conditions_of_other_types_are_left_alone() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, ready(true, reason::ACTIVE, "up"), at(10));
        let config = NewCondition::new(CONFIG_VALID, true, reason::CONFIG_VALID, "");
        assert!(set_condition(&mut conditions, config, at(20)));
        assert_eq!(conditions.len(), 2);
        assert!(set_condition(
            &mut conditions,
            ready(false, reason::ERROR, "x"),
            at(30)
        ));
        assert_eq!(conditions.len(), 2);
        let config = find_condition(&conditions, CONFIG_VALID).expect("ConfigValid is set");
        assert_eq!(config.last_transition_time, at(20));
        assert_eq!(conditions[0].type_, READY, "the order is kept");
    }

    #[test]
    fn lookups_and_removal() {
        let mut conditions = Vec::new();
        assert!(!is_condition_true(&conditions, READY));
        set_condition(&mut conditions, ready(true, reason::ACTIVE, "up"), at(10));
        assert!(is_condition_true(&conditions, READY));
        assert!(!is_condition_true(&conditions, DEGRADED));
        assert!(find_condition(&conditions, DEGRADED).is_none());
        assert!(remove_condition(&mut conditions, READY));
        assert!(!remove_condition(&mut conditions, READY));
        assert!(conditions.is_empty());
    }

    #[test]
    fn reasons_are_valid_metav1_reasons() {
        let all = [
            reason::INACTIVE,
            reason::STARTING,
            reason::CONNECTING,
            reason::ACTIVE,
            reason::RESTARTING,
            reason::ERROR,
            reason::RUNNING,
            reason::UNUSED,
            reason::IMAGE_PULL_FAILED,
            reason::CRASH_LOOP,
            reason::CONTAINER_CONFIG_ERROR,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            reason::CONTAINER_RESTARTED,
            reason::POD_UNREADY,
            reason::FAILURE_REPORTED,
            reason::UNSUPPORTED_EXECUTION,
            reason::PLUGIN_NOT_FOUND,
            reason::PLUGIN_NOT_INSTALLABLE,
            reason::VERSION_NOT_FOUND,
            reason::NO_MATCHING_VERSION,
            reason::INVALID_SPEC,
            reason::HEALTHY,
            reason::ROLLED_BACK,
            reason::CONFIG_VALID,
            reason::CONFIG_INVALID,
            reason::SECRET_NOT_FOUND,
            reason::NEWER_VERSION,
            reason::AWAITING_APPROVAL,
            reason::UP_TO_DATE,
            reason::ACCEPTED,
            reason::DUPLICATE_VERSION,
            reason::INVALID_CONFIG_SCHEMA,
            reason::SPEC_CHANGED,
        ];
        for r in all {
            let mut chars = r.chars();
            assert!(chars.next().is_some_and(|c| c.is_ascii_alphabetic()), "{r}");
            assert!(r.chars().all(|c| c.is_ascii_alphanumeric()), "{r}");
        }
    }
}
