//! Which version an install should run (SPEC §3 "Upgrades"), decided from the plugin's versions,
//! the install's spec and what runs now. Pure: no cluster, no clock.
use semver::Version;

use crate::resources::{UpgradeMode, VersionSelector};

/// A version of the plugin that may run: it exists and is Accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub version: Version,
    /// Formal versions are picked by ranges; drafts only when named exactly.
    pub formal: bool,
}

/// What the install asks for and what it has.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub selector: &'a VersionSelector,
    pub mode: UpgradeMode,
    /// `spec.approvedVersion` (Manual).
    pub approved: Option<&'a Version>,
    /// `status.version`: the last version that became Active.
    pub running: Option<&'a Version>,
    /// `status.failedVersions`: never rolled out again by themselves.
    pub failed: &'a [Version],
}

/// The decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// The version to run.
    pub target: Version,
    /// The newest formal version in range that is newer than the target (seed 000
    /// `updated_version`): what a Manual install waits to have approved.
    pub available: Option<Version>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("version {0} of the plugin does not exist or is not accepted")]
    UnknownVersion(Version),
    #[error("version {0} failed to roll out before; name it again in spec.version to retry")]
    Failed(Version),
    #[error("no formal version of the plugin matches {0}")]
    NoMatch(String),
}

/// Resolves the version to run.
///
/// - An exact `spec.version` runs that version (a draft too). A version that failed is not
///   retried here: the reconciler forgets the failure when the spec names it anew.
/// - A range picks among formal versions that did not fail. `Auto` runs the newest. `Manual`
///   keeps the running version while it is still in range and moves only to `approvedVersion`
///   (when it is in range); a first install, or one whose range no longer holds the running
///   version, starts on the newest.
pub fn resolve(
    request: &Request<'_>,
    candidates: &[Candidate],
) -> Result<Resolution, ResolveError> {
    let is_failed = |v: &Version| request.failed.iter().any(|f| f == v);
    let exists = |v: &Version| candidates.iter().any(|c| &c.version == v);
    let newest_in_range = candidates
        .iter()
        .filter(|c| c.formal && request.selector.matches(&c.version) && !is_failed(&c.version))
        .map(|c| &c.version)
        .max();

    let target = match request.selector.exact() {
        Some(exact) => {
            if !exists(exact) {
                return Err(ResolveError::UnknownVersion(exact.clone()));
            }
            if is_failed(exact) {
                match request.running {
                    Some(running) if exists(running) => running.clone(),
                    _ => return Err(ResolveError::Failed(exact.clone())),
                }
            } else {
                exact.clone()
            }
        }
        None => {
            let in_range = |v: &Version| {
                candidates.iter().any(|c| &c.version == v && c.formal)
                    && request.selector.matches(v)
                    && !is_failed(v)
            };
            let kept = match request.mode {
                UpgradeMode::Auto => None,
                UpgradeMode::Manual => request
                    .approved
                    .filter(|v| in_range(v))
                    .or(request.running.filter(|v| in_range(v))),
            };
            match kept.or(newest_in_range) {
                Some(v) => v.clone(),
                None => return Err(ResolveError::NoMatch(selector_text(request.selector))),
            }
        }
    };
    let available = newest_in_range.filter(|newest| **newest > target).cloned();
    Ok(Resolution { target, available })
}

