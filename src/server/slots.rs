//! The server's connection slots, and who gives one up when they are all taken.
//!
//! A bounded number of connections keeps a flood from taking the file descriptors the probes
//! need; but a bound alone lets anyone holding that many idle connections (or connections that
//! trickle their headers) lock every other client out until the header timeout, and for good if
//! they reconnect. So when every slot is taken, a new connection takes the slot of the
//! connection that has waited longest for a request, idle or with its headers still coming,
//! which is closed at once (as nginx reuses its idle keep-alive connections when it runs out).
//! A connection answering a request is never closed for another, nor is one whose request has
//! arrived but not been read yet (bytes wait in its socket: on a loaded machine, newer
//! connections can fill every slot before its task runs): only when every slot is answering or
//! about to is a new connection refused. A scraper sends its request as soon as it connects, so
//! it is served whatever the number of connections that only wait.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The slots: at most `limit` connections served at once.
pub(super) struct Slots {
    limit: usize,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Conn>>,
    /// Connections closed to make room, over the server's life.
    evicted: u64,
}

/// One served connection, as the slots see it.
pub(super) struct Conn {
    /// Its socket, to ask whether a request waits in it unread (`None` in unit tests).
    fd: Option<std::os::fd::RawFd>,
    /// Requests being answered; a response counts until it is written out.
    busy: AtomicUsize,
    /// When it last started waiting for a request: accepted, or its last response written.
    waiting_since: Mutex<Instant>,
    /// Cancelled when its slot is given to a new connection: the connection is dropped.
    pub(super) evicted: CancellationToken,
}

impl Conn {
    /// Whether bytes have arrived on the connection that the server has not read yet.
    fn has_unread(&self) -> bool {
        let Some(fd) = self.fd else { return false };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD only writes the number of queued bytes into `n`. The descriptor is
        // that of a connection still in the table; should it have closed (and its number been
        // reused) meanwhile, the answer only steers which waiting connection is closed.
        unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) == 0 && n > 0 }
    }

    fn waiting_since(&self) -> Instant {
        *self.waiting_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A slot held by one connection; given back when dropped.
pub(super) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub(super) conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut table = self.slots.lock();
        if table
            .open
            .get(&self.id)
            .is_some_and(|c| Arc::ptr_eq(c, &self.conn))
        {
            table.open.remove(&self.id);
        }
    }
}

/// How a new connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admission {
    /// A slot was free.
    Free,
    /// It took the slot of a connection that was only waiting, now closed.
    Evicted,
}

impl Slots {
    pub(super) fn new(limit: usize) -> Arc<Slots> {
        Arc::new(Slots {
            limit,
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for the new connection on `fd`: a free one, else the one of the connection that
    /// has waited longest for a request (closed here); `None` when every connection is
    /// answering a request or has one waiting unread.
    pub(super) fn admit(
        self: &Arc<Self>,
        fd: Option<std::os::fd::RawFd>,
    ) -> Option<(Slot, Admission)> {
        let mut table = self.lock();
        let mut admission = Admission::Free;
        if table.open.len() >= self.limit {
            let mut waiting: Vec<(Instant, u64, &Arc<Conn>)> = table
                .open
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::Acquire) == 0)
                .map(|(id, c)| (c.waiting_since(), *id, c))
                .collect();
            waiting.sort_unstable_by_key(|(since, id, _)| (*since, *id));
            let victim = waiting
                .into_iter()
                .find(|(_, _, c)| !c.has_unread())
                .map(|(_, id, _)| id)?;
            if let Some(c) = table.open.remove(&victim) {
                c.evicted.cancel();
            }
            table.evicted += 1;
            admission = Admission::Evicted;
        }
        let id = table.next_id;
        table.next_id += 1;
        let conn = Arc::new(Conn {
            fd,
            busy: AtomicUsize::new(0),
            waiting_since: Mutex::new(Instant::now()),
            evicted: CancellationToken::new(),
        });
        table.open.insert(id, Arc::clone(&conn));
        let slot = Slot {
            slots: Arc::clone(self),
            id,
            conn,
        };
        Some((slot, admission))
    }

    /// Connections holding a slot now.
    #[cfg(test)]
    pub(super) fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// Marks its connection busy while it lives: from the request's headers to the end of the
/// response's body.
struct Busy(Arc<Conn>);

impl Busy {
    fn start(conn: &Arc<Conn>) -> Busy {
        conn.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(conn))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Waiting again from now; the time is set before the count drops to zero.
        *self
            .0
            .waiting_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's service: the router's, marking the connection busy per request.
#[derive(Clone)]
pub(super) struct Tracked<S> {
    pub(super) inner: S,
    pub(super) conn: Arc<Conn>,
}

impl<S> hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Tracked<S>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = Infallible,
        >,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let busy = Busy::start(&self.conn);
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(Held { body, _busy: busy })))
        })
    }
}

