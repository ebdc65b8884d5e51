//! Shared by the integration tests: temp config trees, the `slo-probe` binary as a child process
//! that dies with the test, and waits that are driven by what the process prints (log lines,
//! end of output), never by fixed sleeps.

#![allow(dead_code)] // each test binary uses a different subset

pub mod browser;
pub mod counting;
pub mod early_fetch;
pub mod enrichment;
pub mod flink;
pub mod front;
pub mod infra;
pub mod ingress;
pub mod job;
pub mod malformed_pg;
pub mod otlp;
pub mod pipe;
pub mod registry;
pub mod relay;
pub mod timed_job;
pub mod writer;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_slo-probe");

/// A temporary directory to hold an agent file and probe files.
pub struct Tree {
    pub dir: tempfile::TempDir,
}

impl Tree {
    pub fn new() -> Self {
        Tree {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// An agent file with one cluster, `primary`, at `bootstrap_servers`.
    pub fn agent_file(&self, bootstrap_servers: &str) -> PathBuf {
        self.write(
            "slo-probe.yaml",
            &format!("clusters:\n  primary:\n    bootstrap_servers: {bootstrap_servers}\n"),
        )
    }

    pub fn write(&self, rel: &str, content: &str) -> PathBuf {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        p
    }
}

/// The example probe file `probes/<file>` of the repository, with `substitutions` (each must
/// apply, the first occurrence of each) to run it faster or against the test's parts.
pub fn example(file: &str, substitutions: &[(&str, &str)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("probes")
        .join(file);
    let mut text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    for (from, to) in substitutions {
        assert!(text.contains(from), "{file} has no `{from}`");
        text = text.replacen(from, to, 1);
    }
    text
}

/// `slo-probe smoke` of the probes in `t` for `rounds`, with JSON logs (and `extra` arguments),
/// its verdict written to `verdict.json` (read it with [`verdict`]).
pub fn smoke_reporting(
    t: &Tree,
    rounds: u32,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Running, PathBuf) {
    let report = t.path().join("verdict.json");
    let rounds = rounds.to_string();
    let mut args = vec![
        "smoke",
        "--rounds",
        &rounds,
        "--report",
        report.to_str().unwrap(),
        "--log-format",
        "json",
    ];
    args.extend_from_slice(extra);
    (Running::spawn(t.path(), &args, env), report)
}

/// A smoke verdict written as JSON.
pub fn verdict(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// What a finished command printed.
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn code(&self) -> i32 {
        self.status.code().expect("exited normally")
    }
}

/// Starts an agent in this process on the tree's `slo-probe.yaml` (if any) and `probes/`.
pub async fn start_agent(t: &Tree, plan: slo_probe::Plan) -> slo_probe::Agent {
    start_agent_with(t, plan, None).await
}

/// [`start_agent`] serving HTTP on a free port of loopback, once its `plan` is done (every
/// record settled).
pub async fn finished_agent_serving(t: &Tree, plan: slo_probe::Plan) -> slo_probe::Agent {
    let agent = start_agent_with(t, plan, Some("127.0.0.1:0".parse().unwrap())).await;
    tokio::time::timeout(GUARD, agent.wait_finished())
        .await
        .expect("the plan is done");
    agent
}

async fn start_agent_with(
    t: &Tree,
    plan: slo_probe::Plan,
    listen: Option<std::net::SocketAddr>,
) -> slo_probe::Agent {
    let agent_file = t.path().join("slo-probe.yaml");
    let sources = slo_probe::config::Sources {
        agent_file: agent_file.exists().then_some(agent_file),
        probe_paths: vec![t.path().join("probes")],
    };
    let opts = slo_probe::AgentOptions {
        plan,
        listen,
        embedded: false,
    };
    slo_probe::Agent::start(slo_probe::config::load(&sources).unwrap(), opts)
        .await
        .unwrap()
}

/// Makes `cmd`'s child inherit only its stdin, stdout and stderr. librdkafka's mock cluster
/// (running in the test process) opens its sockets without close-on-exec: a child started
/// meanwhile (Prometheus, an agent) would hold copies of the mock brokers' connections, and a
/// broker taken down would then never disconnect its clients (their requests go unanswered on
/// a connection the child keeps open, and a consumer waits on it for good).
pub fn no_inherited_fds(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: close_range is async-signal-safe; marking every descriptor above stderr
    // close-on-exec (rather than closing them) keeps std's exec-error pipe working.
    unsafe {
        cmd.pre_exec(|| {
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        })
    }
}

/// Runs the binary to completion in `cwd`.
pub fn run(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let out = no_inherited_fds(&mut Command::new(BIN))
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .output()
        .expect("binary runs");
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A running agent. Killed when dropped, so a failing test leaves nothing behind.
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line so far, for failure messages and later searches.
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Running::spawn_via(cwd, &[], args, env)
    }

    /// The binary run by `wrapper` (a command that execs it, such as `prlimit --nofile=256
    /// --`), so that the process (and its pid) is the agent's.
    pub fn spawn_via(cwd: &Path, wrapper: &[&str], args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let mut child = no_inherited_fds(&mut command)
            .args(args)
            .current_dir(cwd)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// `slo-probe run` on a free port with JSON logs (and `extra` arguments), once its first
    /// round settled; returns it and its HTTP address.
    pub fn run_ready(cwd: &Path, extra: &[&str], env: &[(&str, &str)]) -> (Running, String) {
        let listen = format!("127.0.0.1:{}", infra::free_port());
        let mut args = vec!["run", "--listen", &listen, "--log-format", "json"];
        args.extend_from_slice(extra);
        let mut agent = Running::spawn(cwd, &args, env);
        agent.wait_event(Duration::from_secs(90), "first round settled: probe ready");
        (agent, listen)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first stderr line (already seen or coming within `within`) matching `pred`.
    pub fn wait_line(&mut self, within: Duration, pred: impl Fn(&str) -> bool) -> String {
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no matching line within {within:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("process ended first; stderr:\n{}", self.seen.join("\n"))
                }
            }
        }
    }

    /// A JSON log line (`--log-format json`) whose message is `message`.
    pub fn wait_event(&mut self, within: Duration, message: &str) -> serde_json::Value {
        let line = self.wait_line(within, |l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == message)
        });
        serde_json::from_str(&line).unwrap()
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{name} failed");
    }

