//! Shared test helpers: scratch repositories, and a real Garage S3 server on loopback.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use lifeboat::format::KdfParams;
use lifeboat::repository::{InitOptions, Repository};
use lifeboat::store::fault::Op;
use lifeboat::store::s3::{S3Settings, S3Store};
use lifeboat::store::{ObjectInfo, Store, StoreError, StoreOptions};
use tokio_util::sync::CancellationToken;

pub const PASSWORD: &[u8] = b"correct horse battery staple";

/// Small blocks and packs so that small test volumes still span many blocks, segments and packs.
pub fn test_init_options() -> InitOptions {
    InitOptions {
        chunk_size: 64 << 10,
        pack_size: 1 << 20,
        compression_level: 1,
        kdf: KdfParams::INSECURE_FAST,
    }
}

pub async fn new_repo(store: Arc<dyn Store>) -> Arc<Repository> {
    Arc::new(
        Repository::init(
            store,
            PASSWORD,
            &test_init_options(),
            CancellationToken::new(),
        )
        .await
        .expect("init"),
    )
}

/// The repository at `path` (a path or URL), opened with the password the CLI tests use ("pw").
pub async fn open_pw(path: &Path) -> Arc<Repository> {
    let store = lifeboat::store::open(&path.to_string_lossy(), &Default::default())
        .await
        .unwrap();
    Arc::new(
        Repository::open(store, b"pw", None, CancellationToken::new())
            .await
            .unwrap(),
    )
}

pub async fn reopen(store: Arc<dyn Store>) -> Arc<Repository> {
    Arc::new(
        Repository::open(store, PASSWORD, None, CancellationToken::new())
            .await
            .expect("open"),
    )
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lifeboat-test-")
        .tempdir()
        .expect("tempdir")
}

// ----- a store that holds a call ------------------------------------------------------------

/// What [`Paused`] asks before each call: given its op and key, a future to await first
/// (None: the call goes on at once).
pub type Pause = Box<dyn Fn(Op, &str) -> Option<BoxFuture<'static, ()>> + Send + Sync>;

/// A store that passes every call on to `inner`, after awaiting what `pause` gives for it: for
/// tests that hold one call at an instant of their choosing. `get_range` counts as a get.
pub struct Paused {
    pub inner: Arc<dyn Store>,
    pub pause: Pause,
}

impl std::fmt::Debug for Paused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Paused({:?})", self.inner)
    }
}

impl Paused {
    async fn hold(&self, op: Op, key: &str) {
        if let Some(wait) = (self.pause)(op, key) {
            wait.await;
        }
    }
}

