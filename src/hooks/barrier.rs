//! The barrier: takes the pre and post rules, the pods they run in and an [`Exec`]; runs the
//! pre rules, then one step (the group snapshot) only if they allow it, then always the post
//! rules, then stops the background actions ([`around`]); gives a record of every action
//! ([`RulesReport`]). See the folder's documentation for the order and for `${WAIT_CMD}`.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::format::{ActionOutcome, ActionRecord};
use crate::hooks::exec::{Exec, ExecError, Process};
use crate::hooks::plan::{plan_chains, Chain, Phase, PodTarget};
use crate::hooks::rules::{Action, OnError, Rule, WAIT_CMD};
use crate::hooks::HookError;

/// The line a background action prints when it holds what it should hold.
pub const READY_LINE: &str = "lifeboat-ready";
/// Bytes of each action's output kept in the record.
pub const OUTPUT_TAIL: usize = 2048;
/// How long a stopped background action may take to end before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

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

/// The record of `action` of `chain`, starting now, with `outcome` until it is known.
fn new_record(
    rule: &Rule,
    phase: Phase,
    chain: &Chain,
    action: &Action,
    outcome: ActionOutcome,
) -> ActionRecord {
    let t = now();
    ActionRecord {
        phase,
        rule: rule.name.clone(),
        namespace: chain.pod.namespace.clone(),
        pod: chain.pod.name.clone(),
        container: chain.container.clone(),
        command: action.command.clone(),
        background: action.background,
        started: t,
        ended: t,
        outcome,
        exit_code: None,
        output_tail: String::new(),
    }
}

/// Whether `chunk` completes the ready line, `line` holding the line so far (bounded).
fn ready_in(line: &mut Vec<u8>, chunk: &[u8]) -> bool {
    for &b in chunk {
        if b == b'\n' {
            if String::from_utf8_lossy(line).trim() == READY_LINE {
                return true;
            }
            line.clear();
        } else if line.len() < 256 {
            line.push(b);
        }
    }
    false
}

/// The record of an action whose process ended with `code`. A background action that ends
/// on its own never held anything: it failed, whatever its code.
fn ended_with(
    mut rec: ActionRecord,
    tail: &Tail,
    background: bool,
    code: Result<i32, ExecError>,
) -> ActionRecord {
    rec.ended = now();
    rec.output_tail = tail.text();
    match code {
        Ok(0) if !background => {
            rec.outcome = ActionOutcome::Succeeded;
            rec.exit_code = Some(0);
        }
        Ok(c) => {
            rec.exit_code = Some(c);
            if background && c == 0 {
                rec.output_tail
                    .push_str("\n(ended before it printed lifeboat-ready)");
            }
        }
        Err(e) => rec.output_tail.push_str(&format!("\n({e})")),
    }
    rec
}

async fn run_action(
    exec: &dyn Exec,
    rule: &Rule,
    phase: Phase,
    chain: &Chain,
    action: &Action,
    cancel: &CancellationToken,
) -> Ended {
    let span = tracing::info_span!("rule_action", phase = phase.as_str(), rule = %rule.name,
        pod = %format!("{}/{}", chain.pod.namespace, chain.pod.name));
    // Instrumented, not entered: a guard held across the awaits left the span entered while
    // the other chains ran (they run in one task), so their spans and events nested in it.
    follow_action(exec, rule, phase, chain, action, cancel)
        .instrument(span)
        .await
}

/// Starts an action and follows it until it ends, is ready (a background action), times out
/// or is cancelled.
async fn follow_action(
    exec: &dyn Exec,
    rule: &Rule,
    phase: Phase,
    chain: &Chain,
    action: &Action,
    cancel: &CancellationToken,
) -> Ended {
    let mut rec = new_record(rule, phase, chain, action, ActionOutcome::Failed);
    let marker = new_marker();
    let command = if action.background {
        expand_wait(&action.command, &marker)
    } else {
        action.command.clone()
    };
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
    let outcome = loop {
        tokio::select! {
            chunk = p.output.recv(), if output_open => match chunk {
                Some(c) => {
                    tail.push(&c);
                    if action.background && ready_in(&mut line, &c) {
                        rec.outcome = ActionOutcome::Succeeded;
                        rec.ended = now();
                        rec.output_tail = tail.text();
                        tracing::info!("background action ready");
                        let held = Held { record: 0, pod: chain.pod.clone(),
                            container: chain.container.clone(), marker, process: p, tail };
                        return Ended::Holding(rec, held);
                    }
                }
                None => output_open = false,
            },
            code = &mut p.exit, if !output_open => {
                let code = code.unwrap_or(Err(ExecError::NoStatus));
                return Ended::Done(ended_with(rec, &tail, action.background, code));
            },
            _ = &mut deadline => {
                tracing::warn!(timeout = ?rule.timeout, "rule action timed out");
                break ActionOutcome::TimedOut;
            },
            _ = cancel.cancelled() => break ActionOutcome::Cancelled,
        }
    };
    // Timed out or cancelled: the process is killed, a background one's marker removed.
    p.kill.cancel();
    if action.background {
        let _ = stop_marker(exec, &chain.pod, &chain.container, &marker).await;
    }
    rec.outcome = outcome;
    rec.ended = now();
    rec.output_tail = tail.text();
    Ended::Done(rec)
}

