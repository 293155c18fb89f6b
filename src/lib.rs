//! Limits a piece of work to one run per threshold, with one deferred trailing run, in a single
//! `AtomicU64`.
//!
//! ```
//! use atomic_throttle::{Admission, Throttle};
//! use std::time::Duration;
//!
//! let throttle = Throttle::new(Duration::from_millis(10));
//! match throttle.admit() {
//!     Admission::Now => println!("leading run"),
//!     Admission::Deferred(deferral) => deferral.run(|| println!("trailing run")),
//!     Admission::Coalesced => {} // the pending trailing run covers this call
//! };
//! ```
//!
//! The first call with no run in the last threshold runs at once; the first call inside the
//! window becomes the single *deferred* call, which runs when the window ends; calls while it
//! is pending are *coalesced* into it. [`Throttled`] wraps a function the way Neutron's
//! `throttler` decorator does; [`Detached`] runs the deferred call on its own timer thread,
//! so that no caller ever waits.
//!
//! # Guarantees
//!
//! 1. **Spacing.** Any two runs are stamped at least the threshold apart on the throttle's
//!    clock, whichever paths produced them.
//! 2. **No stranding.** At most one deferral exists at a time. Once its owner drops it (a
//!    panic, a cancelled future, an early return), no call is Coalesced until a new owner
//!    claims it.
//! 3. **Coverage.** While an owner lives, every Coalesced call is followed by a run stamped
//!    after the state that call saw.
//! 4. **Progress.** Admission never blocks, allocates or panics, and is lock-free: a failed
//!    compare-and-swap means another caller's succeeded.
//! 5. **Clock faults.** A clock that steps backwards counts the step as no time, so a step
//!    of `d` delays the next run by up to `d` (a reading that jumps forward and comes back is
//!    such a step); one that jumps far forward causes no overflow. Neither causes a panic, a
//!    stranded deferral or a second run inside the threshold. A clock that reaches the end of
//!    its `u64` range (584 years past its origin) stops time: the window then never ends, and
//!    [`Deferral::run`] waits forever.
//! 6. **Bad input.** A threshold over [`Throttle::MAX_THRESHOLD`] (about 146 years) is refused
//!    with a [`ThresholdError`], never truncated.
//! 7. **Lifetime.** Stamps hold every `u64` nanosecond reading of the clock (about 584 years
//!    from its origin) and never wrap.
//!
//! These are checked by behaviour tests, a property test against a sequential model, a
//! multi-thread stress test and loom models of every interleaving (the `loom-tests` crate).
//! [`mem::forget`](core::mem::forget) on a deferral is outside them: it strands the deferral.
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
//!   call [`Throttle::admit_publishing`], whose read-modify-write publishes the caller's
//!   earlier writes to the covering run, at the price of a write to the shared word on every
//!   call. Both behaviours are checked under loom.
//!
//! # Async
//!
//! A deferral waits on any executor's timer with [`Deferral::wait_with`]: the future wakes
//! until the deadline has passed, stamps the run and completes; dropping it first (a
//! cancelled task, a lost `select!` branch) gives the deferral up, as dropping the deferral
//! does. [`Deferral::try_run`] serves event loops that poll instead.
//!
//! # Features
//!
//! - `tokio` (off by default): `Deferral::wait_async` and `OwnedDeferral::wait_async` on
//!   tokio's timer, `Throttled::call_async`, `AsyncThrottled` for async work, and
//!   `TokioClock`, which follows tokio's paused test clock.
//!
//! Under `cfg(loom)` the crate builds on loom's atomics, so code that uses it can be
//! model-checked; [`DefaultClock`] is then a virtual clock.
//!
//! # MSRV
//!
//! Rust 1.80 is declared; the crate is built and tested on the current stable toolchain.
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]

#[cfg(feature = "tokio")]
mod async_tokio;
mod clock;
mod counters;
mod deferral;
mod detached;
mod error;
mod keyed;
mod panics;
mod state;
mod sync;
mod throttle;
mod throttled;
mod wait;
mod word;

#[cfg(feature = "tokio")]
pub use crate::async_tokio::{AsyncThrottled, TokioClock};
pub use crate::clock::{Clock, ClockSource, CoarseClock, DefaultClock, ManualClock, Wait, Waiter};
pub use crate::counters::Stats;
pub use crate::deferral::{Deferral, NotRun, OwnedDeferral, Revoked};
pub use crate::detached::{Detached, DetachedBuilder, Dispatch, LeadingRun, Shutdown};
pub use crate::error::ThresholdError;
pub use crate::keyed::{
    KeyedAdmission, KeyedDeferral, KeyedThrottle, KeyedThrottleBuilder, KeyedThrottleRef,
    OwnedKeyedAdmission, OwnedKeyedDeferral,
};
pub use crate::state::Mode;
pub use crate::throttle::{Admission, OwnedAdmission, Throttle, ThrottleBuilder, ThrottleRef};
pub use crate::throttled::{Outcome, Throttled};

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
