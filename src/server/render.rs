//! Renders of the expensive endpoints (`/status`, `/`), bounded.
//!
//! With many probes a render takes long (the live page draws SVG charts; see BENCHMARKS.md
//! for its cost at 1 000 probes), and the endpoints are open to anyone who can reach the port.
//! Rendered on the async workers, a few clients asking for them in a loop would hold every
//! worker, and `/metrics` scrapes and the probes' own verifiers (whose arrival times are
//! latency) would wait behind them. So each endpoint renders on a blocking thread, one render
//! at a time; requests that come while it runs wait for it and get the same bytes, and a
//! render is reused for [`REUSE_FACTOR`] times as long as it took (at most [`MAX_REUSE`]).
//! Whatever the clients do, rendering an endpoint then takes at most about
//! `1 / (1 + REUSE_FACTOR)` of one core, and a page is never older than [`MAX_REUSE`] plus a
//! render: on an agent with a few probes a render takes a millisecond or two and is reused for
//! a few more, so the figures are as fresh as the request.

use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A render is reused for this many times as long as it took...
pub const REUSE_FACTOR: u32 = 9;
/// ...but never longer than this.
pub const MAX_REUSE: Duration = Duration::from_secs(1);

/// One endpoint's latest render.
#[derive(Default)]
pub(super) struct Rendered {
    /// The bytes, and until when they are served again. Held while rendering: one render at a
    /// time, and whoever waited for it gets its bytes.
    latest: Mutex<Option<(Instant, Bytes)>>,
    /// Renders so far.
    #[cfg(test)]
    renders: std::sync::atomic::AtomicUsize,
}

impl Rendered {
    /// The latest render if it is still fresh, else a new one by `render` (on a blocking
    /// thread, given the time it renders for).
    pub(super) async fn get(
        &self,
        render: impl FnOnce(Instant) -> Bytes + Send + 'static,
    ) -> Bytes {
        let mut latest = self.latest.lock().await;
        let now = Instant::now();
        if let Some((until, bytes)) = &*latest
            && now < *until
        {
            return bytes.clone();
        }
        // The render's own time (a thread's wall clock, what it kept a core busy for).
        let started = std::time::Instant::now();
        let bytes = match tokio::task::spawn_blocking(move || render(now)).await {
            Ok(bytes) => bytes,
            // A render that panicked: the panic is the request's, as it would be in a handler.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        #[cfg(test)]
        self.renders
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let until = Instant::now() + reuse_for(started.elapsed());
        *latest = Some((until, bytes.clone()));
        bytes
    }
}

/// How long a render that took `took` is served again.
fn reuse_for(took: Duration) -> Duration {
    took.saturating_mul(REUSE_FACTOR).min(MAX_REUSE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    /// A render of the time it is asked for, keeping its thread busy for at least `busy`.
    fn render(busy: Duration) -> impl FnOnce(Instant) -> Bytes + Send + 'static {
        move |at| {
            std::thread::sleep(busy);
            Bytes::from(format!("{at:?}"))
        }
    }

    #[test]
    fn a_render_is_reused_nine_times_as_long_as_it_took_at_most_a_second() {
        assert_eq!(reuse_for(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            reuse_for(Duration::from_millis(2)),
            Duration::from_millis(18)
        );
        assert_eq!(reuse_for(Duration::from_millis(400)), MAX_REUSE);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_requests_share_one_render_reused_for_nine_times_as_long_as_it_took() {
        // 50 requests at once for a render that keeps its thread busy for 20 ms or more: one
        // render, everyone gets its bytes.
        let r = Arc::new(Rendered::default());
        let all: Vec<_> = (0..50)
            .map(|_| {
                let r = Arc::clone(&r);
                tokio::spawn(async move { r.get(render(Duration::from_millis(20))).await })
            })
            .collect();
        let mut pages = Vec::new();
        for one in all {
            pages.push(one.await.unwrap());
        }
        assert!(pages.iter().all(|p| *p == pages[0]));
        assert_eq!(r.renders.load(Ordering::Relaxed), 1);
        // reused for nine times its 20 ms or more: still the same 150 ms later
        tokio::time::advance(Duration::from_millis(150)).await;
        assert_eq!(r.get(render(Duration::ZERO)).await, pages[0]);
        // and never more than a second
        tokio::time::advance(MAX_REUSE).await;
        assert_ne!(r.get(render(Duration::ZERO)).await, pages[0]);
        assert_eq!(r.renders.load(Ordering::Relaxed), 2);
    }
}
