//! The decision table, row by row, on a manual clock, with exact deadlines.

use atomic_throttle::{Admission, Clock, ManualClock, NotRun, OwnedAdmission, Throttle};
use std::sync::Arc;
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
    assert!(!answer.is_now() && !answer.is_coalesced() && !answer.is_suppressed());
    assert!(throttle.is_pending());
    drop(answer);
}

#[test]
fn calls_while_a_deferral_is_pending_are_coalesced_whatever_the_time() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    let owner = throttle.admit();
    assert!(owner.is_deferred());
    let answer = throttle.admit();
    assert!(answer.is_coalesced() && !answer.is_deferred() && !answer.is_now());
    // Even far past the window: the pending deferral covers the call.
    clock.advance(T * 100);
    assert!(throttle.admit().is_coalesced());
    drop(owner);
}

#[test]
fn the_deadline_is_exact_on_whole_microseconds() {
    // One nanosecond before the deadline a call is not due; at it, it is.
    for start in [0u64, 1_000, 7_000, 999_000, 1_000_000_000] {
        let (throttle, clock) = throttle();
        clock.advance(Duration::from_nanos(start));
        assert!(throttle.admit().is_now());
        clock.advance(T - Duration::from_nanos(1));
        let answer = throttle.admit();
        assert!(answer.is_deferred(), "{answer:?} 1 ns before the deadline");
        let Admission::Deferred(deferral) = answer else {
            unreachable!()
        };
        assert_eq!(deferral.deadline(), start + T.as_nanos() as u64);
        assert_eq!(deferral.remaining(), Duration::from_nanos(1));
        let Err(NotRun::NotDue(deferral)) = deferral.try_run(|| ()) else {
            panic!("try_run ran 1 ns before the deadline")
        };
        drop(deferral);
        clock.advance(Duration::from_nanos(1));
        assert!(throttle.admit().is_now(), "not due at the deadline");
    }
}

#[test]
fn a_run_stamped_at_10ms_with_t_10ms_lets_the_next_call_run_at_20ms() {
    let (throttle, clock) = throttle();
    clock.advance(Duration::from_millis(10));
    assert!(throttle.admit().is_now());
    clock.advance(Duration::from_millis(3));
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert_eq!(deferral.remaining(), Duration::from_millis(7));
    drop(deferral);
    clock.advance(Duration::from_millis(7));
    assert!(throttle.admit().is_now());
    assert_eq!(throttle.last_run(), Some(20_000_000));
}

#[test]
fn off_microsecond_readings_are_stamped_rounded_up() {
    // Readings between whole microseconds: a run becomes due at most 1 us after the exact
    // deadline, never before it.
    for start in [1u64, 500, 999, 1_001, 123_456_789] {
        let (throttle, clock) = throttle();
        clock.advance(Duration::from_nanos(start));
        assert!(throttle.admit().is_now());
        assert_eq!(throttle.last_run(), Some(start.div_ceil(1000) * 1000));
        let t = T.as_nanos() as u64;
        let mut elapsed = t - 10;
        clock.advance(Duration::from_nanos(elapsed));
        while !throttle.admit().is_now() {
            clock.advance(Duration::from_nanos(1));
            elapsed += 1;
        }
        assert!(elapsed >= t, "ran {elapsed} ns after a run at {start} ns");
        assert!(
            elapsed < t + 1000,
            "ran {elapsed} ns after a run at {start} ns"
        );
    }
}

#[test]
fn a_zero_threshold_runs_every_call_now_even_behind_the_last_run() {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(5));
    let throttle = Throttle::with_clock(Duration::ZERO, clock.clone()).unwrap();
    for _ in 0..1000 {
        assert!(throttle.admit().is_now());
    }
    let stamp = throttle.last_run();
    // A clock that steps back: no time has passed, and none is needed.
    clock.rewind(Duration::from_secs(1));
    for _ in 0..200 {
        assert!(throttle.admit().is_now());
        assert!(!throttle.is_pending());
    }
    assert_eq!(throttle.last_run(), stamp, "stamps never move backwards");
    clock.advance(Duration::from_secs(2));
    assert!(throttle.admit().is_now());
    assert_eq!(throttle.last_run(), Some(6_000_000_000));
}

