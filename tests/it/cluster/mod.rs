//! The live features against a real Kubernetes: the control plane, CSI snapshot stack and pod
//! runner of `tests/cluster/` (kube-apiserver, etcd, controllers, snapshot-controller,
//! csi-provisioner, csi-snapshotter, the SnapshotMetadata sidecar), two of them side by side:
//! a primary that backs up and a DR site that restores.
//!
//! lifeboat runs here with the token of its own ServiceAccount `lifeboat/lifeboat`, bound to
//! the roles in `deploy/` and nothing else: the primary binds `deploy/base/rbac.yaml` (backup) only,
//! the DR site `deploy/restore/rbac-restore.yaml` too. A permission lifeboat lacks fails a
//! test. The test's own arrangements (the application, its data) are made with the admin
//! kubeconfig.
//!
//! `tests/run.sh` starts both clusters (`tests/cluster/up.sh`) and names them in
//! `LIFEBOAT_TEST_CLUSTER` and `LIFEBOAT_TEST_CLUSTER_DR`. Without them these tests fail and
//! say how to start them, unless `LIFEBOAT_SKIP_CLUSTER=1` says to leave them out.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use lifeboat::k8s::live::LiveCluster;
use serde_json::Value;

use crate::support::lb;

mod capture;
mod deploy;
mod operator;
mod restore;
mod standby;
mod volumes;

/// The mover image's name as lifeboat writes it into Jobs; the pod runner maps it to the
/// binary under test (`DIR/images`).
const MOVER_IMAGE: &str = "ghcr.io/lifeboat-dr/lifeboat";

/// One running test cluster.
pub struct Site {
    pub dir: PathBuf,
    /// Where its kubectl is (tests/cluster's build cache).
    bin: PathBuf,
    /// A kubeconfig with the token of ServiceAccount lifeboat/lifeboat.
    lifeboat_kubeconfig: PathBuf,
}

/// Which of the two clusters.
#[derive(Clone, Copy, PartialEq)]
pub enum Role {
    /// Backs up: binds `deploy/base/rbac.yaml` only.
    Primary,
    /// Restores: binds `deploy/base/rbac.yaml` and `deploy/restore/rbac-restore.yaml`.
    Dr,
}

impl Role {
    fn var(self) -> &'static str {
        match self {
            Role::Primary => "LIFEBOAT_TEST_CLUSTER",
            Role::Dr => "LIFEBOAT_TEST_CLUSTER_DR",
        }
    }
}

/// The cluster for `role`, set up once per test run; None when `LIFEBOAT_SKIP_CLUSTER=1`.
pub fn site(role: Role) -> Option<&'static Site> {
    static PRIMARY: OnceLock<Result<Site, String>> = OnceLock::new();
    static DR: OnceLock<Result<Site, String>> = OnceLock::new();
    if std::env::var("LIFEBOAT_SKIP_CLUSTER").as_deref() == Ok("1") {
        eprintln!("LIFEBOAT_SKIP_CLUSTER=1: this test needs the test clusters and is left out");
        return None;
    }
    let cell = match role {
        Role::Primary => &PRIMARY,
        Role::Dr => &DR,
    };
    match cell.get_or_init(|| Site::set_up(role)) {
        Ok(s) => Some(s),
        Err(e) => panic!("{e}"),
    }
}

impl Site {
    fn set_up(role: Role) -> Result<Site, String> {
        let var = role.var();
        let dir = std::env::var_os(var).map(PathBuf::from).ok_or_else(|| {
            format!(
                "{var} is not set: these tests need the test clusters of tests/cluster/. \
                 Run the suite with tests/run.sh (it starts them), or start them yourself \
                 (tests/cluster/up.sh DIR, then export {var}=DIR), or set \
                 LIFEBOAT_SKIP_CLUSTER=1 to leave these tests out"
            )
        })?;
        let env = std::fs::read_to_string(dir.join("env")).map_err(|e| {
            format!(
                "{var}={}: no env file ({e}): is the cluster up?",
                dir.display()
            )
        })?;
        // `export PATH='BIN':"$PATH"`
        let bin = env
            .lines()
            .find_map(|l| l.strip_prefix("export PATH='"))
            .and_then(|l| l.split('\'').next())
            .map(PathBuf::from)
            .ok_or_else(|| format!("{}: no PATH line", dir.join("env").display()))?;
        let site = Site {
            lifeboat_kubeconfig: dir.join("lifeboat.kubeconfig"),
            dir,
            bin,
        };
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        site.kubectl_ok(&[
            "apply",
            "-f",
            root.join("deploy/base/rbac.yaml").to_str().unwrap(),
        ]);
        let restore = root.join("deploy/restore/rbac-restore.yaml");
        if role == Role::Dr {
            site.kubectl_ok(&["apply", "-f", restore.to_str().unwrap()]);
        } else {
            // A primary that was a DR site in an earlier run must not keep the restore role.
            site.kubectl_ok(&[
                "delete",
                "--ignore-not-found",
                "-f",
                restore.to_str().unwrap(),
            ]);
        }
        site.map_mover_image()?;
        site.write_token_kubeconfig("lifeboat", &site.lifeboat_kubeconfig)?;
        Ok(site)
    }

