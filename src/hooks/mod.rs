//! Application rules (hooks): takes `Rule` documents, the pods of a backup's scope and a way
//! to run a command in a pod's container ([`Exec`]); gives a barrier around one step (the
//! group snapshot of the volumes) and a record of every action. Uses only the Kubernetes
//! layer (its client, for `pods/exec`) and the stored formats (the action records). Must not let the step run
//! before every pre action has finished (or, for a background action, reported ready), and
//! must not return without having run the post rules once the pre rules started: on success,
//! on failure, on timeout and on cancellation alike.
//!
//! The order, for one backup:
//! 1. every pre rule's actions start at once on every selected pod (a rule's action list runs
//!    in order within one pod; pods and rules run in parallel), each bounded by its rule's
//!    timeout;
//! 2. **barrier**: the step waits for all of them;
//! 3. the step runs only if no rule with `onError: Abort` failed;
//! 4. the post rules run, then the background actions are stopped.
//!
//! A background action holds something (a lock, a freeze) while the step runs. Its command
//! must contain `${WAIT_CMD}`, which expands to a shell snippet that prints `lifeboat-ready`
//! and then waits until lifeboat removes a marker file; the action is ready when that line
//! appears. Stopping it removes the marker (a second exec in the same container), so the
//! action's own shell ends normally, e.g. releasing `FLUSH TABLES WITH READ LOCK`.
//!
//! ```text
//!  rules (documents → typed rules; pure) ─► plan (pods, chains of actions; pure)
//!      ─► exec (a command in a container: local shell or pods/exec)
//!      ─► barrier (pre ─► step ─► post ─► release the holds; the records)
//! ```

pub mod rules; // Rule documents, validation, durations

pub mod plan; // the pods rules run in, and the chains of actions there

pub mod exec; // running a command in a pod's container: local or pods/exec

pub mod barrier; // pre rules, the step, post rules, background holds; the records

pub use barrier::{around, RulesReport, OUTPUT_TAIL, READY_LINE};
pub use exec::{exit_code_of, Exec, ExecError, KubeExec, LocalExec, Process};
pub use plan::{plan_chains, pod_targets, Chain, Phase, PodTarget};
pub(crate) use rules::MetaDoc;
pub use rules::{
    load_rules, parse_duration, parse_rules, rule_of, Action, OnError, Rule, RuleItem,
    RULE_API_VERSION, WAIT_CMD,
};

/// Why rules do not load, or why the step did not run.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{path}: {reason}")]
    Read { path: String, reason: String },
    #[error("{path}: {what}: {reason}")]
    Invalid {
        path: String,
        what: String,
        reason: String,
    },
    #[error("pre rule failed, so no snapshot was taken (post rules ran): {0}")]
    PreFailed(String),
    #[error("cancelled before the snapshot (post rules ran)")]
    Cancelled,
}
