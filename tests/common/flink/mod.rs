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

mod dump;
mod session;

pub use dump::{DumpedRecord, Isolation, dump_topic, send_sentinels};
#[allow(unused_imports)] // each test binary uses a different part of the harness
pub use session::{CheckpointMode, FlinkSession, Job, JobOptions};

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
