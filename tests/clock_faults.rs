//! Guarantees 5 and 7: clocks that step backwards or jump far forward, and 500 years.

use atomic_throttle::{Admission, Clock, ManualClock, Throttle};
use std::time::Duration;

const T: Duration = Duration::from_millis(10);
const YEAR: Duration = Duration::from_secs(31_557_600);

#[test]
fn a_backward_step_counts_as_no_time() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(5));
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    clock.rewind(Duration::from_secs(3));
    // Behind the last run: no time has passed, so no run now.
    let owner = throttle.admit();
    assert!(owner.is_deferred(), "{owner:?}");
    drop(owner);
    // Time moving forward again, still behind the last run plus T: still no run.
    clock.advance(Duration::from_secs(3));
    clock.advance(T / 2);
    assert!(throttle.admit().is_deferred());
    clock.advance(T);
    assert!(throttle.admit().is_now());
}

#[test]
fn a_deferral_claimed_behind_a_backward_step_waits_for_the_window() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1));
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    let stamp = clock.now_nanos();
    clock.rewind(Duration::from_millis(500));
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert!(
        deferral.remaining() > T,
        "the step is not counted as elapsed time"
    );
    let ran_at = deferral.run(|| clock.now_nanos()).unwrap();
    assert!(
        ran_at >= stamp + T.as_nanos() as u64,
        "G1 after a backward step"
    );
    assert!(!throttle.is_pending());
}

#[test]
fn rewinding_to_before_the_origin_saturates() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    clock.rewind(Duration::MAX);
    assert_eq!(clock.now_nanos(), 0);
    assert!(throttle.admit().is_deferred());
}

#[test]
fn a_jump_of_a_hundred_years_forward_behaves() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    clock.advance(YEAR * 100);
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    let before = clock.now_nanos();
    let ran_at = deferral.run(|| clock.now_nanos()).unwrap();
    // The leading run was stamped at `before` (the clock has not moved since): G1 exactly.
    assert!(ran_at >= before + T.as_nanos() as u64);
    assert!(throttle.admit().is_deferred());
}

#[test]
fn a_throttle_keeps_working_for_hundreds_of_years() {
    // G7: the stamp holds 570 years of microseconds; step through 500 years.
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Duration::from_secs(3600), clock.clone()).unwrap();
    for _ in 0..500 {
        assert!(throttle.admit().is_now());
        assert!(throttle.admit().is_deferred());
        clock.advance(YEAR);
    }
}

#[test]
fn at_the_end_of_the_clock_nothing_overflows_or_panics() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    clock.advance(Duration::MAX);
    assert_eq!(clock.now_nanos(), u64::MAX);
    assert!(throttle.admit().is_now());
    // The clock cannot move on, so the window never ends: the owner's deadline lies past the
    // end of the clock's range, and try_run says not yet rather than panicking or running.
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert_eq!(deferral.deadline(), u64::MAX);
    assert!(deferral.remaining() <= Duration::from_nanos(u64::MAX));
    let deferral = deferral.try_run(|| ()).unwrap_err().not_due().unwrap();
    drop(deferral);
    assert!(!throttle.is_pending());
}

#[test]
fn the_largest_threshold_after_a_huge_jump_does_not_overflow() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Throttle::MAX_THRESHOLD, clock.clone()).unwrap();
    clock.advance(YEAR * 500);
    assert!(throttle.admit().is_now());
    let owner = throttle.admit();
    assert!(owner.is_deferred());
    if let Admission::Deferred(deferral) = owner {
        assert_eq!(deferral.deadline(), u64::MAX, "saturates rather than wraps");
    }
}
