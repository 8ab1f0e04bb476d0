//! Rate limiting for log lines a guest can trigger.
//!
//! A misbehaving guest can hit an error path thousands of times a second
//! (a device it keeps breaking, a register it keeps poking); printing every
//! occurrence floods the host's log and costs the event loop more than the
//! error itself. [`eprintln_limited!`](crate::eprintln_limited) keeps one
//! [`LogLimiter`] per call site: a burst of [`BURST`] lines, then
//! [`PER_SECOND`] lines a second, and the first line printed after some were
//! dropped says how many ("(N similar messages suppressed)").
//!
//! Host-side errors that happen once (a descriptor that cannot be watched)
//! keep plain `eprintln!`; this is for what the guest controls.

use std::sync::Mutex;
use std::time::Instant;

/// Lines a call site may print at once after being quiet.
pub const BURST: u32 = 10;
/// Lines a call site may print per second once its burst is spent.
pub const PER_SECOND: u32 = 1;

/// A token bucket of [`BURST`] tokens refilled at [`PER_SECOND`], counting
/// what it refuses.
#[derive(Debug)]
pub struct LogLimiter {
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Tokens in thousandths, so a fractional refill is not lost.
    milli_tokens: u64,
    /// When `milli_tokens` was last brought up to date; `None` until the
    /// first line (`Instant` has no const constructor for a static).
    updated: Option<Instant>,
    suppressed: u64,
}

impl LogLimiter {
    /// A full bucket. `const`, so that a call site can keep one in a
    /// `static`.
    pub const fn new() -> Self {
        LogLimiter {
            state: Mutex::new(Bucket {
                milli_tokens: BURST as u64 * 1000,
                updated: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether a line may be printed at `now`: `Some(n)` with the number of
    /// lines suppressed since the last one printed, or `None` (and the line
    /// is counted as suppressed).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere while logging; the
        // counters are still meaningful.
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let cap = BURST as u64 * 1000;
        if let Some(then) = b.updated {
            // `saturating_duration_since`: a clock read on another thread
            // may be slightly older than the last update.
            let elapsed_ms = now.saturating_duration_since(then).as_millis();
            let refill = elapsed_ms.saturating_mul(PER_SECOND as u128);
            b.milli_tokens = (b.milli_tokens as u128 + refill).min(cap as u128) as u64;
        }
        b.updated = Some(now);
        if b.milli_tokens >= 1000 {
            b.milli_tokens -= 1000;
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed += 1;
            None
        }
    }
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

/// `eprintln!` for lines a guest can trigger, rate-limited per call site by
/// a [`LogLimiter`](crate::log_limit::LogLimiter); the line printed after a
/// suppression ends with "(N similar messages suppressed)".
#[macro_export]
macro_rules! eprintln_limited {
    ($($arg:tt)+) => {{
        static LIMITER: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new();
        match LIMITER.admit(::std::time::Instant::now()) {
            Some(0) => ::std::eprintln!($($arg)+),
            Some(n) => ::std::eprintln!(
                "{} ({} similar messages suppressed)",
                ::std::format_args!($($arg)+),
                n
            ),
            None => {}
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Which of `times` (ms after a start) a fresh limiter admits, and the
    /// suppressed counts it reports with them.
    fn run(times_ms: &[u64]) -> Vec<Option<u64>> {
        let limiter = LogLimiter::new();
        let start = Instant::now();
        times_ms
            .iter()
            .map(|&t| limiter.admit(start + Duration::from_millis(t)))
            .collect()
    }

    #[test]
    fn a_burst_then_one_per_second_with_the_suppressed_count() {
        // 100 lines in the same millisecond: the burst passes, the rest is
        // counted.
        let got = run(&[0; 100]);
        assert!(got[..BURST as usize].iter().all(|g| *g == Some(0)));
        assert!(got[BURST as usize..].iter().all(|g| g.is_none()));
        // Then one a second, each reporting what was dropped before it.
        let mut times = vec![0; 100];
        times.extend([500, 1000, 1200, 1999, 2000]);
        let got = run(&times);
        assert_eq!(
            &got[100..],
            &[None, Some(91), None, None, Some(2)],
            "one token per second"
        );
    }

    #[test]
    fn a_quiet_site_gets_its_whole_burst_back_but_no_more() {
        let mut times = vec![0; BURST as usize];
        // An hour of quiet refills to BURST, not 3600.
        times.extend(std::iter::repeat_n(3_600_000, BURST as usize + 1));
        let got = run(&times);
        assert!(got[..2 * BURST as usize].iter().all(|g| *g == Some(0)));
        assert_eq!(got[2 * BURST as usize], None);
    }

    #[test]
    fn a_clock_that_goes_back_does_not_panic_or_refill() {
        let limiter = LogLimiter::new();
        let start = Instant::now() + Duration::from_secs(10);
        for _ in 0..BURST {
            assert!(limiter.admit(start).is_some());
        }
        assert_eq!(limiter.admit(start - Duration::from_secs(5)), None);
    }

    proptest::proptest! {
        /// Against a model: over any sequence of times, the lines admitted
        /// up to time t never exceed BURST + PER_SECOND * t, every line is
        /// admitted or counted once, and the counts reported add up.
        #[test]
        fn never_more_than_the_budget(mut gaps in proptest::collection::vec(0u64..400, 1..300)) {
            let limiter = LogLimiter::new();
            let start = Instant::now();
            let mut t = 0u64;
            let (mut admitted, mut reported) = (0u64, 0u64);
            let total = gaps.len() as u64;
            for gap in gaps.drain(..) {
                t += gap;
                if let Some(n) = limiter.admit(start + Duration::from_millis(t)) {
                    admitted += 1;
                    reported += n;
                }
                proptest::prop_assert!(admitted <= BURST as u64 + PER_SECOND as u64 * t / 1000);
            }
            // What was suppressed after the last admitted line is not
            // reported yet.
            proptest::prop_assert!(admitted + reported <= total);
            let pending = total - admitted - reported;
            let b = limiter.state.lock().unwrap();
            proptest::prop_assert_eq!(b.suppressed, pending);
        }
    }
}
