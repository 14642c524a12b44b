//! The DR site on real clusters: a warm standby that follows a schedule's backups into the DR
//! cluster (workloads held at 0 replicas, claims written by standby Jobs and moved in place to
//! each later backup), activate and deactivate, and a drill that restores into a scratch
//! namespace, verifies, and measures the time until the workloads are ready.

use std::time::Duration;

use serde_json::Value;

use super::volumes::{application, job, mover_secret, volume_file};
use super::{site, Role, Site};
use crate::support::{init_repo, json, ok, run, tmp};

fn ready_replicas(site: &Site, ns: &str) -> i64 {
    site.get(&["-n", ns, "deployment", "web"])
        .map(|d| d["status"]["readyReplicas"].as_i64().unwrap_or(0))
        .unwrap_or(0)
}

fn standby_once(dr: &Site, repo: &std::path::Path, state: &std::path::Path) -> Value {
    json(&ok(run(dr
        .lifeboat(repo)
        .arg("--state-dir")
        .arg(state)
        .args([
            "--json",
            "standby",
            "--schedule",
            "web-hourly",
            "--once",
            "--context",
            "lifeboat",
        ]))))
}

#[test]
fn a_warm_standby_follows_the_schedule_in_place_activates_and_drills() {
    let (Some(primary), Some(dr)) = (site(Role::Primary), site(Role::Dr)) else {
        return;
    };
    let d = tmp();
    let repo = init_repo(d.path());
    let state = d.path().join("standby-state");
    let ns = primary.namespace("web");
    application(primary, &ns, 2);
    mover_secret(primary, &ns, &repo);
    job(
        primary,
        &ns,
        "write",
        "set -e; head -c 2097152 /dev/urandom > /tmp/$$; dd if=/tmp/$$ of=/dev/xvda bs=1M conv=fsync 2>/dev/null; rm /tmp/$$; \
         mkdir -p /srv/data/app; echo one > /srv/data/app/file; sync",
    );
    primary.wait_until(
        "the primary's web is ready",
        Duration::from_secs(60),
        || ready_replicas(primary, &ns) == 2,
    );
    let backup = |name: &str| {
        ok(run(primary.lifeboat(&repo).args([
            "backup",
            "create",
            name,
            "-n",
            &ns,
            "--schedule",
            "web-hourly",
        ])))
    };
    backup("web-1");

    // The standby applies it, held: the Deployment at 0 replicas, the claims with their data.
    let first = standby_once(dr, &repo, &state);
    let report = first
        .as_array()
        .and_then(|a| a.iter().find(|r| r["namespace"] == ns.as_str()))
        .unwrap_or_else(|| panic!("{ns} in {first:#}"));
    assert_eq!(report["state"], "applied", "{first:#}");
    let web = dr.get(&["-n", &ns, "deployment", "web"]).unwrap();
    assert_eq!(web["spec"]["replicas"], 0, "held: {web:#}");
    assert_eq!(
        web["metadata"]["annotations"]["lifeboat.dev/original-replicas"],
        "2"
    );
    let same = |claim: &str| {
        std::fs::read(volume_file(primary, &ns, claim)).unwrap()
            == std::fs::read(volume_file(dr, &ns, claim)).unwrap()
    };
    assert!(
        same("data-block") && same("data-fs"),
        "the DR claims hold the backup's data"
    );
    let uid = |claim: &str| dr.get(&["-n", &ns, "pvc", claim]).unwrap()["metadata"]["uid"].clone();
    let uids = (uid("data-block"), uid("data-fs"));

    // The primary changes; its next backup is moved onto the same DR claims in place.
    job(
        primary,
        &ns,
        "change",
        "set -e; head -c 65536 /dev/urandom > /tmp/$$; dd if=/tmp/$$ of=/dev/xvda bs=65536 seek=5 conv=notrunc,fsync 2>/dev/null; rm /tmp/$$; \
         echo two > /srv/data/app/file; sync",
    );
    backup("web-2");
    let second = standby_once(dr, &repo, &state);
    assert!(
        second
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["namespace"] == ns.as_str() && r["state"] == "applied"),
        "{second:#}"
    );
    assert!(
        same("data-block") && same("data-fs"),
        "moved to the second backup"
    );
    assert_eq!(
        (uid("data-block"), uid("data-fs")),
        uids,
        "the same claims, updated in place"
    );
    let third = standby_once(dr, &repo, &state);
    assert!(
        third
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["namespace"] == ns.as_str() && r["state"] == "up-to-date"),
        "{third:#}"
    );

    // Failover: activate starts the workloads, and the pod runner makes them ready.
    ok(run(dr
        .lifeboat(&repo)
        .arg("--state-dir")
        .arg(&state)
        .args(["activate", "-n", &ns, "--context", "lifeboat"])));
    dr.wait_until(
        "the DR site's web is ready",
        Duration::from_secs(60),
        || ready_replicas(dr, &ns) == 2,
    );
    ok(run(dr
        .lifeboat(&repo)
        .arg("--state-dir")
        .arg(&state)
        .args(["deactivate", "-n", &ns, "--context", "lifeboat"])));
    assert_eq!(
        dr.get(&["-n", &ns, "deployment", "web"]).unwrap()["spec"]["replicas"],
        0
    );

    // A drill of the newest backup into a scratch namespace: verified, and timed until ready.
    let scratch = format!("{ns}-drill");
    let drill = json(&ok(run(dr.lifeboat(&repo).args([
        "--json",
        "drill",
        "-n",
        &ns,
        "--into",
        &scratch,
        "--remove",
        "--context",
        "lifeboat",
    ]))));
    assert_eq!(drill["backup"], "web-2", "{drill:#}");
    assert_eq!(drill["volumes"].as_array().unwrap().len(), 2, "{drill:#}");
    assert!(drill["rto_seconds"].as_f64().unwrap() > 0.0, "{drill:#}");
    assert_eq!(drill["removed"], true);

    primary.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
    dr.kubectl_ok(&["delete", "namespace", &ns, "--wait=false"]);
}
