//! Hostile HTTP clients against `slo-probe run` (a process of its own on a tansu process), while
//! a scraper reads `/metrics` as Prometheus does: a new connection per scrape, `Connection:
//! close`, on a thread of its own (so the attackers' tasks do not delay its clock). Per phase:
//! the scrape's latency from connect to the last byte (p50, p99, max), the scrapes that got no
//! 200, what the attackers achieved, the agent's RSS (sampled every 200 ms) and CPU. After every
//! phase the agent must still run and must not have logged a panic.
//!
//! The attackers: connections that send nothing (`idle`), that send a request line and then one
//! header line a second, never ending (`slowloris`), each reconnecting 100 ms after the server
//! closed it; requests with a megabyte of headers; unknown methods, unknown paths, a TLS hello
//! and other garbage; and clients asking for `/` or `/status` back to back on keep-alive
//! connections. And the cost of `/status`, `/` and `/metrics` themselves at many probes.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::common::Tree;
use crate::common::infra::{Tansu, free_port};
use crate::env::{cpu_ticks, rss_kib, ticks_per_second};
use crate::stats;

/// Sizes of a run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How long each phase lasts.
    pub phase: Duration,
    /// Connections of the idle and slowloris attackers.
    pub connections: usize,
    /// Probes of the small agent (the connection attacks) and of the large one (the cost of
    /// the pages).
    pub small: usize,
    pub large: usize,
    /// Fresh renders timed per page at `large` probes.
    pub renders: usize,
}

/// One attack.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Attack {
    None,
    Idle,
    Slowloris,
    HugeHeaders,
    Unknown,
    Hammer(&'static str),
    All,
}

impl Attack {
    pub fn name(self, t: &Timing) -> String {
        match self {
            Attack::None => "none (baseline)".into(),
            Attack::Idle => format!("{} idle connections", t.connections),
            Attack::Slowloris => format!(
                "{} slowloris connections (a header line a second)",
                t.connections
            ),
            Attack::HugeHeaders => "8 clients sending 1 MiB of headers".into(),
            Attack::Unknown => "8 clients: unknown methods, paths, garbage".into(),
            Attack::Hammer(path) => format!("4 clients GET {path} back to back"),
            Attack::All => "all of the above at once".into(),
        }
    }
}

/// What one phase measured.
pub struct Phase {
    pub attack: String,
    /// Scrape latencies that got a 200, ms.
    pub scrapes: Vec<f64>,
    /// Scrapes that got anything else (or nothing), by what they got.
    pub failed: Vec<String>,
    /// What the attackers did, in words.
    pub achieved: String,
    pub rss_max_mib: f64,
    pub rss_end_mib: f64,
    pub cpu_pct: f64,
}

impl Phase {
    pub fn q(&self, q: f64) -> f64 {
        let mut s = self.scrapes.clone();
        s.sort_by(f64::total_cmp);
        if s.is_empty() {
            f64::NAN
        } else {
            stats::exact(&s, q)
        }
    }
}

/// An agent process with its stderr kept in a file (to look for panics).
pub struct Agent {
    child: Child,
    pub addr: String,
    tree: Tree,
}