#[test]
fn the_owner_runs_at_the_deadline_and_the_window_moves_on() {
    let (throttle, clock) = throttle();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert_eq!(deferral.deadline(), T.as_nanos() as u64);
    // run() waits on the manual clock, which advances exactly to the deadline.
    let ran_at = deferral.run(|| clock.now_nanos()).unwrap();
    assert_eq!(ran_at, T.as_nanos() as u64);
    assert!(!throttle.is_pending());
    assert_eq!(throttle.last_run(), Some(ran_at));
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
    let deferral = deferral
        .try_run(|| unreachable!("ran early"))
        .unwrap_err()
        .not_due()
        .expect("still the owner's");
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
    assert_eq!(throttle.last_run(), Some(clock.now_nanos()));
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
        std::panic::resume_unwind(Box::new("owner crashed"));
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
        deferral.run(|| std::panic::resume_unwind(Box::new("work crashed")))
    }));
    assert!(result.is_err());
    assert!(!throttle.is_pending());
    // The run was stamped before the work: the window moved on.
    assert!(throttle.admit().is_deferred());
}

#[test]
fn a_stamped_deferral_releases_nothing_when_it_is_dropped_later() {
    // The work of a deferred run claims the next deferral; when the run returns, the finished
    // deferral is dropped, and must not clear the new owner's claim.
    let (throttle, _) = throttle();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(first) = throttle.admit() else {
        panic!("expected Deferred")
    };
    let second = first
        .run(|| {
            let answer = throttle.admit();
            assert!(answer.is_deferred());
            answer
        })
        .unwrap();
    assert!(
        throttle.is_pending(),
        "the finished run released the next claim"
    );
    assert!(throttle.admit().is_coalesced());
    drop(second);
    assert!(!throttle.is_pending());
}

#[test]
fn owned_deferrals_move_to_another_thread() {
    let clock = ManualClock::new();
    let throttle = Arc::new(Throttle::with_clock(T, clock.clone()).unwrap());
    assert!(matches!(throttle.admit_owned(), OwnedAdmission::Now));
    let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() else {
        panic!("expected Deferred")
    };
    assert!(matches!(throttle.admit_owned(), OwnedAdmission::Coalesced));
    assert_eq!(deferral.deadline(), T.as_nanos() as u64);
    assert_eq!(deferral.remaining(), T);
    assert!(Arc::ptr_eq(deferral.throttle(), &throttle));
    assert!(format!("{deferral:?}").contains("deadline: 10000000"));
    let ran_at = std::thread::spawn(move || deferral.run(|| clock.now_nanos()))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(ran_at, T.as_nanos() as u64);
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
    let (throttle, clock) = throttle();
    clock.advance(Duration::from_millis(2));
    assert!(throttle.admit().is_now());
    drop(throttle.admit());
    let cancelled = throttle.admit();
    assert!(cancelled.is_deferred() && throttle.cancel()); // one cancel: generation 1
    drop(cancelled);
    let owner = throttle.admit();
    let text = format!("{throttle:?}");
    for field in [
        "threshold: 10ms",
        "mode: LeadingAndTrailing",
        "lease: None",
        "pending: true",
        "flushed: false",
        "last_run: Some(2000000)",
        "generation: 1",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    let owner_text = format!("{owner:?}");
    assert!(
        owner_text.contains("Deferred(Deferral { deadline: 12000000, spent: false"),
        "{owner_text}"
    );
    assert_eq!(format!("{:?}", throttle.admit()), "Coalesced");
    drop(owner);
    assert_eq!(
        format!("{:?}", throttle.admit()),
        "Deferred(Deferral { deadline: 12000000, spent: false, .. })"
    );
}
