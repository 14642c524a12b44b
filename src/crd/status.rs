//! The parts statuses share: phases, per-item failures and conditions (Kubernetes'
//! `metav1.Condition`, one per `type`, its transition time kept while its status holds).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition every lifeboat resource carries: the object is valid and its last
/// reconcile went well (`True`), or why not (`False`, the reason and the field at fault).
pub const COND_READY: &str = "Ready";

/// A BackupLocation's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum CheckPhase {
    /// The repository opened with the given password.
    Available,
    /// It did not (the condition says why).
    Unavailable,
}

/// A Backup's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum BackupPhase {
    New,
    InProgress,
    Completed,
    /// Recorded, with parts of the scope not captured (`status.failures`).
    PartiallyFailed,
    Failed,
}

impl BackupPhase {
    /// A phase that no reconcile changes again.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            BackupPhase::Completed | BackupPhase::PartiallyFailed | BackupPhase::Failed
        )
    }
}

/// A Restore's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
pub enum RestorePhase {
    New,
    InProgress,
    Completed,
    PartiallyFailed,
    Failed,
}

/// An object (or part of the scope) that failed, and why.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ItemFailure {
    pub object: String,
    pub reason: String,
}

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// A condition as of `now` (Unix seconds).
pub fn condition(
    kind: &str,
    status: ConditionStatus,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: i64,
) -> Condition {
    Condition {
        type_: kind.to_string(),
        status: status.as_str().to_string(),
        reason: reason.to_string(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(
            k8s_openapi::jiff::Timestamp::from_second(now).unwrap_or_default(),
        ),
    }
}

/// Puts `c` into `conditions` in place of the one of its type; the older transition time
/// stays when the status did not change (Kubernetes' convention).
pub fn set_condition(conditions: &mut Vec<Condition>, mut c: Condition) {
    match conditions.iter_mut().find(|o| o.type_ == c.type_) {
        Some(old) => {
            if old.status == c.status {
                c.last_transition_time = old.last_transition_time.clone();
            }
            *old = c;
        }
        None => conditions.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            condition("Ready", ConditionStatus::False, "Invalid", "a", None, 100),
        );
        set_condition(
            &mut cs,
            condition("Ready", ConditionStatus::False, "Invalid", "b", None, 200),
        );
        assert_eq!(cs.len(), 1);
        assert_eq!(cs[0].message, "b");
        assert_eq!(cs[0].last_transition_time.0.as_second(), 100);
        set_condition(
            &mut cs,
            condition("Ready", ConditionStatus::True, "Ok", "", None, 300),
        );
        assert_eq!(cs[0].last_transition_time.0.as_second(), 300);
        set_condition(
            &mut cs,
            condition("Other", ConditionStatus::True, "Ok", "", None, 300),
        );
        assert_eq!(cs.len(), 2);
    }
}
