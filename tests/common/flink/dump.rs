//! An independent reader of a topic: the Java kafka-clients, in a short JVM of its own.

use super::*;

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
    let child = super::super::no_inherited_fds(&mut cmd)
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
