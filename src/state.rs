//! The packed state word and the pure decision on it.
//!
//! Everything the throttle decides on lives in one `u64`:
//!
//! ```text
//!  63        62        61      60 ...... 54   53 ........................................ 0
//! +---------+---------+-------+--------------+--------------------------------------------+
//! | PENDING | STAMPED | FLUSH |  GENERATION  |  STAMP: microseconds, the reading rounded up |
//! +---------+---------+-------+--------------+--------------------------------------------+
//! ```
//!
//! | PENDING | STAMPED | meaning                                          | next admission |
//! |---------|---------|--------------------------------------------------|----------------|
//! | 0       | 0       | fresh: the window has never been opened          | Now (trailing only: Deferred) |
//! | 0       | 1       | idle: the window opened at STAMP                 | Now past the window, else Deferred (leading only: Suppressed) |
//! | 1       | 1       | a deferral is pending; its owner stamps or releases it | Coalesced (with a lease, taken over once it expired) |
//!
//! `PENDING` with `STAMPED` clear cannot occur: every claim opens or finds a window. `FLUSH`
//! only ever accompanies `PENDING`: the pending run is due at once.
//!
//! **Time.** A stamp is the clock reading in nanoseconds, rounded *up* to a whole microsecond,
//! and readings are compared with it in nanoseconds. A reading is due when it lies at least the
//! threshold after the stamp, so two stamped readings are always at least the threshold apart;
//! on a clock whose readings are whole microseconds the deadline is exact, and on any clock a
//! run becomes due less than 1 us after its exact deadline. A reading behind the stamp (a clock
//! that stepped backwards) counts as no time. The 54 stamp bits hold 2^54 us, about 570 years
//! from the clock's origin; later readings count as that last instant, where time stops.
//!
//! **Identity.** An owner knows its deferral by the exact word its claim installed (or that
//! word with `FLUSH`), and nobody else may change that word but to revoke it. Nothing that
//! revokes a claim lets its word come back:
//!
//! - stamps never move backwards: a run stamps the later of the last stamp and its reading,
//!   and a takeover stamps strictly after the claim it takes over;
//! - a cancel advances the generation, which counts cancels since the stamp last moved (it
//!   starts again at zero when it does); when it would wrap, the cancel moves the stamp on by
//!   1 us instead. So between two stamps the generation only grows.
//!
//! A word that its own owner replaced (by its run or its release) may come back, but that owner
//! holds no claim any more: it never acts on the word again.
//!
//! This module is pure arithmetic: [`decide`] maps (word, time, rules) to the answer and the
//! next word, and the atomics live in `throttle.rs`.

/// Number of bits holding the stamp.
pub(crate) const STAMP_BITS: u32 = 54;
/// Mask of the stamp, in whole microseconds since the clock's origin.
pub(crate) const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
/// Nanoseconds in one unit of the stamp.
pub(crate) const NANOS_PER_STAMP: u64 = 1_000;
/// The last reading the stamp can hold (2^54 - 1 us, about 570 years): later readings count as
/// this one.
pub(crate) const END_NANOS: u64 = STAMP_MASK * NANOS_PER_STAMP;

/// Position of the generation counter.
pub(crate) const GENERATION_SHIFT: u32 = STAMP_BITS;
/// Number of bits of the generation counter. Under loom it is two bits wide, so that a model
/// reaches its wrap-around in four cancels.
#[cfg(not(loom))]
pub(crate) const GENERATION_BITS: u32 = 7;
/// Number of bits of the generation counter. Under loom it is two bits wide, so that a model
/// reaches its wrap-around in four cancels.
#[cfg(loom)]
pub(crate) const GENERATION_BITS: u32 = 2;
/// Mask of the generation counter, in place.
pub(crate) const GENERATION_MASK: u64 = ((1 << GENERATION_BITS) - 1) << GENERATION_SHIFT;