async fn stop_marker(
    exec: &dyn Exec,
    pod: &PodTarget,
    container: &str,
    marker: &str,
) -> Result<(), ExecError> {
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

/// Runs the actions of one chain in order; the first that fails ends it, and the rest are
/// recorded `not-started`. Gives the records and the background actions that hold (with the
/// index of their record).
async fn run_chain(
    exec: &dyn Exec,
    rule: &Rule,
    phase: Phase,
    chain: &Chain,
    cancel: &CancellationToken,
) -> (Vec<ActionRecord>, Vec<(usize, Held)>) {
    let mut out = Vec::new();
    let mut held = Vec::new();
    for (i, action) in chain.actions.iter().enumerate() {
        match run_action(exec, rule, phase, chain, action, cancel).await {
            Ended::Done(rec) => {
                let ok = rec.outcome == ActionOutcome::Succeeded;
                out.push(rec);
                if !ok {
                    for a in &chain.actions[i + 1..] {
                        let mut r = new_record(rule, phase, chain, a, ActionOutcome::NotStarted);
                        r.output_tail = "an earlier action of this rule failed".into();
                        out.push(r);
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
}

/// Runs every rule's chains in parallel; appends the records in plan order to `report`, the
/// rules that have nowhere to run to its warnings, and returns the background actions that
/// hold.
async fn run_phase(
    exec: &dyn Exec,
    rules: &[Rule],
    phase: Phase,
    pods: &[PodTarget],
    cancel: &CancellationToken,
    report: &mut RulesReport,
) -> Vec<Held> {
    let (chains, problems) = plan_chains(rules, pods);
    report.warnings.extend(problems);
    let runs = chains
        .iter()
        .map(|chain| run_chain(exec, &rules[chain.rule], phase, chain, cancel));
    let mut all_held = Vec::new();
    for (recs, held) in join_all(runs).await {
        let base = report.records.len();
        report.records.extend(recs);
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
        // The last 300 bytes, from a character boundary.
        let mut cut = out.len() - 300;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        format!("…{}", &out[cut..])
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

/// At the barrier: the pre actions that failed. Those of rules with `onError: Continue` are
/// warnings in `report`; the others are returned, and abort the step.
fn pre_failures(report: &mut RulesReport, pre: &[Rule]) -> Vec<String> {
    let mut abort = Vec::new();
    for r in &report.records {
        if r.outcome != ActionOutcome::Succeeded && r.outcome != ActionOutcome::NotStarted {
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
    abort
}

/// Stops the background actions that hold (removing their markers), waits for each to end
/// for a while, kills those that do not, and completes their records.
async fn release(exec: Arc<dyn Exec>, held: Vec<Held>, report: &mut RulesReport) {
    let stops = held.into_iter().map(|mut h| {
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
}

/// Runs the pre rules, then `step` only if they allow it, then always the post rules, then
/// stops the background actions. See the folder's documentation.
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
    let held = run_phase(exec.as_ref(), pre, Phase::Pre, pods, cancel, &mut report).await;

    // Barrier reached: decide. A rule with nothing to run in holds nothing quiet; the data is
    // still consistent if the selected application has no pods, so it is a warning.
    let abort = pre_failures(&mut report, pre);
    let outcome = if cancel.is_cancelled() {
        Err(HookError::Cancelled)
    } else if !abort.is_empty() {
        Err(HookError::PreFailed(abort.join("; ")))
    } else {
        Ok(step().await)
    };

    // Post rules always run, whatever happened, and are not cancelled.
    let never = CancellationToken::new();
    let first_post = report.records.len();
    let post_held = run_phase(exec.as_ref(), post, Phase::Post, pods, &never, &mut report).await;
    let post_failed: Vec<String> = report.records[first_post..]
        .iter()
        .filter(|r| r.outcome != ActionOutcome::Succeeded)
        .map(describe_failure)
        .collect();
    for f in post_failed {
        report.warnings.push(format!("post {f}"));
    }

    // Then the holds are released.
    release(
        exec,
        held.into_iter().chain(post_held).collect(),
        &mut report,
    )
    .await;
    (outcome, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hooks::exec::LocalExec;
    use crate::hooks::rules::parse_rules;

    #[test]
    fn the_ready_line_is_found_across_chunks() {
        let mut line = Vec::new();
        assert!(!ready_in(&mut line, b"starting\nlifeboat-"));
        assert!(ready_in(&mut line, b"ready\nmore"));
        let mut line = Vec::new();
        assert!(!ready_in(&mut line, b"not lifeboat-ready\n"));
    }

    #[test]
    fn a_long_failure_is_cut_at_a_character() {
        // 299 ASCII bytes after a 2-byte character: the cut at len - 300 falls inside it
        // (slicing there was a panic).
        let rec = ActionRecord {
            phase: Phase::Pre,
            rule: "r".into(),
            namespace: "ns".into(),
            pod: "p".into(),
            container: "c".into(),
            command: "x".into(),
            background: false,
            started: now(),
            ended: now(),
            outcome: ActionOutcome::Failed,
            exit_code: Some(1),
            output_tail: format!("ab{}{}", "é", "z".repeat(299)),
        };
        let text = describe_failure(&rec);
        assert!(text.ends_with(&format!(": …{}", "z".repeat(299))), "{text}");
    }

    fn rule(name: &str, actions: &str) -> Vec<Rule> {
        parse_rules(
            "r.yaml",
            &format!("apiVersion: lifeboat.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}}}\nspec:\n  rules:\n  - podSelector: {{app: db}}\n    actions:\n{actions}  timeout: 20s\n"),
        )
        .unwrap()
    }

    fn pods() -> Vec<PodTarget> {
        vec![PodTarget {
            namespace: "ns".into(),
            name: "db-0".into(),
            labels: [("app".to_string(), "db".to_string())].into(),
            containers: vec!["db".into()],
        }]
    }

    /// The parent of each `rule_action` span when it was made.
    #[derive(Clone, Default)]
    struct Parents(Arc<std::sync::Mutex<Vec<Option<String>>>>);

    impl<S> tracing_subscriber::Layer<S> for Parents
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            ctx: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if attrs.metadata().name() == "rule_action" {
                let parent = ctx
                    .span(id)
                    .and_then(|s| s.parent())
                    .map(|p| p.name().to_string());
                self.0.lock().unwrap().push(parent);
            }
        }
    }

    #[tokio::test]
    async fn each_action_has_its_own_span_not_one_inside_another_pods() {
        use tracing_subscriber::layer::SubscriberExt;
        let parents = Parents::default();
        // With a single dispatcher registered, tracing-core computes a callsite's interest
        // from the default of whichever thread registers it first: a parallel test running
        // `around` with no subscriber then caches "never" for `rule_action`, and this test
        // saw no span (CI, on fresh builds). A second registered dispatcher makes it compute
        // interest from all registered dispatchers, whatever the thread.
        let _second = tracing::Dispatch::new(tracing_subscriber::registry());
        let _default =
            tracing::subscriber::set_default(tracing_subscriber::registry().with(parents.clone()));
        tracing::callsite::rebuild_interest_cache();
        let d = tempfile::tempdir().unwrap();
        let exec: Arc<dyn Exec> = Arc::new(LocalExec {
            dir: d.path().to_path_buf(),
        });
        let pre = rule("pre", "    - type: command\n      value: 'sleep 0.2'\n");
        let mut pods = pods();
        pods.push(PodTarget {
            name: "db-1".into(),
            ..pods[0].clone()
        });
        let (outcome, report) = around(
            exec,
            &pods,
            &pre,
            &[],
            &CancellationToken::new(),
            || async { Ok::<_, ()>(()) },
        )
        .await;
        outcome.unwrap().unwrap();
        assert_eq!(report.records.len(), 2);
        // Both pods' actions run at once in one task; neither's span is the other's child.
        assert_eq!(*parents.0.lock().unwrap(), vec![None, None]);
    }

    fn assert_send<T: Send>(t: T) -> T {
        t
    }

    #[tokio::test]
    async fn a_failed_pre_action_skips_the_step_and_the_rest_of_its_chain_and_post_still_runs() {
        let d = tempfile::tempdir().unwrap();
        let exec: Arc<dyn Exec> = Arc::new(LocalExec {
            dir: d.path().to_path_buf(),
        });
        let pre = rule(
            "pre",
            "    - type: command\n      value: 'echo no >&2; exit 4'\n    - type: command\n      value: 'touch never'\n",
        );
        let post = rule(
            "post",
            "    - type: command\n      value: 'touch post-ran'\n",
        );
        let (pods, cancel) = (pods(), CancellationToken::new());
        // The barrier's future can move between threads (a step that can, too).
        let (outcome, report) = assert_send(around(exec, &pods, &pre, &post, &cancel, || async {
            Ok::<_, ()>(())
        }))
        .await;
        let e = outcome.unwrap_err().to_string();
        assert!(
            e.contains("`echo no >&2; exit 4` failed (exit 4): no"),
            "{e}"
        );
        let outcomes: Vec<(&str, &str)> = report
            .records
            .iter()
            .map(|r| (r.phase.as_str(), r.outcome.as_str()))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("pre", "failed"),
                ("pre", "not-started"),
                ("post", "succeeded")
            ]
        );
        assert!(d.path().join("post-ran").exists() && !d.path().join("never").exists());
    }
}
