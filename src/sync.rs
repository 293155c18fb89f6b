//! The only module that names the atomic types, locks, threads and waits.
//!
//! Under `cfg(loom)` every atomic, lock, park, yield and wait goes through loom so that its
//! model checker sees each of them; otherwise they are `core`/`std`'s own. No other file
//! imports them directly (tokio's `src/loom/` and crossbeam's `primitive` module work the same
//! way). Reference counts stay `std`'s `Arc`: a detached throttle's job is shared as an
//! `Arc<dyn Entry>` with a shared timer, a coercion loom's `Arc` cannot make, and no model
//! checks a count.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Mutex;
#[cfg(loom)]
pub(crate) use loom::thread::{current, park, Builder as ThreadBuilder, JoinHandle, Thread};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Mutex;
#[cfg(not(loom))]
pub(crate) use std::thread::{current, park, Builder as ThreadBuilder, JoinHandle, Thread};

use core::time::Duration;

/// Gives other threads a chance to run. Under loom this is a scheduling point, which a model
/// needs so that a waiting thread cannot spin forever.
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Blocks the calling thread for about `duration`, or until it is unparked. Under loom, time is
/// mocked, so a timed wait is only a yield: the model's clock decides when a deadline passed.
pub(crate) fn park_timeout(duration: Duration) {
    #[cfg(loom)]
    {
        let _ = duration;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    std::thread::park_timeout(duration);
}

/// One step of a busy wait (only the real clock busy-waits).
#[cfg(not(loom))]
pub(crate) fn spin() {
    core::hint::spin_loop();
}

/// Locks `mutex`, ignoring poisoning: every critical section in the crate leaves its data
/// consistent whatever panics (they only move a waker in or out).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> impl core::ops::DerefMut<Target = T> + '_ {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Locks `mutex` if no one holds it, ignoring poisoning as [`lock`] does.
pub(crate) fn try_lock<T>(mutex: &Mutex<T>) -> Option<impl core::ops::DerefMut<Target = T> + '_> {
    match mutex.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A real-time stopwatch for bounds that must hold whatever the throttle's clock does (a
/// shutdown grace). Under loom there is no real time: every bound has already elapsed, so a
/// model explores the path taken once it has.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    #[cfg(not(loom))]
    started: std::time::Instant,
}

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Self {
            #[cfg(not(loom))]
            started: std::time::Instant::now(),
        }
    }

    /// Whether `bound` has passed since `start`.
    pub(crate) fn has_elapsed(&self, bound: Duration) -> bool {
        #[cfg(loom)]
        {
            let _ = bound;
            true
        }
        #[cfg(not(loom))]
        {
            self.started.elapsed() >= bound
        }
    }

    /// How much of `bound` is left, zero once it has passed.
    pub(crate) fn left_of(&self, bound: Duration) -> Duration {
        #[cfg(loom)]
        {
            let _ = bound;
            Duration::ZERO
        }
        #[cfg(not(loom))]
        {
            bound.saturating_sub(self.started.elapsed())
        }
    }
}

/// Deliberately broken variants of the algorithm, compiled only under `cfg(loom)` or
/// `cfg(atomic_throttle_mutants)` (never in a normal build).
///
/// `loom-tests` and the chaos test select one with the environment variable
/// `ATOMIC_THROTTLE_MUTANT` and assert that the checks written to catch it fail: the negative
/// controls that show each check catches what it claims. Without the variable none is active.
#[cfg(any(loom, atomic_throttle_mutants))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mutant {
    /// The decision is a load and a plain store instead of a compare-and-swap.
    LoadStore,
    /// The owner clears "pending" and writes its stamp in two steps instead of one.
    SplitStamp,
    /// Dropping a deferral does not release it (the Neutron flag with a crashed owner).
    NoRelease,
    /// Releasing clears "pending" with a blind `fetch_and` instead of comparing the exact word.
    BlindRelease,
    /// Every ordering on the state word is `Relaxed`.
    Relaxed,
    /// Elapsed time is a wrapping subtraction, so a clock step backwards looks like a long wait.
    WrappingElapsed,
    /// A detached throttle's caller hands a deferral to the timer thread without waking it.
    NoUnpark,
    /// A deferral that has stamped its run still releases its claim when dropped.
    ReleaseAfterRun,
    /// A takeover hands the abandoned claim over as it is, instead of stamping past it.
    TakeoverKeepsClaim,
    /// `cancel` and `flush` change the word without waking the waiting owner.
    SilentEvents,
    /// Decisions keep using the threshold the throttle was built with.
    StaleThreshold,
    /// A counted call adds to its cell with a plain load and store on a shared cell.
    SharedCount,
    /// The latest value is written after the admission instead of before it.
    LateValue,
    /// The shared timer files a deferral without waking its thread.
    SilentTimer,
    /// The keyed table reuses a slot without checking that it is idle.
    EvictPending,
    /// The keyed table trusts an entry's key without reading it again after its state word.
    UncheckedKey,
    /// The keyed table hands an entry over with its state word as it was, not moved on.
    HandoverKeepsWord,
    /// The keyed table completes an insert without publishing it on its class word first.
    UnserializedInserts,
    /// `AsyncThrottled` gives a cancelled owner's deferral up instead of handing it on.
    NoHandOff,
    /// A detached throttle's caller that sees the throttle closed answers Closed without
    /// checking that it took its run back (the serving side's last look may have run it).
    BlindTakeBack,
}

