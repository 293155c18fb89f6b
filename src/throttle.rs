//! The throttle: the CAS loop over the packed state word.

use crate::clock::{nanos_saturating, Clock, DefaultClock};
use crate::deferral::{Deferral, OwnedAdmission, OwnedDeferral};
use crate::error::ThresholdError;
use crate::state::{self, Decision};
use crate::sync::{self, AtomicU64, Ordering};
use core::fmt;
use core::future::Future;
use core::time::Duration;
use crossbeam_utils::CachePadded;
use std::sync::Arc;

/// Limits a piece of work to one run per threshold, with one deferred trailing run.
///
/// [`admit`](Throttle::admit) answers each call with an [`Admission`]: run [`Now`], own the
/// single [`Deferred`] run that starts when the window ends, or be [`Coalesced`] into the
/// deferral already pending. The whole state is one cache-padded `AtomicU64` changed only by
/// compare-and-swap; admission never blocks, allocates or panics, and a Coalesced answer is one
/// atomic load.
///
/// [`Now`]: Admission::Now
/// [`Deferred`]: Admission::Deferred
/// [`Coalesced`]: Admission::Coalesced
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Admission, ManualClock, Throttle};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let throttle = Throttle::with_clock(Duration::from_millis(100), clock.clone())?;
///
/// assert!(throttle.admit().is_now()); // leading run
/// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
/// assert!(throttle.admit().is_coalesced()); // covered by the pending deferral
///
/// // Waiting on a ManualClock advances it to the deadline.
/// let ran_at = deferral.run(|| clock.now());
/// assert!(ran_at >= Duration::from_millis(100));
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
pub struct Throttle<C: Clock = DefaultClock> {
    /// Everything admission touches shares one cache line, padded so that no neighbouring
    /// data shares it.
    inner: CachePadded<Inner<C>>,
}

struct Inner<C> {
    /// The packed state: see `state.rs` for the layout.
    state: AtomicU64,
    /// The threshold in ticks, as `state::window_ticks` rounds it.
    window: u64,
    threshold: Duration,
    clock: C,
}

/// The answer to one admission.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Admission, Throttle};
/// use std::time::Duration;
///
/// let throttle = Throttle::new(Duration::from_millis(1));
/// match throttle.admit() {
///     Admission::Now => println!("run the work now"),
///     Admission::Deferred(deferral) => deferral.run(|| println!("run it at the deadline")),
///     Admission::Coalesced => println!("the pending deferral covers this call"),
/// };
/// ```
#[must_use = "a Deferred answer releases its deferral when dropped; match on the answer"]
#[derive(Debug)]
pub enum Admission<'a, C: Clock = DefaultClock> {
    /// No run in the last threshold: the caller runs the work at once. The throttle has
    /// already stamped the run.
    Now,
    /// The caller owns the single deferred run: it must run it at the deadline, or drop it to
    /// give it up.
    Deferred(Deferral<'a, C>),
    /// A deferral is pending; its run will come after this call (SPEC G3).
    Coalesced,
}

impl<C: Clock> Admission<'_, C> {
    /// Whether the answer is [`Admission::Now`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// assert!(Throttle::new(Duration::from_secs(1)).admit().is_now());
    /// ```
    pub fn is_now(&self) -> bool {
        matches!(self, Admission::Now)
    }

    /// Whether the answer is [`Admission::Deferred`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let throttle = Throttle::new(Duration::from_secs(1));
    /// let _ = throttle.admit();
    /// assert!(throttle.admit().is_deferred());
    /// ```
    pub fn is_deferred(&self) -> bool {
        matches!(self, Admission::Deferred(_))
    }

    /// Whether the answer is [`Admission::Coalesced`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let throttle = Throttle::new(Duration::from_secs(1));
    /// let _ = throttle.admit();
    /// let _owner = throttle.admit();
    /// assert!(throttle.admit().is_coalesced());
    /// ```
    pub fn is_coalesced(&self) -> bool {
        matches!(self, Admission::Coalesced)
    }
}

impl Throttle<DefaultClock> {
    /// The largest threshold a throttle accepts: 2^62 ns, about 146 years.
    pub const MAX_THRESHOLD: Duration =
        Duration::from_nanos((state::MAX_WINDOW_TICKS - 1) << state::TICK_SHIFT);

    /// A throttle on the process's [`DefaultClock`].
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`]; the message says by how much. Use
    /// [`try_new`](Throttle::try_new) for a threshold that comes from input.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let throttle = Throttle::new(Duration::from_millis(250));
    /// assert_eq!(throttle.threshold(), Duration::from_millis(250));
    /// ```
    pub fn new(threshold: Duration) -> Self {
        match Self::try_new(threshold) {
            Ok(throttle) => throttle,
            Err(err) => panic!("Throttle::new: {err}"),
        }
    }

