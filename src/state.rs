//! The packed state word and the pure decision on it.
//!
//! Everything the throttle knows lives in one `u64`:
//!
//! ```text
//!  63       62        61      60      59 ........ 54   53 ................................ 0
//! +--------+---------+-------+-------+--------------+--------------------------------------+
//! |PENDING | STAMPED | FLUSH | CANCEL |  GENERATION  |  STAMP: clock ticks of 1024 ns       |
//! +--------+---------+-------+-------+--------------+--------------------------------------+
//! ```
//!
//! | PENDING | STAMPED | meaning                                   | next admission |
//! |---------|---------|-------------------------------------------|----------------|
//! | 0       | 0       | fresh: no run yet                         | Now            |
//! | 0       | 1       | idle: last run at STAMP                   | Now past the window, else Deferred |
//! | 1       | 1       | a deferral is pending; its owner will stamp or release | Coalesced |
//!
//! `PENDING` with `STAMPED` clear cannot occur: a deferral is only claimed inside the window
//! of an earlier run.
//!
//! A tick is 1024 ns, so the 54 stamp bits hold every `u64` nanosecond reading a clock can
//! give (2^54 ticks x 2^10 ns = 2^64 ns, about 584 years from the clock's origin): the stamp
//! never wraps. A release compares against the exact word its owner installed; after the
//! owner's run that word cannot come back, since stamps only grow. The generation counts
//! claims, modulo 64: room for a later takeover of a leaked deferral, which will need it to
//! tell an old owner's word from a new one (and must bound what 64 claims at one stamp can
//! alias). Nothing depends on it yet. `FLUSH` and `CANCEL` are reserved and always zero today.
//!
//! This module is pure arithmetic: [`decide`] maps (word, time) to the answer and the next
//! word, and the atomics live in `throttle.rs`.

/// Number of bits holding the stamp.
pub(crate) const STAMP_BITS: u32 = 54;
/// Mask of the stamp, in ticks of [`TICK_NANOS`] since the clock's origin.
pub(crate) const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
/// log2 of [`TICK_NANOS`].
pub(crate) const TICK_SHIFT: u32 = 10;
/// Length of one tick of the stamp, in nanoseconds.
pub(crate) const TICK_NANOS: u64 = 1 << TICK_SHIFT;

/// Position of the generation counter.
pub(crate) const GENERATION_SHIFT: u32 = STAMP_BITS;
/// Number of bits of the generation counter.
pub(crate) const GENERATION_BITS: u32 = 6;
/// Mask of the generation counter, in place.
pub(crate) const GENERATION_MASK: u64 = ((1 << GENERATION_BITS) - 1) << GENERATION_SHIFT;

/// Reserved for cancelling a pending deferral from outside; always zero today.
#[allow(dead_code)]
pub(crate) const CANCEL: u64 = 1 << 60;
/// Reserved for running a pending deferral early; always zero today.
#[allow(dead_code)]
pub(crate) const FLUSH: u64 = 1 << 61;
/// Set once a run has stamped the word; STAMP is meaningless before.
pub(crate) const STAMPED: u64 = 1 << 62;
/// Set while a deferral is pending.
pub(crate) const PENDING: u64 = 1 << 63;

/// Largest window in ticks: thresholds up to 2^52 ticks (2^62 ns, about 146 years) are
/// accepted, so `stamp + window` always fits in a `u64` with room to spare.
pub(crate) const MAX_WINDOW_TICKS: u64 = (1 << 52) + 1;

/// The state a fresh throttle starts in.
pub(crate) const FRESH: u64 = 0;

/// The tick a clock reading falls in.
#[inline(always)]
pub(crate) const fn tick(nanos: u64) -> u64 {
    nanos >> TICK_SHIFT
}

/// The stamp held in `word`.
#[inline(always)]
pub(crate) const fn stamp(word: u64) -> u64 {
    word & STAMP_MASK
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

/// The window, in ticks, that keeps two stamps at least `threshold_nanos` apart on the clock.
///
/// A stamp records the tick its reading fell in, so a reading can lie up to one tick after its
/// stamp. Waiting `ceil(T / tick) + 1` ticks from the earlier stamp therefore puts the later
/// reading at least `T` after the earlier one: at most two ticks (about 2 us) later than an
/// exact clock would. A zero threshold gives a zero window: every call runs at once.
pub(crate) const fn window_ticks(threshold_nanos: u64) -> u64 {
    if threshold_nanos == 0 {
        0
    } else {
        threshold_nanos.div_ceil(TICK_NANOS) + 1
    }
}

/// The first tick at which the next run may stamp, given the word of the last run.
#[inline(always)]
pub(crate) const fn deadline_tick(word: u64, window: u64) -> u64 {
    stamp(word) + window
}

/// Whether a reading at tick `now` lies at or past the end of `word`'s window.
///
/// A reading before the stamp (a clock that stepped backwards) counts as no time: it lies
/// inside the window, never past it.
#[inline(always)]
pub(crate) fn window_passed(word: u64, now: u64, window: u64) -> bool {
    #[cfg(loom)]
    if crate::sync::mutant() == Some(crate::sync::Mutant::WrappingElapsed) {
        return now.wrapping_sub(stamp(word)) >= window;
    }
    now >= deadline_tick(word, window)
}

/// The word after a run stamps at tick `now`: pending cleared, generation kept. The stamp never
/// moves backwards, which only matters for a zero window, where a backward reading may run.
#[inline(always)]
pub(crate) const fn stamped(word: u64, now: u64) -> u64 {
    let last = if word & STAMPED != 0 { stamp(word) } else { 0 };
    let stamp = if now > last { now } else { last };
    (word & GENERATION_MASK) | STAMPED | (stamp & STAMP_MASK)
}

/// The word after a caller claims the deferral: pending set, generation advanced.
#[inline(always)]
pub(crate) const fn claimed(word: u64) -> u64 {
    let generation = (word + (1 << GENERATION_SHIFT)) & GENERATION_MASK;
    (word & !GENERATION_MASK) | generation | PENDING
}

/// The word after the owner of `word` gives its deferral up: pending cleared, the last stamp
/// and the generation kept, so the next admission is Deferred (or Now past the window).
#[inline(always)]
pub(crate) const fn released(word: u64) -> u64 {
    word & !PENDING
}

/// What an admission decides from the word it saw and the tick it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Run at once; install the word.
    Now(u64),
    /// Claim the deferral; install the word.
    Deferred(u64),
    /// A deferral is pending: leave the word as it is.
    Coalesced,
}

