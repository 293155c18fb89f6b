//! The only module that names the atomic types.
//!
//! Under `cfg(loom)` every atomic, `Arc`, yield and wait goes through loom so that its model
//! checker sees each of them; otherwise they are `core`/`std`'s own. No other file imports
//! atomics directly (tokio's `src/loom/` and crossbeam's `primitive` module work the same way).

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, Ordering};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(loom)]
pub(crate) use loom::sync::atomic::AtomicBool;
#[cfg(loom)]
pub(crate) use loom::thread::{park, Builder as ThreadBuilder, JoinHandle, Thread};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(loom))]
pub(crate) use std::thread::{park, Builder as ThreadBuilder, JoinHandle, Thread};

use core::time::Duration;

/// Gives other threads a chance to run. Under loom this is a scheduling point, which a model
/// needs so that a waiting thread cannot spin forever.
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Blocks the calling thread for about `duration`. Under loom, time is mocked, so a wait is
/// only a yield: the clock in the model decides when the deadline has passed.
pub(crate) fn sleep(duration: Duration) {
    #[cfg(loom)]
    {
        let _ = duration;
        loom::thread::yield_now();
    }
    #[cfg(not(loom))]
    std::thread::sleep(duration);
}

/// One step of a busy wait. Only the real clock busy-waits; under loom every wait is a
/// yield (see `sleep`), so a model can never spin unbounded.
#[cfg(not(loom))]
pub(crate) fn spin() {
    core::hint::spin_loop();
}

/// Deliberately broken variants of the algorithm, compiled only under `cfg(loom)`.
///
/// `loom-tests` selects one with the environment variable `ATOMIC_THROTTLE_MUTANT` and asserts
/// that the models written to catch it fail: the negative controls that show each model checks
/// what it claims. Without the variable (the normal case) none is active.
#[cfg(loom)]
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
}

#[cfg(loom)]
pub(crate) fn mutant() -> Option<Mutant> {
    static MUTANT: std::sync::OnceLock<Option<Mutant>> = std::sync::OnceLock::new();
    *MUTANT.get_or_init(|| {
        let name = std::env::var("ATOMIC_THROTTLE_MUTANT").ok()?;
        Some(match name.as_str() {
            "load_store" => Mutant::LoadStore,
            "split_stamp" => Mutant::SplitStamp,
            "no_release" => Mutant::NoRelease,
            "blind_release" => Mutant::BlindRelease,
            "relaxed" => Mutant::Relaxed,
            "wrapping_elapsed" => Mutant::WrappingElapsed,
            "no_unpark" => Mutant::NoUnpark,
            other => panic!(
                "ATOMIC_THROTTLE_MUTANT={other:?} names no mutant; expected one of load_store, \
                 split_stamp, no_release, blind_release, relaxed, wrapping_elapsed, no_unpark"
            ),
        })
    })
}

/// `ordering`, or `Relaxed` when the `Relaxed` mutant is active.
#[inline(always)]
pub(crate) fn ordering(ordering: Ordering) -> Ordering {
    #[cfg(loom)]
    if mutant() == Some(Mutant::Relaxed) {
        return Ordering::Relaxed;
    }
    ordering
}
