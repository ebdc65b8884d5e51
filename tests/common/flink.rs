//! Real Apache Flink 2.0 for integration tests: a Flink SQL pipeline between a tansu broker and
//! PostgreSQL, the kind of streaming job that slo-probe exists to watch, run for real rather
//! than imitated.
//!
//! A [`FlinkSession`] is one JVM running `tests/flink/FlinkSession.java`: a Flink MiniCluster (a
//! JobManager and a TaskManager with several slots in one process, its REST API on a free
//! loopback port) that takes Flink SQL jobs ([`FlinkSession::submit`]). It stands for a Flink
//! session cluster: jobs are submitted to it through the same REST API, checkpoint to a local
//! `file://` directory, stop with a savepoint, restore from one, and die together when the JVM
//! is killed ([`FlinkSession::kill`], a SIGKILL: the hard crash of a whole cluster), to be
//! restored from their last retained checkpoint in another session.
//!
//! The runner prints one event per line on stdout (`RUNNING <job> <id>`, `CHECKPOINT ...`,
//! `SAVEPOINT ...`, `FAILED <job> <cause>`, ...): every wait here is driven by those lines,
//! bounded, and a failed wait panics with the session's output (its events and Flink's own
//! warnings, from stderr). The JVM is killed when its [`FlinkSession`] is dropped, and ends by
//! itself when its stdin closes, so a session kept in a `static` ends with the test process.
//!
//! [`dump_topic`] reads a Kafka topic back with the Java kafka-clients (in another, short JVM),
//! a reader that shares no code with slo-probe or librdkafka.
//!
//! `.ci/run` installs the JDK (`openjdk-17-jdk-headless`) and the jars (`.ci/tools/flink/lib`,
//! or `SLO_PROBE_TEST_FLINK_LIB`); a missing one fails the test with what to install, never
//! skips it. The runner is compiled with `javac` on first use, into `target/tmp`, again when its
//! source changes.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::infra::tool;

/// Bound on a session's start, a job's start and every command's answer.
const WAIT: Duration = Duration::from_secs(120);
/// Heap of a session's JVM: several small SQL jobs fit (Flink's own off-heap memory, network
/// buffers and managed memory, comes on top).
const HEAP: &str = "-Xmx768m";
/// Task slots of a session: several jobs of parallelism 1 or 2 at once.
const SLOTS: u32 = 8;
/// The JVM options Flink's own scripts pass on Java 17 (`env.java.opts.all` of the
/// `config.yaml` in flink-dist), for the reflection that Flink's serializers and RPC need.
const JAVA_OPENS: &[&str] = &[
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
    "--add-exports=java.rmi/sun.rmi.registry=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.api=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.parser=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.tree=ALL-UNNAMED",
    "--add-exports=jdk.compiler/com.sun.tools.javac.util=ALL-UNNAMED",
    "--add-exports=java.security.jgss/sun.security.krb5=ALL-UNNAMED",
    "--add-opens=java.base/java.lang=ALL-UNNAMED",
    "--add-opens=java.base/java.net=ALL-UNNAMED",
    "--add-opens=java.base/java.io=ALL-UNNAMED",
    "--add-opens=java.base/java.nio=ALL-UNNAMED",
    "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
    "--add-opens=java.base/java.lang.reflect=ALL-UNNAMED",
    "--add-opens=java.base/java.text=ALL-UNNAMED",
    "--add-opens=java.base/java.time=ALL-UNNAMED",
    "--add-opens=java.base/java.util=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
    "--add-opens=java.base/java.util.concurrent.locks=ALL-UNNAMED",
];
/// Lines of a session's output shown when a wait fails.
const TAIL: usize = 80;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The compiled runner and how to run it.
struct Runner {
    java: PathBuf,
    classpath: String,
    log_config: PathBuf,
}

