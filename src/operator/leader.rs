//! Leader election on a `coordination.k8s.io` Lease in lifeboat's namespace: takes the
//! client, the Lease's name and this replica's identity; gives a token cancelled when the
//! Lease is lost. A replica leads while it renews the Lease within its duration; another one
//! takes it over once a renewal is that late (the leader died). Updates are optimistic (the
//! resourceVersion), so two replicas never both take one Lease.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio_util::sync::CancellationToken;

use super::OperatorError;

/// How long a Lease holds without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);

/// Who this replica is and which Lease it takes.
#[derive(Debug, Clone)]
pub struct LeaderOptions {
    pub lease: String,
    pub identity: String,
    pub duration: Duration,
}

/// What a look at the Lease found.
enum Seen {
    /// Taken (or kept) by this replica.
    Ours,
    /// Another holder renewed it in time.
    Held(String),
}

/// One attempt to take or renew the Lease.
async fn try_take(api: &Api<Lease>, o: &LeaderOptions) -> Result<Seen, kube::Error> {
    let now = Timestamp::now();
    let secs = o.duration.as_secs().max(1) as i32;
    let Some(mut lease) = api.get_opt(&o.lease).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(o.lease.clone()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(o.identity.clone()),
                lease_duration_seconds: Some(secs),
                acquire_time: Some(MicroTime(now)),
                renew_time: Some(MicroTime(now)),
                lease_transitions: Some(0),
                ..Default::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Seen::Ours),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Seen::Held("(just created)".into())),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.get_or_insert_with(Default::default);
    let holder = spec.holder_identity.clone().unwrap_or_default();
    let renewed = spec.renew_time.as_ref().map(|t| t.0);
    let duration = spec.lease_duration_seconds.unwrap_or(secs) as i64;
    let expired = renewed.is_none_or(|r| r.as_second() + duration < now.as_second());
    if holder != o.identity && !holder.is_empty() && !expired {
        return Ok(Seen::Held(holder));
    }
    if holder != o.identity {
        spec.acquire_time = Some(MicroTime(now));
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        spec.holder_identity = Some(o.identity.clone());
    }
    spec.renew_time = Some(MicroTime(now));
    spec.lease_duration_seconds = Some(secs);
    // resourceVersion is kept: a concurrent taker makes this a 409.
    match api.replace(&o.lease, &PostParams::default(), &lease).await {
        Ok(_) => Ok(Seen::Ours),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Seen::Held("(changed meanwhile)".into())),
        Err(e) => Err(e),
    }
}

/// Waits until this replica holds the Lease (None: cancelled first), then keeps renewing it;
/// the token given is cancelled when a renewal fails for a whole lease duration or another
/// holder has it.
pub async fn acquire(
    client: &Client,
    namespace: &str,
    o: &LeaderOptions,
    cancel: &CancellationToken,
) -> Result<Option<CancellationToken>, OperatorError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
    let retry = (o.duration / 5).max(Duration::from_millis(500));
    let mut said = String::new();
    loop {
        match try_take(&api, o).await {
            Ok(Seen::Ours) => break,
            Ok(Seen::Held(h)) => {
                if h != said {
                    tracing::info!(holder = %h, lease = %o.lease, "another replica leads; waiting for the Lease");
                    said = h;
                }
            }
            Err(e) => tracing::warn!("cannot read or take Lease {namespace}/{}: {e}", o.lease),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = cancel.cancelled() => return Ok(None),
        }
    }
    let lost = CancellationToken::new();
    let (l, o, c) = (lost.clone(), o.clone(), cancel.clone());
    tokio::spawn(async move {
        let renew = (o.duration / 3).max(Duration::from_millis(500));
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(renew) => {}
                _ = c.cancelled() => return,
            }
            match try_take(&api, &o).await {
                Ok(Seen::Ours) => last_ok = tokio::time::Instant::now(),
                Ok(Seen::Held(h)) => {
                    tracing::error!(holder = %h, "the Lease was taken over");
                    l.cancel();
                    return;
                }
                Err(e) => {
                    tracing::warn!("cannot renew the Lease: {e}");
                    if last_ok.elapsed() >= o.duration {
                        l.cancel();
                        return;
                    }
                }
            }
        }
    });
    Ok(Some(lost))
}