impl Agent {
    /// `bin run` with `n` probes on `broker`, spread over ten topics (3 partitions each) so
    /// that tansu's memory engine stays fast for the run.
    pub fn start(bin: &Path, broker: &Tansu, n: usize, interval: Duration, tag: &str) -> Agent {
        let t = Tree::new();
        t.agent_file(&broker.bootstrap());
        for i in 0..n {
            t.write(
                &format!("probes/p{i:04}.yaml"),
                &format!(
                    "name: p{i:04}\ntopic: abuse-{tag}-{}\ninterval: {}\ntimeout: 10s\ncreate_topic: {{ partitions: 3 }}\nslos:\n  - {{ name: freshness, latency_below: 500ms, objective: 99% }}\n",
                    i % 10,
                    humantime::format_duration(interval)
                ),
            );
        }
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(t.path().join("agent.log")).unwrap();
        let child = crate::common::no_inherited_fds(&mut Command::new(bin))
            .args(["run", "--listen", &addr, "--log-level", "warn"])
            .current_dir(t.path())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent starts");
        Agent {
            child,
            addr,
            tree: t,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (bounded) until every probe verified a record.
    pub async fn ready(&self, within: Duration) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok((200, _)) = http(&self.addr, "GET", "/readyz").await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("agent not ready within {within:?}:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tree.path().join("agent.log")).unwrap_or_default()
    }

    /// Still running and no panic logged.
    pub fn check_alive(&mut self, after: &str) {
        let log = self.log();
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the agent died during {after}:\n{log}"
        );
        assert!(
            !log.contains("panicked"),
            "the agent panicked during {after}:\n{log}"
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request on a new connection (`Connection: close`): (status, body bytes).
pub async fn http(addr: &str, method: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut got))
        .await
        .map_err(|_| std::io::Error::other("no answer within 30 s"))??;
    Ok(parse(&got))
}

/// (status, body) of a raw HTTP/1.1 answer; status 0 when there was none.
fn parse(got: &[u8]) -> (u16, Vec<u8>) {
    let status = std::str::from_utf8(&got[..got.len().min(12)])
        .ok()
        .and_then(|s| s.get(9..12))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |i| got[i + 4..].to_vec());
    (status, body)
}

/// Scrapes `/metrics` every `every` on its own thread until `stop`: latencies of the 200s (ms)
/// and what the others got.
fn scraper(
    addr: String,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<f64>, Vec<String>)> {
    std::thread::spawn(move || {
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            let got = (|| -> std::io::Result<Vec<u8>> {
                let mut c = std::net::TcpStream::connect(&addr)?;
                c.set_read_timeout(Some(Duration::from_secs(10)))?;
                c.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n")?;
                let mut got = Vec::new();
                c.read_to_end(&mut got)?;
                Ok(got)
            })();
            let took = t0.elapsed().as_secs_f64() * 1e3;
            match got.map(|g| parse(&g)) {
                Ok((200, body)) if !body.is_empty() => ok.push(took),
                Ok((0, _)) => failed.push("closed without an answer".into()),
                Ok((status, _)) => failed.push(format!("{status}")),
                Err(e) => failed.push(format!("{:?}", e.kind())),
            }
            // a sampling period, as Prometheus' scrape interval
            next += every;
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        (ok, failed)
    })
}

/// Counters of the attackers.
#[derive(Default)]
struct Tally {
    connects: AtomicU64,
    closed_by_server: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
    statuses: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl Tally {
    fn status(&self, s: u16) {
        *self.statuses.lock().unwrap().entry(s).or_default() += 1;
    }

    fn words(&self, secs: f64) -> String {
        let mut parts = Vec::new();
        let c = self.connects.load(Ordering::Relaxed);
        if c > 0 {
            let closed = self.closed_by_server.load(Ordering::Relaxed);
            parts.push(if closed > 0 {
                format!(
                    "{:.0} connects/s, {:.0} closed by the agent/s",
                    c as f64 / secs,
                    closed as f64 / secs
                )
            } else {
                format!("{:.0} connects/s", c as f64 / secs)
            });
        }
        let r = self.requests.load(Ordering::Relaxed);
        if r > 0 {
            parts.push(format!(
                "{:.0} requests/s, {:.1} MB/s",
                r as f64 / secs,
                self.bytes.load(Ordering::Relaxed) as f64 / secs / 1e6
            ));
        }
        let statuses = self.statuses.lock().unwrap();
        if !statuses.is_empty() {
            let s: Vec<String> = statuses
                .iter()
                .map(|(k, v)| {
                    if *k == 0 {
                        format!("closed x{v}")
                    } else {
                        format!("{k} x{v}")
                    }
                })
                .collect();
            parts.push(s.join(", "));
        }
        parts.join("; ")
    }
}

/// A connection that holds still (`idle`) or trickles headers (`slowloris`) until the server
/// closes it, then comes back 100 ms later; until `stop`.
async fn holder(addr: String, slowloris: bool, tally: Arc<Tally>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        let Ok(mut c) = TcpStream::connect(&addr).await else {
            tokio::select! { _ = tokio::time::sleep(Duration::from_millis(100)) => continue, _ = stop.cancelled() => return }
        };
        tally.connects.fetch_add(1, Ordering::Relaxed);
        if slowloris {
            let _ = c
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n")
                .await;
        }
        let mut buf = [0u8; 1024];
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                r = c.read(&mut buf) => match r {
                    Ok(0) | Err(_) => { tally.closed_by_server.fetch_add(1, Ordering::Relaxed); break }
                    Ok(_) => {}
                },
                _ = tick.tick(), if slowloris => { if c.write_all(b"X-Slow: 1\r\n").await.is_err() { tally.closed_by_server.fetch_add(1, Ordering::Relaxed); break } }
                _ = stop.cancelled() => return,
            }
        }
        tokio::select! { _ = tokio::time::sleep(Duration::from_millis(100)) => {}, _ = stop.cancelled() => return }
    }
}