    /// The mover image runs the lifeboat binary under test.
    fn map_mover_image(&self) -> Result<(), String> {
        let images = self.dir.join("images");
        let line = format!("{MOVER_IMAGE} {}\n", env!("CARGO_BIN_EXE_lifeboat"));
        let old = std::fs::read_to_string(&images).unwrap_or_default();
        if !old.contains(&line) {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&images)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .map_err(|e| format!("write {}: {e}", images.display()))?;
        }
        Ok(())
    }

    /// Writes at `path` a kubeconfig holding a token of ServiceAccount lifeboat/`sa` (for the
    /// whole run).
    pub fn write_token_kubeconfig(&self, sa: &str, path: &Path) -> Result<(), String> {
        let token = self.kubectl_ok(&["-n", "lifeboat", "create", "token", sa, "--duration=6h"]);
        let admin = std::fs::read_to_string(self.dir.join("kubeconfig"))
            .map_err(|e| format!("read the admin kubeconfig: {e}"))?;
        let field = |key: &str| {
            admin
                .lines()
                .find_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| format!("the admin kubeconfig has no {key}"))
        };
        let server = field("server:")?;
        let ca = field("certificate-authority-data:")?;
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\nusers:\n- name: lifeboat\n  user:\n    token: {}\ncontexts:\n- name: lifeboat\n  context: {{cluster: test, user: lifeboat}}\ncurrent-context: lifeboat\n",
            token.trim()
        );
        std::fs::write(path, kubeconfig).map_err(|e| format!("write {}: {e}", path.display()))
    }

    /// kubectl as the cluster's admin (the test's own arrangements).
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(self.bin.join("kubectl"));
        c.env("KUBECONFIG", self.dir.join("kubeconfig"))
            .stdin(Stdio::null());
        c
    }

    /// Runs admin kubectl ARGS, panicking with its output on failure; gives stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl().args(args).output().expect("run kubectl");
        assert!(
            out.status.success(),
            "kubectl {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Admin kubectl ARGS with `input` on its standard input; its output, whatever the exit.
    pub fn kubectl_input(&self, args: &[&str], input: &str) -> std::process::Output {
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// Admin `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) {
        let out = self.kubectl_input(&["apply", "--server-side", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply:\n{yaml}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An object as JSON (admin), or None when it does not exist.
    pub fn get(&self, what: &[&str]) -> Option<Value> {
        let mut args = vec!["get", "-o", "json"];
        args.extend(what);
        let out = self.kubectl().args(&args).output().expect("run kubectl");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("NotFound"),
                "kubectl {}: {err}",
                args.join(" ")
            );
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl's JSON"))
    }

    /// Waits (up to `limit`) until `done` holds, naming `what` when it does not.
    pub fn wait_until(&self, what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < limit,
                "{what}: not within {limit:?} (cluster {}, logs in {}/logs)",
                self.dir.display(),
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether ServiceAccount lifeboat/lifeboat may `verb` `resource` (in namespace `ns`).
    pub fn lifeboat_can(&self, verb: &str, resource: &str, ns: &str) -> bool {
        let mut c = self.kubectl();
        c.args(["auth", "can-i", verb]);
        match resource.split_once('/') {
            Some((r, sub)) => c.args([r, "--subresource", sub]),
            None => c.arg(resource),
        };
        let out = c
            .args(["-n", ns, "--as=system:serviceaccount:lifeboat:lifeboat"])
            .output()
            .expect("run kubectl");
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    }

    /// The cluster as lifeboat sees it, through its ServiceAccount's token.
    pub async fn live(&self) -> LiveCluster {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.lifeboat_kubeconfig)
            .expect("the lifeboat kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("a client configuration");
        LiveCluster::from_config(config, "lifeboat").expect("a client")
    }

    /// `lifeboat --repo REPO` talking to this cluster as ServiceAccount lifeboat/lifeboat.
    pub fn lifeboat(&self, repo: &Path) -> Command {
        let mut c = lb(repo);
        c.env("KUBECONFIG", &self.lifeboat_kubeconfig);
        c
    }

    /// Makes the namespaced custom resource type `gadgets.GROUP` (kind Gadget, v1, any spec)
    /// and waits until it is Established; gives the CRD's name.
    pub fn gadget_crd(&self, group: &str) -> String {
        let crd = format!("gadgets.{group}");
        self.apply(&format!(
            r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: {crd}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: gadgets, singular: gadget, kind: Gadget}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"#
        ));
        self.kubectl_ok(&[
            "wait",
            "--for=condition=established",
            "--timeout=60s",
            &format!("crd/{crd}"),
        ]);
        crd
    }

    /// A fresh namespace (admin), named `prefix-N` with N unique within this run.
    pub fn namespace(&self, prefix: &str) -> String {
        let name = unique(prefix);
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }
}

/// `prefix-N`, N unique in this run and across runs on the same clusters.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 100_000;
    format!(
        "{prefix}-{secs}-{}-{}",
        std::process::id() % 1000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The restore role's file (a restoring site binds it).
pub fn restore_role() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/restore/rbac-restore.yaml")
}
