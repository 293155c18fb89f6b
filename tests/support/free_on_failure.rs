//! Frees threads that wait on a manual clock that only the test moves, when the test fails.
#![allow(dead_code)]

use atomic_throttle::ManualClock;
use std::time::Duration;

/// Moves the clock a year on if the test fails while an owner waits on it, so that the owner
/// returns and the failure is reported, instead of the scope that joins the owner hanging.
pub struct FreeOnFailure<'a>(pub &'a ManualClock);

impl Drop for FreeOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.advance(Duration::from_secs(365 * 24 * 3600));
        }
    }
}
