//! The Neutron-style wrapper.

use atomic_throttle::{ManualClock, Outcome, Throttled};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_millis(10);

#[test]
fn leading_deferred_and_coalesced_calls() {
    let clock = ManualClock::new();
    let runs = AtomicU32::new(0);
    let job = Throttled::with_clock(T, clock.clone(), || runs.fetch_add(1, Relaxed)).unwrap();
    assert_eq!(job.call(), Outcome::Now(0));
    // The deferred call blocks until the window ends (the manual clock advances), then runs.
    assert_eq!(job.call(), Outcome::Deferred(1));
    assert!(clock.now() >= T);
    assert_eq!(runs.load(Relaxed), 2);
}

#[test]
fn calls_during_a_pending_deferral_are_coalesced() {
    let clock = ManualClock::new();
    let job = Arc::new(Throttled::with_clock(T, clock.clone(), || ()).unwrap());
    assert_eq!(job.call(), Outcome::Now(()));
    // Claim the deferral directly, then call while it is pending.
    let owner = job.throttle().admit();
    assert!(owner.is_deferred());
    assert_eq!(job.call(), Outcome::Coalesced);
    drop(owner);
    assert_eq!(job.call(), Outcome::Deferred(()));
}

#[test]
fn a_panicking_work_does_not_stop_the_throttle() {
    let clock = ManualClock::new();
    let calls = AtomicU32::new(0);
    let job = Throttled::with_clock(T, clock.clone(), || {
        if calls.fetch_add(1, Relaxed) == 0 {
            panic!("work failed");
        }
    })
    .unwrap();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.call()));
    assert!(result.is_err());
    assert!(!job.throttle().is_pending());
    assert_eq!(job.call(), Outcome::Deferred(()));
}
