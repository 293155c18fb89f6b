//! A clock that remembers each thread's last reading, for tests and the demo that check
//! spacing (guarantee 1) on the stamps themselves.
//!
//! A run's work starts right after its stamp, on the thread that stamped it, with no clock
//! reading in between. So, read inside the work, [`last_reading`] is the reading the throttle
//! stamped the run with: exact even when the thread is descheduled before the work starts,
//! which would make the work's own clock reading late.

use atomic_throttle::{Clock, DefaultClock};
use std::cell::Cell;
use std::time::Duration;

thread_local! {
    static LAST_READING: Cell<u64> = const { Cell::new(0) };
}

/// The default clock, remembering each thread's last reading.
#[derive(Debug, Clone, Copy)]
pub struct StampClock(pub DefaultClock);

impl Clock for StampClock {
    fn now_nanos(&self) -> u64 {
        let now = self.0.now_nanos();
        LAST_READING.with(|last| last.set(now));
        now
    }
    fn sleep(&self, duration: Duration) {
        self.0.sleep(duration)
    }
}

/// This thread's last reading of any `StampClock`.
pub fn last_reading() -> u64 {
    LAST_READING.with(Cell::get)
}
