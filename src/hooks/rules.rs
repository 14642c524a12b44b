//! Rule documents, pure: takes `Rule` YAML (Kubernetes-shaped, `lifeboat.dev/v1alpha1`);
//! gives validated, typed [`Rule`]s whose errors name the file, the rule and the field, and
//! the duration syntax (`60s`, `1m30s`) rules and flags share. No IO beyond reading the file;
//! must not know of pods or of running anything.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::hooks::HookError;

/// The API version and kind of a rule document.
pub const RULE_API_VERSION: &str = "lifeboat.dev/v1alpha1";
/// Expands, in a background action, to the snippet that reports ready and waits.
pub const WAIT_CMD: &str = "${WAIT_CMD}";

pub use crate::crd::OnError;

/// One validated action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub command: String,
    pub background: bool,
    pub run_in_single_pod: bool,
}

/// Pods that a set of actions runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleItem {
    pub pod_selector: BTreeMap<String, String>,
    pub container: Option<String>,
    pub actions: Vec<Action>,
}

/// A validated `Rule` document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    /// The file it came from, for messages.
    pub file: String,
    pub items: Vec<RuleItem>,
    pub on_error: OnError,
    pub timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RuleDoc {
    api_version: String,
    kind: String,
    metadata: MetaDoc,
    spec: SpecDoc,
}

/// The metadata of a Kubernetes-shaped configuration document (rules, schedules): a name,
/// and the fields kubectl users write that lifeboat accepts and does not use.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetaDoc {
    pub(crate) name: String,
    #[serde(default, rename = "namespace")]
    _namespace: Option<String>,
    #[serde(default, rename = "labels")]
    _labels: BTreeMap<String, String>,
    #[serde(default, rename = "annotations")]
    _annotations: BTreeMap<String, String>,
}

use crate::crd::{ActionSpec as ActionDoc, RuleSpec as SpecDoc};

/// Parses a duration such as `60s`, `5m`, `1m30s`, `1h`, `500ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty duration; write e.g. 60s, 5m or 1m30s".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "`{text}` is not a duration; write e.g. 60s, 5m or 1m30s"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{text}`: number too large"))?;
        rest = &rest[digits..];
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let d = match &rest[..unit] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            u => {
                return Err(format!(
                    "`{text}`: unknown unit `{u}`; use ms, s, m or h (e.g. 60s, 1m30s)"
                ))
            }
        };
        total = total.saturating_add(d);
        rest = &rest[unit..];
    }
    Ok(total)
}

/// Reads and validates every `Rule` in a YAML file (several documents may be separated by
/// `---`). Errors name the file, the rule and the field.
pub fn load_rules(path: &Path) -> Result<Vec<Rule>, HookError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| HookError::Read {
        path: p.clone(),
        reason: e.to_string(),
    })?;
    parse_rules(&p, &text)
}

/// [`load_rules`] on text.
pub fn parse_rules(path: &str, text: &str) -> Result<Vec<Rule>, HookError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml_ng::Value::deserialize(doc).map_err(|e| HookError::Read {
            path: path.to_string(),
            reason: format!("not YAML: {e}"),
        })?;
        if v.is_null() {
            continue;
        }
        let d: RuleDoc = serde_yaml_ng::from_value(v).map_err(|e| HookError::Invalid {
            path: path.to_string(),
            what: format!("document {}", i + 1),
            reason: e.to_string(),
        })?;
        out.push(validate(path, d)?);
    }
    if out.is_empty() {
        return Err(HookError::Read {
            path: path.to_string(),
            reason: "holds no Rule document".into(),
        });
    }
    let mut names: Vec<&str> = out.iter().map(|r| r.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(HookError::Invalid {
            path: path.to_string(),
            what: format!("Rule {}", w[0]),
            reason: "the name is used twice in this file".into(),
        });
    }
    Ok(out)
}

fn validate(path: &str, d: RuleDoc) -> Result<Rule, HookError> {
    if d.api_version != RULE_API_VERSION || d.kind != "Rule" {
        return Err(HookError::Invalid {
            path: path.to_string(),
            what: format!("Rule {}: apiVersion/kind", d.metadata.name),
            reason: format!(
                "is {}/{}; a rule is apiVersion: {RULE_API_VERSION}, kind: Rule",
                d.api_version, d.kind
            ),
        });
    }
    rule_of(path, &d.metadata.name, d.spec)
}