/// Set by `flush` on a pending word: the pending run is due at once.
pub(crate) const FLUSH: u64 = 1 << 61;
/// Set once a window has been opened; STAMP is meaningless before.
pub(crate) const STAMPED: u64 = 1 << 62;
/// Set while a deferral is pending.
pub(crate) const PENDING: u64 = 1 << 63;

/// The state a fresh throttle starts in.
pub(crate) const FRESH: u64 = 0;

/// The largest threshold, 2^62 ns (about 146 years): a stamp plus a threshold plus a lease
/// never overflows the saturating arithmetic below, and the error for a larger one is clear.
pub(crate) const MAX_THRESHOLD_NANOS: u64 = 1 << 62;

/// No lease: a pending deferral is never taken over.
pub(crate) const NO_LEASE: u64 = u64::MAX;

/// Which calls run, chosen when the throttle is built.
///
/// | mode | a call in a quiet period | a call inside the window | while a deferral is pending |
/// |---|---|---|---|
/// | [`LeadingAndTrailing`](Mode::LeadingAndTrailing) | Now | Deferred | Coalesced |
/// | [`LeadingOnly`](Mode::LeadingOnly) | Now | Suppressed | (never pending) |
/// | [`TrailingOnly`](Mode::TrailingOnly) | Deferred, due one threshold later | Deferred | Coalesced |
///
/// # Examples
///
/// ```
/// use atomic_throttle::{ManualClock, Mode, Throttle};
/// use std::time::Duration;
///
/// let throttle = Throttle::builder(Duration::from_secs(1))
///     .clock(ManualClock::new())
///     .mode(Mode::LeadingOnly)
///     .build()?;
/// assert!(throttle.admit().is_now());
/// assert!(throttle.admit().is_suppressed()); // no trailing run will cover it
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// A leading run at once, one deferred trailing run, coalesced calls: Neutron's
    /// `throttler`, lodash's `throttle`. The default.
    #[default]
    LeadingAndTrailing,
    /// A leading run at once; calls inside the window are suppressed, and no run covers them:
    /// the Linux kernel's `__ratelimit`, Go's `rate.Sometimes`, RxJS's `throttleTime`,
    /// lodash's `throttle` with `trailing: false`.
    LeadingOnly,
    /// No leading run: the first call of a quiet period claims a deferral due one threshold
    /// later, and calls until then are coalesced into it: lodash's `throttle` with
    /// `leading: false`, RxJS's `auditTime`.
    TrailingOnly,
}

/// What a decision depends on besides the word and the time: the throttle's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// The threshold in nanoseconds.
    pub(crate) threshold: u64,
    pub(crate) mode: Mode,
    /// How long past its deadline a pending deferral may stay unstamped before the next
    /// admission takes it over, in nanoseconds; [`NO_LEASE`] for never.
    pub(crate) lease: u64,
}

/// A clock reading, clamped to the last instant the stamp can hold.
#[inline(always)]
pub(crate) const fn clamp(nanos: u64) -> u64 {
    if nanos > END_NANOS {
        END_NANOS
    } else {
        nanos
    }
}

/// The stamp of a reading: whole microseconds, rounded up.
#[inline(always)]
pub(crate) const fn stamp_of(nanos: u64) -> u64 {
    clamp(nanos).div_ceil(NANOS_PER_STAMP)
}

/// The stamp held in `word`, in microseconds.
#[inline(always)]
pub(crate) const fn stamp(word: u64) -> u64 {
    word & STAMP_MASK
}

/// The stamp held in `word`, in nanoseconds.
#[inline(always)]
pub(crate) const fn stamp_nanos(word: u64) -> u64 {
    stamp(word) * NANOS_PER_STAMP
}

/// The generation held in `word`.
#[inline(always)]
pub(crate) const fn generation(word: u64) -> u64 {
    (word & GENERATION_MASK) >> GENERATION_SHIFT
}

