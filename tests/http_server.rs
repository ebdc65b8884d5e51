//! The agent's HTTP server under the attacks a security review reproduced against it: idle and
//! stalled connections by the hundred under a low file-descriptor limit, a stalled request at
//! shutdown, oversized requests. The agent is the real binary; the attacker is this test,
//! speaking raw TCP.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::infra::free_port;
use common::{GUARD, Running, Tree, get};
use serde_json::Value;

const CANARY: &str = "name: canary\ninterval: 200ms\ntimeout: 5s\n";

/// What a connection got before the server closed it (empty: closed without an answer), or
/// `None` when it is still open after `within`.
fn until_closed(mut conn: TcpStream, within: Duration) -> Option<Vec<u8>> {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

/// 352 connections, 100 of them stalled in the middle of their headers, against an agent
/// allowed 256 file descriptors (the numbers of the review). Before, every one was accepted
/// and kept: descriptors ran out, the embedded cluster's connections failed, records were
/// falsely lost and /metrics stopped answering. Now at most 64 are served, the rest refused at
/// once (a 503, or closed), the idle and stalled ones closed after the header timeout, and the
/// probe loses nothing.
#[test]
fn a_flood_of_idle_and_stalled_connections_is_bounded_and_closed() {
    let t = Tree::new();
    t.write("probes/canary.yaml", CANARY);
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "smoke",
        "--embedded",
        "--duration",
        "20s",
        "--listen",
        &listen,
        "--log-format",
        "json",
        "--report",
        "verdict.json",
    ];
    let mut agent =
        Running::spawn_via(t.path(), &["prlimit", "--nofile=256:256", "--"], &args, &[]);
    agent.wait_event(GUARD, "round settled");
    let flood: Vec<TcpStream> = (0..352)
        .map(|i| {
            let mut c = TcpStream::connect(&listen).unwrap();
            if i % 4 == 0 {
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
                    .unwrap();
            }
            c
        })
        .collect();
    // Every connection ends within the header timeout (10 s), idle and stalled alike: the
    // ones over the limit at once (a 503, or closed without a word when many come together),
    // the ones served when their headers are late. Each is watched by its own thread, which
    // notes when the server closed it.
    let flooded = std::time::Instant::now();
    let watchers: Vec<_> = flood
        .into_iter()
        .map(|conn| {
            std::thread::spawn(move || {
                let got = until_closed(conn, Duration::from_secs(30));
                (got, flooded.elapsed())
            })
        })
        .collect();
    let mut served = 0;
    for (i, w) in watchers.into_iter().enumerate() {
        let (got, closed_after) = w.join().unwrap();
        let got = got.unwrap_or_else(|| panic!("connection {i} still open after 30 s"));
        if closed_after >= Duration::from_secs(5) {
            served += 1; // held until its headers were late
            assert!(got.is_empty(), "a late request gets no answer");
        }
    }
    assert!(
        served > 0 && served <= 64,
        "{served} served at once (at most 64)"
    );
    // The server answers again, and the probe lost nothing meanwhile.
    let body = std::thread::scope(|_| {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(get(&listen, "/metrics"))
    });
    assert_eq!(body.0, 200);
    let status = agent.wait_exit(GUARD);
    let stderr = agent.seen.join("\n");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("Too many open files"), "{stderr}");
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path().join("verdict.json")).unwrap())
            .unwrap();
    let r = &v["probes"][0]["records"];
    assert_eq!(
        (r["lost"].as_u64(), r["send_failed"].as_u64()),
        (Some(0), Some(0)),
        "{v:#}"
    );
    assert!(r["ok"].as_u64().unwrap() >= 60, "{v:#}");
}

/// A connection holding half a request once blocked shutdown forever, even after a second
/// signal. Now SIGTERM drops it after a short grace, and a second signal ends every wait at
/// once (here, records that cannot settle: they are read back from a topic nothing writes to).
/// Oversized requests are refused on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_never_holds_shutdown_and_oversized_requests_are_refused() {
    let t = Tree::new();
    t.write("probes/canary.yaml", CANARY);
    let (mut agent, addr) = Running::run_ready(t.path(), &["--embedded"], &[]);
    let raw = |request: &[u8]| {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(request).unwrap();
        let got = until_closed(c, Duration::from_secs(30)).expect("answered and closed");
        String::from_utf8_lossy(&got).into_owned()
    };
    let big_body = raw(b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000000\r\n\r\n");
    assert!(big_body.starts_with("HTTP/1.1 413"), "{big_body}");
    let big_headers = format!(
        "GET /metrics HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "x".repeat(32 * 1024)
    );
    let got = raw(big_headers.as_bytes());
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    assert_eq!(get(&addr, "/healthz").await.0, 200, "still serving");

    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .write_all(b"GET /status HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(30)).code(), Some(0));
    drop(stalled);

    // Records that cannot settle (read back from a topic nothing writes to, 60 s timeout),
    // a stalled request, then two signals: the second ends the wait.
    t.write(
        "probes/canary.yaml",
        "name: canary\ninterval: 200ms\ntimeout: 60s\nverify:\n  kafka: { topic: nothing-arrives }\n",
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "run",
        "--embedded",
        "--listen",
        &listen,
        "--log-format",
        "json",
    ];
    let mut agent = Running::spawn(t.path(), &args, &[]);
    agent.wait_event(GUARD, "serving /metrics, /healthz, /readyz, /status");
    common::eventually("records in flight", || async {
        let (_, m) = get(&listen, "/metrics").await;
        (common::sample(&m, "slo_probe_in_flight", &[])? >= 1.0).then_some(())
    })
    .await;
    let mut stalled = TcpStream::connect(&listen).unwrap();
    stalled.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    agent.signal("TERM");
    agent.wait_line(GUARD, |l| l.contains("signal again to stop now"));
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "in-flight records left: exit 1");
    drop(stalled);
}
