//! A port of Go's `rate.Sometimes{Interval}` (golang.org/x/time/rate): a mutex around the time
//! of the last run, checked on every call. The baseline for leading-only throttles, which also
//! read the clock on every call.

use atomic_throttle::Clock;
use std::sync::Mutex;
use std::time::Duration;

pub struct GoSometimes<C> {
    last: Mutex<Option<u64>>,
    interval: u64,
    clock: C,
}

impl<C: Clock> GoSometimes<C> {
    pub fn new(interval: Duration, clock: C) -> Self {
        Self {
            last: Mutex::new(None),
            interval: interval.as_nanos() as u64,
            clock,
        }
    }

    /// Whether this call runs (`Do` would call the function).
    #[inline]
    pub fn allow(&self) -> bool {
        let mut last = self.last.lock().unwrap();
        let now = self.clock.now_nanos();
        match *last {
            Some(at) if now.saturating_sub(at) < self.interval => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}
