//! Where rules run, pure: takes the validated rules and the objects of a backup's scope; gives
//! the pods rules may run in ([`pod_targets`]) and, per rule item and pod, the chain of
//! actions to run there and in which container ([`plan_chains`]), with a problem message for
//! each item that has nowhere to run. Must not run anything.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::hooks::rules::{Action, Rule};

/// A pod that rules may run in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Container names in spec order.
    pub containers: Vec<String>,
}

/// The pods among exported objects that rules can run in: not finished (phase `Succeeded` or
/// `Failed`) and not being deleted. Sorted by namespace and name.
pub fn pod_targets<'a>(objects: impl IntoIterator<Item = &'a Value>) -> Vec<PodTarget> {
    let mut out: Vec<PodTarget> = objects
        .into_iter()
        .filter(|v| v.get("kind").and_then(Value::as_str) == Some("Pod"))
        .filter(|v| {
            !matches!(
                v.pointer("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed")
            ) && v.pointer("/metadata/deletionTimestamp").is_none()
        })
        .filter_map(|v| {
            let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
            Some(PodTarget {
                namespace: s("/metadata/namespace")?,
                name: s("/metadata/name")?,
                labels: v
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default(),
                containers: v
                    .pointer("/spec/containers")
                    .and_then(Value::as_array)
                    .map(|cs| {
                        cs.iter()
                            .filter_map(|c| c.get("name")?.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

/// Which phase a rule runs in (stored in each action's record).
pub use crate::format::RulePhase as Phase;

/// The actions of one rule item in one pod, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub rule: usize,
    pub pod: PodTarget,
    pub container: String,
    pub actions: Vec<Action>,
}

/// Plans where each rule's actions run (pure). A rule item that selects no pod, or whose
/// container a pod lacks, is a problem message instead, which the backup records as a
/// warning: there is nothing to hold quiet there.
pub fn plan_chains(rules: &[Rule], pods: &[PodTarget]) -> (Vec<Chain>, Vec<String>) {
    let mut chains = Vec::new();
    let mut problems = Vec::new();
    for (ri, rule) in rules.iter().enumerate() {
        for (ii, item) in rule.items.iter().enumerate() {
            let selected: Vec<&PodTarget> = pods
                .iter()
                .filter(|p| {
                    item.pod_selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
                })
                .collect();
            if selected.is_empty() {
                problems.push(format!(
                    "rule {} ({}): spec.rules[{ii}] selects no running pod ({})",
                    rule.name,
                    rule.file,
                    item.pod_selector
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ));
                continue;
            }
            // Actions that need only one pod run in the first; the others in every pod.
            for (pi, pod) in selected.iter().enumerate() {
                let actions: Vec<Action> = item
                    .actions
                    .iter()
                    .filter(|a| pi == 0 || !a.run_in_single_pod)
                    .cloned()
                    .collect();
                if actions.is_empty() {
                    continue;
                }
                let container = match &item.container {
                    Some(c) if pod.containers.iter().any(|x| x == c) => c.clone(),
                    Some(c) => {
                        problems.push(format!(
                            "rule {}: pod {}/{} has no container `{c}` (it has {})",
                            rule.name,
                            pod.namespace,
                            pod.name,
                            pod.containers.join(", ")
                        ));
                        continue;
                    }
                    None => match pod.containers.first() {
                        Some(c) => c.clone(),
                        None => {
                            problems.push(format!(
                                "rule {}: pod {}/{} lists no container",
                                rule.name, pod.namespace, pod.name
                            ));
                            continue;
                        }
                    },
                };
                chains.push(Chain {
                    rule: ri,
                    pod: (*pod).clone(),
                    container,
                    actions,
                });
            }
        }
    }
    (chains, problems)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::rules::{parse_rules, EXAMPLE_RULE};

    fn pod(ns: &str, name: &str, app: &str, containers: &[&str]) -> PodTarget {
        PodTarget {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            containers: containers.iter().map(|c| c.to_string()).collect(),
        }
    }

    #[test]
    fn chains_follow_selectors_single_pod_and_containers() {
        let mut rules = parse_rules("pre.yaml", EXAMPLE_RULE).unwrap();
        rules[0].items[0].actions.push(Action {
            command: "once".into(),
            background: false,
            run_in_single_pod: true,
        });
        let pods = vec![
            pod("db", "c-0", "cassandra", &["cassandra", "sidecar"]),
            pod("db", "c-1", "cassandra", &["cassandra"]),
            pod("db", "c-2", "cassandra", &["other"]),
            pod("db", "web", "web", &["nginx"]),
        ];
        let (chains, problems) = plan_chains(&rules, &pods);
        let got: Vec<(String, usize)> = chains
            .iter()
            .map(|c| (c.pod.name.clone(), c.actions.len()))
            .collect();
        assert_eq!(got, vec![("c-0".into(), 2), ("c-1".into(), 1)]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("c-2 has no container `cassandra`"));
        let (_, problems) = plan_chains(&rules, &pods[3..]);
        assert!(problems[0].contains("selects no running pod (app=cassandra)"));
    }

    #[test]
    fn finished_pods_are_not_targets() {
        let objs: Vec<Value> = vec![
            serde_json::json!({"kind":"Pod","metadata":{"namespace":"a","name":"run","labels":{"app":"x"}},
                "spec":{"containers":[{"name":"c"}]},"status":{"phase":"Running"}}),
            serde_json::json!({"kind":"Pod","metadata":{"namespace":"a","name":"done"},
                "spec":{"containers":[{"name":"c"}]},"status":{"phase":"Succeeded"}}),
            serde_json::json!({"kind":"Service","metadata":{"namespace":"a","name":"svc"}}),
        ];
        let t = pod_targets(&objs);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].name, "run");
        assert_eq!(t[0].containers, vec!["c".to_string()]);
    }
}
