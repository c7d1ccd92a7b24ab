//! Failed-login throttling per username and per source address: after
//! `max_failures` failures within `window`, further attempts are refused
//! (without checking the secret) until the window has passed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

#[derive(Debug)]
struct Entry {
    failures: u32,
    first: Instant,
}

#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

/// Entries kept before stale ones are pruned.
const PRUNE_AT: usize = 10_000;

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        FailureLimiter {
            max_failures,
            window,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Failures within a window that lock a key out.
    pub fn max_failures(&self) -> u32 {
        self.max_failures
    }

    /// The window, in milliseconds.
    pub fn window_millis(&self) -> i64 {
        i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)
    }

    /// `Err(seconds to wait)` if `key` is locked out.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        let entries = self.entries.lock();
        match entries.get(key) {
            Some(e) if e.failures >= self.max_failures && e.first.elapsed() < self.window => {
                Err((self.window - e.first.elapsed()).as_secs().max(1))
            }
            _ => Ok(()),
        }
    }

    pub fn failure(&self, key: &str) {
        let mut entries = self.entries.lock();
        if entries.len() >= PRUNE_AT {
            let window = self.window;
            entries.retain(|_, e| e.first.elapsed() < window);
        }
        let e = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            first: Instant::now(),
        });
        if e.first.elapsed() >= self.window {
            *e = Entry {
                failures: 0,
                first: Instant::now(),
            };
        }
        e.failures += 1;
    }

    pub fn success(&self, key: &str) {
        self.entries.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn locks_out_after_too_many_failures() {
        let l = FailureLimiter::new(3, Duration::from_millis(200));
        for _ in 0..3 {
            assert!(l.check("u").is_ok());
            l.failure("u");
        }
        assert!(l.check("u").is_err());
        assert!(l.check("other").is_ok());
        std::thread::sleep(Duration::from_millis(220));
        assert!(l.check("u").is_ok());
        l.failure("u");
        l.success("u");
        assert!(l.check("u").is_ok());
    }
}
