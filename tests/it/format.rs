//! The stored objects match the JSON Schemas in `schema/`, and the on-store layout is what
//! FORMAT.md says, as a DR site with only the bucket and the password would find it.

use std::collections::BTreeSet;
use std::sync::Arc;

use lifeboat::crypto::Role;
use lifeboat::demo::generate_image;
use lifeboat::format::{object_hash, SnapshotId, PACK_MAGIC};
use lifeboat::store::memory::MemoryStore;
use lifeboat::store::Store;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::{new_repo, tmp};
use crate::volume::backup;

fn schema(name: &str) -> Value {
    let path = format!("{}/schema/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The object's keys are exactly the schema's properties, and every required one is there.
fn conforms(obj: &Value, schema: &Value, what: &str) {
    let props: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let keys: BTreeSet<String> = obj.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, props, "{what}: fields differ from the schema");
    for r in schema["required"].as_array().unwrap() {
        assert!(keys.contains(r.as_str().unwrap()), "{what}: missing {r}");
    }
    if let Some(v) = schema["properties"]["version"]["const"].as_u64() {
        assert_eq!(obj["version"].as_u64(), Some(v), "{what}: version");
    }
}

#[tokio::test]
async fn stored_objects_match_the_schemas_and_the_layout() {
    let d = tmp();
    let src = d.path().join("v.img");
    generate_image(&src, 2 << 20, 5).unwrap();
    let mem = MemoryStore::new();
    let repo = new_repo(Arc::new(mem.clone())).await;
    backup(&repo, "vol", &src).await;
    let cluster = lifeboat::k8s::source::ClusterDir::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/clusters/prod"),
    );
    let objects = lifeboat::k8s::source::select(
        &cluster.load().unwrap(),
        &lifeboat::k8s::source::Scope {
            namespaces: vec!["pg".into()],
            ..Default::default()
        },
        "test",
    )
    .unwrap();
    let rule = lifeboat::hooks::parse_rules(
        "pre.yaml",
        "apiVersion: lifeboat.dev/v1alpha1\nkind: Rule\nmetadata: {name: flush}\nspec:\n  rules:\n  - podSelector: {app: postgres}\n    actions:\n    - {type: command, value: 'true'}\n",
    )
    .unwrap();
    let opts = lifeboat::app::volumes::ConsistencyOptions {
        pre: rule,
        allow_reflink: false,
        ..Default::default()
    };
    // A copy of the fixture, so the snapshot copies are not made in the source tree.
    let copy = d.path().join("cluster");
    for f in crate::support::files(cluster.root()) {
        let to = copy.join(f.strip_prefix(cluster.root()).unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&f, &to).unwrap();
    }
    let summary = lifeboat::app::volumes::backup_cluster_dir(
        repo.clone(),
        "app",
        &lifeboat::k8s::source::ClusterDir::new(&copy),
        objects,
        Default::default(),
        &opts,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!((summary.volumes.len(), summary.rules.len()), (1, 1));
    let c = CancellationToken::new();
    let lock = repo
        .lock(lifeboat::repository::LockKind::Shared, "format test")
        .await
        .unwrap();

    let cfg: Value = serde_json::from_slice(&mem.get("config", &c).await.unwrap()).unwrap();
    conforms(&cfg, &schema("config.schema.json"), "config");

    for o in mem.list("", &c).await.unwrap() {
        let bytes = mem.get(&o.key, &c).await.unwrap();
        if o.key == "config" {
            continue;
        }
        // Every other object is named by the BLAKE3 of its bytes.
        let name = o.key.rsplit('/').next().unwrap();
        assert_eq!(
            name,
            hex::encode(object_hash(&bytes)),
            "{} is named by its hash",
            o.key
        );
        let keys = repo.keys();
        if o.key.starts_with("locks/") {
            conforms(
                &serde_json::from_slice(&bytes).unwrap(),
                &schema("lock.schema.json"),
                &o.key,
            );
        } else if o.key.starts_with("keys/") {
            conforms(
                &serde_json::from_slice(&bytes).unwrap(),
                &schema("key.schema.json"),
                &o.key,
            );
        } else if o.key.starts_with("index/") {
            let v: Value =
                serde_json::from_slice(&keys.open(Role::Index, &bytes, 1 << 24).unwrap()).unwrap();
            conforms(&v, &schema("index.schema.json"), &o.key);
            let packed = &schema("index.schema.json")["$defs"]["packedBlob"];
            conforms(&v["packs"][0]["blobs"][0], packed, "packed blob");
        } else if o.key.starts_with("snapshots/") {
            let v: Value =
                serde_json::from_slice(&keys.open(Role::Snapshot, &bytes, 1 << 24).unwrap())
                    .unwrap();
            let s = schema("snapshot.schema.json");
            conforms(&v, &s, &o.key);
            conforms(&v["stats"], &s["properties"]["stats"], "stats");
            let id: SnapshotId = name.parse().unwrap();
            assert_eq!(id.key(), o.key);
        } else if o.key.starts_with("backups/") {
            let v: Value =
                serde_json::from_slice(&keys.open(Role::Backup, &bytes, 1 << 24).unwrap()).unwrap();
            let s = schema("backup.schema.json");
            conforms(&v, &s, &o.key);
            conforms(&v["filters"], &s["properties"]["filters"], "filters");
            conforms(
                &v["objects"][0],
                &s["properties"]["objects"]["items"],
                "backed-up object",
            );
            conforms(
                &v["volumes"][0],
                &s["properties"]["volumes"]["items"],
                "backed-up volume",
            );
            conforms(
                &v["rules"][0],
                &s["properties"]["rules"]["items"],
                "rule action record",
            );
        } else if o.key.starts_with("data/") {
            assert_eq!(
                &o.key[5..7],
                &name[..2],
                "packs fan out by the first two hex digits"
            );
            assert_eq!(&bytes[bytes.len() - 8..], PACK_MAGIC);
            let tlen =
                u32::from_le_bytes(bytes[bytes.len() - 12..bytes.len() - 8].try_into().unwrap())
                    as usize;
            let trailer = &bytes[bytes.len() - 12 - tlen..bytes.len() - 12];
            let v: Value =
                serde_json::from_slice(&keys.open(Role::PackTrailer, trailer, 1 << 24).unwrap())
                    .unwrap();
            conforms(
                &v,
                &schema("index.schema.json")["$defs"]["packTrailer"],
                "pack trailer",
            );
        } else {
            panic!("unexpected object {}", o.key);
        }
    }
    lock.release().await.unwrap();
    assert!(mem.list("locks/", &c).await.unwrap().is_empty());
}

#[test]
fn block_map_codec_round_trips_and_rejects_damage() {
    use lifeboat::format::{decode_map, encode_map, BlobId, BlockRef};
    let entries = vec![
        BlockRef::Zero,
        BlockRef::Blob(BlobId([7; 32])),
        BlockRef::Zero,
    ];
    let bytes = encode_map(&entries);
    assert_eq!(bytes.len(), 12 + 3 * 32);
    assert_eq!(decode_map(&bytes).unwrap(), entries);
    assert!(decode_map(&bytes[..bytes.len() - 1]).is_err());
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(decode_map(&bad).is_err());
}

#[test]
fn the_example_ranges_file_parses() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/changed-ranges.json");
    let r = lifeboat::volume::diff::read_ranges_file(&path).unwrap();
    assert_eq!(r.len(), 3);
    lifeboat::volume::diff::validate_ranges("example", &r, 16 << 20).unwrap();
    assert!(lifeboat::volume::diff::validate_ranges("example", &r, (13 << 20) - 1).is_err());
}

