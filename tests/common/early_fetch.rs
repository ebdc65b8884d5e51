//! A broker that answers fetches when data arrives: stands for Apache Kafka's delayed-fetch
//! completion (a fetch is answered as soon as `fetch.min.bytes`, 1, is available, and waits
//! `MaxWaitMs` only when nothing comes), which cannot run here.
//!
//! tansu holds every fetch for the whole wait the client asks for, data or not. In front of it,
//! a [`CountingRelay`] rewrites each Fetch request's `MaxWaitMs` to at most [`CAP_MS`] before
//! forwarding it, so whatever wait a client asks for, its fetch is answered within tansu's
//! short hold (about 50 ms): to the client, a broker that answers when data arrives. What it
//! does not stand for: the idle load. An idle consumer still fetches as often as tansu answers
//! a 10 ms fetch, where Apache Kafka would hold an empty fetch for the whole wait (measure that
//! on tansu with the wait itself: `an_idle_agent_costs_a_broker_one_fetch_per_wait`).
//!
//! Fetch requests are read, not guessed at: request header v1 (API key i16, API version i16,
//! correlation id i32, client id as an i16-length nullable string) for the non-flexible
//! versions, header v2 (the same, then tagged fields) for the flexible ones (Fetch v12 on); in
//! Fetch v0 to v14 the body starts with `ReplicaId` i32 then `MaxWaitMs` i32, from v15 (the
//! replica id moved into a tagged field) with `MaxWaitMs`. A version this module does not know
//! is counted in `unparsed` and forwarded unchanged, so that a test sees it instead of a relay
//! that silently stopped rewriting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::counting::{CountingRelay, FETCH};
use super::infra::{Tansu, free_port};

/// The longest wait a fetch is forwarded with.
pub const CAP_MS: i32 = 10;

/// The newest Fetch version whose layout [`cap_max_wait`] knows (v16 and v17 start as v15).
pub const NEWEST_KNOWN: i16 = 17;

/// What the relay did with the Fetch requests it saw.
#[derive(Debug, Clone, Default)]
pub struct Fetches {
    /// Fetch requests by API version.
    pub by_version: BTreeMap<i16, u64>,
    /// Fetch requests by the `MaxWaitMs` the client asked for.
    pub by_wait: BTreeMap<i32, u64>,
    /// Fetches whose wait was cut to [`CAP_MS`].
    pub rewritten: u64,
    /// Fetches that could not be read (forwarded unchanged), with why.
    pub unparsed: Vec<String>,
}

/// tansu behind a rewriting relay: clients use [`EarlyFetchBroker::bootstrap`].
pub struct EarlyFetchBroker {
    pub relay: CountingRelay,
    pub tansu: Tansu,
    fetches: Arc<Mutex<Fetches>>,
}

impl EarlyFetchBroker {
    pub async fn start() -> EarlyFetchBroker {
        let port = free_port();
        let tansu = Tansu::advertising(Some(port));
        let fetches = Arc::new(Mutex::new(Fetches::default()));
        let f = Arc::clone(&fetches);
        let rewrite = Arc::new(move |frame: &mut [u8]| {
            if frame.len() < 2 || i16::from_be_bytes([frame[0], frame[1]]) != FETCH {
                return;
            }
            let mut f = f.lock().unwrap();
            match cap_max_wait(frame, CAP_MS) {
                Ok((version, asked)) => {
                    *f.by_version.entry(version).or_default() += 1;
                    *f.by_wait.entry(asked).or_default() += 1;
                    if asked > CAP_MS {
                        f.rewritten += 1;
                    }
                }
                Err(why) => f.unparsed.push(why),
            }
        });
        let relay =
            CountingRelay::rewriting(port, format!("127.0.0.1:{}", tansu.port), rewrite).await;
        EarlyFetchBroker {
            relay,
            tansu,
            fetches,
        }
    }

    /// Where clients connect: the relay, which tansu advertises.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.relay.port)
    }

    pub fn fetches(&self) -> Fetches {
        self.fetches.lock().unwrap().clone()
    }
}

fn i16_at(frame: &[u8], at: usize) -> Result<i16, String> {
    frame
        .get(at..at + 2)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("the frame ends at {} before byte {at}", frame.len()))
}

fn i32_at(frame: &[u8], at: usize) -> Result<i32, String> {
    frame
        .get(at..at + 4)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("the frame ends at {} before byte {at}", frame.len()))
}

/// An unsigned varint at `at`: its value and the offset after it.
fn uvarint_at(frame: &[u8], mut at: usize) -> Result<(u64, usize), String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *frame
            .get(at)
            .ok_or_else(|| format!("a varint runs past the frame's end ({})", frame.len()))?;
        at += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok((value, at));
        }
    }
    Err("a varint longer than 64 bits".into())
}

/// Caps the `MaxWaitMs` of a Fetch request (`frame`: from its API key on, without the size) at
/// `cap`, in place. Returns its API version and the wait the client asked for.
pub fn cap_max_wait(frame: &mut [u8], cap: i32) -> Result<(i16, i32), String> {
    let key = i16_at(frame, 0)?;
    if key != FETCH {
        return Err(format!("API key {key} is not Fetch"));
    }
    let version = i16_at(frame, 2)?;
    if !(0..=NEWEST_KNOWN).contains(&version) {
        return Err(format!(
            "Fetch v{version}: a layout this stand-in does not know (v0 to v{NEWEST_KNOWN})"
        ));
    }
    // api key, api version, correlation id, then the client id (nullable: -1 is null)
    let client_id = i16_at(frame, 8)?;
    let mut at = 10 + usize::try_from(client_id.max(0)).unwrap_or(0);
    if version >= 12 {
        // request header v2: tagged fields, each a tag, a size and that many bytes
        let (count, next) = uvarint_at(frame, at)?;
        at = next;
        for _ in 0..count {
            let (_tag, next) = uvarint_at(frame, at)?;
            let (size, next) = uvarint_at(frame, next)?;
            at = next + usize::try_from(size).map_err(|e| e.to_string())?;
        }
    }
    if version <= 14 {
        at += 4; // ReplicaId
    }
    let asked = i32_at(frame, at)?;
    if asked > cap {
        frame[at..at + 4].copy_from_slice(&cap.to_be_bytes());
    }
    Ok((version, asked))
}
