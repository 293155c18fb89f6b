//! Waiting for something another thread does, with a deadline generous enough for a loaded
//! machine.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// How long a test waits for another thread before it fails: far longer than anything takes
/// on an idle machine, so that a busy one does not fail the test.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Waits until `done`, failing the test with `what` (what did not happen) after [`PATIENCE`].
pub fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "after {PATIENCE:?}, still waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
