//! `controller` (the operator) and `get` (its resources as tables).

use std::time::Duration;

use clap::Args;

use super::{Ctx, Error, MoverArgs};
use crate::k8s::live::LiveCluster;
use crate::operator::client::{self, Kind};
use crate::operator::{ControllerOptions, LeaderOptions};

#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// The cluster (kubeconfig context; none: the current one, or the in-cluster
    /// ServiceAccount).
    #[arg(long, value_name = "CTX")]
    context: Option<String>,
    /// lifeboat's namespace: its BackupLocations and their Secrets, its Lease.
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "lifeboat",
        value_name = "NS"
    )]
    namespace: String,
    /// Serve /metrics, /healthz and /readyz here.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9469")]
    metrics_addr: std::net::SocketAddr,
    /// The Lease (in --namespace) that one replica holds while it leads.
    #[arg(long, value_name = "NAME", default_value = "lifeboat-controller")]
    lease_name: String,
    /// This replica's name in the Lease [default: the host name and process id].
    #[arg(long, env = "POD_NAME", value_name = "ID")]
    identity: Option<String>,
    /// How long the Lease holds without renewal (another replica takes over after it).
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = crate::hooks::parse_duration)]
    lease_duration: Duration,
    /// How often each BackupLocation is checked and its backups listed.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = crate::hooks::parse_duration)]
    resync: Duration,
    #[command(flatten)]
    movers: MoverArgs,
}

pub(super) async fn controller(ctx: &Ctx<'_>, a: &ControllerArgs) -> Result<(), Error> {
    let live = LiveCluster::connect(a.context.as_deref()).await?;
    let identity = a.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let options = ControllerOptions {
        namespace: a.namespace.clone(),
        state_dir: ctx.state_dir(),
        movers: a.movers.settings(ctx.g),
        leader: LeaderOptions {
            lease: a.lease_name.clone(),
            identity,
            duration: a.lease_duration,
        },
        resync: a.resync,
        metrics_addr: Some(a.metrics_addr),
    };
    std::fs::create_dir_all(&options.state_dir).map_err(|e| {
        Error::Usage(format!(
            "cannot create the state directory {}: {e}; give a writable --state-dir",
            options.state_dir.display()
        ))
    })?;
    Ok(crate::operator::run(live.client().clone(), options, ctx.cancel.clone()).await?)
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// What to list.
    #[arg(value_enum)]
    kind: Kind,
    /// Only this namespace [default: every namespace].
    #[arg(long, short = 'n', value_name = "NS")]
    namespace: Option<String>,
    /// The cluster (kubeconfig context; none: the current one).
    #[arg(long, value_name = "CTX")]
    context: Option<String>,
}

pub(super) async fn get(ctx: &Ctx<'_>, a: &GetArgs) -> Result<(), Error> {
    let live = LiveCluster::connect(a.context.as_deref()).await?;
    let rows = client::list(live.client(), a.kind, a.namespace.as_deref()).await?;
    let objects: Vec<&serde_json::Value> = rows.iter().map(|r| &r.object).collect();
    ctx.emit(&objects, || table(&rows));
    Ok(())
}

fn table(rows: &[client::Row]) -> String {
    if rows.is_empty() {
        return "none found".into();
    }
    let mut head = vec!["NAMESPACE", "NAME"];
    head.extend(rows[0].columns.iter().map(|(h, _)| h.as_str()));
    super::table(
        &head,
        &[],
        rows.iter().map(|r| {
            let mut v = vec![r.namespace.clone(), r.name.clone()];
            v.extend(r.columns.iter().map(|(_, c)| c.clone()));
            v
        }),
    )
}

/// `activate`/`deactivate` through a Standby when a controller runs on the site: None when
/// no Standby holds the namespace.
pub(super) async fn flip(
    ctx: &Ctx<'_>,
    context: Option<&str>,
    ns: &str,
    active: bool,
) -> Result<bool, Error> {
    let live = LiveCluster::connect(context).await?;
    let wait = Duration::from_secs(ctx.g.timeout.max(1) * 5);
    let Some(f) = client::flip(live.client(), ns, active, wait).await? else {
        return Ok(false);
    };
    ctx.emit(&super::dr::Activation::Standby(&f), || {
        format!(
            "Standby {} set active={} for namespace {}: {}{}",
            f.standby,
            f.active,
            f.namespace,
            f.ready,
            f.rto_seconds
                .map(|r| format!(" (ready after {r:.1} s)"))
                .unwrap_or_default()
        )
    });
    Ok(true)
}
