//! The status changes of one plan, collected: phase and conditions, the last failure, rollouts
//! and their history. Every change of `lastTransitionTime`, `activatedAt` and the like is stamped
//! with the observed time.
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{
    super::events::Transition,
    plan::{Decision, Wanted},
};
use crate::{
    lifecycle::{phase, resolve::Resolution},
    resources::{
        ConditionStatus, Failure, FailureReason, HistoryEntry, NewCondition, Phase,
        PluginInstallStatus, RolloutOutcome, UpgradeMode,
        conditions::{self, reason},
    },
};

/// Collects the status changes of one plan.
pub struct Outcome<'s> {
    pub status: &'s mut PluginInstallStatus,
    /// The phase the lifecycle continues from (`None` after a spec change).
    pub previous: Option<Phase>,
    /// The phase the status had: transitions are announced from it.
    old_phase: Option<Phase>,
    now: Time,
    generation: Option<i64>,
}

impl<'s> Outcome<'s> {
    pub fn new(
        status: &'s mut PluginInstallStatus,
        previous: Option<Phase>,
        old_phase: Option<Phase>,
        now: Time,
        generation: Option<i64>,
    ) -> Self {
        Self {
            status,
            previous,
            old_phase,
            now,
            generation,
        }
    }

    fn condition(&mut self, type_: &str, status: bool, reason: &str, message: &str) {
        conditions::set_condition(
            &mut self.status.conditions,
            NewCondition::new(type_, ConditionStatus::from(status), reason, message)
                .observed_generation(self.generation),
            self.now.clone(),
        );
    }

    pub fn config_valid(&mut self, valid: bool, reason: &str, message: &str) {
        self.condition(conditions::CONFIG_VALID, valid, reason, message);
    }

    pub fn degraded(&mut self, degraded: bool, reason: &str, message: &str) {
        self.condition(conditions::DEGRADED, degraded, reason, message);
    }

    pub fn phase(&mut self, phase: Phase, message: &str) {
        self.phase_with_reason(phase, phase.as_str(), message);
    }

    /// Sets the phase and the Ready/Progressing conditions that follow from it.
    pub fn phase_with_reason(&mut self, phase: Phase, reason: &str, message: &str) {
        if phase == Phase::Active && self.status.phase != Some(Phase::Active) {
            self.status.activated_at = Some(self.now.clone());
        }
        if phase == Phase::Inactive && self.status.phase != Some(Phase::Inactive) {
            self.status.deactivated_at = Some(self.now.clone());
        }
        self.status.phase = Some(phase);
        let progressing = matches!(
            phase,
            Phase::Starting | Phase::Connecting | Phase::Restarting
        );
        self.condition(conditions::READY, phase == Phase::Active, reason, message);
        self.condition(conditions::PROGRESSING, progressing, reason, message);
    }

    pub fn record_failure(&mut self, failure: &phase::Failure) {
        let reported_by = failure
            .reported_by
            .clone()
            .unwrap_or_else(|| "operator".to_owned());
        let same = self.status.last_failure.as_ref().is_some_and(|f| {
            FailureReason::parse(&f.reason) == Some(failure.reason)
                && f.message == failure.message
                && f.reported_by == reported_by
        });
        if !same {
            self.status.last_failure = Some(Failure {
                reason: failure.reason.as_str().to_owned(),
                message: failure.message.clone(),
                time: self.now.clone(),
                reported_by,
            });
        }
    }

    /// Error: recorded in lastFailure and the conditions; nothing more is restarted.
    pub fn error(&mut self, reason: FailureReason, message: &str, reported_by: Option<&str>) {
        let failure = phase::Failure {
            reason,
            message: message.to_owned(),
            reported_by: reported_by.map(str::to_owned),
        };
        self.record_failure(&failure);
        self.degraded(true, reason.as_str(), message);
        self.phase_with_reason(Phase::Error, reason.as_str(), message);
    }

    pub fn inactive(&mut self) {
        self.status.target_version = None;
        self.degraded(false, reason::INACTIVE, "the install is inactive");
        self.phase(
            Phase::Inactive,
            "spec.active is false: the plugin is stopped",
        );
    }

    pub fn set_available(&mut self, resolution: &Resolution, mode: UpgradeMode) {
        self.status.available_version = resolution.available.as_ref().map(ToString::to_string);
        match &resolution.available {
            Some(available) => {
                let (reason, message) = match mode {
                    UpgradeMode::Manual => (
                        reason::AWAITING_APPROVAL,
                        format!(
                            "version {available} is available; set spec.approvedVersion to {available} to roll it out"
                        ),
                    ),
                    UpgradeMode::Auto => (
                        reason::NEWER_VERSION,
                        format!("version {available} is available"),
                    ),
                };
                self.condition(conditions::UPGRADE_AVAILABLE, true, reason, &message);
            }
            None => self.condition(
                conditions::UPGRADE_AVAILABLE,
                false,
                reason::UP_TO_DATE,
                "no newer version in range",
            ),
        }
    }

    /// Marks `target` as being rolled out (once per rollout).
    pub fn begin_rollout(&mut self, target: &str) {
        if self.status.target_version.as_deref() == Some(target) {
            return;
        }
        if let Some(previous) = self.status.target_version.clone() {
            self.end_rollout(&previous, RolloutOutcome::Superseded);
        }
        self.status.target_version = Some(target.to_owned());
        self.status.push_history(HistoryEntry {
            version: target.to_owned(),
            from: self.now.clone(),
            to: None,
            outcome: RolloutOutcome::Progressing,
        });
    }

    pub fn end_rollout(&mut self, version: &str, outcome: RolloutOutcome) {
        if let Some(entry) = self
            .status
            .history
            .iter_mut()
            .rev()
            .find(|e| e.outcome == RolloutOutcome::Progressing && e.version == version)
        {
            entry.outcome = outcome;
            entry.to = Some(self.now.clone());
        }
    }

    /// The status decided, the transition to announce, and what the children should be.
    pub fn finish<'w>(self, wanted: Wanted<'w>, requeue: Duration) -> Decision<'w> {
        let transition = match (self.old_phase, self.status.phase) {
            (before, Some(after)) if before != Some(after) => {
                // Stamped here, from the phase the status had, not in `phase()`: one plan may
                // set the phase more than once.
                self.status.phase_changed_at = Some(self.now.clone());
                Some(Transition::new(before, after, self.status))
            }
            _ => None,
        };
        Decision {
            wanted,
            status: self.status.clone(),
            transition,
            requeue,
        }
    }
}
