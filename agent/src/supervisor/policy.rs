//! The supervisor's decisions, kept free of containerd and of the clock so
//! they are unit-tested: restart backoff of services and the cron ticks of
//! recurring containers.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Local};
use croner::Cron;

use super::SupervisorError;
use super::definition::BackoffSettings;

/// Capped exponential backoff between restarts of a service.
#[derive(Clone, Debug)]
pub struct Backoff {
    settings: BackoffSettings,
    /// Exits since the last stable run.
    consecutive: u32,
}

impl Backoff {
    pub fn new(settings: BackoffSettings) -> Backoff {
        Backoff {
            settings,
            consecutive: 0,
        }
    }

    /// The delay before the next start, after a run that lasted `ran_for`
    /// ended (or a start that failed: `ran_for` zero). A run that lasted
    /// `reset_after` was healthy: the crash loop, if any, is over, so the
    /// count starts again.
    pub fn on_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Duration::from_secs(self.settings.reset_after_secs) {
            self.consecutive = 0;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.current()
    }

    /// The delay the last exit earned (zero before any).
    pub fn current(&self) -> Duration {
        if self.consecutive == 0 {
            return Duration::ZERO;
        }
        // 2^(n-1) without overflow: past 2^32 the cap applies anyway.
        let factor = 1u64 << (self.consecutive - 1).min(32);
        Duration::from_millis(
            self.settings
                .initial_ms
                .saturating_mul(factor)
                .min(self.settings.max_ms),
        )
    }
}

/// A 5-field cron pattern, or 6 with seconds first (croner's optional
/// seconds: what lets tests tick every few seconds).
pub fn parse_schedule(s: &str) -> Result<Cron, SupervisorError> {
    let fields = s.split_whitespace().count();
    if !(5..=6).contains(&fields) {
        return Err(SupervisorError::Invalid(format!(
            "schedule {s:?}: expected 5 fields (or 6 with seconds first)"
        )));
    }
    Cron::from_str(s).map_err(|e| SupervisorError::Invalid(format!("schedule {s:?}: {e}")))
}

/// What a recurring container does at one look at the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tick {
    /// No tick due yet.
    Wait,
    /// A tick is due and the previous run has ended: start.
    Start,
    /// A tick is due but the previous run still runs: this tick is skipped.
    Skip,
}

/// The cron ticks of one recurring container.
#[derive(Clone, Debug)]
pub struct Recurring {
    cron: Cron,
    next: Option<DateTime<Local>>,
}

impl Recurring {
    /// The first tick is the first one after `now`: a tick missed while
    /// the daemon was down is not run late (cron's behaviour too).
    pub fn new(cron: Cron, now: DateTime<Local>) -> Recurring {
        let next = cron.find_next_occurrence(&now, false).ok();
        Recurring { cron, next }
    }

    pub fn next(&self) -> Option<DateTime<Local>> {
        self.next
    }

    /// At `now`, with the previous run `running` or not. Ticks that
    /// passed together (the daemon was busy) count as one.
    pub fn poll(&mut self, now: DateTime<Local>, running: bool) -> Tick {
        match self.next {
            Some(t) if t <= now => {
                self.next = self.cron.find_next_occurrence(&now, false).ok();
                if running { Tick::Skip } else { Tick::Start }
            }
            _ => Tick::Wait,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_stable_run() {
        let mut b = Backoff::new(BackoffSettings {
            initial_ms: 100,
            max_ms: 1_000,
            reset_after_secs: 10,
        });
        assert_eq!(b.current(), Duration::ZERO);
        let short = Duration::from_secs(1);
        let delays: Vec<u128> = (0..6).map(|_| b.on_exit(short).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1_000, 1_000]);
        // Many more exits never overflow.
        for _ in 0..100 {
            assert_eq!(b.on_exit(short), Duration::from_millis(1_000));
        }
        // A run as long as reset_after: the next exit starts over.
        assert_eq!(b.on_exit(Duration::from_secs(10)).as_millis(), 100);
        assert_eq!(b.on_exit(short).as_millis(), 200);
    }

    fn at(h: u32, m: u32, s: u32) -> DateTime<Local> {
        Local.with_ymd_and_hms(2026, 3, 10, h, m, s).unwrap()
    }

    #[test]
    fn ticks_start_or_skip_while_the_previous_run_runs() {
        let cron = parse_schedule("*/5 * * * *").unwrap();
        let mut r = Recurring::new(cron, at(10, 1, 0));
        assert_eq!(r.next(), Some(at(10, 5, 0)));
        assert_eq!(r.poll(at(10, 4, 59), false), Tick::Wait);
        assert_eq!(r.poll(at(10, 5, 0), false), Tick::Start);
        assert_eq!(r.next(), Some(at(10, 10, 0)));
        // Still running at the next tick: skipped, not queued.
        assert_eq!(r.poll(at(10, 10, 1), true), Tick::Skip);
        assert_eq!(r.poll(at(10, 11, 0), false), Tick::Wait);
        // Three ticks missed at once: one start, then the next future one.
        assert_eq!(r.poll(at(10, 31, 0), false), Tick::Start);
        assert_eq!(r.next(), Some(at(10, 35, 0)));
    }

    #[test]
    fn schedules_take_five_or_six_fields() {
        assert!(parse_schedule("* * * * *").is_ok());
        let mut r = Recurring::new(parse_schedule("*/2 * * * * *").unwrap(), at(10, 0, 0));
        assert_eq!(r.next(), Some(at(10, 0, 2)));
        assert_eq!(r.poll(at(10, 0, 2), false), Tick::Start);
        assert!(parse_schedule("* * * *").is_err());
        assert!(parse_schedule("* * * * * * *").is_err());
        assert!(parse_schedule("61 * * * *").is_err());
    }
}