/// A rule's spec (a file's document, or a `Rule` object of the cluster), validated; `path`
/// is where it came from, for messages.
pub fn rule_of(path: &str, name: &str, spec: SpecDoc) -> Result<Rule, HookError> {
    let name = name.to_string();
    let bad = |field: String, reason: String| HookError::Invalid {
        path: path.to_string(),
        what: format!("Rule {name}: {field}"),
        reason,
    };
    if name.is_empty() {
        return Err(bad("metadata.name".into(), "must not be empty".into()));
    }
    let timeout = match &spec.timeout {
        None => Duration::from_secs(60),
        Some(t) => parse_duration(t).map_err(|e| bad("spec.timeout".into(), e))?,
    };
    if timeout.is_zero() || timeout > Duration::from_secs(24 * 3600) {
        return Err(bad(
            "spec.timeout".into(),
            "must be more than 0 and at most 24h".into(),
        ));
    }
    if spec.rules.is_empty() {
        return Err(bad(
            "spec.rules".into(),
            "is empty; give at least one".into(),
        ));
    }
    let mut items = Vec::new();
    for (i, it) in spec.rules.into_iter().enumerate() {
        if it.pod_selector.is_empty() {
            return Err(bad(
                format!("spec.rules[{i}].podSelector"),
                "is empty; name the labels of the pods to run in (e.g. {app: cassandra})".into(),
            ));
        }
        if it.actions.is_empty() {
            return Err(bad(
                format!("spec.rules[{i}].actions"),
                "is empty; give at least one".into(),
            ));
        }
        let actions = it
            .actions
            .into_iter()
            .enumerate()
            .map(|(j, a)| {
                action_of(format!("spec.rules[{i}].actions[{j}]"), a)
                    .map_err(|(field, reason)| bad(field, reason))
            })
            .collect::<Result<_, _>>()?;
        items.push(RuleItem {
            pod_selector: it.pod_selector,
            container: it.container,
            actions,
        });
    }
    Ok(Rule {
        name: name.clone(),
        file: path.to_string(),
        items,
        on_error: spec.on_error,
        timeout,
    })
}

/// One action of a rule, at `field`; an error is the field at fault and why.
fn action_of(field: String, a: ActionDoc) -> Result<Action, (String, String)> {
    if a.kind != "command" {
        return Err((
            format!("{field}.type"),
            format!("`{}` is not supported; the one type is `command`", a.kind),
        ));
    }
    if a.value.trim().is_empty() {
        return Err((format!("{field}.value"), "the command is empty".into()));
    }
    if a.background && !a.value.contains(WAIT_CMD) {
        return Err((
            format!("{field}.value"),
            format!(
                "a background action must contain {WAIT_CMD} where it holds (e.g. \
                 `mysql -e \"FLUSH TABLES WITH READ LOCK; system {WAIT_CMD}\"`), so \
                 lifeboat can tell when it is ready and end it after the post rules"
            ),
        ));
    }
    if !a.background && a.value.contains(WAIT_CMD) {
        return Err((
            format!("{field}.background"),
            format!("the command contains {WAIT_CMD}: set background: true"),
        ));
    }
    Ok(Action {
        command: a.value,
        background: a.background,
        run_in_single_pod: a.run_in_single_pod,
    })
}

/// A rule for tests of this folder.
#[cfg(test)]
pub(crate) const EXAMPLE_RULE: &str = "apiVersion: lifeboat.dev/v1alpha1
kind: Rule
metadata: {name: cassandra-presnap}
spec:
  rules:
  - podSelector: {app: cassandra}
    container: cassandra
    actions:
    - type: command
      value: nodetool flush
  onError: Continue
  timeout: 90s
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("60").is_err());
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").is_err());
    }

    const RULE: &str = EXAMPLE_RULE;

    #[test]
    fn a_rule_parses_into_typed_settings() {
        let r = parse_rules("pre.yaml", RULE).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].name, "cassandra-presnap");
        assert_eq!(r[0].on_error, OnError::Continue);
        assert_eq!(r[0].timeout, Duration::from_secs(90));
        assert_eq!(r[0].items[0].container.as_deref(), Some("cassandra"));
        assert_eq!(r[0].items[0].actions[0].command, "nodetool flush");
    }

    #[test]
    fn bad_rules_are_named_with_file_rule_and_field() {
        let cases = [
            (RULE.replace("90s", "ninety"), "spec.timeout"),
            (RULE.replace("Continue", "Maybe"), "unknown variant `Maybe`"),
            (
                RULE.replace("type: command", "type: http"),
                "Rule cassandra-presnap: spec.rules[0].actions[0].type: `http` is not supported",
            ),
            (
                RULE.replace(
                    "value: nodetool flush",
                    "value: nodetool flush\n      background: true",
                ),
                "must contain ${WAIT_CMD}",
            ),
            (
                RULE.replace("value: nodetool flush", "value: 'a; ${WAIT_CMD}'"),
                "spec.rules[0].actions[0].background: the command contains ${WAIT_CMD}",
            ),
            (
                RULE.replace("value: nodetool flush", "value: ' '"),
                "spec.rules[0].actions[0].value: the command is empty",
            ),
            (
                RULE.replace("podSelector: {app: cassandra}", "podSelector: {}"),
                "podSelector",
            ),
            (
                RULE.replace("container: cassandra", "containr: cassandra"),
                "unknown field `containr`",
            ),
            (RULE.replace("kind: Rule", "kind: Hook"), "apiVersion/kind"),
            (format!("{RULE}---\n{RULE}"), "used twice"),
        ];
        for (text, want) in cases {
            let e = parse_rules("pre.yaml", &text).unwrap_err().to_string();
            assert!(e.starts_with("pre.yaml: "), "{e}");
            assert!(e.contains(want), "want `{want}` in: {e}");
        }
    }
}