#[async_trait]
impl Store for Paused {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn put(
        &self,
        key: &str,
        data: Bytes,
        cancel: &CancellationToken,
    ) -> Result<(), StoreError> {
        self.hold(Op::Put, key).await;
        self.inner.put(key, data, cancel).await
    }
    async fn get(&self, key: &str, cancel: &CancellationToken) -> Result<Bytes, StoreError> {
        self.hold(Op::Get, key).await;
        self.inner.get(key, cancel).await
    }
    async fn get_range(
        &self,
        key: &str,
        offset: u64,
        length: u64,
        cancel: &CancellationToken,
    ) -> Result<Bytes, StoreError> {
        self.hold(Op::Get, key).await;
        self.inner.get_range(key, offset, length, cancel).await
    }
    async fn head(&self, key: &str, cancel: &CancellationToken) -> Result<Option<u64>, StoreError> {
        self.hold(Op::Head, key).await;
        self.inner.head(key, cancel).await
    }
    async fn list(
        &self,
        prefix: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<ObjectInfo>, StoreError> {
        self.hold(Op::List, prefix).await;
        self.inner.list(prefix, cancel).await
    }
    async fn delete(&self, key: &str, cancel: &CancellationToken) -> Result<(), StoreError> {
        self.hold(Op::Delete, key).await;
        self.inner.delete(key, cancel).await
    }
}

// ----- Garage -------------------------------------------------------------------------------

pub struct Garage {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    /// A second key, allowed only to read the bucket (a DR site's).
    pub read_only_access_key: String,
    pub read_only_secret_key: String,
}

impl Garage {
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            region: Some("garage".into()),
            access_key_id: Some(self.access_key.clone()),
            secret_access_key: Some(self.secret_key.clone()),
            session_token: None,
        }
    }

    /// [`Garage::settings`] with the key that can only read.
    pub fn read_only_settings(&self) -> S3Settings {
        S3Settings {
            access_key_id: Some(self.read_only_access_key.clone()),
            secret_access_key: Some(self.read_only_secret_key.clone()),
            ..self.settings()
        }
    }

    /// A fresh, empty prefix of the test bucket.
    pub fn unique_prefix(&self) -> String {
        format!("t{:016x}", rand::random::<u64>())
    }

    pub async fn store(&self, options: StoreOptions) -> (S3Store, String) {
        let prefix = self.unique_prefix();
        let s = S3Store::new(&self.bucket, &prefix, self.settings(), options)
            .await
            .expect("s3 store");
        (s, prefix)
    }

    /// Environment for a `lifeboat` child process using this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_S3", self.endpoint.clone()),
            ("AWS_REGION", "garage".into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
    }

    /// [`Garage::env`] with the key that can only read.
    pub fn read_only_env(&self) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env[2].1 = self.read_only_access_key.clone();
        env[3].1 = self.read_only_secret_key.clone();
        env
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn garage_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LIFEBOAT_GARAGE_BIN") {
        return Some(PathBuf::from(p));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("garage"))
        .find(|p| p.is_file())
}