#[cfg(any(loom, atomic_throttle_mutants))]
const MUTANTS: &[(&str, Mutant)] = &[
    ("load_store", Mutant::LoadStore),
    ("split_stamp", Mutant::SplitStamp),
    ("no_release", Mutant::NoRelease),
    ("blind_release", Mutant::BlindRelease),
    ("relaxed", Mutant::Relaxed),
    ("wrapping_elapsed", Mutant::WrappingElapsed),
    ("no_unpark", Mutant::NoUnpark),
    ("release_after_run", Mutant::ReleaseAfterRun),
    ("takeover_keeps_claim", Mutant::TakeoverKeepsClaim),
    ("silent_events", Mutant::SilentEvents),
    ("stale_threshold", Mutant::StaleThreshold),
    ("shared_count", Mutant::SharedCount),
    ("late_value", Mutant::LateValue),
    ("silent_timer", Mutant::SilentTimer),
    ("evict_pending", Mutant::EvictPending),
    ("unchecked_key", Mutant::UncheckedKey),
    ("handover_keeps_word", Mutant::HandoverKeepsWord),
    ("unserialized_inserts", Mutant::UnserializedInserts),
    ("no_hand_off", Mutant::NoHandOff),
    ("blind_take_back", Mutant::BlindTakeBack),
];

#[cfg(any(loom, atomic_throttle_mutants))]
pub(crate) fn active_mutant() -> Option<Mutant> {
    static MUTANT: std::sync::OnceLock<Option<Mutant>> = std::sync::OnceLock::new();
    *MUTANT.get_or_init(|| {
        let name = std::env::var("ATOMIC_THROTTLE_MUTANT").ok()?;
        match MUTANTS.iter().find(|(known, _)| *known == name) {
            Some((_, mutant)) => Some(*mutant),
            None => panic!(
                "ATOMIC_THROTTLE_MUTANT={name:?} names no mutant; expected one of {:?}",
                MUTANTS.iter().map(|(known, _)| *known).collect::<Vec<_>>()
            ),
        }
    })
}

/// Whether `which` is the active mutant; always false outside loom.
#[inline(always)]
pub(crate) fn is_mutant(#[allow(unused_variables)] which: MutantName) -> bool {
    #[cfg(any(loom, atomic_throttle_mutants))]
    {
        active_mutant() == Some(which.0)
    }
    #[cfg(not(any(loom, atomic_throttle_mutants)))]
    {
        false
    }
}

/// A mutant's name as the code under test refers to it: a real [`Mutant`] when mutants are
/// compiled, nothing otherwise, so that the checks compile away.
#[derive(Clone, Copy)]
pub(crate) struct MutantName(#[cfg(any(loom, atomic_throttle_mutants))] pub(crate) Mutant);

/// Names a mutant for [`is_mutant`] in code that also builds without loom.
macro_rules! mutant {
    ($name:ident) => {
        $crate::sync::MutantName(
            #[cfg(any(loom, atomic_throttle_mutants))]
            $crate::sync::Mutant::$name,
        )
    };
}
pub(crate) use mutant;

/// `ordering`, or `Relaxed` when the `Relaxed` mutant is active.
#[inline(always)]
pub(crate) fn ordering(ordering: Ordering) -> Ordering {
    if is_mutant(mutant!(Relaxed)) {
        return Ordering::Relaxed;
    }
    ordering
}

/// A sequentially consistent fence: for the two sides of a store-buffering handshake.
pub(crate) fn fence_seq_cst() {
    #[cfg(loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    core::sync::atomic::fence(Ordering::SeqCst);
}