/// Whether `word` has a deferral pending.
#[inline(always)]
pub(crate) const fn is_pending(word: u64) -> bool {
    word & PENDING != 0
}

/// Whether `word` has opened a window (run, or claimed in trailing-only mode).
#[inline(always)]
pub(crate) const fn is_stamped(word: u64) -> bool {
    word & STAMPED != 0
}

/// Whether the pending deferral of `word` was flushed: due at once.
#[inline(always)]
pub(crate) const fn is_flushed(word: u64) -> bool {
    word & FLUSH != 0
}

/// Time from the stamp of `word` to the reading `now`; a reading behind the stamp (a clock
/// that stepped backwards) counts as no time.
#[inline(always)]
pub(crate) fn elapsed(word: u64, now: u64) -> u64 {
    if crate::sync::is_mutant(crate::sync::mutant!(WrappingElapsed)) {
        return clamp(now).wrapping_sub(stamp_nanos(word));
    }
    clamp(now).saturating_sub(stamp_nanos(word))
}

/// Whether a reading at `now` lies at or past the end of the window `word` opened.
#[inline(always)]
pub(crate) fn window_passed(word: u64, now: u64, threshold: u64) -> bool {
    !is_stamped(word) || elapsed(word, now) >= threshold
}

/// When the window `word` opened ends, in the clock's nanoseconds; `u64::MAX` if that lies past
/// the last instant the stamp can hold, so that it never comes.
#[inline]
pub(crate) const fn deadline(word: u64, threshold: u64) -> u64 {
    let end = stamp_nanos(word).saturating_add(threshold);
    if end > END_NANOS {
        u64::MAX
    } else {
        end
    }
}

/// Whether the pending deferral of `word` has outlived its lease at `now`.
#[inline]
pub(crate) fn lease_expired(word: u64, now: u64, rules: &Rules) -> bool {
    rules.lease != NO_LEASE && elapsed(word, now) >= rules.threshold.saturating_add(rules.lease)
}

/// A word stamped at `at` (microseconds), not pending: the generation is kept while the stamp
/// stays where it was, and starts again at zero when the stamp moves.
#[inline(always)]
const fn at_stamp(word: u64, at: u64) -> u64 {
    let generation = if is_stamped(word) && at == stamp(word) {
        word & GENERATION_MASK
    } else {
        0
    };
    generation | STAMPED | at
}

/// The word after a run stamps at `now`: pending and flush cleared. The stamp never moves
/// backwards: a reading behind it leaves it where it is.
#[inline(always)]
pub(crate) const fn stamped(word: u64, now: u64) -> u64 {
    let last = if is_stamped(word) { stamp(word) } else { 0 };
    let at = stamp_of(now);
    at_stamp(word, if at > last { at } else { last })
}

/// The word after an admission takes over the abandoned deferral of `word` and runs at once:
/// stamped strictly after the abandoned claim's stamp, so that its owner's word never comes
/// back and its late stamp or release can only fail.
#[inline]
pub(crate) const fn taken_over(word: u64, now: u64) -> u64 {
    let after = stamp(word) + 1;
    let after = if after > STAMP_MASK {
        STAMP_MASK
    } else {
        after
    };
    let at = stamp_of(now);
    at_stamp(word, if at > after { at } else { after })
}

/// The word after a caller claims the deferral: pending set, flush clear, everything else kept.
#[inline(always)]
pub(crate) const fn claimed(word: u64) -> u64 {
    (word & !FLUSH) | PENDING
}

/// The word after the owner of `word` gives its deferral up: pending and flush cleared, the
/// stamp and the generation kept, so the next admission is Deferred inside the window and Now
/// past it, as if nothing had been claimed.
#[inline(always)]
pub(crate) const fn released(word: u64) -> u64 {
    word & !(PENDING | FLUSH)
}

