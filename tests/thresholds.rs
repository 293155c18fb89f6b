//! Guarantee 6: thresholds the word cannot represent are refused, never truncated.

use atomic_throttle::{
    Detached, KeyedThrottle, Latest, ManualClock, ThresholdError, Throttle, Throttled,
};
use std::time::Duration;

/// The limit's part of every message: exact, then readable.
const LIMIT: &str =
    "the largest accepted threshold, 4611686018427387904 ns (Throttle::MAX_THRESHOLD: 2^62 ns, \
     about 146 years)";

/// What a panic said, whether its payload is a `&str` or a `String`.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "(not text)".into(), |text| text.to_string()),
    }
}

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
    assert_eq!(
        panic_message(refused.unwrap_err()),
        format!(
            "atomic-throttle: Throttle::with_mode: threshold of 4611686018427387905 ns exceeds \
             {LIMIT}"
        )
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
    assert_eq!(
        text,
        format!("threshold of 18934560000000000000 ns exceeds {LIMIT}")
    );
}

#[test]
fn one_nanosecond_over_the_limit_reads_differently_from_the_limit() {
    let past = Throttle::MAX_THRESHOLD + Duration::from_nanos(1);
    assert_eq!(
        Throttle::try_new(past).unwrap_err().to_string(),
        format!("threshold of 4611686018427387905 ns exceeds {LIMIT}")
    );
    assert_eq!(
        Throttle::try_new(Duration::MAX).unwrap_err().to_string(),
        format!("threshold of 18446744073709551615999999999 ns exceeds {LIMIT}")
    );
    let lease = Throttle::builder(Duration::ZERO)
        .lease(past)
        .build()
        .unwrap_err();
    assert_eq!(
        lease.to_string(),
        "lease of 4611686018427387905 ns exceeds the largest accepted lease, \
         4611686018427387904 ns (Throttle::MAX_THRESHOLD: 2^62 ns, about 146 years)"
    );
}

#[test]
#[should_panic(expected = "atomic-throttle: Throttle::new: threshold of \
                           18446744073709551615999999999 ns exceeds the largest accepted \
                           threshold, 4611686018427387904 ns (Throttle::MAX_THRESHOLD: 2^62 \
                           ns, about 146 years)")]
fn new_panics_with_the_reason() {
    let _ = Throttle::new(Duration::MAX);
}

#[test]
#[should_panic(expected = "atomic-throttle: Throttled::new: threshold of \
                           18446744073709551615999999999 ns exceeds the largest accepted \
                           threshold, 4611686018427387904 ns (Throttle::MAX_THRESHOLD: 2^62 \
                           ns, about 146 years)")]
fn throttled_new_panics_with_the_exact_values() {
    let _ = Throttled::new(Duration::MAX, || ());
}

#[test]
fn every_panicking_constructor_names_the_crate_itself_and_the_values() {
    let past = Throttle::MAX_THRESHOLD + Duration::from_nanos(1);
    let reason = format!("threshold of 4611686018427387905 ns exceeds {LIMIT}");
    let said = |constructor: &str, build: &dyn Fn()| {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)).unwrap_err();
        assert_eq!(
            panic_message(payload),
            format!("atomic-throttle: {constructor}: {reason}")
        );
    };
    said("Throttle::new", &|| drop(Throttle::new(past)));
    said("Throttled::new", &|| drop(Throttled::new(past, || ())));
    said("Latest::new", &|| drop(Latest::new(past, |_: u8| ())));
    said("KeyedThrottle::new", &|| {
        drop(KeyedThrottle::<u8>::new(past, 8))
    });
    said("Detached::new", &|| drop(Detached::new(past, || ())));
    #[cfg(feature = "tokio")]
    said("AsyncThrottled::new", &|| {
        drop(atomic_throttle::AsyncThrottled::new(past, async || ()))
    });
}

#[test]
fn sub_microsecond_thresholds_still_space_runs() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Duration::from_nanos(1), clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    assert!(throttle.admit().is_deferred());
}

#[test]
fn every_setting_accepts_exactly_the_largest_threshold_and_refuses_one_more() {
    let max = Throttle::MAX_THRESHOLD;
    let past = max + Duration::from_nanos(1);
    let keyed = KeyedThrottle::<u8>::try_new(max, 8).unwrap();
    assert_eq!(keyed.threshold(), max);
    assert_eq!(
        KeyedThrottle::<u8>::try_new(past, 8)
            .unwrap_err()
            .requested(),
        past
    );
    let leased = KeyedThrottle::<u8>::builder(max, 8)
        .lease(max)
        .build()
        .unwrap();
    assert_eq!(leased.lease(), Some(max));
    let err = KeyedThrottle::<u8>::builder(max, 8)
        .lease(past)
        .build()
        .unwrap_err();
    assert_eq!((err.what(), err.requested()), ("lease", past));
    let keyed = KeyedThrottle::<u8>::try_new(Duration::from_secs(1), 8).unwrap();
    assert_eq!(keyed.set_threshold(past).unwrap_err().requested(), past);
    assert_eq!(
        keyed.threshold(),
        Duration::from_secs(1),
        "a refused threshold changes nothing"
    );
    assert!(keyed.set_threshold(max).is_ok());
    assert_eq!(keyed.threshold(), max);

    let throttle = Throttle::builder(Duration::from_secs(1))
        .lease(max)
        .build()
        .unwrap();
    assert_eq!(throttle.lease(), Some(max));
    assert_eq!(throttle.set_threshold(past).unwrap_err().requested(), past);
    assert_eq!(
        throttle.threshold(),
        Duration::from_secs(1),
        "a refused threshold changes nothing"
    );
    assert!(throttle.set_threshold(max).is_ok());
    assert_eq!(throttle.threshold(), max);
    assert!(Latest::try_new(max, |_: u8| ()).is_ok());
    assert_eq!(
        Latest::try_new(past, |_: u8| ()).unwrap_err().requested(),
        past
    );
    assert!(Detached::builder(Throttle::new(max))
        .shutdown_grace(max)
        .is_ok());
    let err = Detached::builder(Throttle::new(max))
        .shutdown_grace(past)
        .err()
        .unwrap();
    assert_eq!((err.what(), err.requested()), ("shutdown grace", past));
}