/// A response body that keeps its connection marked busy until it is written out (hyper drops
/// it then).
struct Held {
    body: Body,
    _busy: Busy,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_full_table_gives_the_longest_waiting_slot_and_never_a_busy_one() {
        let slots = Slots::new(3);
        let (a, how) = slots.admit(None).unwrap();
        assert_eq!(how, Admission::Free);
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let (b, _) = slots.admit(None).unwrap();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        let (c, _) = slots.admit(None).unwrap();
        // a answers a request: b has waited longest of the others
        let busy_a = Busy::start(&a.conn);
        let (d, how) = slots.admit(None).unwrap();
        assert_eq!(how, Admission::Evicted);
        assert!(b.conn.evicted.is_cancelled() && !a.conn.evicted.is_cancelled());
        assert_eq!(slots.open(), 3);
        // b's task ends later: its slot, already given away, is not freed twice
        drop(b);
        assert_eq!(slots.open(), 3);
        // every slot busy: a new connection is refused, nobody is closed
        let (_busy_c, _busy_d) = (Busy::start(&c.conn), Busy::start(&d.conn));
        assert!(slots.admit(None).is_none());
        assert!(![&a, &c, &d].iter().any(|s| s.conn.evicted.is_cancelled()));
        // a's response written: a waits again, and is the one to go
        drop(busy_a);
        let (_e, how) = slots.admit(None).unwrap();
        assert_eq!(how, Admission::Evicted);
        assert!(a.conn.evicted.is_cancelled());
        // a connection that ends frees its slot
        drop(c);
        assert_eq!(slots.open(), 2);
        assert_eq!(slots.admit(None).unwrap().1, Admission::Free);
    }

    /// A connection whose request has arrived but is not read yet keeps its slot, however long
    /// it has waited; one that sent nothing gives its slot up.
    #[tokio::test]
    async fn a_connection_with_its_request_waiting_unread_is_not_closed_for_a_newer_one() {
        use std::os::fd::AsRawFd;
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut scraper = tokio::net::TcpStream::connect(addr).await.unwrap();
        scraper
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let (with_request, _) = listener.accept().await.unwrap();
        let _idle_client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (idle, _) = listener.accept().await.unwrap();
        // wait until the request's bytes are queued on the server's side
        let mut peek = [0u8; 4];
        with_request.peek(&mut peek).await.unwrap();

        let slots = Slots::new(2);
        let (first, _) = slots.admit(Some(with_request.as_raw_fd())).unwrap();
        let (second, _) = slots.admit(Some(idle.as_raw_fd())).unwrap();
        let (third, how) = slots.admit(None).unwrap();
        assert_eq!(how, Admission::Evicted);
        assert!(
            second.conn.evicted.is_cancelled() && !first.conn.evicted.is_cancelled(),
            "the idle connection goes, though the other has waited longer"
        );
        // every other slot busy or holding an unread request: the new one is refused
        let _busy = Busy::start(&third.conn);
        assert!(slots.admit(None).is_none());
        assert!(!first.conn.evicted.is_cancelled());
    }
}