    /// A throttle on the process's [`DefaultClock`], or an error for a threshold it cannot
    /// represent.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// assert!(Throttle::try_new(Duration::ZERO).is_ok());
    /// assert!(Throttle::try_new(Throttle::MAX_THRESHOLD).is_ok());
    /// assert!(Throttle::try_new(Throttle::MAX_THRESHOLD + Duration::from_nanos(1)).is_err());
    /// ```
    pub fn try_new(threshold: Duration) -> Result<Self, ThresholdError> {
        Self::with_clock(threshold, DefaultClock::new())
    }
}

impl<C: Clock> Throttle<C> {
    /// A throttle reading time from `clock`.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::with_clock(Duration::from_secs(1), ManualClock::new())?;
    /// assert!(!throttle.is_pending());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn with_clock(threshold: Duration, clock: C) -> Result<Self, ThresholdError> {
        if threshold > Throttle::MAX_THRESHOLD {
            return Err(ThresholdError::new(threshold));
        }
        Ok(Self {
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(state::FRESH),
                window: state::window_ticks(nanos_saturating(threshold)),
                threshold,
                clock,
            }),
        })
    }

    /// The threshold this throttle was built with.
    ///
    /// Runs are spaced by at least this much on the throttle's clock. The state counts time in
    /// ticks of 1024 ns, so the window can end up to two ticks (about 2 us) after the threshold.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// assert_eq!(Throttle::new(Duration::from_secs(3)).threshold(), Duration::from_secs(3));
    /// ```
    pub fn threshold(&self) -> Duration {
        self.inner.threshold
    }

    /// The clock this throttle reads.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::with_clock(Duration::from_secs(1), ManualClock::new())?;
    /// throttle.clock().advance(Duration::from_secs(2));
    /// assert_eq!(throttle.clock().now_nanos(), 2_000_000_000);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn clock(&self) -> &C {
        &self.inner.clock
    }

    /// Whether a deferral is pending: the next admission would be Coalesced.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let throttle = Throttle::new(Duration::from_secs(1));
    /// let _ = throttle.admit();
    /// let deferral = throttle.admit();
    /// assert!(throttle.is_pending());
    /// drop(deferral);
    /// assert!(!throttle.is_pending());
    /// ```
    pub fn is_pending(&self) -> bool {
        // Acquire: a caller that sees "not pending" after an owner dropped its deferral also
        // sees what that owner did before (pairs with the AcqRel release in `release`).
        state::is_pending(self.load(Ordering::Acquire))
    }

    /// Decides this call: run [`Now`](Admission::Now), own the [`Deferred`](Admission::Deferred)
    /// run, or be [`Coalesced`](Admission::Coalesced) into the pending one.
    ///
    /// Never blocks, allocates or panics. A Coalesced answer is one atomic load, with no clock
    /// read and no write to shared memory; Now and Deferred read the clock once and win one
    /// compare-and-swap (more only when another caller's CAS succeeded in between).
    ///
    /// A Coalesced caller's earlier writes are **not** guaranteed to be visible to the run that
    /// covers it; use [`admit_publishing`](Throttle::admit_publishing) for that (see the crate
    /// docs, "Memory ordering").
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, Throttle};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::new(Duration::from_secs(60));
    /// assert!(matches!(throttle.admit(), Admission::Now));
    /// ```
    #[inline]
    pub fn admit(&self) -> Admission<'_, C> {
        // Acquire: a caller that sees a stamp or a claim sees what its writer did before it
        // (pairs with the AcqRel CASes in `decide_and_install` and `try_stamp`).
        let word = self.load(Ordering::Acquire);
        if state::is_pending(word) {
            return Admission::Coalesced;
        }
        self.decide_and_install(word, &mut 0)
    }

    /// Like [`admit`](Throttle::admit), but also says how many compare-and-swaps this call lost
    /// to other callers: a direct measure of contention, for tests and diagnostics.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let throttle = Throttle::new(Duration::from_secs(1));
    /// let (answer, lost) = throttle.admit_counting_retries();
    /// assert!(answer.is_now());
    /// assert_eq!(lost, 0); // nobody else was calling
    /// ```
    pub fn admit_counting_retries(&self) -> (Admission<'_, C>, u32) {
        let mut lost = 0;
        // Acquire: as in `admit`.
        let word = self.load(Ordering::Acquire);
        if state::is_pending(word) {
            return (Admission::Coalesced, lost);
        }
        let answer = self.decide_and_install(word, &mut lost);
        (answer, lost)
    }

    /// Like [`admit`](Throttle::admit), but a Coalesced caller's earlier writes happen-before
    /// the run that covers it (SPEC G3 with a happens-before edge).
    ///
    /// The price is a read-modify-write of the shared word on every call, Coalesced ones
    /// included, where `admit` only loads it: under contention callers then take the cache
    /// line in turn instead of sharing it. Use it when the covering run must read what the
    /// coalesced callers wrote, such as a "dirty" flag or a queue's tail they pushed to.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::with_clock(Duration::from_millis(5), ManualClock::new())?;
    /// let latest = AtomicU32::new(0);
    /// let _ = throttle.admit_publishing(); // Now
    /// let Admission::Deferred(owner) = throttle.admit_publishing() else { unreachable!() };
    ///
    /// latest.store(7, Relaxed); // Relaxed is enough: admit_publishing publishes it
    /// assert!(throttle.admit_publishing().is_coalesced());
    /// assert_eq!(owner.run(|| latest.load(Relaxed)), 7);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn admit_publishing(&self) -> Admission<'_, C> {
        // AcqRel read-modify-write that changes nothing: Release heads a release sequence that
        // every later change of the word continues (all of them are read-modify-writes), so
        // the owner's stamping CAS (AcqRel, in `try_stamp`) synchronizes with it and this
        // caller's earlier writes happen-before the covering run. Acquire as in `admit`.
        let word = self
            .inner
            .state
            .fetch_or(0, sync::ordering(Ordering::AcqRel));
        if state::is_pending(word) {
            return Admission::Coalesced;
        }
        self.decide_and_install(word, &mut 0)
    }

    /// Like [`admit`](Throttle::admit), for a throttle shared through an [`Arc`]: a Deferred
    /// answer owns a clone of the `Arc`, so the deferral can move to another thread or task.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{OwnedAdmission, Throttle};
    /// use std::{sync::Arc, thread, time::Duration};
    ///
    /// let throttle = Arc::new(Throttle::new(Duration::from_millis(1)));
    /// let _ = throttle.admit_owned(); // Now
    /// if let OwnedAdmission::Deferred(deferral) = throttle.admit_owned() {
    ///     thread::spawn(move || deferral.run(|| println!("trailing run"))).join().unwrap();
    /// }
    /// ```
    #[inline]
    pub fn admit_owned(self: &Arc<Self>) -> OwnedAdmission<C> {
        match self.admit() {
            Admission::Now => OwnedAdmission::Now,
            Admission::Coalesced => OwnedAdmission::Coalesced,
            Admission::Deferred(deferral) => {
                OwnedAdmission::Deferred(OwnedDeferral::new(Arc::clone(self), deferral.disown()))
            }
        }
    }

    #[inline(always)]
    pub(crate) fn load(&self, ordering: Ordering) -> u64 {
        self.inner.state.load(sync::ordering(ordering))
    }

    /// The Now/Deferred path: one clock read, then CAS until the word this call decided on is
    /// installed or a deferral turns out to be pending.
    #[inline(never)]
    fn decide_and_install(&self, mut word: u64, lost: &mut u32) -> Admission<'_, C> {
        // One reading serves every retry: if another caller stamped after it, the reading
        // looks earlier than that stamp and counts as no time, so this call is Deferred (or
        // Coalesced), never a second Now inside the window.
        let now = state::tick(self.inner.clock.now_nanos());
        loop {
            let (next, is_now) = match state::decide(word, now, self.inner.window) {
                Decision::Coalesced => return Admission::Coalesced,
                Decision::Now(next) => (next, true),
                Decision::Deferred(next) => (next, false),
            };
            match self.install(word, next) {
                Ok(()) if is_now => return Admission::Now,
                Ok(()) => return Admission::Deferred(Deferral::new(self, next)),
                Err(seen) => {
                    *lost += 1;
                    word = seen;
                }
            }
        }
    }

    /// Replaces `current` with `next` if the word still holds `current`.
    #[inline(always)]
    fn install(&self, current: u64, next: u64) -> Result<(), u64> {
        #[cfg(loom)]
        if sync::mutant() == Some(sync::Mutant::LoadStore) {
            self.inner.state.store(next, Ordering::Release);
            return Ok(());
        }
        // Success AcqRel: Release publishes this caller's earlier writes to whoever sees the
        // new stamp or claim (pairs with the Acquire loads in `admit` and `is_pending`);
        // Acquire makes this caller see what the writer of the word it replaces did before
        // writing it (an earlier caller's admission, an owner's stamp or release), not that
        // run's work, which starts after its stamp. Failure Acquire: the word seen is decided
        // on again, so it needs the same view as `admit`.
        self.inner
            .state
            .compare_exchange(
                current,
                next,
                sync::ordering(Ordering::AcqRel),
                sync::ordering(Ordering::Acquire),
            )
            .map(drop)
    }

    /// The deadline of the deferral whose owner installed `word`, in the clock's nanoseconds
    /// (`u64::MAX` if it lies past the end of the clock's range).
    pub(crate) fn deadline_nanos(&self, word: u64) -> u64 {
        let tick = state::deadline_tick(word, self.inner.window);
        tick.saturating_mul(state::TICK_NANOS)
    }

    /// How long until the deadline of `word`'s deferral, zero once it has passed.
    pub(crate) fn remaining(&self, word: u64) -> Duration {
        let now = self.inner.clock.now_nanos();
        Duration::from_nanos(self.deadline_nanos(word).saturating_sub(now))
    }

    /// Stamps the run of the deferral whose owner installed `word`, if its deadline has
    /// passed: the clearing of "pending" and the new stamp are one CAS.
    pub(crate) fn try_stamp(&self, word: u64) -> bool {
        let now = state::tick(self.inner.clock.now_nanos());
        if !state::window_passed(word, now, self.inner.window) {
            return false;
        }
        let next = state::stamped(word, now);
        #[cfg(loom)]
        if sync::mutant() == Some(sync::Mutant::SplitStamp) {
            // The lodash-style bug: "pending" is cleared first, so a caller in between sees the
            // old stamp, finds the window over, and runs alongside this owner.
            self.inner
                .state
                .store(state::released(word), Ordering::Release);
            self.inner.state.store(next, Ordering::Release);
            return true;
        }
        // AcqRel: Release publishes the owner's writes before its run to later callers (pairs
        // with the Acquire loads in `admit`); Acquire makes the run see the writes of callers
        // that used `admit_publishing` (pairs with its AcqRel fetch_or, through the release
        // sequence every later RMW of the word continues). Failure Relaxed: the value is not
        // used.
        match self.inner.state.compare_exchange(
            word,
            next,
            sync::ordering(Ordering::AcqRel),
            Ordering::Relaxed,
        ) {
            Ok(_) => true,
            // Only the owner changes the word while its deferral is pending, so the word is
            // still the one it installed.
            Err(seen) => unreachable!(
                "the state of a pending deferral changed under its owner: installed {word:#x}, \
                 found {seen:#x}"
            ),
        }
    }

    /// Waits until the deadline of `word`'s deferral, then stamps its run.
    pub(crate) fn stamp_when_due(&self, word: u64) {
        while !self.try_stamp(word) {
            self.inner.clock.sleep(self.next_wait(word));
        }
    }

    /// Like `stamp_when_due`, waiting on the futures that `sleep` returns instead of blocking.
    pub(crate) async fn stamp_when_due_async<S, F>(&self, word: u64, mut sleep: S)
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        while !self.try_stamp(word) {
            sleep(self.next_wait(word)).await;
        }
    }

    /// How long a deferral that is not due yet waits before it tries again: until its
    /// deadline, and at least one tick, since a deadline past the end of the clock's range
    /// never comes and a wait of zero would spin without letting a manual clock move.
    pub(crate) fn next_wait(&self, word: u64) -> Duration {
        self.remaining(word)
            .max(Duration::from_nanos(state::TICK_NANOS))
    }

    /// Gives up the deferral whose owner installed `word`: clears "pending" only if the word is
    /// still exactly that one. After the owner's run stamped, or if the word changed in any
    /// other way, this changes nothing.
    pub(crate) fn release(&self, word: u64) {
        #[cfg(loom)]
        match sync::mutant() {
            Some(sync::Mutant::NoRelease) => return,
            Some(sync::Mutant::BlindRelease) => {
                self.inner
                    .state
                    .fetch_and(!state::PENDING, Ordering::AcqRel);
                return;
            }
            _ => {}
        }
        // AcqRel: Release publishes what the owner did before giving up to the next caller
        // (pairs with the Acquire loads in `admit`); Acquire orders it after the claim it
        // undoes. Failure Relaxed: nothing is done with the value.
        let _ = self.inner.state.compare_exchange(
            word,
            state::released(word),
            sync::ordering(Ordering::AcqRel),
            Ordering::Relaxed,
        );
    }
}

impl<C: Clock> fmt::Debug for Throttle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: a diagnostic snapshot, ordered with nothing.
        let word = self.load(Ordering::Relaxed);
        f.debug_struct("Throttle")
            .field("threshold", &self.inner.threshold)
            .field("pending", &state::is_pending(word))
            .field("stamped", &(word & state::STAMPED != 0))
            .field(
                "last_stamp_nanos",
                &(state::stamp(word) << state::TICK_SHIFT),
            )
            .field("generation", &state::generation(word))
            .finish_non_exhaustive()
    }
}
