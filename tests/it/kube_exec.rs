//! Rule actions on a live cluster: `pods/exec` through `kube`'s client, over a real WebSocket
//! to a fake API server on loopback. The fake plays the container: it runs the command it is
//! asked to (`sh -c ...`) and streams stdout, stderr and the final status on the channels of
//! the `v4.channel.k8s.io` protocol, as the kubelet does. So the background action's
//! `${WAIT_CMD}`, its ready line and its stop through a second exec all run for real.

use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use lifeboat::hooks::{around, parse_rules, pod_targets, Exec, HookError, KubeExec};
use lifeboat::k8s::live::LiveCluster;
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// An exec the fake was asked for.
#[derive(Debug, Clone)]
struct Asked {
    pod: String,
    container: String,
    command: Vec<String>,
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

#[allow(clippy::result_large_err)] // the handshake callback's signature is tungstenite's
async fn serve_exec(stream: tokio::net::TcpStream, asked: Arc<Mutex<Vec<Asked>>>) {
    let uri = Arc::new(Mutex::new(String::new()));
    let u = uri.clone();
    let ws =
        tokio_tungstenite::accept_hdr_async(stream, move |req: &Request, mut resp: Response| {
            *u.lock().unwrap() = req.uri().to_string();
            resp.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                "v4.channel.k8s.io".parse().unwrap(),
            );
            Ok(resp)
        })
        .await;
    let Ok(mut ws) = ws else { return };
    let uri = uri.lock().unwrap().clone();
    let (path, query) = uri.split_once('?').unwrap_or((&uri, ""));
    // /api/v1/namespaces/NS/pods/POD/exec
    let parts: Vec<&str> = path.split('/').collect();
    assert_eq!(parts.get(7), Some(&"exec"), "{uri}");
    let (ns, pod) = (parts[4].to_string(), parts[6].to_string());
    let mut a = Asked {
        pod: format!("{ns}/{pod}"),
        container: String::new(),
        command: Vec::new(),
    };
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "command" => a.command.push(decode(v)),
            "container" => a.container = decode(v),
            _ => {}
        }
    }
    asked.lock().unwrap().push(a.clone());
    let mut child = tokio::process::Command::new(&a.command[0])
        .args(&a.command[1..])
        .env("LIFEBOAT_POD", &pod)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let (mut ob, mut eb) = (vec![0u8; 4096], vec![0u8; 4096]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            n = out.read(&mut ob), if out_open => match n {
                Ok(n) if n > 0 => {
                    let mut m = vec![1u8];
                    m.extend_from_slice(&ob[..n]);
                    if ws.send(Message::binary(m)).await.is_err() { return; }
                }
                _ => out_open = false,
            },
            n = err.read(&mut eb), if err_open => match n {
                Ok(n) if n > 0 => {
                    let mut m = vec![2u8];
                    m.extend_from_slice(&eb[..n]);
                    if ws.send(Message::binary(m)).await.is_err() { return; }
                }
                _ => err_open = false,
            },
            // The client went away: the "container" process goes with the connection here.
            m = ws.next() => if m.is_none() || matches!(m, Some(Err(_)) | Some(Ok(Message::Close(_)))) { return; },
        }
    }
    let code = child.wait().await.unwrap().code().unwrap_or(137);
    let status = if code == 0 {
        serde_json::json!({"metadata": {}, "status": "Success"})
    } else {
        serde_json::json!({"metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command [sh -c ...], exit code {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
    };
    let mut m = vec![3u8];
    m.extend_from_slice(status.to_string().as_bytes());
    let _ = ws.send(Message::binary(m)).await;
    let _ = ws.close(None).await;
}

/// A fake API server serving exec on loopback, and the client pointed at it.
async fn fake_cluster() -> (LiveCluster, Arc<Mutex<Vec<Asked>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_exec(s, a.clone()));
        }
    });
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    (LiveCluster::from_config(config, "fake").unwrap(), asked)
}

fn pods() -> Vec<lifeboat::hooks::PodTarget> {
    let v: Vec<serde_json::Value> = (0..2)
        .map(|i| serde_json::json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"namespace": "cassandra", "name": format!("cassandra-{i}"), "labels": {"app": "cassandra"}},
            "spec": {"containers": [{"name": "cassandra"}, {"name": "jmx"}]}, "status": {"phase": "Running"}}))
        .collect();
    pod_targets(&v)
}

