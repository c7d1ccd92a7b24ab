//! Polling assertions (`assert_eventually!`, `assert_eventually_async!`) and
//! the tracing set-up shared by tests.
//!
//! Tests against child processes cannot know when an effect becomes visible
//! (a GC pass, a log line, an agent noticing a new tag), so they poll with a
//! deadline instead of sleeping a fixed time: fast when things are fast, and a
//! clear message instead of a hang when they never happen.

use std::sync::Once;
use std::time::Duration;

/// First delay between two polls; doubled up to [`MAX_POLL_DELAY`].
#[doc(hidden)]
pub const FIRST_POLL_DELAY: Duration = Duration::from_millis(10);
/// Longest delay between two polls, so that a condition that becomes true is
/// seen within a fraction of a second.
#[doc(hidden)]
pub const MAX_POLL_DELAY: Duration = Duration::from_millis(200);

/// Polls `condition` (a closure returning `bool`) until it holds, panicking
/// with the formatted message if it still does not after `timeout`.
///
/// It sleeps the calling thread between polls: inside a `#[tokio::test]`
/// whose condition depends on tasks of the same runtime, use
/// [`assert_eventually_async!`] instead.
///
/// ```ignore
/// assert_eventually!(Duration::from_secs(10), || path.exists(), "{path:?} never appeared");
/// ```
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $condition:expr, $($message:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        // `mut` for FnMut closures; Fn closures would warn without the allow.
        #[allow(unused_mut)]
        let mut condition = $condition;
        let start = ::std::time::Instant::now();
        let mut delay = $crate::__private::FIRST_POLL_DELAY;
        loop {
            if condition() {
                break;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "condition not met within {:?}: {}",
                    timeout,
                    format!($($message)+)
                );
            }
            ::std::thread::sleep(delay);
            delay = (delay * 2).min($crate::__private::MAX_POLL_DELAY);
        }
    }};
}

/// Like [`assert_eventually!`], for a closure returning a future of `bool`;
/// sleeps with tokio so other tasks of the runtime keep running.
///
/// ```ignore
/// assert_eventually_async!(Duration::from_secs(10), || async {
///     client.head_blob("a/b", &digest).await.map(|r| r.status() == 404).unwrap_or(false)
/// }, "blob {digest} was not collected");
/// ```
#[macro_export]
macro_rules! assert_eventually_async {
    ($timeout:expr, $condition:expr, $($message:tt)+) => {{
        let timeout: ::std::time::Duration = $timeout;
        // `mut` for FnMut closures; Fn closures would warn without the allow.
        #[allow(unused_mut)]
        let mut condition = $condition;
        let start = ::std::time::Instant::now();
        let mut delay = $crate::__private::FIRST_POLL_DELAY;
        loop {
            if condition().await {
                break;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "condition not met within {:?}: {}",
                    timeout,
                    format!($($message)+)
                );
            }
            $crate::__private::tokio::time::sleep(delay).await;
            delay = (delay * 2).min($crate::__private::MAX_POLL_DELAY);
        }
    }};
}

/// Installs a `tracing` subscriber that writes through libtest's capture (so
/// output shows only for failing tests), filtered by `RUST_LOG` (default
/// `info`). Safe to call from every test: only the first call installs it,
/// and a subscriber installed by someone else is left in place.
pub fn init_tracing() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // An error only means another subscriber is already global.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn eventually_passes_once_condition_holds() {
        let calls = AtomicU32::new(0);
        crate::assert_eventually!(
            Duration::from_secs(5),
            || calls.fetch_add(1, Ordering::SeqCst) >= 3,
            "never reached 3"
        );
        assert!(calls.load(Ordering::SeqCst) >= 4);
    }

    #[test]
    #[should_panic(expected = "condition not met within 50ms: still false after 50 ms")]
    fn eventually_panics_with_message() {
        crate::assert_eventually!(
            Duration::from_millis(50),
            || false,
            "still false after {} ms",
            50
        );
    }

    #[tokio::test]
    async fn eventually_async_polls_futures() {
        let calls = AtomicU32::new(0);
        crate::assert_eventually_async!(
            Duration::from_secs(5),
            || async { calls.fetch_add(1, Ordering::SeqCst) >= 2 },
            "never reached 2"
        );
        crate::init_tracing();
        crate::init_tracing();
    }
}
