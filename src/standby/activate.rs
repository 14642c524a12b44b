//! Failover and failback on the DR site: takes the catalog, a site and a namespace; gives
//! `activate` (standby stops applying to it, its records of what the volumes hold go, the
//! applications start) and `deactivate` (held again, standby applies to it again, its
//! volumes written whole next time).
//!
//! Must not activate a namespace standby never applied, nor leave a record that would let
//! standby apply a delta onto data the application changed.

use std::sync::Arc;

use serde::Serialize;

use super::dir_site::{forget_applied_cluster_dir, set_running_cluster_dir};
use super::live_site::{claim_live_claims, forget_live_claims, ACTIVATED};
use super::{Site, StandbyError};
use crate::k8s::objects::Change;
use crate::scheduler::catalog::{blocking, Catalog, CatalogError};

/// Which way a namespace was switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Switch {
    Activated,
    Deactivated,
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Switch::Activated => "activated",
            Switch::Deactivated => "deactivated",
        })
    }
}

/// What `activate` or `deactivate` changed. (Fields in the order `--json` has always printed
/// them.)
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunningReport {
    /// Each workload changed (replicas, suspension), with the values before and after.
    pub changes: Vec<Change>,
    pub namespace: String,
    pub state: Switch,
}

/// `activate` (`run`) or `deactivate` namespace `ns` of the site. Activating needs a
/// namespace standby applied; deactivating also serves the primary (no catalog row).
pub async fn set_running(
    catalog: &Arc<Catalog>,
    site: &Site,
    ns: &str,
    run: bool,
) -> Result<RunningReport, StandbyError> {
    let n = ns.to_string();
    let known = blocking(catalog, move |c| c.standby_row(&n))
        .await?
        .is_some();
    if run && !known {
        return Err(CatalogError::NotStandby(ns.to_string()).into());
    }
    if known {
        // Standby stops (activate) or resumes (deactivate) applying to the namespace first.
        let n = ns.to_string();
        blocking(catalog, move |c| c.set_activated(&n, run)).await?;
    }
    if run && known {
        // The application will change its data: standby's records of what the volumes hold
        // go first, so that after `deactivate` standby writes them anew, never a delta onto
        // data the application changed.
        match site {
            Site::Dir(d) => {
                let (d, n) = (d.clone(), ns.to_string());
                crate::util::blocking(move || forget_applied_cluster_dir(&d, &n)).await?
            }
            Site::Live(l) => forget_live_claims(l, ns).await?,
        }
        let n = ns.to_string();
        blocking(catalog, move |c| c.forget_applied(&n)).await?;
    }
    if !run && known {
        if let Site::Live(l) = site {
            // Given back to standby: its claims are standby's again, content unknown.
            claim_live_claims(l, ns).await?;
        }
    }
    let changes = match site {
        Site::Dir(d) => {
            let (d, n) = (d.clone(), ns.to_string());
            crate::util::blocking(move || set_running_cluster_dir(&d, &n, run)).await?
        }
        Site::Live(l) => {
            if known {
                // On the namespace too: a standby that lost its catalog still leaves it alone.
                l.annotate_namespace(ns, ACTIVATED, run.then_some("true"))
                    .await?;
            }
            l.set_running(ns, run).await?
        }
    };
    Ok(RunningReport {
        changes,
        namespace: ns.to_string(),
        state: if run {
            Switch::Activated
        } else {
            Switch::Deactivated
        },
    })
}
