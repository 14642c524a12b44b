//! Running a command in a pod's container: takes a pod, a container and a shell command; gives
//! a [`Process`] (its output as it comes, its exit code, a way to kill it). [`LocalExec`] runs
//! it as a local shell (the cluster-directory source), [`KubeExec`] through the API server's
//! `pods/exec`. Must not interpret the output or decide anything about rules.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::hooks::plan::PodTarget;

/// Why a command could not start, or has no exit code. The texts end up in the action's
/// record (`output_tail`), as they always read.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start /bin/sh: {0}")]
    Spawn(std::io::Error),
    #[error("exec in pod {pod} refused: {source}")]
    Refused { pod: String, source: kube::Error },
    #[error(transparent)]
    Wait(std::io::Error),
    #[error("killed by a signal")]
    Signalled,
    #[error("the exec gave no status channel")]
    NoStatusChannel,
    #[error("the exec stream ended without a status")]
    StreamEnded,
    /// The exec's status says it failed, with no exit code (its message, or a note that it
    /// had none).
    #[error("{0}")]
    Failed(String),
    #[error("stopped")]
    Stopped,
    #[error("the exec ended without a status")]
    NoStatus,
}

/// A command started by an [`Exec`].
pub struct Process {
    /// Chunks of stdout and stderr as they come; closed when the process ends.
    pub output: mpsc::Receiver<Vec<u8>>,
    /// The exit code (or why none is known), once it ended.
    pub exit: oneshot::Receiver<Result<i32, ExecError>>,
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
    ) -> Result<Process, ExecError>;
}

/// Forwards what `r` gives, chunk by chunk, until it ends or `tx` is closed.
fn pump(mut r: Box<dyn AsyncRead + Unpin + Send>, tx: mpsc::Sender<Vec<u8>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 || tx.send(buf[..n].to_vec()).await.is_err() {
                break;
            }
        }
    })
}

/// Runs actions as local shell commands (the cluster-directory source): in `dir`, in a clean
/// environment (nothing of lifeboat's own, so no `LIFEBOAT_PASSWORD` or `AWS_*` secret) with
/// `LIFEBOAT_POD`, `LIFEBOAT_NAMESPACE` and `LIFEBOAT_CONTAINER` set, and `PATH`, `HOME` and
/// `LANG` as lifeboat has them (or [`SHELL_DEFAULTS`]).
pub struct LocalExec {
    pub dir: PathBuf,
}

/// The variables a local action gets from lifeboat's environment, and their values when
/// lifeboat has none: what a shell needs to find its tools. Nothing else is passed on.
pub const SHELL_DEFAULTS: [(&str, &str); 3] = [
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/"),
    ("LANG", "C.UTF-8"),
];

#[async_trait]
impl Exec for LocalExec {
    async fn start(
        &self,
        pod: &PodTarget,
        container: &str,
        command: &str,
    ) -> Result<Process, ExecError> {
        use std::process::Stdio;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.env_clear();
        for (var, default) in SHELL_DEFAULTS {
            match std::env::var_os(var) {
                Some(v) if !v.is_empty() => cmd.env(var, v),
                _ => cmd.env(var, default),
            };
        }
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
        let mut child = cmd.spawn().map_err(ExecError::Spawn)?;
        let pgid = child.id().map(|p| p as i32);
        let (tx, output) = mpsc::channel(16);
        let (exit_tx, exit) = oneshot::channel();
        let kill = CancellationToken::new();
        let out_task = pump(Box::new(child.stdout.take().expect("piped")), tx.clone());
        let err_task = pump(Box::new(child.stderr.take().expect("piped")), tx);
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
                Ok(s) => s.code().ok_or(ExecError::Signalled),
                Err(e) => Err(ExecError::Wait(e)),
            });
        });
        Ok(Process { output, exit, kill })
    }
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
) -> Result<i32, ExecError> {
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
        None => {
            Err(ExecError::Failed(status.message.clone().unwrap_or_else(
                || "the exec failed without a message".into(),
            )))
        }
    }
}

#[async_trait]
impl Exec for KubeExec {
    async fn start(
        &self,
        pod: &PodTarget,
        container: &str,
        command: &str,
    ) -> Result<Process, ExecError> {
        use k8s_openapi::api::core::v1::Pod;
        use kube::api::AttachParams;
        let api: kube::Api<Pod> = kube::Api::namespaced(self.client.clone(), &pod.namespace);
        let ap = AttachParams::default()
            .container(container)
            .stdin(false)
            .stdout(true)
            .stderr(true);
        let mut attached = api
            .exec(&pod.name, vec!["sh", "-c", command], &ap)
            .await
            .map_err(|source| ExecError::Refused {
                pod: format!("{}/{}", pod.namespace, pod.name),
                source,
            })?;
        let (tx, output) = mpsc::channel(16);
        let (exit_tx, exit) = oneshot::channel();
        let kill = CancellationToken::new();
        let streams: Vec<Box<dyn AsyncRead + Unpin + Send>> = [
            attached.stdout().map(|s| Box::new(s) as Box<_>),
            attached.stderr().map(|s| Box::new(s) as Box<_>),
        ]
        .into_iter()
        .flatten()
        .collect();
        let pumps: Vec<JoinHandle<()>> = streams.into_iter().map(|r| pump(r, tx.clone())).collect();
        drop(tx);
        let status = attached.take_status();
        let k = kill.clone();
        tokio::spawn(async move {
            let result = match status {
                None => Err(ExecError::NoStatusChannel),
                Some(status) => tokio::select! {
                    s = status => match s {
                        Some(s) => exit_code_of(&s),
                        None => Err(ExecError::StreamEnded),
                    },
                    _ = k.cancelled() => {
                        attached.abort();
                        Err(ExecError::Stopped)
                    }
                },
            };
            for p in pumps {
                let _ = p.await;
            }
            let _ = exit_tx.send(result);
        });
        Ok(Process { output, exit, kill })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};

    #[test]
    fn exit_codes_are_read_from_the_status() {
        let ok = Status {
            status: Some("Success".into()),
            ..Default::default()
        };
        assert_eq!(exit_code_of(&ok).unwrap(), 0);
        let failed = Status {
            status: Some("Failure".into()),
            details: Some(StatusDetails {
                causes: Some(vec![StatusCause {
                    reason: Some("ExitCode".into()),
                    message: Some("2".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(exit_code_of(&failed).unwrap(), 2);
        let odd = Status {
            status: Some("Failure".into()),
            ..Default::default()
        };
        assert_eq!(
            exit_code_of(&odd).unwrap_err().to_string(),
            "the exec failed without a message"
        );
    }

    #[tokio::test]
    async fn a_local_command_gives_its_output_and_exit_code() {
        let d = tempfile::tempdir().unwrap();
        let exec = LocalExec {
            dir: d.path().to_path_buf(),
        };
        let pod = PodTarget {
            namespace: "ns".into(),
            name: "p-0".into(),
            labels: Default::default(),
            containers: vec!["c".into()],
        };
        let mut p = exec
            .start(
                &pod,
                "c",
                "echo $LIFEBOAT_NAMESPACE/$LIFEBOAT_POD/$LIFEBOAT_CONTAINER; exit 3",
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        while let Some(c) = p.output.recv().await {
            out.extend(c);
        }
        assert_eq!(String::from_utf8(out).unwrap(), "ns/p-0/c\n");
        assert_eq!(p.exit.await.unwrap().unwrap(), 3);
    }
}
