//! What `PluginInstall.spec.version` means: one exact version, or a range of versions.

use std::fmt;

use semver::{Version, VersionReq};

/// A parsed `spec.version` of a PluginInstall.
///
/// - `1.4.0` (or `=1.4.0`, `v1.4.0`): exactly that version, formal or draft.
/// - `*`, `x` or empty: any version.
/// - `^1.3`, `~1.4`, `1.4.x`, `>=1.2 <2`, `>=1.2, <2`: a range (comparators separated by
///   spaces or commas must all hold). A bare partial version (`1.4`, `1`) means `1.4.x` / `1.x`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionSelector {
    Exact(Version),
    Range(VersionReq),
}

impl VersionSelector {
    /// Parses a `spec.version`. The error says what is wrong, for people.
    pub fn parse(input: &str) -> Result<Self, String> {
        let trimmed = input.trim();
        if matches!(trimmed, "" | "*" | "x" | "X") {
            return Ok(Self::Range(VersionReq::STAR));
        }
        let exact = trimmed
            .strip_prefix('=')
            .map(str::trim_start)
            .unwrap_or(trimmed);
        let exact = exact.strip_prefix('v').unwrap_or(exact);
        if let Ok(version) = Version::parse(exact) {
            return Ok(Self::Exact(version));
        }
        let normalized = normalize_range(trimmed);
        VersionReq::parse(&normalized)
            .map(Self::Range)
            .map_err(|err| {
                format!(
                    "{input:?} is neither a version (1.4.0) nor a range (^1.3, ~1.4, >=1.2 <2, *): {err}"
                )
            })
    }

    /// Whether `version` is selected. Ranges follow semver rules: a pre-release matches only a
    /// comparator that names a pre-release of the same `MAJOR.MINOR.PATCH`.
    pub fn matches(&self, version: &Version) -> bool {
        match self {
            Self::Exact(exact) => exact.cmp_precedence(version).is_eq(),
            Self::Range(req) => req.matches(version),
        }
    }

    /// The version, when exactly one is named (only then may a draft be used).
    pub fn exact(&self) -> Option<&Version> {
        match self {
            Self::Exact(version) => Some(version),
            Self::Range(_) => None,
        }
    }
}

impl fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(version) => write!(f, "{version}"),
            Self::Range(req) => write!(f, "{req}"),
        }
    }
}

/// Rewrites space-separated comparators (`>=1.2 <2`) into the comma-separated form the `semver`
/// crate reads, and gives operator-less partial versions their `x`-range meaning (`1.4` → `=1.4`,
/// where the `semver` crate's own default would be `^1.4`).
fn normalize_range(input: &str) -> String {
    let spaced = input.replace(',', " ");
    let mut comparators: Vec<String> = Vec::new();
    let mut pending_op = String::new();
    for token in spaced.split_whitespace() {
        if token
            .chars()
            .all(|c| matches!(c, '<' | '>' | '=' | '~' | '^'))
        {
            pending_op.push_str(token);
            continue;
        }
        let mut comparator = std::mem::take(&mut pending_op);
        let has_op = !comparator.is_empty() || token.starts_with(['<', '>', '=', '~', '^']);
        let core = token.split(['-', '+']).next().unwrap_or(token);
        let is_wildcard = core.contains(['*', 'x', 'X']);
        if !has_op && !is_wildcard {
            comparator.push('=');
        }
        comparator.push_str(token.strip_prefix('v').unwrap_or(token));
        comparators.push(comparator);
    }
    if !pending_op.is_empty() {
        comparators.push(pending_op);
    }
    comparators.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).expect("valid version")
    }

    fn sel(s: &str) -> VersionSelector {
        VersionSelector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn exact_versions() {
        for input in ["1.4.0", "=1.4.0", "v1.4.0", " 1.4.0 ", "= 1.4.0"] {
            let s = sel(input);
            assert_eq!(s.exact(), Some(&v("1.4.0")), "{input}");
            assert!(s.matches(&v("1.4.0")));
            assert!(!s.matches(&v("1.4.1")));
        }
        assert!(sel("1.4.0-rc.1").matches(&v("1.4.0-rc.1")));
        assert!(
            sel("1.4.0").matches(&v("1.4.0+build.5")),
            "build metadata is ignored"
        );
    }

    #[test]
    fn any_version() {
        for input in ["*", "", "x"] {
            let s = sel(input);
            assert!(s.exact().is_none());
            assert!(s.matches(&v("0.1.0")) && s.matches(&v("9.9.9")), "{input}");
            assert!(
                !s.matches(&v("2.0.0-rc.1")),
                "pre-releases need to be asked for"
            );
        }
    }

    #[test]
    fn caret_and_tilde() {
        let caret = sel("^1.3");
        assert!(caret.matches(&v("1.3.0")) && caret.matches(&v("1.9.2")));
        assert!(!caret.matches(&v("2.0.0")) && !caret.matches(&v("1.2.9")));
        let tilde = sel("~1.4");
        assert!(tilde.matches(&v("1.4.7")));
        assert!(!tilde.matches(&v("1.5.0")));
    }

    #[test]
    fn comparators_with_spaces_or_commas() {
        for input in [">=1.2 <2", ">=1.2, <2", ">= 1.2 < 2", ">=1.2,<2"] {
            let s = sel(input);
            assert!(s.matches(&v("1.2.0")) && s.matches(&v("1.99.0")), "{input}");
            assert!(
                !s.matches(&v("2.0.0")) && !s.matches(&v("1.1.9")),
                "{input}"
            );
        }
    }

    #[test]
    fn partial_versions_are_x_ranges() {
        let s = sel("1.4");
        assert!(s.matches(&v("1.4.0")) && s.matches(&v("1.4.9")));
        assert!(!s.matches(&v("1.5.0")));
        let s = sel("1.4.x");
        assert!(s.matches(&v("1.4.3")) && !s.matches(&v("1.5.0")));
        let s = sel("1");
        assert!(s.matches(&v("1.9.0")) && !s.matches(&v("2.0.0")));
    }

    #[test]
    fn garbage_is_refused_with_the_input_in_the_message() {
        for input in ["latest", "1.2.3.4", ">=", "^", "1..2"] {
            let err = VersionSelector::parse(input).expect_err(input);
            assert!(err.contains(&format!("{input:?}")), "{err}");
        }
    }
}
