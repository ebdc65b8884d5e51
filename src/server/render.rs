//! Renders of the expensive endpoints (`/status`, `/`, and `/metrics`: see [`super::warm`]), bounded.
//!
//! With many probes a render takes long (the live page draws SVG charts; see BENCHMARKS.md
//! for its cost at 1 000 probes), and the endpoints are open to anyone who can reach the port.
//! Rendered on the async workers, a few clients asking for them in a loop would hold every
//! worker, and `/metrics` scrapes and the probes' own verifiers (whose arrival times are
//! latency) would wait behind them. So they render on a thread of their own ([`Renderer`]), one
//! render at a time; requests that come while it runs wait for it and get the same bytes, and a
//! render is reused for [`REUSE_FACTOR`] times as long as it took (at most [`MAX_REUSE`]).
//! Whatever the clients do, rendering an endpoint then takes at most about
//! `1 / (1 + REUSE_FACTOR)` of one core, and a page is never older than [`MAX_REUSE`] plus a
//! render: on an agent with a few probes a render takes a millisecond or two and is reused for
//! a few more, so the figures are as fresh as the request.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A render is reused for this many times as long as it took...
pub const REUSE_FACTOR: u32 = 9;
/// ...but never longer than this.
pub const MAX_REUSE: Duration = Duration::from_secs(1);

/// A job for the render thread.
type Job = Box<dyn FnOnce() + Send>;

/// The thread renders run on: one for the server. Not tokio's blocking pool, whose threads come
/// and go: glibc's allocator gives each thread an arena of its own, and 1 000-probe renders
/// (tens of megabytes each) spread over those threads doubled the agent's RSS (BENCHMARKS.md).
pub(super) struct Renderer {
    /// `None`: renders run on the caller (tests on a paused clock, where time must not move
    /// while a render keeps a thread busy).
    jobs: Option<std::sync::mpsc::Sender<Job>>,
}

impl Renderer {
    /// Starts the thread; it ends when the renderer is dropped.
    pub(super) fn start() -> Renderer {
        let (jobs, todo) = std::sync::mpsc::channel::<Job>();
        // Renders read tokio's clock (paused in tests): they run in the runtime's context.
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("slo-probe-render".into())
            .spawn(move || {
                let _context = runtime.as_ref().map(|r| r.enter());
                for job in todo {
                    job();
                }
            })
            .expect("the render thread starts");
        Renderer { jobs: Some(jobs) }
    }

    /// Renders on the caller's thread.
    #[cfg(test)]
    pub(super) fn inline() -> Renderer {
        Renderer { jobs: None }
    }

    /// `render` run on the render thread; its panic is the caller's.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        render: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let Some(jobs) = &self.jobs else {
            return render();
        };
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(render)));
        });
        jobs.send(job).expect("the render thread runs");
        match result.await.expect("the render thread answers") {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

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
    /// The latest render if it is still fresh, else a new one by `render` (on `on`, given the
    /// time it renders for).
    pub(super) async fn get(
        &self,
        on: &Renderer,
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
        let bytes = on.run(move || render(now)).await;
        #[cfg(test)]
        self.renders
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let until = Instant::now() + reuse_for(started.elapsed());
        *latest = Some((until, bytes.clone()));
        bytes
    }
}

/// How long a render that took `took` is served again.
pub(super) fn reuse_for(took: Duration) -> Duration {
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
        let on = Arc::new(Renderer::start());
        let r = Arc::new(Rendered::default());
        let all: Vec<_> = (0..50)
            .map(|_| {
                let (r, on) = (Arc::clone(&r), Arc::clone(&on));
                tokio::spawn(async move { r.get(&on, render(Duration::from_millis(20))).await })
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
        assert_eq!(r.get(&on, render(Duration::ZERO)).await, pages[0]);
        // and never more than a second
        tokio::time::advance(MAX_REUSE).await;
        assert_ne!(r.get(&on, render(Duration::ZERO)).await, pages[0]);
        assert_eq!(r.renders.load(Ordering::Relaxed), 2);
    }
}
