//! `/metrics` of a large agent, rendered ahead of its scrapes.
//!
//! At 1 000 probes a `/metrics` render is about 5 MB of text and takes about 100 ms of a core
//! (BENCHMARKS.md); a scrape that waited for it would take that long and more, under load far
//! more. So a render bigger than [`WARM_ABOVE`] is served again like the other pages' (for nine
//! times as long as it took, at most a second: [`super::render::reuse_for`]), and while someone
//! scrapes (a scrape within [`WARM_FOR`]) the next render is made in the background, to be ready
//! when the last one expires. A scrape then gets a render at most about a second old (plus the
//! render under way, at most [`MAX_STALE`]) and never waits for one. That costs at most about a
//! tenth of a core while scrapes come, and nothing once they stop.
//!
//! Smaller renders (agents up to about 150 probes, a render of a few milliseconds) are made for
//! each scrape, on the render thread, and are as fresh as the request.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::body::Bytes;
use tokio::time::Instant;

use super::render::{Renderer, reuse_for};

/// Renders bigger than this are served again and made ahead.
pub const WARM_ABOVE: usize = 1 << 20;
/// Renders are made ahead while a scrape came within this long (three of Prometheus' default
/// one-minute scrape intervals).
pub const WARM_FOR: Duration = Duration::from_secs(180);
/// A scrape that finds the latest render expired while the next one is being made gets the
/// latest if it is no older than this, rather than waiting.
pub const MAX_STALE: Duration = Duration::from_secs(5);

/// The latest render.
struct Latest {
    /// The time it rendered for.
    at: Instant,
    /// Served again until then.
    until: Instant,
    /// What it took (the render thread's wall clock).
    took: Duration,
    bytes: Bytes,
}

impl Latest {
    fn large(&self, warm_above: usize) -> bool {
        self.bytes.len() > warm_above
    }
}

#[derive(Default)]
struct Inner {
    latest: Option<Latest>,
    /// The latest scrape.
    asked: Option<Instant>,
    /// A render is under way.
    rendering: bool,
    /// A loop making renders ahead runs.
    warming: bool,
}

/// One endpoint's renders, made ahead while they are large and asked for.
pub(super) struct Kept {
    inner: std::sync::Mutex<Inner>,
    /// One render at a time.
    one: tokio::sync::Mutex<()>,
    warm_above: usize,
    warm_for: Duration,
    /// Renders a request waited for, and renders made ahead.
    #[cfg(test)]
    counts: std::sync::Mutex<(usize, usize)>,
}

impl Default for Kept {
    fn default() -> Self {
        Kept::new(WARM_ABOVE, WARM_FOR)
    }
}

/// What keeps a [`Kept`] warm: the loop holds it weakly and ends when it is gone.
pub(super) trait Warm: Send + Sync + 'static {
    fn kept(&self) -> &Kept;
    fn renderer(&self) -> &Renderer;
    /// A render of the endpoint for the time given.
    fn render(&self) -> impl FnOnce(Instant) -> Bytes + Send + 'static;
}

/// Clears `rendering` however the render ends (a scrape whose client went away drops it).
struct Rendering<'a>(&'a Kept);

impl Drop for Rendering<'_> {
    fn drop(&mut self) {
        self.0.lock().rendering = false;
    }
}