impl Runner {
    /// `java` with the classpath, the logging configuration and Flink's JVM options
    /// (`SLO_PROBE_TEST_FLINK_JAVA_OPTS` adds more, for a session, after them: the last of two
    /// contrary options wins).
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.java);
        // The client compiler only: these JVMs live for seconds to minutes at small rates, and
        // on 2 cores C2's compilations slowed a session's start and first job by 1-3 s.
        cmd.arg("-XX:TieredStopAtLevel=1")
            .args(JAVA_OPENS)
            .arg(format!(
                "-Dlog4j.configurationFile={}",
                self.log_config.display()
            ))
            .arg("-cp")
            .arg(&self.classpath);
        cmd
    }
}

/// The Flink jars `.ci/run` extracts (a directory holding flink-dist, the table planner and
/// the Kafka and JDBC connectors).
fn lib_dir() -> PathBuf {
    let dir = std::env::var_os("SLO_PROBE_TEST_FLINK_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest().join(".ci/tools/flink/lib"));
    let has = |prefix: &str| {
        std::fs::read_dir(&dir).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with(prefix))
        })
    };
    for jar in [
        "flink-dist",
        "flink-table-planner-loader",
        "flink-connector-kafka",
        "flink-connector-jdbc-postgres",
    ] {
        assert!(
            has(jar),
            "no {jar} jar in {} (SLO_PROBE_TEST_FLINK_LIB overrides it): run .ci/run, which installs the test infrastructure",
            dir.display()
        );
    }
    dir
}

/// A hash that stays the same from one build to the next (FNV-1a), naming the runner's build.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.iter().chain([0xff].iter()) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The runner, compiled once per test process (and per source: a changed `.java` file or jar
/// set builds into a new directory).
fn runner() -> &'static Runner {
    static RUNNER: OnceLock<Runner> = OnceLock::new();
    RUNNER.get_or_init(|| {
        let lib = lib_dir();
        let mut jars: Vec<PathBuf> = std::fs::read_dir(&lib)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "jar"))
            .collect();
        // Flink's scripts put flink-dist last, after lib/'s other jars.
        jars.sort_by_key(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name.starts_with("flink-dist"), name)
        });
        let jars = std::env::join_paths(&jars)
            .unwrap()
            .into_string()
            .expect("jar paths in UTF-8");
        let source = manifest().join("tests/flink/FlinkSession.java");
        let text = std::fs::read(&source).expect("tests/flink/FlinkSession.java");
        let hash = stable_hash(&[&text, jars.as_bytes()]);
        let target = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let classes = target.join(format!("flink-runner-{hash:016x}"));
        if !classes.join("FlinkSession.class").exists() {
            let javac = jdk_tool("SLO_PROBE_TEST_JAVAC", "javac");
            // compiled aside, then renamed: a concurrent test process never sees half a build
            let tmp = tempfile::tempdir_in(target).unwrap();
            let out = Command::new(&javac)
                .arg("-nowarn")
                .arg("-d")
                .arg(tmp.path())
                .arg("-cp")
                .arg(&jars)
                .arg(&source)
                .output()
                .unwrap_or_else(|e| panic!("{}: {e}", javac.display()));
            assert!(
                out.status.success(),
                "javac {} failed:\n{}{}",
                source.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let built = tmp.keep();
            if std::fs::rename(&built, &classes).is_err() {
                // another process built it meanwhile
                let _ = std::fs::remove_dir_all(&built);
            }
        }
        Runner {
            java: jdk_tool("SLO_PROBE_TEST_JAVA", "java"),
            classpath: format!("{jars}:{}", classes.display()),
            log_config: manifest().join("tests/flink/log4j2.properties"),
        }
    })
}

