//! A sliding window as a ring of time slots. Writes go to the slot of "now"; reads merge the
//! slots still inside the window. With `n` slots the window covers between `n-1` and `n` slot
//! lengths, so the default 10 slots make a 5-minute window accurate to 30 s.

use std::time::Duration;

use tokio::time::Instant;

pub const DEFAULT_SLOTS: usize = 10;

#[derive(Debug)]
pub struct Sliding<T> {
    origin: Instant,
    slot_nanos: u128,
    /// (absolute slot index, state); a stale index means the slot is empty.
    slots: Vec<(u64, T)>,
}

impl<T: Default> Sliding<T> {
    pub fn new(window: Duration, slots: usize, origin: Instant) -> Self {
        let slots = slots.max(1);
        let slot_nanos = (window.as_nanos() / slots as u128).max(1);
        Sliding {
            origin,
            slot_nanos,
            // Index u64::MAX marks "never written".
            slots: (0..slots).map(|_| (u64::MAX, T::default())).collect(),
        }
    }

    fn index(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.origin).as_nanos() / self.slot_nanos) as u64
    }

    /// The state of the slot containing `now`, reset first if it held an older slot's data.
    pub fn current(&mut self, now: Instant) -> &mut T {
        let idx = self.index(now);
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(idx % n) as usize];
        if slot.0 != idx {
            *slot = (idx, T::default());
        }
        &mut slot.1
    }

    /// Every slot still inside the window at `now`.
    pub fn live(&self, now: Instant) -> impl Iterator<Item = &T> {
        let idx = self.index(now);
        let n = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |(i, _)| *i <= idx && idx - *i < n)
            .map(|(_, t)| t)
    }
}

/// The largest value recorded over the sliding window, and since start: exact, for a
/// measure where only the extreme matters (how far a clock is off).
#[derive(Debug)]
pub struct Largest {
    window: Sliding<Option<Duration>>,
    ever: Option<Duration>,
}

impl Largest {
    pub fn new(window: Duration, origin: Instant) -> Self {
        Largest {
            window: Sliding::new(window, DEFAULT_SLOTS, origin),
            ever: None,
        }
    }

    pub fn record(&mut self, now: Instant, value: Duration) {
        let slot = self.window.current(now);
        *slot = (*slot).max(Some(value));
        self.ever = self.ever.max(Some(value));
    }

    /// The largest value in the window at `now`; `None` when it holds none.
    pub fn in_window(&self, now: Instant) -> Option<Duration> {
        self.window.live(now).copied().max().flatten()
    }

    /// The largest value since start.
    pub fn ever(&self) -> Option<Duration> {
        self.ever
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_largest_of_the_window_and_of_all_time() {
        let start = Instant::now();
        let mut l = Largest::new(Duration::from_secs(10), start);
        assert_eq!((l.in_window(start), l.ever()), (None, None));
        l.record(start, Duration::from_millis(21));
        l.record(start, Duration::from_millis(3));
        tokio::time::advance(Duration::from_secs(5)).await;
        l.record(Instant::now(), Duration::from_millis(7));
        assert_eq!(l.in_window(Instant::now()), Some(Duration::from_millis(21)));
        tokio::time::advance(Duration::from_secs(5)).await;
        // the 21 ms slot left the window; all time keeps it
        assert_eq!(l.in_window(Instant::now()), Some(Duration::from_millis(7)));
        assert_eq!(l.ever(), Some(Duration::from_millis(21)));
    }

    #[tokio::test(start_paused = true)]
    async fn old_slots_leave_the_window() {
        let start = Instant::now();
        let mut w: Sliding<u32> = Sliding::new(Duration::from_secs(10), 10, start);
        *w.current(start) += 1;
        tokio::time::advance(Duration::from_secs(5)).await;
        *w.current(Instant::now()) += 10;
        assert_eq!(w.live(Instant::now()).sum::<u32>(), 11);
        tokio::time::advance(Duration::from_secs(5)).await;
        // the first slot [0s,1s) is now 10 slots old: out
        assert_eq!(w.live(Instant::now()).sum::<u32>(), 10);
        tokio::time::advance(Duration::from_secs(100)).await;
        assert_eq!(w.live(Instant::now()).sum::<u32>(), 0);
        // a reused ring position starts empty
        *w.current(Instant::now()) += 3;
        assert_eq!(w.live(Instant::now()).sum::<u32>(), 3);
    }
}