impl Kept {
    pub(super) fn new(warm_above: usize, warm_for: Duration) -> Self {
        Kept {
            inner: Default::default(),
            one: Default::default(),
            warm_above,
            warm_for,
            #[cfg(test)]
            counts: Default::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A scrape: the latest render if it is still served (or large and being replaced, and
    /// younger than [`MAX_STALE`]), else a new one. Once renders are large, starts the loop
    /// that makes them ahead of the scrapes.
    pub(super) async fn get<W: Warm>(holder: &Arc<W>) -> Bytes {
        let kept = holder.kept();
        let now = Instant::now();
        {
            let mut s = kept.lock();
            s.asked = Some(now);
            if let Some(l) = &s.latest {
                let replaced =
                    s.rendering && l.large(kept.warm_above) && now.duration_since(l.at) < MAX_STALE;
                if now < l.until || replaced {
                    return l.bytes.clone();
                }
            }
        }
        let bytes = kept.render(holder.renderer(), holder.render(), false).await;
        let start = {
            let mut s = kept.lock();
            let start = !s.warming && bytes.len() > kept.warm_above;
            s.warming |= start;
            start
        };
        if start {
            tokio::spawn(keep_warm(Arc::downgrade(holder)));
        }
        bytes
    }

    /// A render by `render`, one at a time; a request that waited while another made one that
    /// is still served gets that one.
    async fn render(
        &self,
        on: &Renderer,
        render: impl FnOnce(Instant) -> Bytes + Send + 'static,
        ahead: bool,
    ) -> Bytes {
        let _one = self.one.lock().await;
        let now = Instant::now();
        {
            let mut s = self.lock();
            if let Some(l) = &s.latest
                && now < l.until
                && !ahead
            {
                return l.bytes.clone();
            }
            s.rendering = true;
        }
        let _rendering = Rendering(self);
        let started = std::time::Instant::now();
        let bytes = on.run(move || render(now)).await;
        let took = started.elapsed();
        let until = if bytes.len() > self.warm_above {
            Instant::now() + reuse_for(took)
        } else {
            now
        };
        self.lock().latest = Some(Latest {
            at: now,
            until,
            took,
            bytes: bytes.clone(),
        });
        #[cfg(test)]
        {
            let mut counts = self.counts.lock().unwrap();
            *if ahead { &mut counts.1 } else { &mut counts.0 } += 1;
        }
        bytes
    }

    /// When to make the next render ahead: when it will be done as the latest expires. `None`
    /// (and the loop ends) once nobody scraped within [`WARM_FOR`] or renders are small.
    fn next_ahead(&self) -> Option<Instant> {
        let mut s = self.lock();
        let next = s.latest.as_ref().and_then(|l| {
            let asked = s.asked.is_some_and(|a| a.elapsed() < self.warm_for);
            (asked && l.large(self.warm_above))
                .then(|| l.until.checked_sub(l.took).unwrap_or(l.until))
        });
        if next.is_none() {
            s.warming = false;
        }
        next
    }

    /// Renders a request waited for, and renders made ahead, so far.
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        *self.counts.lock().unwrap()
    }
}

/// Makes renders ahead of the scrapes while [`Kept::next_ahead`] says so and `holder` lives.
async fn keep_warm<W: Warm>(holder: Weak<W>) {
    loop {
        let Some(at) = holder.upgrade().and_then(|h| h.kept().next_ahead()) else {
            return;
        };
        tokio::time::sleep_until(at).await;
        let Some(h) = holder.upgrade() else {
            return;
        };
        h.kept().render(h.renderer(), h.render(), true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An endpoint whose render takes `busy` of its thread and is `size` bytes, starting with
    /// the time it rendered for.
    struct Endpoint {
        kept: Kept,
        renderer: Renderer,
        busy: Duration,
        size: usize,
        /// The clock's start, to read the render's time back.
        origin: Instant,
    }

    impl Warm for Endpoint {
        fn kept(&self) -> &Kept {
            &self.kept
        }
        fn renderer(&self) -> &Renderer {
            &self.renderer
        }
        fn render(&self) -> impl FnOnce(Instant) -> Bytes + Send + 'static {
            let (busy, size, origin) = (self.busy, self.size, self.origin);
            move |at| {
                std::thread::sleep(busy);
                let mut page = format!("{:020}\n", at.duration_since(origin).as_micros());
                page.extend(std::iter::repeat_n('#', size.saturating_sub(page.len())));
                Bytes::from(page)
            }
        }
    }

    fn endpoint(size: usize) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            kept: Kept::new(1000, WARM_FOR_TEST),
            // on the test's thread: the paused clock stands still while a render runs
            renderer: Renderer::inline(),
            busy: Duration::from_millis(10),
            size,
            origin: Instant::now(),
        })
    }

    /// How old a page served now is.
    fn age(e: &Endpoint, page: &Bytes) -> Duration {
        let us: u64 = std::str::from_utf8(&page[..20]).unwrap().parse().unwrap();
        Instant::now().duration_since(e.origin + Duration::from_micros(us))
    }

    #[tokio::test(start_paused = true)]
    async fn small_renders_are_made_for_every_scrape_and_never_ahead() {
        let e = endpoint(500);
        for _ in 0..5 {
            let page = Kept::get(&e).await;
            assert_eq!(age(&e, &page), Duration::ZERO, "as fresh as the request");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(e.kept.counts(), (5, 0));
        assert!(!e.kept.lock().warming);
    }

    #[tokio::test(start_paused = true)]
    async fn large_renders_are_made_ahead_while_scraped_then_no_more() {
        let e = endpoint(5000);
        let first = Kept::get(&e).await;
        assert_eq!(age(&e, &first), Duration::ZERO);
        // scraped every 700 ms for 14 s: no scrape waits for a render after the first, and
        // none gets a page older than a second plus a render
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let page = Kept::get(&e).await;
            let age = age(&e, &page);
            assert!(age <= MAX_REUSE_PLUS_RENDER, "served a page {age:?} old");
        }
        let (waited, ahead) = e.kept.counts();
        assert_eq!(waited, 1, "only the first scrape waited for a render");
        assert!(ahead >= 10, "renders made ahead: {ahead}");
        // nobody scrapes: renders ahead stop after `warm_for`, and the loop ends
        tokio::time::sleep(WARM_FOR_TEST + Duration::from_secs(1)).await;
        let stopped = e.kept.counts().1;
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(
            e.kept.counts().1,
            stopped,
            "no render ahead without scrapes"
        );
        assert!(!e.kept.lock().warming);
        // the next scrape renders (the latest is long expired) and warms it up again
        let page = Kept::get(&e).await;
        assert_eq!(age(&e, &page), Duration::ZERO);
        assert!(e.kept.lock().warming);
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_ends_with_its_endpoint() {
        let e = endpoint(5000);
        Kept::get(&e).await;
        let weak = Arc::downgrade(&e);
        drop(e);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(weak.upgrade().is_none(), "the loop holds it only weakly");
    }

    /// Renders are made ahead for this long after a scrape (the real one is minutes: every
    /// render ahead here takes 10 ms of a thread).
    const WARM_FOR_TEST: Duration = Duration::from_secs(5);

    /// A page served is at most this old: [`super::super::render::MAX_REUSE`] and a render.
    const MAX_REUSE_PLUS_RENDER: Duration = Duration::from_millis(1100);
}
