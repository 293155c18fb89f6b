//! Waiting for something another thread does, with a deadline generous enough for a loaded
//! machine.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// The longest a test lets another thread take before it gives up on it (a gate a work waits
/// at, a message it waits for): far longer than anything takes on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// How long a test waits for something before it fails: [`PATIENCE`], or the seconds in
/// `ATOMIC_THROTTLE_TEST_PATIENCE` (the mutation runs shorten it, so that a mutant that makes a
/// test wait fails that test well within their timeout).
pub fn patience() -> Duration {
    static PATIENCE_SET: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *PATIENCE_SET.get_or_init(|| {
        std::env::var("ATOMIC_THROTTLE_TEST_PATIENCE")
            .ok()
            .and_then(|seconds| seconds.parse().ok())
            .map_or(PATIENCE, Duration::from_secs)
    })
}

/// Waits until `done`, failing the test with `what` (what did not happen) after [`patience`].
pub fn wait_for(done: impl Fn() -> bool, what: &str) {
    let patience = patience();
    let deadline = Instant::now() + patience;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "after {patience:?}, still waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