/// `bin` of a JDK: the environment variable's path, else `$JAVA_HOME/bin`, Debian's OpenJDK 17
/// or the one on the PATH; panics with what to install when there is none.
fn jdk_tool(env: &str, bin: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        candidates.push(PathBuf::from(home).join("bin").join(bin));
    }
    candidates.push(PathBuf::from(format!(
        "/usr/lib/jvm/java-17-openjdk-amd64/bin/{bin}"
    )));
    candidates.push(PathBuf::from(format!("/usr/bin/{bin}")));
    assert!(
        std::env::var_os(env).is_some() || candidates.iter().any(|p| p.exists()),
        "no {bin} ({env} is not set, none of {candidates:?} exists): apt-get install openjdk-17-jdk-headless, or run .ci/run, which installs the test infrastructure"
    );
    tool(env, &candidates)
}

/// What a session printed: its events (stdout) and everything, Flink's stderr included.
#[derive(Default)]
struct Output {
    events: Vec<String>,
    all: Vec<String>,
    /// stdout closed: the JVM ended.
    ended: bool,
}

/// A session's output, shared with the threads that read it.
#[derive(Default)]
struct Lines {
    output: Mutex<Output>,
    changed: Condvar,
}

impl Lines {
    fn tail(&self) -> String {
        let o = self.output.lock().unwrap();
        let from = o.all.len().saturating_sub(TAIL);
        o.all[from..].join("\n")
    }

    /// The first event at or after index `from` that `pred` accepts, within `within`:
    /// Ok(index, line), or Err(why not) when the time is up or the JVM ended first.
    fn wait(
        &self,
        from: usize,
        within: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(usize, String), String> {
        let end = Instant::now() + within;
        let mut o = self.output.lock().unwrap();
        let mut next = from;
        loop {
            while next < o.events.len() {
                if pred(&o.events[next]) {
                    return Ok((next, o.events[next].clone()));
                }
                next += 1;
            }
            if o.ended {
                return Err("the Flink JVM ended".into());
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("nothing within {within:?}"));
            }
            o = self.changed.wait_timeout(o, left).unwrap().0;
        }
    }

    fn len(&self) -> usize {
        self.output.lock().unwrap().events.len()
    }
}

struct Inner {
    child: Mutex<Child>,
    pid: u32,
    stdin: Mutex<Option<ChildStdin>>,
    lines: Arc<Lines>,
    rest: String,
    /// The JVM's `java.io.tmpdir` (Flink's blobs, the planner's extracted jar) and SQL files.
    dir: tempfile::TempDir,
    submitted: AtomicUsize,
}

impl Inner {
    /// Sends one command line; the index its answers will come after.
    fn send(&self, line: &str) -> usize {
        let from = self.lines.len();
        let mut stdin = self.stdin.lock().unwrap();
        let ok = stdin
            .as_mut()
            .is_some_and(|s| writeln!(s, "{line}").and_then(|()| s.flush()).is_ok());
        assert!(
            ok,
            "Flink session ended, cannot send `{line}`; its output:\n{}",
            self.lines.tail()
        );
        from
    }

    fn wait(&self, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> (usize, String) {
        self.lines.wait(from, WAIT, pred).unwrap_or_else(|why| {
            panic!(
                "Flink session: waiting for {what}: {why}; its output (last lines):\n{}",
                self.lines.tail()
            )
        })
    }

    fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        self.stdin.lock().unwrap().take();
    }
}

/// One Flink JVM: a MiniCluster taking Flink SQL jobs (see the module's documentation).
/// Killed when dropped; a session kept in a `static` ends when the test process does (its
/// stdin closes).
pub struct FlinkSession {
    inner: Arc<Inner>,
    ready_in: Duration,
}

