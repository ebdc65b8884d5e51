//! A plain TCP relay in front of a broker that counts the Kafka requests clients send through
//! it, by API key (Produce 0, Fetch 1, ListOffsets 2, Metadata 3, ...): what an agent costs a
//! broker. Kafka framing: a 4-byte big-endian size, then the request header (API key i16, API
//! version i16, ...). The broker must advertise the relay's port. A relay may also rewrite each
//! request in place before forwarding it ([`CountingRelay::rewriting`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Kafka API keys this module names.
pub const FETCH: i16 = 1;

/// Rewrites a request frame (from its API key on) in place; its length must not change.
pub type Rewrite = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

pub struct CountingRelay {
    pub port: u16,
    counts: Arc<Mutex<BTreeMap<i16, u64>>>,
    stop: CancellationToken,
}

impl CountingRelay {
    /// Relays `port` (chosen here) to `upstream` (host:port).
    pub async fn start(port: u16, upstream: String) -> CountingRelay {
        CountingRelay::rewriting(port, upstream, Arc::new(|_: &mut [u8]| {})).await
    }

    /// As [`CountingRelay::start`], and every request passes through `rewrite` on its way.
    pub async fn rewriting(port: u16, upstream: String, rewrite: Rewrite) -> CountingRelay {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let counts = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = CancellationToken::new();
        let (c, s) = (Arc::clone(&counts), stop.clone());
        tokio::spawn(async move {
            loop {
                let (client, _) = tokio::select! {
                    _ = s.cancelled() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => return },
                };
                let Ok(broker) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let _ = (client.set_nodelay(true), broker.set_nodelay(true));
                tokio::spawn(relay(
                    client,
                    broker,
                    Arc::clone(&c),
                    Arc::clone(&rewrite),
                    s.clone(),
                ));
            }
        });
        CountingRelay { port, counts, stop }
    }

    /// Requests seen so far, by API key.
    pub fn counts(&self) -> BTreeMap<i16, u64> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for CountingRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(
    client: TcpStream,
    broker: TcpStream,
    counts: Arc<Mutex<BTreeMap<i16, u64>>>,
    rewrite: Rewrite,
    stop: CancellationToken,
) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut broker_read, mut broker_write) = broker.into_split();
    let requests = async {
        loop {
            let mut size = [0u8; 4];
            client_read.read_exact(&mut size).await?;
            let len = u32::from_be_bytes(size) as usize;
            let mut frame = vec![0u8; len];
            client_read.read_exact(&mut frame).await?;
            if frame.len() >= 2 {
                let key = i16::from_be_bytes([frame[0], frame[1]]);
                *counts.lock().unwrap().entry(key).or_default() += 1;
            }
            rewrite(&mut frame);
            // One write per request: a size and a frame written apart would wait for the
            // broker's delayed ACK of the first (Nagle), adding up to 40 ms to the request.
            let mut request = Vec::with_capacity(4 + len);
            request.extend_from_slice(&size);
            request.extend_from_slice(&frame);
            broker_write.write_all(&request).await?;
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    let responses = tokio::io::copy(&mut broker_read, &mut client_write);
    tokio::select! {
        _ = requests => {}
        _ = responses => {}
        _ = stop.cancelled() => {}
    }
}
