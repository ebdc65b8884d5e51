//! The HTTP server's bound on the file descriptors it holds, counted from outside it: this
//! binary holds this one test, so every descriptor that appears in the process while it runs
//! is the server's (or the scraper's own end).
//!
//! A burst of connections far over the connection limit, all waiting in the listen backlog,
//! accepted by a server on one worker that also runs the tasks of the connections it closes to
//! make room. It used to accept them faster than those tasks ran, so it held ever more sockets
//! (about twice its connection limit here; on a loaded CI machine, an agent allowed 256
//! descriptors ran out of them). Now it never holds more than `MAX_DESCRIPTORS`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use slo_probe::AgentView;
use slo_probe::http::{self as server, MAX_CONNECTIONS, MAX_DESCRIPTORS, Metrics, State};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "current_thread")]
async fn a_burst_of_connections_never_holds_more_than_its_descriptors() {
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    // Connected before the server runs (this thread is its only worker): all in the backlog.
    let burst: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    let sampling = Arc::new(AtomicBool::new(true));
    let before = open_descriptors();
    let sampler = std::thread::spawn({
        let sampling = Arc::clone(&sampling);
        move || {
            let (mut most, mut samples) = (0, 0u64);
            while sampling.load(Ordering::Relaxed) {
                most = most.max(open_descriptors().saturating_sub(before));
                samples += 1;
            }
            (most, samples)
        }
    });
    let view = AgentView {
        probes: Vec::new(),
        metrics: Arc::new(Metrics::new("test", [])),
        site: "test".into(),
        instance: "test".into(),
        fetch_wait: BTreeMap::new(),
        trace_url: None,
        embedded: false,
    };
    let stop = CancellationToken::new();
    let serving = tokio::spawn(server::serve(listener, State::new(view), stop.clone()));
    // Behind the burst in the backlog: answered once every connection of it was accepted.
    let mut scraper = tokio::net::TcpStream::connect(addr).await.unwrap();
    scraper
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    scraper.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    sampling.store(false, Ordering::Relaxed);
    let (most, samples) = sampler.join().unwrap();
    // The scraper's own end is the one descriptor not the server's.
    assert!(
        most > MAX_CONNECTIONS && most <= MAX_DESCRIPTORS + 1,
        "{most} descriptors at once over {samples} samples (the server may hold {MAX_DESCRIPTORS})"
    );
    drop(burst);
    stop.cancel();
    serving.await.unwrap();
}