impl FlinkSession {
    /// Starts a JVM and waits (bounded) until its cluster is up; panics with its output if not.
    /// `SLO_PROBE_TEST_FLINK_JAVA_OPTS` (words) adds JVM options, after the harness's own
    /// (e.g. `-XX:TieredStopAtLevel=4` for the server compiler back).
    pub fn start() -> FlinkSession {
        let runner = runner();
        let started = Instant::now();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = runner.command();
        cmd.arg(HEAP)
            .arg("-XX:+ExitOnOutOfMemoryError")
            .args(
                std::env::var("SLO_PROBE_TEST_FLINK_JAVA_OPTS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .arg(format!("-Djava.io.tmpdir={}", dir.path().display()))
            .arg("FlinkSession")
            .arg("--slots")
            .arg(SLOTS.to_string())
            .arg("--workdir")
            .arg(dir.path())
            .current_dir(dir.path());
        let mut child = super::no_inherited_fds(&mut cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("java starts");
        let lines = Arc::new(Lines::default());
        for (stream, is_event) in [
            (
                Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
                true,
            ),
            (Box::new(child.stderr.take().unwrap()), false),
        ] {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = lines.output.lock().unwrap();
                    if is_event {
                        o.events.push(line.clone());
                        o.all.push(line);
                    } else {
                        o.all.push(format!("  stderr: {line}"));
                    }
                    lines.changed.notify_all();
                }
                if is_event {
                    lines.output.lock().unwrap().ended = true;
                    lines.changed.notify_all();
                }
            });
        }
        let pid = child.id();
        let stdin = child.stdin.take();
        let ready = lines.wait(0, WAIT, |l| l.starts_with("READY "));
        let ready = match ready {
            Ok((_, line)) => line,
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "Flink session not ready: {why}; its output:\n{}",
                    lines.tail()
                );
            }
        };
        let rest = ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix("rest="))
            .expect("READY rest=URL")
            .to_string();
        FlinkSession {
            inner: Arc::new(Inner {
                child: Mutex::new(child),
                pid,
                stdin: Mutex::new(stdin),
                lines,
                rest,
                dir,
                submitted: AtomicUsize::new(0),
            }),
            ready_in: started.elapsed(),
        }
    }

    /// The cluster's REST API, e.g. `http://127.0.0.1:40123` (`/jobs`, `/jobs/<id>`, ...).
    pub fn rest_url(&self) -> &str {
        &self.inner.rest
    }

    /// How long the JVM took from its start to a running cluster.
    pub fn ready_in(&self) -> Duration {
        self.ready_in
    }

    /// The JVM's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// The JVM's resident memory, in KiB (None once it ended).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.inner.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// SIGKILL: the whole cluster crashes, with every job in it, leaving their checkpoint
    /// directories as they were (restore them with [`JobOptions::restore_from`] and
    /// [`Job::latest_checkpoint`]).
    pub fn kill(&self) {
        self.inner.kill();
    }

    /// The session's output so far (events and Flink's stderr), for a test's own messages.
    pub fn output(&self) -> String {
        self.inner.lines.output.lock().unwrap().all.join("\n")
    }

    /// Runs a Flink SQL script as one job and waits until every task of it is RUNNING (so a
    /// test may start sending at once). `sql`: statements each ending with `;` at the end of a
    /// line (CREATE TABLE ...; then one INSERT, or `EXECUTE STATEMENT SET BEGIN` ... `END;` for
    /// a job with several sinks). `name` names it in failure messages. Panics with the
    /// session's output if the job does not start (a SQL error, a connector failing) within
    /// two minutes.
    pub fn submit(&self, name: &str, sql: &str, options: &JobOptions) -> Job {
        assert!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "job name {name:?}: one word"
        );
        let inner = &self.inner;
        let name = format!(
            "{name}-{}",
            inner.submitted.fetch_add(1, Ordering::Relaxed) + 1
        );
        let file = inner.dir.path().join(format!("{name}.sql"));
        std::fs::write(&file, sql).unwrap();
        let (checkpoint_dir, owned) = match &options.checkpoint_dir {
            Some(d) => (d.clone(), None),
            None => {
                let d = tempfile::Builder::new()
                    .prefix("flink-checkpoints-")
                    .tempdir()
                    .unwrap();
                (d.path().to_path_buf(), Some(d))
            }
        };
        let mut command = format!("submit {name} {}", file.display());
        for (k, v) in options.config(&name, &checkpoint_dir) {
            assert!(
                !k.contains(char::is_whitespace) && !v.contains(char::is_whitespace),
                "Flink option {k}={v}: no spaces"
            );
            command.push_str(&format!(" {k}={v}"));
        }
        let started = Instant::now();
        let from = inner.send(&command);
        let (_, line) = inner.wait(from, &format!("job {name} to run"), |l| {
            is_event(l, &["RUNNING", "ERROR", "FAILED"], &name)
        });
        if !line.starts_with("RUNNING ") {
            panic!(
                "Flink job {name} did not start: {line}\nits SQL:\n{sql}\nsession output (last lines):\n{}",
                inner.lines.tail()
            );
        }
        let id = line.split_whitespace().nth(2).unwrap().to_string();
        Job {
            session: Arc::clone(inner),
            name,
            id,
            from,
            checkpoint_dir,
            _owned_dir: owned,
            running_in: started.elapsed(),
        }
    }
}

