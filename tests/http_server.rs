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
/// falsely lost and /metrics stopped answering. Now at most 64 are served at once, the others
/// closed at once (each newer one takes the slot of one that only waits), the last 64 closed
/// after the header timeout, and the probe loses nothing.
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
    // ones whose slot a newer one took at once (closed without a word), the ones served
    // when their headers are late. Each is watched by its own thread, which
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

/// Requests no endpoint takes, sent by the dozen: unknown methods and paths, bodies, a megabyte
/// of headers in many lines, too many headers, versions and bytes that are not HTTP/1. Each gets
/// its error status and nothing panics. Then a few hundred connections held open, idle or
/// trickling headers, more than the server serves at once: before, they took every slot until
/// their header timeout (and for good, reconnecting), and a scraper got 503; now each new
/// connection takes the slot of the one that waited longest for a request, so the scraper is
/// served while they are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_errors_and_held_connections_cannot_lock_a_scraper_out() {
    let t = Tree::new();
    t.write("probes/canary.yaml", CANARY);
    let (mut agent, addr) = Running::run_ready(t.path(), &["--embedded"], &[]);
    let raw = |request: &[u8]| {
        let mut c = TcpStream::connect(&addr).unwrap();
        // the server may answer and close before it has read everything
        let _ = c.write_all(request);
        let got = until_closed(c, Duration::from_secs(30)).expect("answered and closed");
        String::from_utf8_lossy(&got).into_owned()
    };
    let close = "Host: a\r\nConnection: close\r\n\r\n";
    let mut megabyte = String::from("GET /metrics HTTP/1.1\r\nHost: a\r\n");
    for i in 0..16_384 {
        megabyte.push_str(&format!("X-Pad-{i:05}: {}\r\n", "x".repeat(50)));
    }
    megabyte.push_str("\r\n");
    let many: String = (0..500).map(|i| format!("X-{i}: 1\r\n")).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (format!("BREW /coffee HTTP/1.1\r\n{close}").into(), "404"),
        (format!("GET /nope HTTP/1.1\r\n{close}").into(), "404"),
        (
            format!("GET /metrics/../status HTTP/1.1\r\n{close}").into(),
            "404",
        ),
        (format!("DELETE /metrics HTTP/1.1\r\n{close}").into(), "405"),
        (format!("PROPFIND / HTTP/1.1\r\n{close}").into(), "405"),
        (
            format!("POST /status HTTP/1.1\r\nContent-Length: 5\r\n{close}hello").into(),
            "405",
        ),
        (format!("GET /metrics HTTP/9.9\r\n{close}").into(), "400"),
        (
            format!("GET /metrics HTTP/1.1\r\n{many}{close}").into(),
            "431",
        ),
        (megabyte.into_bytes(), "431"),
        (format!("GET /\0 HTTP/1.1\r\n{close}").into(), "400"),
        (
            vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
            ],
            "400",
        ),
    ];
    let mut wrong = Vec::new();
    for (request, status) in &cases {
        for _ in 0..12 {
            let got = raw(request);
            if !got.starts_with(&format!("HTTP/1.1 {status}")) {
                wrong.push(format!(
                    "{:?} expected {status}, got {:?}",
                    String::from_utf8_lossy(&request[..request.len().min(40)]),
                    &got[..got.len().min(40)]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    let held: Vec<TcpStream> = (0..200)
        .map(|i| {
            let mut c = TcpStream::connect(&addr).unwrap();
            if i % 2 == 1 {
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Slow: ")
                    .unwrap();
            }
            c
        })
        .collect();
    agent.wait_event(
        GUARD,
        "HTTP connections full: closing the ones waiting longest for a request to serve new ones",
    );
    for _ in 0..10 {
        let (status, body) = get(&addr, "/metrics").await;
        assert_eq!(status, 200, "a scrape while 200 connections are held");
        assert!(body.contains("slo_probe_records_sent_total"), "{body}");
    }
    drop(held);
    assert_eq!(get(&addr, "/healthz").await.0, 200);
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(GUARD).code(), Some(0));
    let panics: Vec<&String> = agent
        .seen
        .iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{panics:#?}");
}
