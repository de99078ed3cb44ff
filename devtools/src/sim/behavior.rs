//! What a simulated pod does (SPEC §6): the behavior knob and where it comes from.
use std::{fmt, str::FromStr};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};

/// The env var on a pod's first container that selects its behavior.
pub const BEHAVIOR_ENV: &str = "SIM_BEHAVIOR";
/// The ConfigMap (in the pod's namespace) whose keys are install names and values behaviors.
pub const OVERRIDES_CONFIG_MAP: &str = "plugin-sim";
/// The pod label that names the install a pod belongs to (the key into [`OVERRIDES_CONFIG_MAP`]).
pub const INSTALL_LABEL: &str = "plugin-operator.dev/install";

/// Longest `slow:<seconds>` delay honored; larger values are clamped.
const MAX_SLOW_MILLIS: i64 = 24 * 3600 * 1000;

/// How every container of a simulated pod behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Running right away, Ready after about a second.
    Ready,
    /// Running, Ready after this many milliseconds.
    Slow { millis: i64 },
    /// Running, never Ready.
    NeverReady,
    /// Crash loop with a short, capped back-off; never Ready.
    Crash,
    /// The image never pulls: ErrImagePull / ImagePullBackOff; never Ready.
    PullError,
}

impl fmt::Display for Behavior {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Behavior::Ready => f.write_str("ready"),
            Behavior::Slow { millis } => write!(f, "slow:{}", *millis as f64 / 1000.0),
            Behavior::NeverReady => f.write_str("never-ready"),
            Behavior::Crash => f.write_str("crash"),
            Behavior::PullError => f.write_str("pull-error"),
        }
    }
}

/// A behavior string that is not one of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown behavior {0:?} (expected ready, slow:<seconds>, never-ready, crash or pull-error)"
)]
pub struct UnknownBehavior(pub String);

impl FromStr for Behavior {
    type Err = UnknownBehavior;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let value = raw.trim();
        match value {
            "ready" => return Ok(Behavior::Ready),
            "never-ready" => return Ok(Behavior::NeverReady),
            "crash" => return Ok(Behavior::Crash),
            "pull-error" => return Ok(Behavior::PullError),
            _ => {}
        }
        let seconds = value
            .strip_prefix("slow:")
            .map(|s| s.trim().trim_end_matches('s'))
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| UnknownBehavior(value.to_string()))?;
        let millis = (seconds * 1000.0).round().min(MAX_SLOW_MILLIS as f64) as i64;
        Ok(Behavior::Slow { millis })
    }
}

/// Where a pod's behavior came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The `plugin-sim` ConfigMap, keyed by the pod's install name.
    ConfigMap,
    /// The first container's `SIM_BEHAVIOR` env var.
    Env,
    /// Neither is set.
    Default,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::ConfigMap => "ConfigMap plugin-sim",
            Source::Env => "env SIM_BEHAVIOR",
            Source::Default => "default",
        })
    }
}

/// The behavior chosen for a pod, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub behavior: Behavior,
    pub source: Source,
    /// Set when the configured string was not understood (the pod then behaves as `ready`).
    pub unknown: Option<UnknownBehavior>,
}

/// Chooses a pod's behavior: the `plugin-sim` ConfigMap entry for its install wins over the first
/// container's env, and `ready` is the default. An unknown string counts as `ready`.
pub fn choose(pod: &Pod, overrides: Option<&ConfigMap>) -> Choice {
    let install = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(INSTALL_LABEL));
    let from_config_map = install.and_then(|install| {
        overrides
            .and_then(|cm| cm.data.as_ref())
            .and_then(|data| data.get(install))
    });
    let from_env = || {
        pod.spec
            .as_ref()
            .and_then(|spec| spec.containers.first())
            .and_then(|container| container.env.as_ref())
            .and_then(|env| env.iter().find(|var| var.name == BEHAVIOR_ENV))
            .and_then(|var| var.value.as_ref())
    };
    let (raw, source) = match from_config_map {
        Some(raw) => (Some(raw), Source::ConfigMap),
        None => match from_env() {
            Some(raw) => (Some(raw), Source::Env),
            None => (None, Source::Default),
        },
    };
    match raw.map(|raw| raw.parse::<Behavior>()) {
        None => Choice {
            behavior: Behavior::Ready,
            source,
            unknown: None,
        },
        Some(Ok(behavior)) => Choice {
            behavior,
            source,
            unknown: None,
        },
        Some(Err(unknown)) => Choice {
            behavior: Behavior::Ready,
            source,
            unknown: Some(unknown),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::{Container, EnvVar, PodSpec};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(install: Option<&str>, env: Option<&str>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                labels: install
                    .map(|i| BTreeMap::from([(INSTALL_LABEL.to_string(), i.to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    env: env.map(|value| {
                        vec![EnvVar {
                            name: BEHAVIOR_ENV.into(),
                            value: Some(value.into()),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn overrides(entries: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn parses_every_behavior() {
        assert_eq!("ready".parse(), Ok(Behavior::Ready));
        assert_eq!(" never-ready ".parse(), Ok(Behavior::NeverReady));
        assert_eq!("crash".parse(), Ok(Behavior::Crash));
        assert_eq!("pull-error".parse(), Ok(Behavior::PullError));
        assert_eq!("slow:5".parse(), Ok(Behavior::Slow { millis: 5000 }));
        assert_eq!("slow:2.5s".parse(), Ok(Behavior::Slow { millis: 2500 }));
        assert_eq!(
            "slow:1e12".parse(),
            Ok(Behavior::Slow {
                millis: MAX_SLOW_MILLIS
            })
        );
        assert!("slow:-1".parse::<Behavior>().is_err());
        assert!("slow:".parse::<Behavior>().is_err());
        assert!("explode".parse::<Behavior>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for b in [
            Behavior::Ready,
            Behavior::Slow { millis: 1500 },
            Behavior::NeverReady,
            Behavior::Crash,
            Behavior::PullError,
        ] {
            assert_eq!(b.to_string().parse(), Ok(b));
        }
    }

    #[test]
    fn default_is_ready() {
        let choice = choose(&pod(None, None), None);
        assert_eq!(choice.behavior, Behavior::Ready);
        assert_eq!(choice.source, Source::Default);
    }

    #[test]
    fn env_is_used_without_override() {
        let choice = choose(
            &pod(Some("demo"), Some("crash")),
            Some(&overrides(&[("other", "never-ready")])),
        );
        assert_eq!(choice.behavior, Behavior::Crash);
        assert_eq!(choice.source, Source::Env);
    }

    #[test]
    fn config_map_overrides_env_for_its_install() {
        let choice = choose(
            &pod(Some("demo"), Some("crash")),
            Some(&overrides(&[("demo", "slow:3")])),
        );
        assert_eq!(choice.behavior, Behavior::Slow { millis: 3000 });
        assert_eq!(choice.source, Source::ConfigMap);
        // A pod without the install label is not overridden.
        let choice = choose(&pod(None, None), Some(&overrides(&[("demo", "crash")])));
        assert_eq!(choice.behavior, Behavior::Ready);
    }

    #[test]
    fn unknown_behavior_counts_as_ready() {
        let choice = choose(&pod(None, Some("explode")), None);
        assert_eq!(choice.behavior, Behavior::Ready);
        assert_eq!(choice.unknown, Some(UnknownBehavior("explode".into())));
    }
}