/// SPEC's decision table, as a pure function of the current word and the time.
#[inline(always)]
pub(crate) fn decide(word: u64, now: u64, window: u64) -> Decision {
    if is_pending(word) {
        Decision::Coalesced
    } else if word & STAMPED == 0 || window_passed(word, now, window) {
        Decision::Now(stamped(word, now))
    } else {
        Decision::Deferred(claimed(word))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ANY_TICK: core::ops::RangeInclusive<u64> = 0..=STAMP_MASK;

    fn any_word() -> impl Strategy<Value = u64> {
        // Every reachable word: fresh, or stamped with or without a deferral pending.
        (ANY_TICK, 0..(1u64 << GENERATION_BITS), 0..3u8).prop_map(|(stamp, gen, kind)| {
            let base = stamp | (gen << GENERATION_SHIFT);
            match kind {
                0 => FRESH | (gen << GENERATION_SHIFT),
                1 => base | STAMPED,
                _ => base | STAMPED | PENDING,
            }
        })
    }

    proptest! {
        // Over every reachable word, tick and window, `decide` follows SPEC's table.
        #[test]
        fn decide_follows_the_table(word in any_word(), now in ANY_TICK, window in 0..=MAX_WINDOW_TICKS) {
            match decide(word, now, window) {
                Decision::Coalesced => prop_assert!(is_pending(word)),
                Decision::Now(next) => {
                    prop_assert!(!is_pending(word));
                    prop_assert!(word & STAMPED == 0 || now >= stamp(word) + window);
                    prop_assert!(!is_pending(next));
                    prop_assert!(next & STAMPED != 0);
                    prop_assert_eq!(generation(next), generation(word));
                    // The stamp never moves backwards, and is the reading when that is later.
                    if word & STAMPED != 0 {
                        prop_assert_eq!(stamp(next), now.max(stamp(word)));
                    } else {
                        prop_assert_eq!(stamp(next), now);
                    }
                }
                Decision::Deferred(next) => {
                    prop_assert!(!is_pending(word) && word & STAMPED != 0);
                    prop_assert!(now < stamp(word) + window);
                    prop_assert!(is_pending(next));
                    prop_assert_eq!(stamp(next), stamp(word));
                    prop_assert_eq!(generation(next), (generation(word) + 1) % (1 << GENERATION_BITS));
                    prop_assert_eq!(released(next), next & !PENDING);
                    prop_assert_ne!(released(next), word, "a release must not recreate the word a claim replaced");
                }
            }
        }

        // Two ticks `window_ticks(T)` apart hold readings at least T nanoseconds apart.
        #[test]
        fn window_keeps_readings_apart(threshold in 0..=(1u64 << 62), earlier in 0..(u64::MAX >> 2)) {
            let window = window_ticks(threshold);
            prop_assert!(window <= MAX_WINDOW_TICKS);
            // The earliest reading that may stamp after a stamp at tick(earlier).
            let later = (tick(earlier) + window) << TICK_SHIFT;
            prop_assert!(later >= earlier + threshold);
            // ...and no more than two ticks late.
            prop_assert!(later < earlier + threshold + 2 * TICK_NANOS);
        }
    }

    #[test]
    fn the_stamp_holds_every_nanosecond_reading() {
        assert_eq!(tick(u64::MAX), STAMP_MASK);
        // A deadline past the last tick is still computed without overflow.
        assert!(deadline_tick(STAMPED | STAMP_MASK, MAX_WINDOW_TICKS) > STAMP_MASK);
    }

    #[test]
    fn the_fields_do_not_overlap() {
        let fields = [STAMP_MASK, GENERATION_MASK, CANCEL, FLUSH, STAMPED, PENDING];
        let mut seen = 0u64;
        for field in fields {
            assert_eq!(seen & field, 0);
            seen |= field;
        }
        assert_eq!(seen, u64::MAX);
    }
}