    /// Waits for the process to end (its stderr closes), collecting the rest of its output.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let end = Instant::now() + within;
        loop {
            match self
                .lines
                .recv_timeout(end.saturating_duration_since(Instant::now()))
            {
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "still running after {within:?}; stderr:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
        self.child.wait().unwrap()
    }

    /// Every JSON log line seen with this message (every one for an empty message).
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| message.is_empty() || v["message"] == message)
            .collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: show what the agent said, and how it ended.
            while let Ok(line) = self.lines.try_recv() {
                self.seen.push(line);
            }
            let tail = self.seen.len().saturating_sub(60);
            eprintln!(
                "--- slo-probe stderr (last lines) ---\n{}",
                self.seen[tail..].join("\n")
            );
            eprintln!("--- slo-probe status: {:?}", self.child.try_wait());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bound on waits for external processes.
pub const GUARD: Duration = Duration::from_secs(120);

/// Creates topics the way an operator (or a pipeline's deployment) would.
pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(t, p)| NewTopic::new(t, *p, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Re-checks `check` every 100 ms until it returns `Some` (an external process changes state
/// on its own schedule; this is a bounded wait for it, not a fixed sleep).
pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let wait = async {
        loop {
            if let Some(v) = check().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(GUARD, wait)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"))
}

/// A TCP port on loopback that nothing listens on.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An HTTP client (with the crypto provider the agent's TLS uses installed first).
pub fn http_client() -> reqwest::Client {
    slo_probe::install_crypto_provider();
    reqwest::Client::new()
}

/// GET `http://{addr}{path}`: (status, body).
pub async fn get(addr: &str, path: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let r = http_client()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// The value of one sample in a Prometheus text scrape, e.g.
/// `sample(&m, "slo_probe_records_total", &[("outcome", "ok")])`.
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Scrapes /metrics' content every few milliseconds while a test runs and checks
/// sent == ok + lost + corrupt + send_failed + in_flight for every probe on every scrape.
pub struct Conservation {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<usize>,
}

impl Conservation {
    pub fn watch(view: slo_probe::AgentView) -> Self {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut scrapes = 0;
            while !s.is_cancelled() {
                let m = view.render_metrics();
                for p in &view.probes {
                    let probe = ("probe", p.name());
                    let sent = sample(&m, slo_probe::metric_names::RECORDS_SENT, &[probe]).unwrap();
                    let settled: f64 = ["ok", "lost", "corrupt", "send_failed"]
                        .iter()
                        .map(|o| {
                            sample(
                                &m,
                                slo_probe::metric_names::RECORDS,
                                &[probe, ("outcome", o)],
                            )
                            .unwrap()
                        })
                        .sum();
                    let in_flight =
                        sample(&m, slo_probe::metric_names::IN_FLIGHT, &[probe]).unwrap();
                    assert_eq!(
                        sent,
                        settled + in_flight,
                        "conservation broken at scrape {scrapes}:\n{m}"
                    );
                }
                scrapes += 1;
                // a sampling period, not a wait for anything
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            scrapes
        });
        Conservation { stop, task }
    }

    pub async fn finish(self) -> usize {
        self.stop.cancel();
        let scrapes = self.task.await.expect("conservation held on every scrape");
        assert!(scrapes > 10, "only {scrapes} scrapes");
        scrapes
    }
}