fn selector_text(selector: &VersionSelector) -> String {
    match selector {
        VersionSelector::Exact(v) => v.to_string(),
        VersionSelector::Range(req) => req.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("test version")
    }

    fn formal(s: &str) -> Candidate {
        Candidate {
            version: v(s),
            formal: true,
        }
    }

    fn draft(s: &str) -> Candidate {
        Candidate {
            version: v(s),
            formal: false,
        }
    }

    fn sel(s: &str) -> VersionSelector {
        VersionSelector::parse(s).expect("test selector")
    }

    fn req<'a>(selector: &'a VersionSelector, mode: UpgradeMode) -> Request<'a> {
        Request {
            selector,
            mode,
            approved: None,
            running: None,
            failed: &[],
        }
    }

    #[test]
    fn first_install_takes_newest_formal_in_range() {
        let versions = [
            formal("1.2.0"),
            formal("1.4.1"),
            formal("2.0.0"),
            draft("1.9.0"),
        ];
        for mode in [UpgradeMode::Auto, UpgradeMode::Manual] {
            let s = sel("^1.2");
            let got = resolve(&req(&s, mode), &versions).expect("resolves");
            assert_eq!(
                got,
                Resolution {
                    target: v("1.4.1"),
                    available: None
                }
            );
        }
    }

    #[test]
    fn ranges_of_every_form() {
        let versions = [
            formal("1.2.0"),
            formal("1.3.5"),
            formal("1.4.2"),
            formal("2.1.0"),
        ];
        let cases = [
            ("~1.3", "1.3.5"),
            (">=1.2 <2", "1.4.2"),
            ("*", "2.1.0"),
            ("1.2.x", "1.2.0"),
            ("1", "1.4.2"),
        ];
        for (range, expected) in cases {
            let s = sel(range);
            let got = resolve(&req(&s, UpgradeMode::Auto), &versions).expect(range);
            assert_eq!(got.target, v(expected), "{range}");
        }
    }

    #[test]
    fn drafts_are_ignored_by_ranges_but_run_when_named_exactly() {
        let versions = [formal("1.0.0"), draft("1.1.0")];
        let star = sel("*");
        assert_eq!(
            resolve(&req(&star, UpgradeMode::Auto), &versions).map(|r| r.target),
            Ok(v("1.0.0"))
        );
        let exact = sel("1.1.0");
        assert_eq!(
            resolve(&req(&exact, UpgradeMode::Manual), &versions).map(|r| r.target),
            Ok(v("1.1.0"))
        );
    }

    #[test]
    fn pre_releases_match_only_ranges_that_name_them() {
        let versions = [formal("1.0.0"), formal("1.1.0-rc.1")];
        let caret = sel("^1.0");
        assert_eq!(
            resolve(&req(&caret, UpgradeMode::Auto), &versions).map(|r| r.target),
            Ok(v("1.0.0"))
        );
        let pre = sel(">=1.1.0-rc.0");
        assert_eq!(
            resolve(&req(&pre, UpgradeMode::Auto), &versions).map(|r| r.target),
            Ok(v("1.1.0-rc.1"))
        );
    }

    #[test]
    fn auto_moves_to_the_newest() {
        let versions = [formal("1.0.0"), formal("1.1.0")];
        let s = sel("^1");
        let running = v("1.0.0");
        let r = Request {
            running: Some(&running),
            ..req(&s, UpgradeMode::Auto)
        };
        assert_eq!(
            resolve(&r, &versions),
            Ok(Resolution {
                target: v("1.1.0"),
                available: None
            })
        );
    }

    #[test]
    fn manual_stays_and_publishes_available_until_approved() {
        let versions = [formal("1.0.0"), formal("1.1.0"), formal("1.2.0")];
        let s = sel("^1");
        let running = v("1.0.0");
        let r = Request {
            running: Some(&running),
            ..req(&s, UpgradeMode::Manual)
        };
        assert_eq!(
            resolve(&r, &versions),
            Ok(Resolution {
                target: v("1.0.0"),
                available: Some(v("1.2.0"))
            })
        );

        let approved = v("1.1.0");
        let r = Request {
            approved: Some(&approved),
            ..r
        };
        assert_eq!(
            resolve(&r, &versions),
            Ok(Resolution {
                target: v("1.1.0"),
                available: Some(v("1.2.0"))
            })
        );
    }

    #[test]
    fn manual_ignores_an_approval_outside_the_range_or_unknown() {
        let versions = [formal("1.0.0"), formal("2.0.0")];
        let s = sel("^1");
        let running = v("1.0.0");
        for approved in [v("2.0.0"), v("1.5.0")] {
            let r = Request {
                running: Some(&running),
                approved: Some(&approved),
                ..req(&s, UpgradeMode::Manual)
            };
            assert_eq!(resolve(&r, &versions).map(|r| r.target), Ok(v("1.0.0")));
        }
    }

    #[test]
    fn manual_moves_when_the_range_no_longer_holds_the_running_version() {
        let versions = [formal("1.0.0"), formal("2.0.0"), formal("2.1.0")];
        let s = sel("^2");
        let running = v("1.0.0");
        let r = Request {
            running: Some(&running),
            ..req(&s, UpgradeMode::Manual)
        };
        assert_eq!(resolve(&r, &versions).map(|r| r.target), Ok(v("2.1.0")));
    }

    #[test]
    fn failed_versions_are_skipped() {
        let versions = [formal("1.0.0"), formal("1.1.0")];
        let s = sel("^1");
        let running = v("1.0.0");
        let failed = [v("1.1.0")];
        let r = Request {
            running: Some(&running),
            failed: &failed,
            ..req(&s, UpgradeMode::Auto)
        };
        assert_eq!(
            resolve(&r, &versions),
            Ok(Resolution {
                target: v("1.0.0"),
                available: None
            })
        );

        let exact = sel("1.1.0");
        let r = Request {
            selector: &exact,
            ..r
        };
        assert_eq!(resolve(&r, &versions).map(|r| r.target), Ok(v("1.0.0")));
        let r = Request { running: None, ..r };
        assert_eq!(
            resolve(&r, &versions),
            Err(ResolveError::Failed(v("1.1.0")))
        );
    }

    #[test]
    fn unknown_and_unmatched_versions_are_errors() {
        let versions = [formal("1.0.0"), draft("3.0.0")];
        let exact = sel("1.0.9");
        assert_eq!(
            resolve(&req(&exact, UpgradeMode::Auto), &versions),
            Err(ResolveError::UnknownVersion(v("1.0.9")))
        );
        let range = sel("^3");
        assert!(matches!(
            resolve(&req(&range, UpgradeMode::Auto), &versions),
            Err(ResolveError::NoMatch(_))
        ));
        assert!(matches!(
            resolve(&req(&range, UpgradeMode::Auto), &[]),
            Err(ResolveError::NoMatch(_))
        ));
    }
}