impl Drop for FlinkSession {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- Flink session output (last lines) ---\n{}",
                self.inner.lines.tail()
            );
        }
        self.inner.kill();
    }
}

/// `line` is the event `kind` (one of) of job `name`.
fn is_event(line: &str, kinds: &[&str], name: &str) -> bool {
    let mut words = line.split_whitespace();
    let (Some(k), Some(n)) = (words.next(), words.next()) else {
        return false;
    };
    kinds.contains(&k) && n == name
}

/// A `file:` URI of the runner's (`file:/tmp/x`, `file:///tmp/x`) as a path.
fn uri_path(uri: &str) -> PathBuf {
    let p = uri.strip_prefix("file:").unwrap_or(uri);
    let p = p.strip_prefix("//").unwrap_or(p);
    PathBuf::from(p)
}

/// Checkpointing mode (`execution.checkpointing.mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CheckpointMode {
    /// Aligned barriers: each record's effect on state is in exactly one checkpoint (Flink's
    /// default; what an exactly-once sink needs).
    #[default]
    ExactlyOnce,
    /// Barriers are not aligned across a task's inputs: cheaper, but after a restore the
    /// state may have seen some replayed records twice.
    AtLeastOnce,
}

/// How a job runs: checkpointing, restore, parallelism, restarts, and any other Flink option.
#[derive(Clone, Debug)]
pub struct JobOptions {
    /// Periodic checkpoints every so often; None: none (savepoints still work).
    pub checkpoint_interval: Option<Duration>,
    /// The checkpoints' mode.
    pub mode: CheckpointMode,
    /// Where checkpoints (`<dir>/<job id>/chk-N`) and the savepoints of
    /// [`Job::stop_with_savepoint`] (`<dir>/savepoints`) go; None: a fresh temp dir that lives
    /// as long as the [`Job`] (keep it until jobs restored from it are done). Checkpoints are
    /// retained on cancellation and on a crash.
    pub checkpoint_dir: Option<PathBuf>,
    /// Restore from this savepoint or retained checkpoint (`execution.state-recovery.path`).
    pub restore_from: Option<PathBuf>,
    /// `parallelism.default`.
    pub parallelism: u32,
    /// Restart a failed job this many times, this long apart (fixed delay); None: a failure
    /// fails the job at once (Flink would otherwise restart it forever once checkpointing is
    /// on, and a test would wait out its time).
    pub restart: Option<(u32, Duration)>,
    /// Any other Flink configuration (`table.exec.*`, `pipeline.*`, ...), set last.
    pub extra: Vec<(String, String)>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            checkpoint_interval: None,
            mode: CheckpointMode::default(),
            checkpoint_dir: None,
            restore_from: None,
            parallelism: 1,
            restart: None,
            extra: Vec::new(),
        }
    }
}

