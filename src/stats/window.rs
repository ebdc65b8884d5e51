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

#[cfg(test)]
mod tests {
    use super::*;

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
