//! Guarantee 6: thresholds the word cannot represent are refused, never truncated.

use atomic_throttle::{ManualClock, ThresholdError, Throttle, Throttled};
use std::time::Duration;

#[test]
fn the_largest_threshold_is_accepted_and_works() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Throttle::MAX_THRESHOLD, clock.clone()).unwrap();
    assert_eq!(throttle.threshold(), Throttle::MAX_THRESHOLD);
    assert!(throttle.admit().is_now());
    clock.advance(Throttle::MAX_THRESHOLD - Duration::from_nanos(1));
    assert!(throttle.admit().is_deferred());
    clock.advance(Duration::from_micros(3));
    assert!(throttle.admit().is_now());
}

// Under loom the constructors are not `const` (loom's atomics are not).
#[cfg(not(loom))]
#[test]
fn the_const_constructors_accept_the_largest_threshold_and_refuse_one_more() {
    static LARGEST: Throttle = Throttle::new(Throttle::MAX_THRESHOLD);
    assert_eq!(LARGEST.threshold(), Throttle::MAX_THRESHOLD);
    let leading = Throttle::with_mode(Throttle::MAX_THRESHOLD, atomic_throttle::Mode::LeadingOnly);
    assert_eq!(leading.threshold(), Throttle::MAX_THRESHOLD);
    let past = Throttle::MAX_THRESHOLD + Duration::from_nanos(1);
    let refused =
        std::panic::catch_unwind(|| Throttle::with_mode(past, atomic_throttle::Mode::LeadingOnly));
    let message = refused
        .err()
        .and_then(|p| p.downcast_ref::<&str>().map(|s| s.to_string()));
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("Throttle::MAX_THRESHOLD (2^62 ns, about 146 years)")),
        "{message:?}"
    );
}

#[test]
fn the_largest_threshold_is_about_146_years() {
    let years = Throttle::MAX_THRESHOLD.as_secs_f64() / (365.25 * 24.0 * 3600.0);
    assert!((146.0..147.0).contains(&years), "{years}");
    assert_eq!(Throttle::MAX_THRESHOLD.as_nanos(), 1u128 << 62);
}

#[test]
fn one_past_the_largest_threshold_is_refused() {
    let past = Throttle::MAX_THRESHOLD + Duration::from_nanos(1);
    let err = Throttle::try_new(past).unwrap_err();
    assert_eq!(err.requested(), past);
    assert_eq!(err.max(), Throttle::MAX_THRESHOLD);
    let err = Throttle::with_clock(past, ManualClock::new()).unwrap_err();
    assert_eq!(err.requested(), past);
    assert!(Throttled::try_new(past, || ()).is_err());
}

#[test]
fn thresholds_beyond_u64_nanoseconds_are_refused_too() {
    for huge in [
        Duration::MAX,
        Duration::from_secs(u64::MAX / 1_000_000_000 + 1),
    ] {
        let err: ThresholdError = Throttle::try_new(huge).unwrap_err();
        assert_eq!(
            err.requested(),
            huge,
            "the error reports the request, not a truncation"
        );
    }
}

#[test]
fn the_error_says_what_was_wrong_and_what_the_limit_is() {
    let six_hundred_years = Duration::from_secs(600 * 31_557_600);
    let text = Throttle::try_new(six_hundred_years)
        .unwrap_err()
        .to_string();
    assert!(text.contains("600 years"), "{text}");
    assert!(text.contains("largest representable threshold"), "{text}");
    assert!(text.contains("146 years"), "{text}");
}

#[test]
#[should_panic(expected = "exceeds the largest representable threshold")]
fn new_panics_with_the_reason() {
    let _ = Throttle::new(Duration::MAX);
}

#[test]
fn sub_microsecond_thresholds_still_space_runs() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Duration::from_nanos(1), clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    assert!(throttle.admit().is_deferred());
}
