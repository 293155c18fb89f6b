//! Limits a piece of work to one run per threshold, with one deferred trailing run, in a single
//! `AtomicU64`.
//!
//! ```
//! use atomic_throttle::{Admission, Throttle};
//! use std::time::Duration;
//!
//! static PUBLISH: Throttle = Throttle::new(Duration::from_millis(10));
//!
//! match PUBLISH.admit() {
//!     Admission::Now => println!("leading run"),
//!     Admission::Deferred(deferral) => {
//!         deferral.run(|| println!("trailing run, when the window ends")).ok();
//!     }
//!     Admission::Coalesced | Admission::Suppressed { .. } => {} // covered, or leading-only
//! }
//! ```
//!
//! The first call with no run in the last threshold runs at once; the first call inside the
//! window becomes the single *deferred* call, which runs when the window ends; calls while it
//! is pending are *coalesced* into it. [`Throttle::builder`] chooses another [`Mode`]
//! (leading only, trailing only), a lease, counters and a clock. [`Throttled`] wraps a function
//! the way Neutron's `throttler` decorator does; [`AsyncThrottled`] wraps async work on any
//! runtime; [`Detached`] runs the deferred call on a timer thread, so that no caller ever
//! waits; [`throttled!`] throttles one call site.
//!
//! # Guarantees
//!
//! 1. **Spacing.** Any two runs of a throttle are stamped at least the threshold apart on its
//!    clock, whichever paths produced them (leading after trailing, after a release, a cancel,
//!    a takeover, a clock fault). The one exception is [`Throttle::flush`], which a caller asks
//!    for; the next window counts from the flushed run. Across [`Throttle::set_threshold`],
//!    two runs are at least the smaller threshold apart, and the new one once the change is
//!    visible. *What is spaced:* a run's stamp is taken by the decision that lets it start
//!    ([`Throttle::last_run`] reads it), and its work starts after it, on the same thread; a
//!    thread descheduled in between starts its work late. On a [`Detached`] timer thread the
//!    stamp is taken as the work starts, so the work's starts there are spaced.
//! 2. **No stranding.** At most one deferral exists at a time. Once its owner drops it (a
//!    panic, a cancelled future, an early return), no call is Coalesced until a new owner
//!    claims it. With a [lease](ThrottleBuilder::lease), an owner that never comes back (leaked
//!    with `mem::forget`, blocked forever) is taken over once its deadline plus the lease has
//!    passed, and its late run or release is refused. This holds for every component:
//!    [`Deferral`] and [`OwnedDeferral`], [`Throttled`], [`AsyncThrottled`] (a cancelled
//!    caller's run is handed on, or given up), and [`Detached`], whose timer thread never
//!    leaves a deferral pending that it will not run (if it ends, calls are answered
//!    [`Dispatch::Closed`]).
//! 3. **Coverage.** While an owner lives, every Coalesced call is followed by a run stamped
//!    after the state that call saw. A [`Detached`] and (by default) an [`AsyncThrottled`]
//!    cover their Coalesced calls whatever happens to the callers.
//! 4. **Progress.** Admission never blocks, allocates or panics, and is lock-free: a failed
//!    compare-and-swap means another caller's succeeded.
//! 5. **Clock faults.** A clock that steps backwards counts the step as no time, so a step of
//!    `d` delays the next run by up to `d`; one that jumps far forward causes no overflow.
//!    A jump forward is not undone: one reading far in the future stamps a run there, and
//!    the throttle then answers as if that run had just happened until the clock catches
//!    up (a [lease](ThrottleBuilder::lease) cannot help, as the stamp is a run's, not an
//!    owner's). The [`DefaultClock`] never goes back and never jumps ahead of real time;
//!    a custom clock should be monotonic.
//!    Neither causes a panic, a stranded deferral or a second run inside the threshold. The
//!    [`DefaultClock`] switches to the OS clock if its TSC is caught stepping back by more
//!    than 10 ms between threads.
//! 6. **Bad input.** A threshold, lease or shutdown grace over [`Throttle::MAX_THRESHOLD`]
//!    (about 146 years) is refused with a [`ThresholdError`], never truncated.
//! 7. **Lifetime.** Stamps hold 2^54 microseconds of the clock, about 570 years from its
//!    origin, and never wrap; later readings count as that last instant, where time stops.
//! 8. **Exactness.** On a clock whose readings are whole microseconds (every test clock in
//!    practice), a deferral is due exactly at the last stamp plus the threshold: one
//!    nanosecond before, it is not; at it, it is. On any clock a run is due less than 1 us
//!    after that.
//!
//! These are checked by behaviour tests, a property test against a sequential model, a
//! multi-thread stress test, a chaos test, and loom models of every interleaving (the
//! `loom-tests` crate), each model with a deliberately broken variant of the crate that it
//! catches.
//!
//! # Memory ordering
//!
//! - A caller whose admission sees a run's stamp or a deferral's claim or release
//!   (Now, Deferred or Coalesced) also sees everything the caller that wrote it did before
//!   its own admission, release or stamp: the state word is read with `Acquire` and changed
//!   only by `AcqRel` compare-and-swaps.
//! - The throttle does not order one run's work with the next: the work starts after its
//!   stamp, and a later caller synchronizes with that stamp, not with the work. Runs can
//!   overlap when the work is slower than the threshold.
//! - A Coalesced answer from [`Throttle::admit`] writes nothing, so it gives **no**
//!   happens-before edge from the coalesced caller to the run that covers it: that run may
//!   not see what the coalesced caller wrote just before. If the covering run must read it,
//!   call [`Throttle::admit_publishing`] (or build the wrappers `publishing(true)`), whose
//!   read-modify-write publishes the caller's earlier writes to the covering run, at the price
//!   of a write to the shared word on every call. Both behaviours are checked under loom.
//!
//! # Features
//!
//! - `tokio` (off by default): [`Deferral::wait_async`] on tokio's timer,
//!   [`Throttled::call_async`], [`TokioRuntime`] for [`AsyncThrottled`], and [`TokioClock`],
//!   which follows tokio's paused test clock.
//!
//! Under `cfg(loom)` the crate builds on loom's atomics, so code that uses it can be
//! model-checked; [`DefaultClock`] is then a virtual clock.
//!
//! # MSRV
//!
//! Rust 1.87 (quanta 0.13 needs it; async closures need 1.85). The crate is built and tested
//! on the current stable toolchain.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

