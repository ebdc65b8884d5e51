//! A session (one JVM running the runner, what it printed, and the events every wait follows)
//! and its jobs: how each runs, and what can be done to it.

use super::*;

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
        let mut child = super::super::no_inherited_fds(&mut cmd)
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