/// The manifests under deploy/ parse, and name what the code uses.
#[test]
fn deploy_manifests_parse_and_match_the_code() {
    use serde::Deserialize;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let mut kinds = Vec::new();
    for f in crate::support::files(&dir) {
        if f.extension().and_then(|e| e.to_str()) != Some("yaml") || f.ends_with("compose.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let kind = v["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", f.display()));
            kinds.push((kind.to_string(), v));
        }
    }
    let secret = kinds
        .iter()
        .find(|(k, v)| k == "Secret" && v["metadata"]["namespace"].is_null())
        .expect("the mover Secret");
    assert_eq!(
        secret.1["metadata"]["name"].as_str(),
        Some(lifeboat::k8s::csi::MoverSettings::default().secret.as_str())
    );
    for key in ["LIFEBOAT_REPOSITORY", "LIFEBOAT_PASSWORD"] {
        assert!(!secret.1["stringData"][key].is_null(), "{key}");
    }
    // The roles: what each permits is tested on the real clusters (it::cluster); here, that the
    // backup role writes only lifeboat's working objects and the restore role is apart.
    let role = |name: &str| {
        kinds
            .iter()
            .find(|(k, v)| k == "ClusterRole" && v["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("the ClusterRole {name}"))
    };
    let backup = role("lifeboat-backup");
    let rules = serde_json::to_string(&backup.1["rules"]).unwrap();
    for needed in [
        "pods/exec",
        "volumesnapshots",
        "volumegroupsnapshots",
        "jobs",
        "volumesnapshotcontents",
        "persistentvolumeclaims",
    ] {
        assert!(rules.contains(needed), "the backup role grants {needed}");
    }
    for rule in backup.1["rules"].as_sequence().unwrap() {
        let on_everything = rule["resources"]
            .as_sequence()
            .is_some_and(|r| r.iter().any(|x| x.as_str() == Some("*")));
        if on_everything {
            let verbs: Vec<&str> = rule["verbs"]
                .as_sequence()
                .unwrap()
                .iter()
                .filter_map(|v| v.as_str())
                .collect();
            assert_eq!(
                verbs,
                ["get", "list"],
                "the backup role reads everything, writes nothing"
            );
        }
    }
    role("lifeboat-restore");
    let mover = kinds
        .iter()
        .filter(|(k, _)| k == "ServiceAccount")
        .map(|(_, v)| v["metadata"]["name"].as_str().unwrap().to_string())
        .find(|n| n != "lifeboat");
    assert_eq!(
        mover.as_deref(),
        Some(
            lifeboat::k8s::csi::MoverSettings::default()
                .service_account
                .as_str()
        ),
        "the movers' ServiceAccount"
    );
    // Every Deployment runs a command line lifeboat accepts.
    use clap::Parser;
    let mut deployments = 0;
    for (_, v) in kinds.iter().filter(|(k, _)| k == "Deployment") {
        let args: Vec<String> = v["spec"]["template"]["spec"]["containers"][0]["args"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        lifeboat::cli::Cli::try_parse_from(std::iter::once("lifeboat".to_string()).chain(args))
            .unwrap_or_else(|e| panic!("{}: {e}", v["metadata"]["name"].as_str().unwrap()));
        deployments += 1;
    }
    assert_eq!(deployments, 3, "the server, the standby and the controller");
    // The server's own schedules are a valid configuration.
    let cm = kinds
        .iter()
        .find(|(k, _)| k == "ConfigMap")
        .expect("the schedules ConfigMap");
    let text = cm.1["data"]["schedules.yaml"].as_str().unwrap();
    lifeboat::scheduler::config::parse_config(&[("deploy/server.yaml".into(), text.into())])
        .unwrap();
}

/// A forget intent (written only by a forget that is then killed, so built here) is what
/// `forget-intent.schema.json` describes, and reads back.
#[test]
fn a_forget_intent_conforms_to_its_schema() {
    use lifeboat::format::{BackupId, ForgetIntent};
    let intent = ForgetIntent {
        version: lifeboat::format::FORMAT_VERSION,
        time: time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap(),
        backups: vec![BackupId([3; 32])],
        snapshots: vec![SnapshotId([4; 32]), SnapshotId([5; 32])],
    };
    let v = serde_json::to_value(&intent).unwrap();
    conforms(&v, &schema("forget-intent.schema.json"), "forget intent");
    assert_eq!(serde_json::from_value::<ForgetIntent>(v).unwrap(), intent);
}

/// A pending deletion (written by a prune with a grace period) is what
/// `pending-deletion.schema.json` describes, and reads back.
#[test]
fn a_pending_deletion_conforms_to_its_schema() {
    use lifeboat::format::{PackId, PendingDeletion};
    let list = PendingDeletion {
        version: lifeboat::format::FORMAT_VERSION,
        time: time::OffsetDateTime::from_unix_timestamp(1_790_000_000).unwrap(),
        packs: vec![PackId([6; 32]), PackId([7; 32])],
    };
    let v = serde_json::to_value(&list).unwrap();
    conforms(
        &v,
        &schema("pending-deletion.schema.json"),
        "pending deletion",
    );
    assert_eq!(serde_json::from_value::<PendingDeletion>(v).unwrap(), list);
}