impl JobOptions {
    /// The Flink configuration of job `name` checkpointing to `dir`.
    fn config(&self, name: &str, dir: &Path) -> Vec<(String, String)> {
        let mut c: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| c.push((k.to_string(), v));
        set("pipeline.name", name.to_string());
        set("parallelism.default", self.parallelism.to_string());
        set(
            "execution.checkpointing.dir",
            format!("file://{}", dir.display()),
        );
        set(
            "execution.checkpointing.externalized-checkpoint-retention",
            "RETAIN_ON_CANCELLATION".into(),
        );
        // a few kept, so that the path a wait returned outlives the next checkpoint or two
        set("execution.checkpointing.num-retained", "3".into());
        if let Some(every) = self.checkpoint_interval {
            set(
                "execution.checkpointing.interval",
                format!("{}ms", every.as_millis().max(1)),
            );
            set(
                "execution.checkpointing.mode",
                match self.mode {
                    CheckpointMode::ExactlyOnce => "EXACTLY_ONCE",
                    CheckpointMode::AtLeastOnce => "AT_LEAST_ONCE",
                }
                .into(),
            );
        }
        if let Some(from) = &self.restore_from {
            set(
                "execution.state-recovery.path",
                format!("file://{}", from.display()),
            );
        }
        match self.restart {
            None => set("restart-strategy.type", "none".into()),
            Some((attempts, delay)) => {
                set("restart-strategy.type", "fixed-delay".into());
                set(
                    "restart-strategy.fixed-delay.attempts",
                    attempts.to_string(),
                );
                set(
                    "restart-strategy.fixed-delay.delay",
                    format!("{}ms", delay.as_millis()),
                );
            }
        }
        c.extend(self.extra.iter().cloned());
        c
    }
}

/// A job of a [`FlinkSession`], RUNNING when [`FlinkSession::submit`] returned it.
pub struct Job {
    session: Arc<Inner>,
    /// The runner's name for it (the test's name and a number, unique in the session).
    name: String,
    id: String,
    /// The session's event index at its submission: its events come after it.
    from: usize,
    checkpoint_dir: PathBuf,
    _owned_dir: Option<tempfile::TempDir>,
    running_in: Duration,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("id", &self.id)
            .field("checkpoint_dir", &self.checkpoint_dir)
            .finish()
    }
}

impl Job {
    /// Flink's job id (32 hex digits), as in the REST API's `/jobs/<id>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Its name in the session's output (the name given to submit, `-N` appended).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long it took from submission to every task RUNNING.
    pub fn running_in(&self) -> Duration {
        self.running_in
    }

    /// Where its checkpoints (`<dir>/<id>/chk-N`) and savepoints (`<dir>/savepoints`) go.
    pub fn checkpoint_dir(&self) -> &Path {
        &self.checkpoint_dir
    }

    /// Stop-with-savepoint (without draining: timers do not fire, windows stay open in the
    /// state, as for an upgrade): waits for the savepoint and for the job to finish, and returns
    /// the savepoint's directory, to restore from with [`JobOptions::restore_from`].
    pub fn stop_with_savepoint(&self) -> PathBuf {
        let dir = self.checkpoint_dir.join("savepoints");
        let from = self
            .session
            .send(&format!("stop {} file://{}", self.name, dir.display()));
        let (_, line) = self
            .session
            .wait(from, &format!("a savepoint of {}", self.name), |l| {
                is_event(l, &["SAVEPOINT", "ERROR", "FAILED"], &self.name)
            });
        assert!(
            line.starts_with("SAVEPOINT "),
            "stop-with-savepoint of {}: {line}\nsession output:\n{}",
            self.name,
            self.session.lines.tail()
        );
        let path = uri_path(line.split_whitespace().nth(2).unwrap());
        // the job's end and the savepoint's answer come from different threads of the runner,
        // in either order
        let (_, end) = self
            .session
            .wait(from, &format!("{} to finish", self.name), |l| {
                is_event(l, &["FINISHED", "FAILED", "CANCELLED"], &self.name)
            });
        assert!(end.starts_with("FINISHED "), "after the savepoint: {end}");
        path
    }

