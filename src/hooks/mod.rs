//! Application rules (hooks): takes `Rule` documents, the pods of a backup's scope and a way
//! to run a command in a pod's container ([`Exec`]); gives a barrier around one step (the
//! group snapshot of the volumes) and a record of every action. Must not let the step run
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::join_all;
use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::format::ActionRecord;

/// The API version and kind of a rule document.
pub const RULE_API_VERSION: &str = "lifeboat.dev/v1alpha1";
/// Expands, in a background action, to the snippet that reports ready and waits.
pub const WAIT_CMD: &str = "${WAIT_CMD}";
/// The line a background action prints when it holds what it should hold.
pub const READY_LINE: &str = "lifeboat-ready";
/// Bytes of each action's output kept in the record.
pub const OUTPUT_TAIL: usize = 2048;
/// How long a stopped background action may take to end before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

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

/// What to do when a pre action fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum OnError {
    /// The backup fails and no snapshot is used.
    #[default]
    Abort,
    /// The backup goes on and records a warning.
    Continue,
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SpecDoc {
    rules: Vec<ItemDoc>,
    #[serde(default)]
    on_error: OnError,
    #[serde(default)]
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ItemDoc {
    pod_selector: BTreeMap<String, String>,
    #[serde(default)]
    container: Option<String>,
    actions: Vec<ActionDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ActionDoc {
    #[serde(rename = "type")]
    kind: String,
    value: String,
    #[serde(default)]
    background: bool,
    #[serde(default)]
    run_in_single_pod: bool,
}

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
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(doc).map_err(|e| HookError::Read {
            path: path.to_string(),
            reason: format!("not YAML: {e}"),
        })?;
        if v.is_null() {
            continue;
        }
        let d: RuleDoc = serde_yaml::from_value(v).map_err(|e| HookError::Invalid {
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
    let name = d.metadata.name.clone();
    let bad = |field: String, reason: String| HookError::Invalid {
        path: path.to_string(),
        what: format!("Rule {name}: {field}"),
        reason,
    };
    if d.api_version != RULE_API_VERSION || d.kind != "Rule" {
        return Err(bad(
            "apiVersion/kind".into(),
            format!(
                "is {}/{}; a rule is apiVersion: {RULE_API_VERSION}, kind: Rule",
                d.api_version, d.kind
            ),
        ));
    }
    if name.is_empty() {
        return Err(bad("metadata.name".into(), "must not be empty".into()));
    }
    let timeout = match &d.spec.timeout {
        None => Duration::from_secs(60),
        Some(t) => parse_duration(t).map_err(|e| bad("spec.timeout".into(), e))?,
    };
    if timeout.is_zero() || timeout > Duration::from_secs(24 * 3600) {
        return Err(bad(
            "spec.timeout".into(),
            "must be more than 0 and at most 24h".into(),
        ));
    }
    if d.spec.rules.is_empty() {
        return Err(bad(
            "spec.rules".into(),
            "is empty; give at least one".into(),
        ));
    }
    let mut items = Vec::new();
    for (i, it) in d.spec.rules.into_iter().enumerate() {
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
        let mut actions = Vec::new();
        for (j, a) in it.actions.into_iter().enumerate() {
            let field = format!("spec.rules[{i}].actions[{j}]");
            if a.kind != "command" {
                return Err(bad(
                    format!("{field}.type"),
                    format!("`{}` is not supported; the one type is `command`", a.kind),
                ));
            }
            if a.value.trim().is_empty() {
                return Err(bad(format!("{field}.value"), "the command is empty".into()));
            }
            if a.background && !a.value.contains(WAIT_CMD) {
                return Err(bad(
                    format!("{field}.value"),
                    format!(
                        "a background action must contain {WAIT_CMD} where it holds (e.g. \
                         `mysql -e \"FLUSH TABLES WITH READ LOCK; system {WAIT_CMD}\"`), so \
                         lifeboat can tell when it is ready and end it after the post rules"
                    ),
                ));
            }
            if !a.background && a.value.contains(WAIT_CMD) {
                return Err(bad(
                    format!("{field}.background"),
                    format!("the command contains {WAIT_CMD}: set background: true"),
                ));
            }
            actions.push(Action {
                command: a.value,
                background: a.background,
                run_in_single_pod: a.run_in_single_pod,
            });
        }
        items.push(RuleItem {
            pod_selector: it.pod_selector,
            container: it.container,
            actions,
        });
    }
    Ok(Rule {
        name,
        file: path.to_string(),
        items,
        on_error: d.spec.on_error,
        timeout,
    })
}

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

/// Which phase a rule runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pre,
    Post,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

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

/// A command started by an [`Exec`].
pub struct Process {
    /// Chunks of stdout and stderr as they come; closed when the process ends.
    pub output: mpsc::Receiver<Vec<u8>>,
    /// The exit code (or why none is known), once it ended.
    pub exit: oneshot::Receiver<Result<i32, String>>,
    /// Cancel to kill it.
    pub kill: CancellationToken,
}

/// Runs a shell command in a pod's container.
#[async_trait]
pub trait Exec: Send + Sync {
    /// Starts `sh -c command` in `container` of `pod`.
    async fn start(
        &self,
        pod: &PodTarget,
        container: &str,
        command: &str,
    ) -> Result<Process, String>;
}

/// Runs actions as local shell commands (the cluster-directory source): in `dir`, with
/// `LIFEBOAT_POD`, `LIFEBOAT_NAMESPACE` and `LIFEBOAT_CONTAINER` set.
pub struct LocalExec {
    pub dir: PathBuf,
}

#[async_trait]
impl Exec for LocalExec {
    async fn start(
        &self,
        pod: &PodTarget,
        container: &str,
        command: &str,
    ) -> Result<Process, String> {
        use std::process::Stdio;
        use tokio::io::AsyncReadExt;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(&self.dir)
            .env("LIFEBOAT_POD", &pod.name)
            .env("LIFEBOAT_NAMESPACE", &pod.namespace)
            .env("LIFEBOAT_CONTAINER", container)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
        let pgid = child.id().map(|p| p as i32);
        let (tx, output) = mpsc::channel(16);
        let (exit_tx, exit) = oneshot::channel();
        let kill = CancellationToken::new();
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let tx2 = tx.clone();
        let pump = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    tx: mpsc::Sender<Vec<u8>>| async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = r.read(&mut buf).await {
                if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
        };
        let out_task = tokio::spawn(pump(Box::new(stdout), tx));
        let err_task = tokio::spawn(pump(Box::new(stderr), tx2));
        let k = kill.clone();
        tokio::spawn(async move {
            let status = tokio::select! {
                s = child.wait() => s,
                _ = k.cancelled() => {
                    if let Some(g) = pgid {
                        // SAFETY: killpg with a process group we created; no memory involved.
                        unsafe { libc::killpg(g, libc::SIGKILL) };
                    }
                    child.wait().await
                }
            };
            // The whole group goes: a shell's children must not outlive the action.
            if let Some(g) = pgid {
                // SAFETY: as above.
                unsafe { libc::killpg(g, libc::SIGKILL) };
            }
            let _ = out_task.await;
            let _ = err_task.await;
            let _ = exit_tx.send(match status {
                Ok(s) => s.code().ok_or_else(|| "killed by a signal".to_string()),
                Err(e) => Err(e.to_string()),
            });
        });
        Ok(Process { output, exit, kill })
    }
}

/// The tail of a byte stream.
#[derive(Default)]
struct Tail(Vec<u8>);

impl Tail {
    fn push(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
        if self.0.len() > OUTPUT_TAIL {
            let cut = self.0.len() - OUTPUT_TAIL;
            self.0.drain(..cut);
        }
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// A background action that is holding, to be stopped after the post rules.
struct Held {
    record: usize,
    pod: PodTarget,
    container: String,
    marker: String,
    process: Process,
    tail: Tail,
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// How one action ended.
enum Ended {
    Done(ActionRecord),
    Holding(ActionRecord, Held),
}

fn new_marker() -> String {
    format!(
        "/tmp/lifeboat-wait-{}",
        hex::encode(rand::random::<[u8; 8]>())
    )
}

/// `${WAIT_CMD}`: create the marker, say ready, wait while it exists.
fn expand_wait(command: &str, marker: &str) -> String {
    command.replace(
        WAIT_CMD,
        &format!(
            "touch {marker} && echo {READY_LINE} && while [ -e {marker} ]; do sleep 0.2; done"
        ),
    )
}

async fn run_action(
    exec: &dyn Exec,
    rule: &Rule,
    phase: Phase,
    chain: &Chain,
    action: &Action,
    cancel: &CancellationToken,
) -> Ended {
    let started = now();
    let marker = new_marker();
    let command = if action.background {
        expand_wait(&action.command, &marker)
    } else {
        action.command.clone()
    };
    let mut rec = ActionRecord {
        phase: phase.as_str().into(),
        rule: rule.name.clone(),
        namespace: chain.pod.namespace.clone(),
        pod: chain.pod.name.clone(),
        container: chain.container.clone(),
        command: action.command.clone(),
        background: action.background,
        started,
        ended: started,
        outcome: "failed".into(),
        exit_code: None,
        output_tail: String::new(),
    };
    let span = tracing::info_span!("rule_action", phase = phase.as_str(), rule = %rule.name,
        pod = %format!("{}/{}", chain.pod.namespace, chain.pod.name));
    let _g = span.enter();
    let mut p = match exec.start(&chain.pod, &chain.container, &command).await {
        Ok(p) => p,
        Err(e) => {
            rec.ended = now();
            rec.output_tail = format!("could not start: {e}");
            return Ended::Done(rec);
        }
    };
    let mut tail = Tail::default();
    let mut line = Vec::new();
    let deadline = tokio::time::sleep(rule.timeout);
    tokio::pin!(deadline);
    let mut output_open = true;
    loop {
        tokio::select! {
            chunk = p.output.recv(), if output_open => match chunk {
                Some(c) => {
                    tail.push(&c);
                    if action.background {
                        for &b in &c {
                            if b == b'\n' {
                                if String::from_utf8_lossy(&line).trim() == READY_LINE {
                                    rec.outcome = "succeeded".into();
                                    rec.ended = now();
                                    rec.output_tail = tail.text();
                                    tracing::info!("background action ready");
                                    let held = Held { record: 0, pod: chain.pod.clone(),
                                        container: chain.container.clone(), marker,
                                        process: p, tail };
                                    return Ended::Holding(rec, held);
                                }
                                line.clear();
                            } else if line.len() < 256 {
                                line.push(b);
                            }
                        }
                    }
                }
                None => output_open = false,
            },
            code = &mut p.exit, if !output_open => {
                let code = code.unwrap_or_else(|_| Err("the exec ended without a status".into()));
                rec.ended = now();
                rec.output_tail = tail.text();
                match code {
                    Ok(0) if !action.background => rec.outcome = "succeeded".into(),
                    Ok(c) => {
                        rec.exit_code = Some(c);
                        if action.background && c == 0 {
                            rec.output_tail.push_str("\n(ended before it printed lifeboat-ready)");
                        }
                    }
                    Err(e) => rec.output_tail.push_str(&format!("\n({e})")),
                }
                if rec.outcome == "succeeded" {
                    rec.exit_code = Some(0);
                }
                return Ended::Done(rec);
            },
            _ = &mut deadline => {
                p.kill.cancel();
                if action.background {
                    let _ = stop_marker(exec, &chain.pod, &chain.container, &marker).await;
                }
                rec.outcome = "timed-out".into();
                rec.ended = now();
                rec.output_tail = tail.text();
                tracing::warn!(timeout = ?rule.timeout, "rule action timed out");
                return Ended::Done(rec);
            },
            _ = cancel.cancelled() => {
                p.kill.cancel();
                if action.background {
                    let _ = stop_marker(exec, &chain.pod, &chain.container, &marker).await;
                }
                rec.outcome = "cancelled".into();
                rec.ended = now();
                rec.output_tail = tail.text();
                return Ended::Done(rec);
            },
        }
    }
}

async fn stop_marker(
    exec: &dyn Exec,
    pod: &PodTarget,
    container: &str,
    marker: &str,
) -> Result<(), String> {
    let p = exec
        .start(pod, container, &format!("rm -f {marker}"))
        .await?;
    let _ = tokio::time::timeout(STOP_GRACE, async {
        let mut out = p.output;
        while out.recv().await.is_some() {}
        p.exit.await
    })
    .await;
    Ok(())
}

/// Runs every rule's chains in parallel; returns the records in plan order and the
/// background actions that hold.
async fn run_phase(
    exec: &dyn Exec,
    rules: &[Rule],
    phase: Phase,
    pods: &[PodTarget],
    cancel: &CancellationToken,
    records: &mut Vec<ActionRecord>,
    problems_out: &mut Vec<String>,
) -> Vec<Held> {
    let (chains, problems) = plan_chains(rules, pods);
    problems_out.extend(problems);
    let runs = chains.iter().map(|chain| async move {
        let rule = &rules[chain.rule];
        let mut out = Vec::new();
        let mut held = Vec::new();
        for (i, action) in chain.actions.iter().enumerate() {
            match run_action(exec, rule, phase, chain, action, cancel).await {
                Ended::Done(rec) => {
                    let ok = rec.outcome == "succeeded";
                    out.push(rec);
                    if !ok {
                        // The rest of this chain does not start.
                        for a in &chain.actions[i + 1..] {
                            let t = now();
                            out.push(ActionRecord {
                                phase: phase.as_str().into(),
                                rule: rule.name.clone(),
                                namespace: chain.pod.namespace.clone(),
                                pod: chain.pod.name.clone(),
                                container: chain.container.clone(),
                                command: a.command.clone(),
                                background: a.background,
                                started: t,
                                ended: t,
                                outcome: "not-started".into(),
                                exit_code: None,
                                output_tail: "an earlier action of this rule failed".into(),
                            });
                        }
                        break;
                    }
                }
                Ended::Holding(rec, h) => {
                    out.push(rec);
                    held.push((out.len() - 1, h));
                }
            }
        }
        (out, held)
    });
    let mut all_held = Vec::new();
    for (recs, held) in join_all(runs).await {
        let base = records.len();
        records.extend(recs);
        for (i, mut h) in held {
            h.record = base + i;
            all_held.push(h);
        }
    }
    all_held
}

/// What the rules did around a step.
#[derive(Debug, Clone, Default)]
pub struct RulesReport {
    pub records: Vec<ActionRecord>,
    pub warnings: Vec<String>,
}

fn describe_failure(r: &ActionRecord) -> String {
    let code = r
        .exit_code
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    let out = r.output_tail.trim();
    let out = if out.len() > 300 {
        format!("…{}", &out[out.len() - 300..])
    } else {
        out.to_string()
    };
    format!(
        "rule {} in pod {}/{} container {}: `{}` {}{code}{}",
        r.rule,
        r.namespace,
        r.pod,
        r.container,
        r.command,
        r.outcome,
        if out.is_empty() {
            String::new()
        } else {
            format!(": {out}")
        }
    )
}

/// Runs the pre rules, then `step` only if they allow it, then always the post rules, then
/// stops the background actions. See the module documentation.
///
/// `step` is not started when cancellation comes first; once started it runs to its end (a
/// group snapshot is short and must not be left half taken). Post rules are not cancelled.
pub async fn around<T, E, F, Fut>(
    exec: Arc<dyn Exec>,
    pods: &[PodTarget],
    pre: &[Rule],
    post: &[Rule],
    cancel: &CancellationToken,
    step: F,
) -> (Result<Result<T, E>, HookError>, RulesReport)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut report = RulesReport::default();
    let mut problems = Vec::new();
    let held = run_phase(
        exec.as_ref(),
        pre,
        Phase::Pre,
        pods,
        cancel,
        &mut report.records,
        &mut problems,
    )
    .await;

    // Barrier reached: decide. A rule with nothing to run in holds nothing quiet; the data is
    // still consistent if the selected application has no pods, so it is a warning.
    report.warnings.extend(problems);
    let mut abort = Vec::new();
    for r in &report.records {
        if r.outcome != "succeeded" && r.outcome != "not-started" {
            let rule = pre.iter().find(|x| x.name == r.rule);
            let text = describe_failure(r);
            if rule.map(|x| x.on_error) == Some(OnError::Continue) {
                report
                    .warnings
                    .push(format!("pre {text} (onError: Continue)"));
            } else {
                abort.push(text);
            }
        }
    }
    let outcome = if cancel.is_cancelled() {
        Err(HookError::Cancelled)
    } else if !abort.is_empty() {
        Err(HookError::PreFailed(abort.join("; ")))
    } else {
        Ok(step().await)
    };

    // Post rules always run, whatever happened, and are not cancelled.
    let never = CancellationToken::new();
    let mut post_problems = Vec::new();
    let post_held = run_phase(
        exec.as_ref(),
        post,
        Phase::Post,
        pods,
        &never,
        &mut report.records,
        &mut post_problems,
    )
    .await;
    report.warnings.extend(post_problems);
    let post_failed: Vec<String> = report
        .records
        .iter()
        .filter(|r| r.phase == "post" && r.outcome != "succeeded")
        .map(describe_failure)
        .collect();
    for f in post_failed {
        report.warnings.push(format!("post {f}"));
    }

    // Then the holds are released.
    let stops = held.into_iter().chain(post_held).map(|mut h| {
        let exec = exec.clone();
        async move {
            let _ = stop_marker(exec.as_ref(), &h.pod, &h.container, &h.marker).await;
            let ended = tokio::time::timeout(STOP_GRACE, async {
                while let Some(c) = h.process.output.recv().await {
                    h.tail.push(&c);
                }
                (&mut h.process.exit).await
            })
            .await;
            if ended.is_err() {
                h.process.kill.cancel();
            }
            (h.record, h.tail.text(), ended.is_ok())
        }
    });
    for (i, tail, ended) in join_all(stops).await {
        let r = &mut report.records[i];
        r.ended = now();
        r.output_tail = tail;
        if !ended {
            report.warnings.push(format!(
                "background action of rule {} in {}/{} did not end within {:?} of its stop; killed",
                r.rule, r.namespace, r.pod, STOP_GRACE
            ));
        }
    }
    (outcome, report)
}

/// Runs rule actions in pods through the API (`pods/exec`, WebSocket): `sh -c COMMAND` in the
/// named container, stdout and stderr captured, the exit code read from the status channel.
/// Killing closes the stream; a command still running in the container is not signalled by
/// the API server, which is why background actions end through their marker file instead.
pub struct KubeExec {
    client: kube::Client,
}

impl KubeExec {
    /// Rule actions in the pods of `cluster`.
    pub fn new(cluster: &crate::k8s::live::LiveCluster) -> KubeExec {
        KubeExec {
            client: cluster.client().clone(),
        }
    }
}

/// The exit code in an exec's final status: `Success` is 0; `NonZeroExitCode` carries the
/// code as the `ExitCode` cause.
pub fn exit_code_of(
    status: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Status,
) -> Result<i32, String> {
    if status.status.as_deref() == Some("Success") {
        return Ok(0);
    }
    let code = status
        .details
        .as_ref()
        .and_then(|d| d.causes.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.reason.as_deref() == Some("ExitCode")))
        .and_then(|c| c.message.as_deref())
        .and_then(|m| m.parse::<i32>().ok());
    match code {
        Some(c) => Ok(c),
        None => Err(status
            .message
            .clone()
            .unwrap_or_else(|| "the exec failed without a message".into())),
    }
}

#[async_trait::async_trait]
impl crate::hooks::Exec for KubeExec {
    async fn start(
        &self,
        pod: &crate::hooks::PodTarget,
        container: &str,
        command: &str,
    ) -> Result<crate::hooks::Process, String> {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::AttachParams;
        use tokio::io::AsyncReadExt;
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &pod.namespace);
        let ap = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut attached = api
            .exec(&pod.name, vec!["sh", "-c", command], &ap)
            .await
            .map_err(|e| format!("exec in pod {}/{} refused: {e}", pod.namespace, pod.name))?;
        let (tx, output) = tokio::sync::mpsc::channel(16);
        let (exit_tx, exit) = tokio::sync::oneshot::channel();
        let kill = tokio_util::sync::CancellationToken::new();
        let mut pumps = Vec::new();
        let streams: Vec<Box<dyn tokio::io::AsyncRead + Unpin + Send>> = [
            attached.stdout().map(|s| Box::new(s) as Box<_>),
            attached.stderr().map(|s| Box::new(s) as Box<_>),
        ]
        .into_iter()
        .flatten()
        .collect();
        for mut r in streams {
            let tx = tx.clone();
            pumps.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                        break;
                    }
                }
            }));
        }
        drop(tx);
        let status = attached.take_status();
        let k = kill.clone();
        tokio::spawn(async move {
            let result = match status {
                None => Err("the exec gave no status channel".to_string()),
                Some(status) => tokio::select! {
                    s = status => match s {
                        Some(s) => exit_code_of(&s),
                        None => Err("the exec stream ended without a status".into()),
                    },
                    _ = k.cancelled() => {
                        attached.abort();
                        Err("stopped".into())
                    }
                },
            };
            for p in pumps {
                let _ = p.await;
            }
            let _ = exit_tx.send(result);
        });
        Ok(crate::hooks::Process { output, exit, kill })
    }
}

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

    const RULE: &str = "apiVersion: lifeboat.dev/v1alpha1
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
                "actions[0].type",
            ),
            (
                RULE.replace(
                    "value: nodetool flush",
                    "value: nodetool flush\n      background: true",
                ),
                "must contain ${WAIT_CMD}",
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
        let mut rules = parse_rules("pre.yaml", RULE).unwrap();
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