mod async_throttled;
#[cfg(feature = "tokio")]
mod async_tokio;
mod clock;
mod counters;
mod covered;
mod deferral;
mod detached;
mod error;
mod keyed;
mod latest;
mod macros;
mod panics;
mod state;
mod sync;
#[cfg(all(test, not(loom)))]
mod test_support;
mod throttle;
mod throttled;
mod timer;
mod wait;
mod word;

pub use crate::async_throttled::{AsyncThrottled, Job, OnCancel, Runtime, Task};
#[cfg(feature = "tokio")]
pub use crate::async_tokio::{TokioClock, TokioRuntime};
pub use crate::clock::{Clock, ClockSource, CoarseClock, DefaultClock, ManualClock, Wait, Waiter};
pub use crate::counters::Stats;
pub use crate::deferral::{Deferral, NotRun, OwnedDeferral, Revoked};
pub use crate::detached::{Detached, DetachedBuilder, Dispatch, LeadingRun, Shutdown};
pub use crate::error::ThresholdError;
pub use crate::keyed::{
    KeyedAdmission, KeyedDeferral, KeyedThrottle, KeyedThrottleBuilder, KeyedThrottleRef,
    OwnedKeyedAdmission, OwnedKeyedDeferral,
};
pub use crate::latest::Latest;
pub use crate::state::Mode;
pub use crate::throttle::{Admission, OwnedAdmission, Throttle, ThrottleBuilder, ThrottleRef};
pub use crate::throttled::{Outcome, Throttled};
pub use crate::timer::{SharedTimer, SharedTimerBuilder};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// What the macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use core::sync::atomic::AtomicU64;
    pub use core::sync::atomic::Ordering::Relaxed;
    #[cfg(loom)]
    pub use loom::lazy_static;
}