    /// Cancels the job (no savepoint; its retained checkpoints stay) and waits until it is.
    pub fn cancel(&self) {
        let from = self.session.send(&format!("cancel {}", self.name));
        let (_, line) = self
            .session
            .wait(from, &format!("{} to be cancelled", self.name), |l| {
                is_event(l, &["CANCELLED", "ERROR", "FAILED", "FINISHED"], &self.name)
            });
        assert!(
            line.starts_with("CANCELLED "),
            "cancel {}: {line}",
            self.name
        );
    }

    /// Flink's status of the job now (`RUNNING`, `RESTARTING`, `FINISHED`, `CANCELED`, ...).
    pub fn status(&self) -> String {
        let from = self.session.send(&format!("status {}", self.name));
        let (_, line) = self
            .session
            .wait(from, &format!("the status of {}", self.name), |l| {
                is_event(l, &["STATUS", "ERROR"], &self.name)
            });
        assert!(line.starts_with("STATUS "), "status {}: {line}", self.name);
        line.split_whitespace().nth(2).unwrap().to_string()
    }

    /// Waits until at least `n` checkpoints (savepoints count too) completed since the job's
    /// submission; returns the latest completed checkpoint's directory (`.../chk-N`). With
    /// periodic checkpoints, a later one may subsume it (3 are kept): after a crash, prefer
    /// [`Job::latest_checkpoint`].
    pub fn wait_checkpoints(&self, n: u64) -> PathBuf {
        let (_, line) = self.session.wait(
            self.from,
            &format!("{n} checkpoints of {}", self.name),
            |l| {
                is_event(l, &["CHECKPOINT", "FAILED"], &self.name)
                    && (l.starts_with("FAILED ")
                        || l.split_whitespace()
                            .nth(2)
                            .and_then(|c| c.parse::<u64>().ok())
                            .is_some_and(|c| c >= n))
            },
        );
        assert!(line.starts_with("CHECKPOINT "), "{line}");
        uri_path(line.split_whitespace().nth(4).unwrap())
    }

    /// How many checkpoints (and savepoints) completed so far, as the session last reported.
    pub fn completed_checkpoints(&self) -> u64 {
        let o = self.session.lines.output.lock().unwrap();
        o.events[self.from..]
            .iter()
            .filter(|l| is_event(l, &["CHECKPOINT"], &self.name))
            .filter_map(|l| l.split_whitespace().nth(2)?.parse().ok())
            .max()
            .unwrap_or(0)
    }

    /// Triggers a checkpoint now and waits for it; returns its directory.
    pub fn trigger_checkpoint(&self) -> PathBuf {
        let from = self.session.send(&format!("checkpoint {}", self.name));
        let (_, line) = self
            .session
            .wait(from, &format!("a checkpoint of {}", self.name), |l| {
                is_event(l, &["CHECKPOINTED", "ERROR"], &self.name)
            });
        assert!(line.starts_with("CHECKPOINTED "), "checkpoint: {line}");
        uri_path(line.split_whitespace().nth(2).unwrap())
    }

    /// The newest complete checkpoint on disk (`<dir>/<id>/chk-N` holding its `_metadata`),
    /// read from the directory: works after the JVM was killed.
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        let dir = self.checkpoint_dir.join(&self.id);
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let n: u64 = e.file_name().to_str()?.strip_prefix("chk-")?.parse().ok()?;
                e.path().join("_metadata").is_file().then(|| (n, e.path()))
            })
            .max_by_key(|(n, _)| *n)
            .map(|(_, p)| p)
    }

    /// The job's first event of one of these kinds (`FAILED`, `RUNNING`, `STATUS`, ...) since
    /// its submission, within `within`; panics when none comes.
    pub fn wait_event(&self, kinds: &[&str], within: Duration) -> String {
        self.session
            .lines
            .wait(self.from, within, |l| is_event(l, kinds, &self.name))
            .unwrap_or_else(|why| {
                panic!(
                    "job {}: waiting for {kinds:?}: {why}; session output:\n{}",
                    self.name,
                    self.session.lines.tail()
                )
            })
            .1
    }

    /// Every event of this job so far.
    pub fn events(&self) -> Vec<String> {
        let o = self.session.lines.output.lock().unwrap();
        o.events[self.from..]
            .iter()
            .filter(|l| l.split_whitespace().nth(1) == Some(self.name.as_str()))
            .cloned()
            .collect()
    }
}

