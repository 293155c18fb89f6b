//! A manual clock whose every reading goes through a hook of the test's: for tests that make
//! something happen at the moment the crate reads the clock (another caller's takeover, a
//! step back, a call back into the crate, a panic).
#![allow(dead_code)]

use atomic_throttle::{Clock, ManualClock, Wait, Waiter};
use std::sync::Arc;
use std::time::Duration;

/// The reading hook: given the manual clock underneath, returns the reading.
type OnReading = Arc<dyn Fn(&ManualClock) -> u64 + Send + Sync>;

/// A [`ManualClock`] read through `on_reading`; its waits are the manual clock's own.
#[derive(Clone)]
pub struct Hooked {
    pub clock: ManualClock,
    on_reading: OnReading,
}

impl Hooked {
    pub fn new(
        clock: ManualClock,
        on_reading: impl Fn(&ManualClock) -> u64 + Send + Sync + 'static,
    ) -> Self {
        Self {
            clock,
            on_reading: Arc::new(on_reading),
        }
    }
}

impl Clock for Hooked {
    fn now_nanos(&self) -> u64 {
        (self.on_reading)(&self.clock)
    }

    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        self.clock.wait_for(waiter, deadline)
    }

    fn done_waiting(&self, waiter: Waiter<'_>) {
        self.clock.done_waiting(waiter);
    }

    fn sleep(&self, duration: Duration) {
        self.clock.sleep(duration);
    }
}
