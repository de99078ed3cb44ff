//! A plugin's versions as the decisions see them: each number parsed once, whether the operator
//! accepted it for its current spec, and which may run.
use std::sync::Arc;

use kube::Resource;
use semver::Version;

use super::resolve::Candidate;
use crate::resources::{
    PluginVersion,
    conditions::{self, ConditionStatus},
    validate,
};

/// The number of a PluginVersion, or `None` when `spec.version` is not semver (the version is
/// then refused by its own controller and never runs).
pub fn number(version: &PluginVersion) -> Option<Version> {
    version.spec.number()
}

/// Accepted, and the acceptance is about the current spec: the generation it was decided for,
/// or (for a formal version, whose generation also moves when it is being deleted) the spec's
/// fingerprint.
pub fn is_accepted(version: &PluginVersion) -> bool {
    let Some(status) = &version.status else {
        return false;
    };
    let Some(accepted) = conditions::find_condition(&status.conditions, conditions::ACCEPTED)
    else {
        return false;
    };
    if ConditionStatus::of(accepted) != ConditionStatus::True {
        return false;
    }
    accepted.observed_generation == version.meta().generation
        || (version.spec.is_formal()
            && status.accepted_spec_hash.as_deref()
                == Some(validate::spec_hash(&version.spec).as_str()))
}

/// Whether the operator has not decided yet on a version's acceptance (just created or
/// changed).
pub fn is_pending(version: &PluginVersion) -> bool {
    version.status.as_ref().and_then(|s| s.observed_generation) != version.meta().generation
}

/// A plugin's versions, each number parsed once.
#[derive(Clone, Debug, Default)]
pub struct Versions<'a> {
    numbered: Vec<(Version, &'a PluginVersion)>,
    pending: bool,
}

impl<'a> Versions<'a> {
    pub fn new(versions: &'a [Arc<PluginVersion>]) -> Self {
        Self {
            numbered: versions
                .iter()
                .filter_map(|v| Some((number(v)?, v.as_ref())))
                .collect(),
            pending: versions.iter().any(|v| is_pending(v)),
        }
    }

    /// Some version waits for the operator to decide on its acceptance.
    pub fn any_pending(&self) -> bool {
        self.pending
    }

    /// The PluginVersion with this number (the first one, when a duplicate waits to be refused).
    pub fn get(&self, number: &Version) -> Option<&'a PluginVersion> {
        self.numbered
            .iter()
            .find(|(n, _)| n == number)
            .map(|(_, v)| *v)
    }

    /// Versions that may run: Accepted for their current spec.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.numbered
            .iter()
            .filter(|(_, v)| is_accepted(v))
            .map(|(number, v)| Candidate {
                version: number.clone(),
                formal: v.spec.is_formal(),
            })
            .collect()
    }
}

/// Versions that may run: Accepted for their current spec.
pub fn candidates(versions: &[Arc<PluginVersion>]) -> Vec<Candidate> {
    Versions::new(versions).candidates()
}
