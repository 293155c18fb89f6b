//! The start of each run as the work sees it, next to the stamp the throttle gave the run, for
//! the tests of guarantee 1 on the work's own clock readings under load.
//!
//! A run's stamp is the last clock reading on its thread before the work starts (see
//! `stamp_clock`), so each start trails its stamp by the few instructions in between, plus
//! however long the thread was preempted right there, which no throttle can prevent. The
//! checks hold the crate to exactly that: stamps a threshold apart, every shortfall in the
//! spacing of starts accounted for by the earlier run's own lag, and such lags rare.

use crate::stamp_clock::{last_reading, StampClock};
use atomic_throttle::Clock;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `(stamp, start)` per run, in nanoseconds on one clock.
#[derive(Clone, Default)]
pub struct Starts(Arc<Mutex<Vec<(u64, u64)>>>);

impl Starts {
    /// A work that records its start (its own first reading) and its stamp.
    pub fn recording(&self, clock: StampClock) -> impl Fn() + Send + Sync + 'static {
        let starts = self.clone();
        move || {
            let start = clock.0.now_nanos();
            let stamp = last_reading();
            starts.0.lock().unwrap().push((stamp, start));
        }
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// Checks the runs recorded so far, in stamp order: each stamp at least `threshold` after
    /// the one before (exactly, guarantee 1); each start at or after its stamp; each start at
    /// least `threshold` after the one before, less the earlier run's own lag from stamp to
    /// start; and at most one pair in twenty closer than `threshold - slack`. Returns a line
    /// to print, or what failed.
    pub fn check(&self, threshold: Duration, slack: Duration) -> Result<String, String> {
        let mut runs = self.0.lock().unwrap().clone();
        runs.sort_unstable();
        let t = threshold.as_nanos() as u64;
        let (mut close, mut closest, mut worst_lag) = (0, u64::MAX, 0);
        for (i, &(stamp, start)) in runs.iter().enumerate() {
            if start < stamp {
                return Err(format!(
                    "run {i} started {} ns before its stamp",
                    stamp - start
                ));
            }
            worst_lag = worst_lag.max(start - stamp);
        }
        for (i, pair) in runs.windows(2).enumerate() {
            let ((stamp0, start0), (stamp1, start1)) = (pair[0], pair[1]);
            if stamp1 - stamp0 < t {
                return Err(format!(
                    "runs {i} and {}: stamps {} ns apart",
                    i + 1,
                    stamp1 - stamp0
                ));
            }
            let lag0 = start0 - stamp0;
            if start1 < start0 || start1 - start0 + lag0 < t {
                return Err(format!(
                    "runs {i} and {}: starts {} ns apart, more than the earlier run's {lag0} ns \
                     lag short of the threshold",
                    i + 1,
                    (start1 as i128) - (start0 as i128),
                ));
            }
            let gap = start1 - start0;
            closest = closest.min(gap);
            if gap + (slack.as_nanos() as u64) < t {
                close += 1;
            }
        }
        let pairs = runs.len().saturating_sub(1);
        let line = format!(
            "{} runs; the closest starts {closest} ns apart; {close} of {pairs} pairs closer \
             than {threshold:?} less {slack:?}; the longest lag from stamp to start {worst_lag} ns",
            runs.len()
        );
        if close * 20 > pairs {
            return Err(line);
        }
        Ok(line)
    }
}