fn rules(name: &str, on_error: &str, actions: &str) -> Vec<lifeboat::hooks::Rule> {
    parse_rules(
        "rule.yaml",
        &format!("apiVersion: lifeboat.dev/v1alpha1\nkind: Rule\nmetadata: {{name: {name}}}\nspec:\n  rules:\n  - podSelector: {{app: cassandra}}\n    container: cassandra\n    actions:\n{actions}  onError: {on_error}\n  timeout: 20s\n"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_in_the_named_container_and_reads_exit_codes_and_output() {
    let (live, asked) = fake_cluster().await;
    let exec: Arc<dyn Exec> = Arc::new(KubeExec::new(&live));
    let pre = rules(
        "flush",
        "Abort",
        "    - type: command\n      value: 'echo flushed $LIFEBOAT_POD; if [ $LIFEBOAT_POD = cassandra-1 ]; then echo disk full >&2; exit 2; fi'\n",
    );
    let post = rules(
        "resume",
        "Abort",
        "    - type: command\n      value: 'echo resumed'\n",
    );
    let stepped = Arc::new(Mutex::new(false));
    let s = stepped.clone();
    let (outcome, report) = around(
        exec,
        &pods(),
        &pre,
        &post,
        &CancellationToken::new(),
        || async move {
            *s.lock().unwrap() = true;
            Ok::<_, ()>(())
        },
    )
    .await;
    assert!(
        !*stepped.lock().unwrap(),
        "no snapshot after a failed pre action"
    );
    let e = outcome.unwrap_err();
    assert!(matches!(e, HookError::PreFailed(_)));
    let msg = e.to_string();
    assert!(
        msg.contains("cassandra/cassandra-1")
            && msg.contains("exit 2")
            && msg.contains("disk full"),
        "{msg}"
    );

    let r = &report.records;
    assert_eq!(r.len(), 4, "{r:#?}");
    let ok0 = r
        .iter()
        .find(|x| x.phase.as_str() == "pre" && x.pod == "cassandra-0")
        .unwrap();
    assert_eq!(
        (ok0.outcome.as_str(), ok0.exit_code),
        ("succeeded", Some(0))
    );
    assert!(ok0.output_tail.contains("flushed cassandra-0"));
    let bad = r
        .iter()
        .find(|x| x.phase.as_str() == "pre" && x.pod == "cassandra-1")
        .unwrap();
    assert_eq!((bad.outcome.as_str(), bad.exit_code), ("failed", Some(2)));
    assert!(r
        .iter()
        .filter(|x| x.phase.as_str() == "post")
        .all(|x| x.outcome.as_str() == "succeeded" && x.output_tail.contains("resumed")));

    let asked = asked.lock().unwrap();
    assert!(
        asked.iter().all(|a| a.container == "cassandra"),
        "{asked:?}"
    );
    let mut pods: Vec<&str> = asked.iter().map(|a| a.pod.as_str()).collect();
    pods.sort_unstable();
    pods.dedup();
    assert_eq!(pods, ["cassandra/cassandra-0", "cassandra/cassandra-1"]);
    assert!(
        asked
            .iter()
            .all(|a| a.command[..2] == ["sh".to_string(), "-c".to_string()]),
        "{asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_exec_holds_until_after_the_post_rules_then_ends_by_its_marker() {
    let (live, asked) = fake_cluster().await;
    let exec: Arc<dyn Exec> = Arc::new(KubeExec::new(&live));
    let d = crate::support::tmp();
    let log = d.path().join("log");
    let pre = rules(
        "lock",
        "Abort",
        &format!("    - type: command\n      value: 'echo locked-$LIFEBOAT_POD >> {0}; ${{WAIT_CMD}}; echo unlocked-$LIFEBOAT_POD >> {0}'\n      background: true\n", log.display()),
    );
    let post = rules(
        "note",
        "Abort",
        &format!(
            "    - type: command\n      value: 'echo post-$LIFEBOAT_POD >> {}'\n",
            log.display()
        ),
    );
    let l = log.clone();
    let (outcome, report) = around(
        exec,
        &pods(),
        &pre,
        &post,
        &CancellationToken::new(),
        || async move {
            std::fs::OpenOptions::new().append(true).open(&l).unwrap();
            let text = std::fs::read_to_string(&l).unwrap();
            std::fs::write(&l, format!("{text}snapshot\n")).unwrap();
            Ok::<_, ()>(())
        },
    )
    .await;
    outcome.unwrap().unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let pos = |s: &str| {
        lines
            .iter()
            .position(|l| *l == s)
            .unwrap_or_else(|| panic!("no `{s}` in {lines:?}"))
    };
    for p in ["cassandra-0", "cassandra-1"] {
        assert!(pos(&format!("locked-{p}")) < pos("snapshot"));
        assert!(pos("snapshot") < pos(&format!("post-{p}")));
        assert!(
            pos(&format!("post-{p}")) < pos(&format!("unlocked-{p}")),
            "{lines:?}"
        );
    }
    // Stopping took a second exec per pod (removing the marker), in the same container.
    let asked = asked.lock().unwrap();
    let stops = asked
        .iter()
        .filter(|a| a.command[2].starts_with("rm -f /tmp/lifeboat-wait-"))
        .count();
    assert_eq!(stops, 2, "{asked:?}");
}