fn garage_cli(bin: &Path, cfg: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(bin)
        .arg("-c")
        .arg(cfg)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running garage {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "garage {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn start_garage() -> Result<Garage, String> {
    let bin = garage_binary().ok_or_else(|| {
        "the S3 tests need Garage on loopback and no `garage` binary was found: run `tests/run.sh` \
         (installs it), or `cargo install garage --locked`, or set LIFEBOAT_GARAGE_BIN"
            .to_string()
    })?;
    // Data of servers whose test process is gone (it dies with its process) is removed.
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("lifeboat-garage-") {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("lifeboat-garage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (rpc, s3, admin) = (free_port(), free_port(), free_port());
    let cfg = dir.join("garage.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
            d = dir.display(),
            secret = hex::encode(rand::random::<[u8; 32]>()),
        ),
    )
    .map_err(|e| e.to_string())?;

    // The server lives in a thread that never ends, and dies with this process (PDEATHSIG
    // fires when the spawning thread exits, which is only at process exit).
    let (tx, rx) = std::sync::mpsc::channel();
    let (b, c, d) = (bin.clone(), cfg.clone(), dir.clone());
    std::thread::spawn(move || {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(d.join("garage.log")).unwrap();
        let mut cmd = Command::new(&b);
        cmd.arg("-c")
            .arg(&c)
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
                std::thread::park();
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
            }
        }
        loop {
            std::thread::park();
        }
    });
    rx.recv().map_err(|e| e.to_string())??;

    let deadline = Instant::now() + Duration::from_secs(30);
    let node = loop {
        match garage_cli(&bin, &cfg, &["node", "id", "-q"]) {
            Ok(out) => break out.trim().split('@').next().unwrap_or_default().to_string(),
            Err(e) if Instant::now() > deadline => {
                return Err(format!("garage did not start: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // `node id` can answer before the server listens for RPC (a first start on a machine
    // generates its keys and opens its database first): the first RPC waits for it.
    loop {
        match garage_cli(
            &bin,
            &cfg,
            &["layout", "assign", "-z", "dc1", "-c", "10G", &node],
        ) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline || !e.contains("Connection refused") => {
                return Err(e)
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    garage_cli(&bin, &cfg, &["layout", "apply", "--version", "1"])?;
    let bucket = "lifeboat-test".to_string();
    garage_cli(&bin, &cfg, &["bucket", "create", &bucket])?;
    // A key named `name` with `allowed` on the bucket: (access key id, secret key).
    let key = |name: &str, allowed: &[&str]| -> Result<(String, String), String> {
        let access_key = format!("GK{}", hex::encode(rand::random::<[u8; 12]>()));
        let secret_key = hex::encode(rand::random::<[u8; 32]>());
        garage_cli(
            &bin,
            &cfg,
            &[
                "key",
                "import",
                "--yes",
                "-n",
                name,
                &access_key,
                &secret_key,
            ],
        )?;
        let mut allow = vec!["bucket", "allow"];
        allow.extend(allowed);
        allow.extend([bucket.as_str(), "--key", &access_key]);
        garage_cli(&bin, &cfg, &allow)?;
        Ok((access_key, secret_key))
    };
    let (access_key, secret_key) = key("lifeboat-test", &["--read", "--write", "--owner"])?;
    let (read_only_access_key, read_only_secret_key) = key("lifeboat-test-read-only", &["--read"])?;
    let endpoint = format!("http://127.0.0.1:{s3}");
    // Wait until the S3 API answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", s3)).is_err() {
        if Instant::now() > deadline {
            return Err("garage S3 API did not come up".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Garage {
        endpoint,
        access_key,
        secret_key,
        bucket,
        read_only_access_key,
        read_only_secret_key,
    })
}

/// The shared Garage server; panics with how to get Garage when it cannot start.
pub fn garage() -> &'static Garage {
    static G: OnceLock<Result<Garage, String>> = OnceLock::new();
    match G.get_or_init(start_garage) {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    }
}

// ----- the binary ---------------------------------------------------------------------------

pub fn lifeboat() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lifeboat"));
    c.env_remove("LIFEBOAT_REPOSITORY")
        .env_remove("LIFEBOAT_PASSWORD")
        .env_remove("LIFEBOAT_PASSWORD_FILE")
        .env("LIFEBOAT_LOG", "warn")
        .stdin(Stdio::null());
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run lifeboat");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `lifeboat` with a password and `--repo REPO --no-cache`.
/// A test repository with 64 KiB blocks at `dir/repo`.
pub fn init_repo(dir: &Path) -> PathBuf {
    let repo = dir.join("repo");
    ok(run(lb(&repo).args([
        "repo",
        "init",
        "--insecure-fast-kdf",
        "--chunk-size-kib",
        "64",
    ])));
    repo
}

pub fn lb(repo: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = lifeboat();
    c.env("LIFEBOAT_PASSWORD", "pw")
        .arg("--repo")
        .arg(repo)
        .arg("--no-cache");
    c
}

/// Asserts a run succeeded, showing its output otherwise.
pub fn ok(r: Run) -> Run {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
    r
}

pub fn json(r: &Run) -> serde_json::Value {
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.stdout))
}

/// Every file below `dir`, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The keys a memory store holds under `prefix`.
pub async fn keys_under(
    mem: &lifeboat::store::memory::MemoryStore,
    prefix: &str,
) -> std::collections::BTreeSet<String> {
    mem.list(prefix, &CancellationToken::new())
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect()
}

/// Runs the future `make` gives to completion on a multi-threaded runtime (2 workers) whose
/// threads, and the one blocking on it, have 16 MiB of stack: for tests whose futures are too
/// deep for a test thread's 2 MiB in a debug build.
pub fn on_big_stack<M, F>(make: M) -> F::Output
where
    M: FnOnce() -> F + Send + 'static,
    F: std::future::Future,
    F::Output: Send + 'static,
{
    const STACK: usize = 16 << 20;
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_stack_size(STACK)
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(Box::pin(make()))
        })
        .expect("a thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}
