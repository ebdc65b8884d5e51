//! Precise slot timing.
//!
//! tokio's timer has millisecond granularity: a `sleep_until(slot)` wakes 1-2 ms after the slot
//! (measured: p50 1.5 ms, p99 2.0 ms), and waking a task from another thread adds tens of
//! microseconds more. Latency is counted from the slot, so that lateness would be reported as
//! pipeline latency. One thread keeps every probe's next action (sending a prepared round) in a
//! heap, sleeps on a condition variable until the earliest with 1 ns timer slack, and runs the
//! action itself: a round leaves within tens of microseconds of its slot (see BENCHMARKS.md).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

type Action = Box<dyn FnOnce() + Send>;

struct Due {
    at: Instant,
    seq: u64,
    action: Action,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct State {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
}

pub struct Clock {
    state: Mutex<State>,
    changed: Condvar,
}

impl Clock {
    /// The process's clock thread, started on first use.
    pub fn global() -> &'static Clock {
        static CLOCK: OnceLock<&'static Clock> = OnceLock::new();
        CLOCK.get_or_init(|| {
            let clock: &'static Clock = Box::leak(Box::new(Clock {
                state: Mutex::default(),
                changed: Condvar::new(),
            }));
            std::thread::Builder::new()
                .name("slo-probe-clock".into())
                .spawn(move || {
                    precise_timer_slack();
                    clock.run()
                })
                .expect("clock thread starts");
            clock
        })
    }

    /// Runs `action` on the clock thread at `at` (at once if past). Actions must be short: they
    /// delay every later one.
    pub fn run_at(&self, at: tokio::time::Instant, action: impl FnOnce() + Send + 'static) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.seq += 1;
        let due = Due {
            at: at.into_std(),
            seq: s.seq,
            action: Box::new(action),
        };
        let earliest = s.heap.peek().is_none_or(|Reverse(d)| due < *d);
        s.heap.push(Reverse(due));
        drop(s);
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut due = Vec::new();
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let now = Instant::now();
            while s.heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
                due.push(s.heap.pop().expect("peeked").0.action);
            }
            if !due.is_empty() {
                drop(s);
                for action in due.drain(..) {
                    action();
                }
                s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                continue;
            }
            s = match s.heap.peek().map(|Reverse(d)| d.at) {
                Some(at) => {
                    self.changed
                        .wait_timeout(s, at.saturating_duration_since(now))
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(s).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

/// Linux lets a thread's timed waits end up to 50 µs late by default (timer slack, to batch
/// wake-ups); the clock thread asks for 1 ns.
fn precise_timer_slack() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer argument and only affects the calling thread.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn runs_actions_in_order_and_not_before_their_instant() {
        let clock = Clock::global();
        let start = tokio::time::Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (name, ms) in [("past", 0), ("later", 150), ("sooner", 50)] {
            let tx = tx.clone();
            clock.run_at(start + Duration::from_millis(ms), move || {
                let _ = tx.send((name, start.elapsed()));
            });
        }
        let mut order = Vec::new();
        for _ in 0..3 {
            let (name, at) = rx.recv().await.unwrap();
            order.push(name);
            let due = match name {
                "later" => 150,
                "sooner" => 50,
                _ => 0,
            };
            assert!(at >= Duration::from_millis(due), "{name} ran at {at:?}");
        }
        assert_eq!(order, ["past", "sooner", "later"]);
    }
}