/// Sends `request` (any bytes) on a new connection and reads what comes back, in a loop.
async fn sender(addr: String, requests: Vec<Vec<u8>>, tally: Arc<Tally>, stop: CancellationToken) {
    let mut i = 0;
    while !stop.is_cancelled() {
        let request = &requests[i % requests.len()];
        i += 1;
        let one = async {
            let mut c = TcpStream::connect(&addr).await?;
            tally.connects.fetch_add(1, Ordering::Relaxed);
            // the server may answer (431) and close before all is sent
            for chunk in request.chunks(64 * 1024) {
                if c.write_all(chunk).await.is_err() {
                    break;
                }
            }
            let mut got = Vec::new();
            let _ = c.read_to_end(&mut got).await;
            std::io::Result::Ok(got)
        };
        tokio::select! {
            r = one => {
                tally.requests.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(got) => { tally.bytes.fetch_add(got.len() as u64, Ordering::Relaxed); tally.status(parse(&got).0) }
                    Err(_) => tally.status(0),
                }
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// GETs `path` back to back on one keep-alive connection.
async fn hammer(addr: String, path: &'static str, tally: Arc<Tally>, stop: CancellationToken) {
    slo_probe::install_crypto_provider();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let url = format!("http://{addr}{path}");
    while !stop.is_cancelled() {
        tokio::select! {
            r = client.get(&url).send() => match r {
                Ok(r) => {
                    tally.status(r.status().as_u16());
                    let n = r.bytes().await.map_or(0, |b| b.len());
                    tally.requests.fetch_add(1, Ordering::Relaxed);
                    tally.bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => { tally.status(0); tokio::time::sleep(Duration::from_millis(10)).await }
            },
            _ = stop.cancelled() => return,
        }
    }
}

fn unknown_requests() -> Vec<Vec<u8>> {
    let close = "Host: agent\r\nConnection: close\r\n\r\n";
    let mut r: Vec<Vec<u8>> = [
        format!("BREW /coffee HTTP/1.1\r\n{close}"),
        format!("DELETE /metrics HTTP/1.1\r\n{close}"),
        format!("PROPFIND / HTTP/1.1\r\n{close}"),
        format!("GET /wp-admin/../../etc/passwd HTTP/1.1\r\n{close}"),
        format!("GET /metrics%00 HTTP/1.1\r\n{close}"),
        format!("GET /{} HTTP/1.1\r\n{close}", "a".repeat(8000)),
        format!("GET /metrics HTTP/9.9\r\n{close}"),
        format!("POST /status HTTP/1.1\r\nContent-Length: 5\r\n{close}hello"),
        format!("POST /metrics HTTP/1.1\r\nContent-Length: 1000000000\r\n{close}"),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    // a TLS ClientHello's first bytes, and binary noise
    r.push(vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]);
    r.push(
        (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect(),
    );
    r
}

fn huge_headers() -> Vec<Vec<u8>> {
    let mut r = b"GET /metrics HTTP/1.1\r\nHost: agent\r\n".to_vec();
    for i in 0..(1 << 20) / 64 {
        r.extend_from_slice(format!("X-Pad-{i:06}: {}\r\n", "x".repeat(48)).as_bytes());
    }
    r.extend_from_slice(b"\r\n");
    vec![r]
}

/// Starts the attackers of `attack`; returns their tally and tasks.
fn start(
    attack: Attack,
    addr: &str,
    t: &Timing,
    stop: &CancellationToken,
) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let tasks = std::cell::RefCell::new(Vec::new());
    let spawn_holders = |slowloris: bool| {
        for _ in 0..t.connections {
            let task = holder(
                addr.to_string(),
                slowloris,
                Arc::clone(&tally),
                stop.clone(),
            );
            tasks.borrow_mut().push(tokio::spawn(task));
        }
    };
    let spawn_senders = |requests: Vec<Vec<u8>>| {
        for _ in 0..8 {
            let task = sender(
                addr.to_string(),
                requests.clone(),
                Arc::clone(&tally),
                stop.clone(),
            );
            tasks.borrow_mut().push(tokio::spawn(task));
        }
    };
    let spawn_hammers = |path: &'static str| {
        for _ in 0..4 {
            let task = hammer(addr.to_string(), path, Arc::clone(&tally), stop.clone());
            tasks.borrow_mut().push(tokio::spawn(task));
        }
    };
    match attack {
        Attack::None => {}
        Attack::Idle => spawn_holders(false),
        Attack::Slowloris => spawn_holders(true),
        Attack::HugeHeaders => spawn_senders(huge_headers()),
        Attack::Unknown => spawn_senders(unknown_requests()),
        Attack::Hammer(path) => spawn_hammers(path),
        Attack::All => {
            spawn_holders(false);
            spawn_holders(true);
            spawn_senders(huge_headers());
            spawn_senders(unknown_requests());
            spawn_hammers("/");
            spawn_hammers("/status");
        }
    }
    (tally, tasks.into_inner())
}

/// One phase: `attack` for `t.phase` while the scraper scrapes every 100 ms.
pub async fn phase(agent: &mut Agent, attack: Attack, t: &Timing) -> Phase {
    let stop = CancellationToken::new();
    let (tally, attackers) = start(attack, &agent.addr, t, &stop);
    let scraping = Arc::new(AtomicBool::new(false));
    let scrapes = scraper(
        agent.addr.clone(),
        Duration::from_millis(100),
        Arc::clone(&scraping),
    );
    let (t0, c0) = (Instant::now(), cpu_ticks(agent.pid()).unwrap_or(0));
    let mut rss = Vec::new();
    while t0.elapsed() < t.phase {
        if let Some((kib, _)) = rss_kib(agent.pid()) {
            rss.push(kib as f64 / 1024.0);
        }
        // an RSS sampling period
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_ticks(agent.pid()).unwrap_or(0).saturating_sub(c0) as f64
        / ticks_per_second() as f64
        / secs
        * 100.0;
    scraping.store(true, Ordering::Relaxed);
    stop.cancel();
    let (ok, failed) = scrapes.join().unwrap();
    for a in attackers {
        a.await.expect("an attacker failed: the harness is broken");
    }
    let name = attack.name(t);
    if attack != Attack::None {
        let did = tally.connects.load(Ordering::Relaxed) + tally.requests.load(Ordering::Relaxed);
        assert!(did > 0, "{name}: the attackers did nothing");
    }
    agent.check_alive(&name);
    Phase {
        attack: name,
        scrapes: ok,
        failed,
        achieved: tally.words(secs),
        rss_max_mib: rss.iter().copied().fold(0.0, f64::max),
        rss_end_mib: rss.last().copied().unwrap_or(0.0),
        cpu_pct: cpu,
    }
}

/// The cost of one page at many probes: each request a fresh render (spaced beyond the
/// server's reuse of a render; a large `/metrics` is rendered ahead instead, and this is what a
/// scrape of it takes), (ms, bytes) per request.
pub async fn cost(agent: &Agent, path: &str, n: usize) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        // past the longest reuse of a render (1 s): this request renders
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let t0 = Instant::now();
        let (status, body) = http(&agent.addr, "GET", path).await.expect("answered");
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        assert_eq!(status, 200, "{path}");
        bytes = body.len();
    }
    (times, bytes)
}

/// Lets this process hold the attackers' connections.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
