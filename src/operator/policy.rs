//! SchedulePolicies and Rules as the reconcilers use them: a policy validated (its `Ready`
//! condition names the field at fault), and the Rule objects a backup names, validated as
//! the file configuration's rules are.

use std::sync::Arc;

use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::ResourceExt;
use tokio_util::sync::CancellationToken;

use super::location::Unusable;
use super::{differs, patch_status, ready, Operator, OperatorError};
use crate::crd::SchedulePolicy;
use crate::hooks::Rule;
use crate::scheduler::config::{policy_of, Policy, ScheduleError};

/// Where a resource's spec came from, in messages (the file configuration's path).
const FROM: &str = "the cluster";

/// The message of a configuration error: the object, the field and why.
pub fn message(e: &ScheduleError) -> String {
    match e {
        ScheduleError::Invalid {
            object,
            field,
            reason,
            ..
        } => format!("{object}: {field}: {reason}"),
        ScheduleError::Read { reason, .. } => reason.clone(),
    }
}

/// The SchedulePolicy `name`, validated.
pub async fn policy(op: &Operator, name: &str) -> Result<Policy, Unusable> {
    let api: Api<SchedulePolicy> = Api::all(op.client.clone());
    match api.get_opt(name).await {
        Ok(Some(p)) => policy_of(FROM, name, p.spec).map_err(|e| ("PolicyInvalid", message(&e))),
        Ok(None) => Err((
            "PolicyNotFound",
            format!("spec.schedulePolicyName: no SchedulePolicy named `{name}`"),
        )),
        Err(e) => Err(("PolicyUnreadable", format!("SchedulePolicy `{name}`: {e}"))),
    }
}

/// The Rule objects `names` of namespace `ns`, validated (`field` is where they are named).
pub async fn rules(
    op: &Operator,
    ns: &str,
    names: &[String],
    field: &str,
) -> Result<Vec<Rule>, Unusable> {
    let api: Api<crate::crd::Rule> = Api::namespaced(op.client.clone(), ns);
    let mut out = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let r = match api.get_opt(n).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err((
                    "RuleNotFound",
                    format!("{field}[{i}]: no Rule `{n}` in namespace {ns}"),
                ))
            }
            Err(e) => return Err(("RuleUnreadable", format!("{field}[{i}]: Rule `{n}`: {e}"))),
        };
        let rule = crate::hooks::rule_of(&format!("Rule {ns}/{n}"), n, r.spec)
            .map_err(|e| ("RuleInvalid", format!("{field}[{i}]: {e}")))?;
        out.push(rule);
    }
    Ok(out)
}

async fn reconcile(p: Arc<SchedulePolicy>, op: Arc<Operator>) -> Result<Action, OperatorError> {
    let name = p.name_any();
    let mut status = p.status.clone().unwrap_or_default();
    let generation = p.metadata.generation;
    status.observed_generation = generation;
    match policy_of(FROM, &name, p.spec.clone()) {
        Ok(_) => ready(&mut status.conditions, Ok("Valid"), generation),
        Err(e) => ready(
            &mut status.conditions,
            Err(("InvalidSpec", message(&e))),
            generation,
        ),
    }
    if differs(p.status.as_ref(), &status, &[], 0) {
        if let Some(c) = status.conditions.iter().find(|c| c.status == "False") {
            op.event(&*p, true, "InvalidSpec", c.message.clone()).await;
        }
        let api: Api<SchedulePolicy> = Api::all(op.client.clone());
        patch_status(&api, &name, &status).await?;
    }
    Ok(Action::await_change())
}

pub async fn controller(op: Arc<Operator>, stop: CancellationToken) {
    let api: Api<SchedulePolicy> = Api::all(op.client.clone());
    let c = Controller::new(api, watcher::Config::default());
    super::drive(c, reconcile, op, stop).await;
}
