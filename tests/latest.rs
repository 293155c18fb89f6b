//! The latest-value throttle: runs get the newest value offered, none is lost, torn or seen
//! twice, and each is dropped exactly once.

#[path = "support/free_on_failure.rs"]
mod free_on_failure;
#[path = "support/wait_for.rs"]
mod wait_for;

use atomic_throttle::{Latest, ManualClock, Mode, Outcome, Revoked, Throttle};
use free_on_failure::FreeOnFailure;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use wait_for::wait_for;

const T: Duration = Duration::from_millis(10);

/// A value that counts its drops, and carries two halves that must always agree.
#[derive(Debug)]
struct Value {
    id: u64,
    check: u64,
    drops: Arc<AtomicU64>,
}

impl Value {
    fn new(id: u64, drops: &Arc<AtomicU64>) -> Self {
        Self {
            id,
            check: !id,
            drops: drops.clone(),
        }
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        assert_eq!(self.check, !self.id, "a torn value");
        self.drops.fetch_add(1, Relaxed);
    }
}

#[test]
fn the_deferred_run_gets_the_latest_value_offered() {
    let clock = ManualClock::with_auto_advance(false);
    let latest = Latest::from_throttle(Throttle::with_clock(T, clock.clone()).unwrap(), |v: u32| v);
    assert_eq!(latest.call(1), Outcome::Now(1));
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| latest.call(2));
        wait_for(
            || latest.throttle().is_pending(),
            "the owner claimed the deferral",
        );
        for value in 3..=9 {
            assert_eq!(latest.call(value), Outcome::Coalesced);
        }
        assert!(latest.holds_a_value());
        clock.advance(T);
        assert_eq!(owner.join().unwrap(), Outcome::Deferred(9));
    });
    assert!(!latest.holds_a_value());
}

#[test]
fn every_value_is_dropped_exactly_once_and_taken_at_most_once() {
    let drops = Arc::new(AtomicU64::new(0));
    let taken = Arc::new(Mutex::new(Vec::new()));
    let latest = Arc::new(Latest::new(Duration::from_micros(200), {
        let taken = taken.clone();
        move |value: Value| taken.lock().unwrap().push(value.id)
    }));
    const THREADS: u64 = 6;
    const CALLS: u64 = 2_000;
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (latest, drops) = (latest.clone(), drops.clone());
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    let _ = latest.call(Value::new(t * CALLS + i, &drops));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(
        !latest.holds_a_value(),
        "a value was left with no run to come"
    );
    let taken = taken.lock().unwrap();
    let mut unique = taken.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), taken.len(), "a value was taken twice");
    assert!(taken.len() > 1);
    drop(latest);
    assert_eq!(
        drops.load(Relaxed),
        THREADS * CALLS,
        "a value was dropped twice or never"
    );
}

#[test]
fn a_cancelled_run_leaves_its_value_for_the_next() {
    let clock = ManualClock::with_auto_advance(false);
    let latest = Latest::from_throttle(Throttle::with_clock(T, clock.clone()).unwrap(), |v: u32| v);
    assert_eq!(latest.call(1), Outcome::Now(1));
    std::thread::scope(|s| {
        let _free = FreeOnFailure(&clock);
        let owner = s.spawn(|| latest.call(2));
        wait_for(
            || latest.throttle().is_pending(),
            "the owner claimed the deferral",
        );
        assert!(latest.throttle().cancel());
        assert_eq!(owner.join().unwrap(), Outcome::Revoked(Revoked::Cancelled));
    });
    assert!(
        latest.holds_a_value(),
        "the cancelled run's value waits for the next"
    );
    clock.advance(T);
    assert_eq!(latest.call(3), Outcome::Now(3));
}

#[test]
fn leading_only_drops_a_suppressed_callers_value_and_keeps_nothing() {
    let drops = Arc::new(AtomicU64::new(0));
    let clock = ManualClock::with_auto_advance(false);
    let leading = Throttle::builder(T)
        .clock(clock.clone())
        .mode(Mode::LeadingOnly)
        .build()
        .unwrap();
    let latest = Latest::from_throttle(leading, |v: Value| v.id);
    assert_eq!(latest.call(Value::new(1, &drops)), Outcome::Now(1));
    assert_eq!(drops.load(Relaxed), 1);
    assert_eq!(latest.call(Value::new(2, &drops)), Outcome::Suppressed);
    assert_eq!(
        drops.load(Relaxed),
        2,
        "the suppressed value is dropped by the call"
    );
    assert!(
        !latest.holds_a_value(),
        "no run will take a suppressed value"
    );
    assert!(format!("{latest:?}").contains("holds_a_value: false"));
    clock.advance(T);
    assert_eq!(
        latest.call(Value::new(3, &drops)),
        Outcome::Now(3),
        "the next run gets its own caller's value"
    );
    assert_eq!(drops.load(Relaxed), 3);
    assert!(!latest.holds_a_value());
}
