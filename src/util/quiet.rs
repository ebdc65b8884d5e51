//! Rate-limited logging: one line per kind of event a minute, the rest at debug level.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a repeated event (the same librdkafka error code or log facility, the same kind of
/// sink error) stays quiet after it was logged: a down broker is reported every few seconds
/// otherwise.
const REPEAT_QUIET: Duration = Duration::from_secs(60);

/// Lets one event per key through per [`REPEAT_QUIET`]; the rest go to debug level. Keys are
/// kinds (an error code, a log facility, a sink error's reason), never whole messages, and at
/// most [`QUIET_KEYS`] are remembered, so varied text from outside cannot grow it.
#[derive(Default)]
pub struct Quiet(Mutex<HashMap<String, Instant>>);

/// Keys a [`Quiet`] remembers at most.
pub const QUIET_KEYS: usize = 256;

impl Quiet {
    pub fn allow(&self, key: &str) -> bool {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = seen.get(key)
            && at.elapsed() < REPEAT_QUIET
        {
            return false;
        }
        if seen.len() >= QUIET_KEYS && !seen.contains_key(key) {
            seen.retain(|_, at| at.elapsed() < REPEAT_QUIET);
            if seen.len() >= QUIET_KEYS {
                // Still full of recent keys: forget the oldest.
                if let Some(oldest) = seen
                    .iter()
                    .min_by_key(|(_, at)| **at)
                    .map(|(k, _)| k.clone())
                {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(key.to_string(), Instant::now());
        true
    }

    /// Keys remembered (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_lets_a_kind_through_once_a_minute_and_stays_bounded() {
        let q = Quiet::default();
        assert!(q.allow("unreachable"));
        assert!(!q.allow("unreachable"), "quiet for a minute");
        assert!(q.allow("auth"), "another kind is logged");
        for i in 0..10 * QUIET_KEYS {
            q.allow(&format!("key {i}"));
        }
        assert_eq!(q.len(), QUIET_KEYS, "never more keys than the bound");
    }
}