/// `template` with each `${NAME}` replaced by its value in `vars`. Panics when a var is not
/// used or a `${...}` is left, so that a script never runs with a hole in it.
pub fn sql(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        let placeholder = format!("${{{name}}}");
        assert!(
            out.contains(&placeholder),
            "{placeholder} is not in the template"
        );
        out = out.replace(&placeholder, value);
    }
    if let Some(at) = out.find("${") {
        let rest = &out[at..];
        let end = rest.find('}').map_or(rest.len(), |e| e + 1);
        panic!("{} has no value", &rest[..end]);
    }
    out
}

/// Kafka's `isolation.level` of a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isolation {
    /// Records of open (and aborted) transactions hidden. tansu 0.6 hides open ones, but
    /// shows aborted ones (a defect of tansu's: a real broker hides them).
    ReadCommitted,
    /// Every record written.
    ReadUncommitted,
}

/// One record of a topic, as the Java kafka-clients read it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct DumpedRecord {
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    /// `CreateTime` (the producer's) or `LogAppendTime` (the broker's).
    pub timestamp_type: String,
    /// UTF-8 (lossy), None for a null key.
    pub key: Option<String>,
    /// UTF-8 (lossy), None for a tombstone.
    pub value: Option<String>,
    /// (key, value) in order; a null value is None.
    pub headers: Vec<(String, Option<String>)>,
}

/// Every record of partitions 0..`partitions` of `topic`, read from the beginning by the Java
/// kafka-clients (`assign()`, no consumer group) with `isolation`, up to the first record of each
/// partition whose value is `sentinel` (neither it nor what follows it is returned). Write
/// the sentinels (e.g. [`send_sentinels`]) once what is to be read was written: tansu's
/// ListOffsets(latest) answers wrong ends, so a topic's end cannot be asked for. Panics if a
/// partition gave no sentinel within `timeout`, naming it.
pub fn dump_topic(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: Isolation,
    sentinel: &str,
    timeout: Duration,
) -> Vec<DumpedRecord> {
    let level = match isolation {
        Isolation::ReadCommitted => "read_committed",
        Isolation::ReadUncommitted => "read_uncommitted",
    };
    let mut cmd = runner().command();
    cmd.arg("-Xmx256m")
        .arg("FlinkSession")
        .arg("dump")
        .args([bootstrap, topic, &partitions.to_string(), level, sentinel])
        .arg(timeout.as_millis().to_string())
        .stdin(Stdio::null());
    let child = super::no_inherited_fds(&mut cmd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("java starts");
    // the reader bounds itself by `timeout`; this bounds the JVM around it
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout + WAIT) {
        Ok(out) => out.expect("dump runs"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our child, still running (it was not reaped).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("dump of {topic} still running after {:?}", timeout + WAIT);
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dump of {topic} ({level}, sentinel {sentinel:?}) failed ({}):\n{stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("dump line {l:?}: {e}\n{stderr}"))
        })
        .collect()
}

/// Writes `sentinel` (value, no key) to each of partitions 0..`partitions` of `topic`, and
/// waits until each is acknowledged: the end marks that [`dump_topic`] reads up to.
pub async fn send_sentinels(bootstrap: &str, topic: &str, partitions: i32, sentinel: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap();
    for p in 0..partitions {
        producer
            .send(
                FutureRecord::<(), str>::to(topic)
                    .partition(p)
                    .payload(sentinel),
                Duration::from_secs(30),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("sentinel to {topic}/{p}: {e}"));
    }
}
