//! SPEC's decision table, row by row, on a manual clock.

use atomic_throttle::{Admission, Clock, ManualClock, Throttle};
use std::time::Duration;

const T: Duration = Duration::from_millis(10);

fn throttle() -> (Throttle<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    (Throttle::with_clock(T, clock.clone()).unwrap(), clock)
}

#[test]
fn first_call_runs_now() {
    let (throttle, _) = throttle();
    assert!(!throttle.is_pending());
    assert!(throttle.admit().is_now());
    assert!(!throttle.is_pending(), "a Now answer leaves no deferral");
}

#[test]
fn a_call_inside_the_window_owns_the_deferral() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    clock.advance(T / 2);
    let answer = throttle.admit();
    assert!(answer.is_deferred());
    assert!(throttle.is_pending());
    drop(answer);
}

#[test]
fn calls_while_a_deferral_is_pending_are_coalesced_whatever_the_time() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    let owner = throttle.admit();
    assert!(owner.is_deferred());
    assert!(throttle.admit().is_coalesced());
    // Even far past the window: the pending deferral covers the call.
    clock.advance(T * 100);
    assert!(throttle.admit().is_coalesced());
    drop(owner);
}

#[test]
fn a_call_past_the_window_runs_now() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    clock.advance(T);
    // The window may end up to two 1024 ns ticks after the threshold.
    clock.advance(Duration::from_nanos(2048));
    assert!(throttle.admit().is_now());
}

#[test]
fn no_call_runs_now_before_the_threshold_has_passed() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    clock.advance(T - Duration::from_nanos(1));
    let answer = throttle.admit();
    assert!(answer.is_deferred(), "{answer:?}");
}

#[test]
fn the_window_ends_within_two_ticks_of_the_threshold() {
    // Scan the boundary: the first reading that may run is at least T after the last run
    // and at most two 1024 ns ticks after it.
    for start in [0u64, 1, 500, 1023, 1024, 1025, 999_999] {
        let (throttle, clock) = throttle();
        clock.advance(Duration::from_nanos(start));
        assert!(throttle.admit().is_now());
        // Skip to just before the boundary, then step a nanosecond at a time.
        let t = T.as_nanos() as u64;
        let mut elapsed = t - 4096;
        clock.advance(Duration::from_nanos(elapsed));
        loop {
            if throttle.admit().is_now() {
                break;
            }
            clock.advance(Duration::from_nanos(1));
            elapsed += 1;
        }
        assert!(elapsed >= t, "ran {elapsed} ns after a run at {start} ns");
        assert!(
            elapsed <= t + 2048,
            "ran {elapsed} ns after a run at {start} ns"
        );
    }
}

#[test]
fn a_zero_threshold_runs_every_call_now() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Duration::ZERO, clock.clone()).unwrap();
    for _ in 0..1000 {
        assert!(throttle.admit().is_now());
    }
    clock.rewind(Duration::from_secs(1));
    assert!(throttle.admit().is_now());
    assert!(!throttle.is_pending());
}

#[test]
fn the_owner_runs_at_the_deadline_and_the_window_moves_on() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    let deadline = deferral.deadline();
    assert!(deadline >= T.as_nanos() as u64);
    // run() waits on the manual clock, which advances to the deadline.
    let ran_at = deferral.run(|| clock.now_nanos());
    assert!(ran_at >= deadline);
    assert!(!throttle.is_pending());
    // The deferred run opened a new window: the next call is Deferred again, not Now.
    assert!(throttle.admit().is_deferred());
}

#[test]
fn try_run_before_the_deadline_hands_the_deferral_back() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    let deferral = deferral.try_run(|| unreachable!("ran early")).unwrap_err();
    assert!(throttle.is_pending(), "an early try_run keeps the deferral");
    assert!(throttle.admit().is_coalesced());
    clock.advance(deferral.remaining());
    assert_eq!(deferral.remaining(), Duration::ZERO);
    assert_eq!(deferral.try_run(|| 7).ok(), Some(7));
    assert!(!throttle.is_pending());
    assert!(throttle.admit().is_deferred());
}

#[test]
fn try_run_long_after_the_deadline_stamps_the_late_reading() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    clock.advance(T * 50);
    assert!(deferral.try_run(|| ()).is_ok());
    // The window counts from the late run, not from the deadline.
    clock.advance(T / 2);
    assert!(throttle.admit().is_deferred());
}

#[test]
fn dropping_the_deferral_releases_it() {
    let (throttle, _) = throttle();
    assert!(throttle.admit().is_now());
    let owner = throttle.admit();
    assert!(owner.is_deferred());
    drop(owner);
    assert!(!throttle.is_pending());
    // Inside the window still: the next call owns a new deferral, it is not Coalesced.
    let next = throttle.admit();
    assert!(next.is_deferred(), "{next:?}");
}

#[test]
fn a_release_past_the_window_lets_the_next_call_run_now() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    let owner = throttle.admit();
    clock.advance(T * 2);
    drop(owner);
    assert!(throttle.admit().is_now());
}

#[test]
fn an_owner_that_panics_releases_the_deferral() {
    let (throttle, _) = throttle();
    assert!(throttle.admit().is_now());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _owner = throttle.admit();
        assert!(throttle.is_pending());
        panic!("owner crashed");
    }));
    assert!(result.is_err());
    assert!(!throttle.is_pending());
    assert!(throttle.admit().is_deferred());
}

#[test]
fn a_panic_inside_the_deferred_work_strands_nothing() {
    let (throttle, _) = throttle();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        deferral.run(|| panic!("work crashed"))
    }));
    assert!(result.is_err());
    assert!(!throttle.is_pending());
    // The run was stamped before the work: the window moved on.
    assert!(throttle.admit().is_deferred());
}

#[test]
fn owned_deferrals_move_to_another_thread() {
    use atomic_throttle::OwnedAdmission;
    use std::sync::Arc;

    let clock = ManualClock::new();
    let throttle = Arc::new(Throttle::with_clock(T, clock.clone()).unwrap());
    assert!(matches!(throttle.admit_owned(), OwnedAdmission::Now));
    let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else {
        panic!("expected Deferred")
    };
    assert!(matches!(throttle.admit_owned(), OwnedAdmission::Coalesced));
    let deadline = deferral.deadline();
    let ran_at = std::thread::spawn(move || deferral.run(|| clock.now_nanos()))
        .join()
        .unwrap();
    assert!(ran_at >= deadline);
    assert!(!throttle.is_pending());

    // An owned deferral dropped on another thread is released too.
    let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else {
        panic!("expected Deferred")
    };
    std::thread::spawn(move || drop(deferral)).join().unwrap();
    assert!(!throttle.is_pending());
}

#[test]
fn debug_output_names_the_state() {
    let (throttle, _) = throttle();
    assert!(throttle.admit().is_now());
    let owner = throttle.admit();
    let text = format!("{throttle:?}");
    assert!(text.contains("pending: true"), "{text}");
    assert!(format!("{owner:?}").contains("Deferral"));
}
