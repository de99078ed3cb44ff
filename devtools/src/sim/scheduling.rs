//! The scheduler's part: does a pod fit the simulated node? Pure.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod};

/// The scheduler this simulator plays.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// Why a pod does not fit the node: the message a scheduler puts on PodScheduled=False.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfit(pub String);

/// Whether this simulator should schedule the pod at all (it names no other scheduler).
pub fn is_ours(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduler_name.as_deref())
        .is_none_or(|name| name.is_empty() || name == DEFAULT_SCHEDULER)
}

/// Checks the pod's `nodeSelector` and required node affinity against the node.
pub fn fits(pod: &Pod, node_name: &str, labels: &BTreeMap<String, String>) -> Result<(), Unfit> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(());
    };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if !selector_ok {
        return Err(unfit("didn't match node selector"));
    }
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|sel| sel.node_selector_terms.as_slice());
    match terms {
        // The terms are ORed; an empty list matches nothing.
        Some(terms) if !terms.iter().any(|t| term_matches(t, node_name, labels)) => {
            Err(unfit("didn't match Pod's node affinity"))
        }
        _ => Ok(()),
    }
}

fn unfit(why: &str) -> Unfit {
    Unfit(format!("0/1 nodes are available: 1 node(s) {why}."))
}

fn term_matches(
    term: &NodeSelectorTerm,
    node_name: &str,
    labels: &BTreeMap<String, String>,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        // An empty term matches no objects.
        return false;
    }
    let fields_ok = fields.iter().all(|req| {
        let value = (req.key == "metadata.name").then_some(node_name);
        requirement_matches(req, value)
    });
    fields_ok
        && expressions
            .iter()
            .all(|req| requirement_matches(req, labels.get(&req.key).map(String::as_str)))
}

fn requirement_matches(req: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = req.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match req.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(number),
                values.first().and_then(|w| number(w)),
            ) else {
                return false;
            };
            if req.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Affinity, NodeAffinity, NodeSelector, PodSpec};

    use super::*;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("kubernetes.io/hostname".to_string(), "sim-node".to_string()),
            ("kubernetes.io/os".to_string(), "linux".to_string()),
            ("capacity".to_string(), "64".to_string()),
        ])
    }

    fn pod(selector: &[(&str, &str)], terms: Option<Vec<NodeSelectorTerm>>) -> Pod {
        Pod {
            spec: Some(PodSpec {
                node_selector: Some(
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                affinity: terms.map(|node_selector_terms| Affinity {
                    node_affinity: Some(NodeAffinity {
                        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                            node_selector_terms,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn req(key: &str, op: &str, values: &[&str]) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    fn term(reqs: Vec<NodeSelectorRequirement>) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: Some(reqs),
            ..Default::default()
        }
    }

    #[test]
    fn node_selector_must_match_labels() {
        assert_eq!(fits(&pod(&[], None), "sim-node", &labels()), Ok(()));
        assert_eq!(
            fits(
                &pod(&[("kubernetes.io/os", "linux")], None),
                "sim-node",
                &labels()
            ),
            Ok(())
        );
        let err = fits(&pod(&[("disktype", "ssd")], None), "sim-node", &labels());
        assert_eq!(
            err,
            Err(Unfit(
                "0/1 nodes are available: 1 node(s) didn't match node selector.".into()
            ))
        );
        assert!(
            fits(
                &pod(&[("kubernetes.io/os", "windows")], None),
                "sim-node",
                &labels()
            )
            .is_err()
        );
    }

    #[test]
    fn required_node_affinity_is_honored() {
        let l = labels();
        let ok = |terms| fits(&pod(&[], Some(terms)), "sim-node", &l).is_ok();
        assert!(ok(vec![term(vec![req(
            "kubernetes.io/os",
            "In",
            &["linux", "darwin"]
        )])]));
        assert!(!ok(vec![term(vec![req(
            "kubernetes.io/os",
            "NotIn",
            &["linux"]
        )])]));
        assert!(ok(vec![term(vec![req("gpu", "DoesNotExist", &[])])]));
        assert!(!ok(vec![term(vec![req("gpu", "Exists", &[])])]));
        assert!(ok(vec![term(vec![req("capacity", "Gt", &["10"])])]));
        assert!(!ok(vec![term(vec![req("capacity", "Lt", &["10"])])]));
        // Terms are ORed.
        assert!(ok(vec![
            term(vec![req("gpu", "Exists", &[])]),
            term(vec![req("kubernetes.io/hostname", "In", &["sim-node"])]),
        ]));
        assert!(!ok(vec![]));
        let by_name = NodeSelectorTerm {
            match_fields: Some(vec![req("metadata.name", "In", &["sim-node"])]),
            ..Default::default()
        };
        assert!(ok(vec![by_name]));
    }

    #[test]
    fn only_the_default_scheduler_is_ours() {
        let mut p = pod(&[], None);
        assert!(is_ours(&p));
        if let Some(s) = p.spec.as_mut() {
            s.scheduler_name = Some("custom".into());
        }
        assert!(!is_ours(&p));
    }
}