/// The word after someone other than its owner withdraws the deferral of `word` (a cancel):
/// released, and marked so that the owner's word never comes back: the generation advances,
/// or, when it would wrap, the stamp moves on by 1 us (the window then ends 1 us later).
#[inline]
pub(crate) const fn cancelled(word: u64) -> u64 {
    let word = released(word);
    if generation(word) + 1 < (1 << GENERATION_BITS) {
        word + (1 << GENERATION_SHIFT)
    } else {
        let after = stamp(word) + 1;
        let after = if after > STAMP_MASK {
            STAMP_MASK
        } else {
            after
        };
        STAMPED | after
    }
}

/// What an admission decides from the word it saw and the time it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Run at once; install the word.
    Now(u64),
    /// Claim the deferral; install the word.
    Deferred(u64),
    /// A deferral is pending: leave the word as it is.
    Coalesced,
    /// Leading-only, inside the window: leave the word as it is; nothing covers this call.
    Suppressed,
    /// The pending deferral outlived its lease: run at once in its place; install the word.
    TakeOver(u64),
}

/// The decision table, as a pure function of the current word, the time and the rules.
#[inline(always)]
pub(crate) fn decide(word: u64, now: u64, rules: &Rules) -> Decision {
    if is_pending(word) {
        if lease_expired(word, now, rules) {
            Decision::TakeOver(taken_over(word, now))
        } else {
            Decision::Coalesced
        }
    } else if window_passed(word, now, rules.threshold) {
        match rules.mode {
            Mode::TrailingOnly => Decision::Deferred(claimed(stamped(word, now))),
            Mode::LeadingAndTrailing | Mode::LeadingOnly => Decision::Now(stamped(word, now)),
        }
    } else {
        match rules.mode {
            Mode::LeadingOnly => Decision::Suppressed,
            Mode::LeadingAndTrailing | Mode::TrailingOnly => Decision::Deferred(claimed(word)),
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_word() -> impl Strategy<Value = u64> {
        // Every reachable word: fresh, idle, pending, pending and flushed.
        (0..=STAMP_MASK, 0..(1u64 << GENERATION_BITS), 0..4u8).prop_map(|(stamp, gen, kind)| {
            let base = stamp | (gen << GENERATION_SHIFT) | STAMPED;
            match kind {
                0 => FRESH,
                1 => base,
                2 => base | PENDING,
                _ => base | PENDING | FLUSH,
            }
        })
    }

    fn any_mode() -> impl Strategy<Value = Mode> {
        prop_oneof![
            Just(Mode::LeadingAndTrailing),
            Just(Mode::LeadingOnly),
            Just(Mode::TrailingOnly)
        ]
    }

    fn any_rules() -> impl Strategy<Value = Rules> {
        (
            0..=MAX_THRESHOLD_NANOS,
            any_mode(),
            prop_oneof![Just(NO_LEASE), 0..=MAX_THRESHOLD_NANOS],
        )
            .prop_map(|(threshold, mode, lease)| Rules {
                threshold,
                mode,
                lease,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        // Over every reachable word, reading and rule set, `decide` follows the table.
        #[test]
        fn decide_follows_the_table(word in any_word(), now in any::<u64>(), rules in any_rules()) {
            let passed = !is_stamped(word)
                || clamp(now).saturating_sub(stamp_nanos(word)) >= rules.threshold;
            match decide(word, now, &rules) {
                Decision::Coalesced => {
                    prop_assert!(is_pending(word));
                    prop_assert!(!lease_expired(word, now, &rules));
                }
                Decision::TakeOver(next) => {
                    prop_assert!(is_pending(word) && rules.lease != NO_LEASE);
                    prop_assert!(
                        clamp(now) as u128
                            >= stamp_nanos(word) as u128 + rules.threshold as u128 + rules.lease as u128
                    );
                    prop_assert!(!is_pending(next) && is_stamped(next));
                    prop_assert!(stamp(next) > stamp(word) || stamp(word) == STAMP_MASK);
                    prop_assert!(stamp_nanos(next) >= clamp(now));
                }
                Decision::Suppressed => {
                    prop_assert_eq!(rules.mode, Mode::LeadingOnly);
                    prop_assert!(!is_pending(word) && !passed);
                }
                Decision::Now(next) => {
                    prop_assert!(!is_pending(word) && passed);
                    prop_assert_ne!(rules.mode, Mode::TrailingOnly);
                    prop_assert!(!is_pending(next) && !is_flushed(next) && is_stamped(next));
                    // The stamp never moves backwards and is the reading, rounded up, when
                    // that is later; the generation lives as long as the stamp.
                    let last = if is_stamped(word) { stamp(word) } else { 0 };
                    prop_assert_eq!(stamp(next), stamp_of(now).max(last));
                    if is_stamped(word) && stamp(next) == stamp(word) {
                        prop_assert_eq!(generation(next), generation(word));
                    } else {
                        prop_assert_eq!(generation(next), 0);
                    }
                }
                Decision::Deferred(next) => {
                    prop_assert!(!is_pending(word));
                    prop_assert_ne!(rules.mode, Mode::LeadingOnly);
                    prop_assert!(is_pending(next) && is_stamped(next) && !is_flushed(next));
                    if passed {
                        // Trailing only, quiet period: the claim opens the window now.
                        prop_assert_eq!(rules.mode, Mode::TrailingOnly);
                        let last = if is_stamped(word) { stamp(word) } else { 0 };
                        prop_assert_eq!(stamp(next), stamp_of(now).max(last));
                    } else {
                        prop_assert_eq!(next, word | PENDING, "a claim inside the window changes only PENDING");
                    }
                }
            }
        }

        // Two stamped readings are at least the threshold apart, and a run is due less than
        // 1 us after the exact deadline (exactly at it on whole microseconds).
        #[test]
        fn stamps_keep_readings_apart(
            threshold in 0..=MAX_THRESHOLD_NANOS,
            earlier in 0..END_NANOS,
            later in 0..END_NANOS,
        ) {
            let word = stamped(FRESH, earlier);
            let due = window_passed(word, later, threshold);
            let (earlier, later, threshold) = (earlier as u128, later as u128, threshold as u128);
            if due {
                prop_assert!(later >= earlier + threshold, "due {} ns after the stamped reading", later as i128 - earlier as i128);
            }
            if later >= earlier + threshold + NANOS_PER_STAMP as u128 - 1 {
                prop_assert!(due, "not due {} ns after, threshold {threshold}", later - earlier);
            }
            if earlier % NANOS_PER_STAMP as u128 == 0 {
                prop_assert_eq!(due, later >= earlier + threshold);
            }
        }

        // No sequence of claims, releases, cancels and runs brings a cancelled or taken-over
        // claim's word back: every later word is ordered after it by (stamp, generation).
        #[test]
        fn revoked_words_never_come_back(
            start in any_word().prop_filter("a claim needs an opened window", |w| is_stamped(*w)),
            ops in proptest::collection::vec((0..5u8, 0..3_000_000u64), 1..400),
        ) {
            let claim = claimed(start);
            let mut word = cancelled(claim);
            let mut now = stamp_nanos(claim);
            for (op, step) in ops {
                word = match op {
                    0 if is_pending(word) => released(word),
                    0 => claimed(word),
                    1 if is_pending(word) => cancelled(word),
                    1 => claimed(word),
                    2 => { now = now.saturating_sub(step); stamped(word, now) }
                    3 => { now = now.saturating_add(step); stamped(word, now) }
                    _ => taken_over(word, now),
                };
                prop_assert_ne!(word & !FLUSH, claim, "a revoked claim's word came back");
                let key = |w: u64| (stamp(w), generation(w));
                prop_assert!(key(word) > key(claim) || stamp(claim) == STAMP_MASK);
            }
        }
    }

    #[test]
    fn the_stamp_holds_five_hundred_years_and_stops_at_its_end() {
        const YEAR: u64 = 31_557_600_000_000_000;
        const { assert!(END_NANOS > 570 * YEAR && END_NANOS < 571 * YEAR) };
        assert_eq!(stamp_of(u64::MAX), STAMP_MASK);
        assert_eq!(stamp_of(END_NANOS), STAMP_MASK);
        // A deadline past the end never comes.
        assert_eq!(deadline(stamped(FRESH, u64::MAX), 1), u64::MAX);
        assert_eq!(deadline(stamped(FRESH, 500 * YEAR), 1), 500 * YEAR + 1);
        // A deadline exactly at the end comes, at the end, as the window's end does.
        let last = stamped(FRESH, END_NANOS - 1_000);
        assert_eq!(deadline(last, 1_000), END_NANOS);
        assert!(window_passed(last, END_NANOS, 1_000));
        assert!(!window_passed(last, END_NANOS - 1, 1_000));
    }

    #[test]
    fn cancels_advance_the_generation_then_the_stamp() {
        let mut word = stamped(FRESH, 7_000);
        for expected in 1..(1 << GENERATION_BITS) {
            word = cancelled(claimed(word));
            assert_eq!((stamp(word), generation(word)), (7, expected));
        }
        word = cancelled(claimed(word));
        assert_eq!(
            (stamp(word), generation(word)),
            (8, 0),
            "wrapped into the stamp"
        );
        assert!(!is_pending(word) && is_stamped(word));
        // A run at a later reading starts the count again; one behind the stamp keeps it.
        let cancelled_twice = cancelled(claimed(cancelled(claimed(word))));
        assert_eq!(generation(stamped(cancelled_twice, 0)), 2);
        assert_eq!(generation(stamped(cancelled_twice, 9_000)), 0);
    }

    #[test]
    fn at_the_end_of_time_cancels_and_takeovers_keep_the_stamp_in_its_field() {
        let last = STAMPED | STAMP_MASK | GENERATION_MASK;
        let cancelled = cancelled(claimed(last));
        assert_eq!(stamp(cancelled), STAMP_MASK);
        assert_eq!(
            cancelled & !STAMP_MASK,
            STAMPED,
            "nothing spilled out of the stamp"
        );
        let taken = taken_over(claimed(STAMPED | STAMP_MASK), u64::MAX);
        assert_eq!(stamp(taken), STAMP_MASK);
        assert_eq!(taken & !STAMP_MASK, STAMPED | GENERATION_MASK & taken);
        assert!(!is_pending(taken));
    }

    #[test]
    fn a_takeover_stamps_its_reading_when_that_is_later() {
        let claim = claimed(stamped(FRESH, 7_000));
        assert_eq!(stamp(taken_over(claim, 50_000)), 50);
        // A reading at or behind the claim's stamp: strictly after it all the same.
        assert_eq!(stamp(taken_over(claim, 7_000)), 8);
        assert_eq!(stamp(taken_over(claim, 0)), 8);
    }

    #[test]
    fn a_zero_threshold_is_always_due() {
        let word = stamped(FRESH, 5_000_000);
        assert!(
            window_passed(word, 0, 0),
            "behind the stamp: no time, and none is needed"
        );
        let rules = Rules {
            threshold: 0,
            mode: Mode::LeadingAndTrailing,
            lease: NO_LEASE,
        };
        assert_eq!(decide(word, 0, &rules), Decision::Now(word));
    }

    #[test]
    fn the_fields_do_not_overlap() {
        let fields = [STAMP_MASK, GENERATION_MASK, FLUSH, STAMPED, PENDING];
        assert_eq!(STAMP_BITS + GENERATION_BITS + 3, 64);
        let mut seen = 0u64;
        for field in fields {
            assert_eq!(seen & field, 0);
            seen |= field;
        }
        assert_eq!(seen, u64::MAX);
    }
}
