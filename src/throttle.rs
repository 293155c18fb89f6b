//! The throttle: the CAS loop over the packed state word.

use crate::clock::{nanos_saturating, Clock, DefaultClock};
use crate::counters::{Counters, Stats};
use crate::deferral::{Deferral, Revoked};
use crate::error::ThresholdError;
use crate::state::{self, Decision, Mode, Rules, NO_LEASE};
use crate::sync::{self, AtomicU64, Ordering};
use crate::wait::{self, Look, WakeSlot};
use core::fmt;
use core::future::Future;
use core::time::Duration;
use crossbeam_utils::CachePadded;
use std::sync::Arc;

/// Limits a piece of work to one run per threshold, with one deferred trailing run.
///
/// [`admit`](Throttle::admit) answers each call with an [`Admission`]: run [`Now`], own the
/// single [`Deferred`] run that starts when the window ends, or be [`Coalesced`] into the
/// deferral already pending ([`Suppressed`] in [leading-only](Mode::LeadingOnly) mode). The
/// whole state is one cache-padded `AtomicU64` changed only by compare-and-swap; admission
/// never blocks, allocates or panics, and a Coalesced answer is one atomic load.
///
/// [`Now`]: Admission::Now
/// [`Deferred`]: Admission::Deferred
/// [`Coalesced`]: Admission::Coalesced
/// [`Suppressed`]: Admission::Suppressed
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
/// // Waiting on a ManualClock advances it to the deadline, exactly.
/// let ran_at = deferral.run(|| clock.now())?;
/// assert_eq!(ran_at, Duration::from_millis(100));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Throttle<C: Clock = DefaultClock> {
    /// Everything admission touches shares one cache line, padded so that no neighbouring
    /// data shares it.
    inner: CachePadded<Inner<C>>,
}

struct Inner<C> {
    /// The packed state: see `state.rs` for the layout.
    state: AtomicU64,
    /// The threshold in nanoseconds; [`Throttle::set_threshold`] changes it.
    threshold: AtomicU64,
    /// The threshold the throttle was built with, for the `stale_threshold` mutant.
    #[cfg(loom)]
    built_threshold: u64,
    mode: Mode,
    /// The lease in nanoseconds, [`NO_LEASE`] for none.
    lease: u64,
    /// Where a waiting owner leaves its waker.
    owner: WakeSlot,
    counters: Option<Box<Counters>>,
    clock: C,
}

/// The answer to one admission. `T` is how the deferral holds its throttle: `&Throttle` from
/// [`Throttle::admit`], `Arc<Throttle>` from [`Throttle::admit_owned`].
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
///     Admission::Deferred(deferral) => {
///         deferral.run(|| println!("run it at the deadline")).ok();
///     }
///     Admission::Coalesced => println!("the pending deferral covers this call"),
///     Admission::Suppressed { .. } => println!("leading-only: nothing covers this call"),
/// };
/// ```
#[must_use = "a Deferred answer releases its deferral when dropped; match on the answer"]
pub enum Admission<T: ThrottleRef> {
    /// No run in the last threshold: the caller runs the work at once. The throttle has
    /// already stamped the run. (With a lease, this is also the answer that takes over a
    /// deferral whose owner never came back: the caller runs in its place.)
    Now,
    /// The caller owns the single deferred run: it must run it at the deadline, or drop it to
    /// give it up.
    Deferred(Deferral<T>),
    /// A deferral is pending; its run will come after this call (guarantee 3).
    Coalesced,
    /// [Leading-only](Mode::LeadingOnly): inside the window, and no run will cover this call.
    Suppressed {
        /// When the window ends, in the clock's nanoseconds: the first reading at which a call
        /// runs again (`u64::MAX` if that lies past the end of the throttle's time).
        until: u64,
    },
}

/// An [`Admission`] whose deferral holds its throttle through an [`Arc`], so that it can move
/// to another thread or task: the answer to [`Throttle::admit_owned`].
pub type OwnedAdmission<C = DefaultClock> = Admission<Arc<Throttle<C>>>;

/// A handle to a throttle that a [`Deferral`] can hold: `&Throttle<C>`, `Arc<Throttle<C>>`,
/// or anything else that dereferences to a throttle.
pub trait ThrottleRef: core::ops::Deref<Target = Throttle<Self::Clock>> {
    /// The throttle's clock.
    type Clock: Clock;
}

impl<C: Clock, T: core::ops::Deref<Target = Throttle<C>>> ThrottleRef for T {
    type Clock = C;
}

impl<T: ThrottleRef> Admission<T> {
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

    /// Whether the answer is [`Admission::Suppressed`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Mode, Throttle};
    /// # use std::time::Duration;
    /// let throttle = Throttle::builder(Duration::from_secs(1)).mode(Mode::LeadingOnly).build()?;
    /// let _ = throttle.admit();
    /// assert!(throttle.admit().is_suppressed());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn is_suppressed(&self) -> bool {
        matches!(self, Admission::Suppressed { .. })
    }
}

impl<T: ThrottleRef> fmt::Debug for Admission<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Admission::Now => f.write_str("Now"),
            Admission::Deferred(deferral) => f.debug_tuple("Deferred").field(deferral).finish(),
            Admission::Coalesced => f.write_str("Coalesced"),
            Admission::Suppressed { until } => {
                f.debug_struct("Suppressed").field("until", until).finish()
            }
        }
    }
}

/// Configures a [`Throttle`]: its clock, [`Mode`], lease and counters.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{ManualClock, Mode, Throttle};
/// use std::time::Duration;
///
/// let throttle = Throttle::builder(Duration::from_millis(100))
///     .clock(ManualClock::new())
///     .mode(Mode::TrailingOnly)
///     .lease(Duration::from_secs(1))
///     .counting(true)
///     .build()?;
/// assert!(throttle.admit().is_deferred()); // trailing only: no leading run
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build`"]
pub struct ThrottleBuilder<C: Clock = DefaultClock> {
    threshold: Duration,
    clock: C,
    mode: Mode,
    lease: Option<Duration>,
    counting: bool,
}

impl<C: Clock> ThrottleBuilder<C> {
    /// The clock the throttle reads; [`DefaultClock`] unless set.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::builder(Duration::from_secs(1)).clock(ManualClock::new()).build()?;
    /// assert_eq!(throttle.clock().now_nanos(), 0);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn clock<D: Clock>(self, clock: D) -> ThrottleBuilder<D> {
        ThrottleBuilder {
            threshold: self.threshold,
            clock,
            mode: self.mode,
            lease: self.lease,
            counting: self.counting,
        }
    }

    /// Which calls run; [`Mode::LeadingAndTrailing`] unless set.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Mode, Throttle};
    /// # use std::time::Duration;
    /// let throttle = Throttle::builder(Duration::from_secs(1)).mode(Mode::LeadingOnly).build()?;
    /// assert_eq!(throttle.mode(), Mode::LeadingOnly);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Lets a deferral that is not stamped by `deadline + lease` be taken over: the next
    /// admission after that answers [`Admission::Now`] and runs in its place, and the
    /// abandoned owner, if it ever returns, is refused ([`Revoked::TakenOver`]). This closes
    /// the one way to strand a deferral that no destructor can: an owner that never comes
    /// back (leaked with `mem::forget`, blocked forever, stuck behind a hung lock).
    ///
    /// The price: while a deferral is pending, every admission reads the clock to see whether
    /// the lease has expired, where a throttle without one answers Coalesced with one load.
    /// A [`CoarseClock`](crate::CoarseClock) makes that read a load too.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = Throttle::builder(Duration::from_millis(10))
    ///     .clock(clock.clone())
    ///     .lease(Duration::from_millis(5))
    ///     .build()?;
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// std::mem::forget(deferral); // an owner that never comes back
    /// clock.advance(Duration::from_millis(15));
    /// assert!(throttle.admit().is_now()); // taken over: this caller runs in its place
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Counts the calls that no run of their own covers (coalesced or suppressed) and the
    /// runs, releases, cancels and takeovers, for [`Throttle::stats`] and
    /// [`Throttle::take_skipped`]. Off by default: then a Coalesced answer writes nothing.
    /// On, a coalesced or suppressed call adds one to a counter of its own thread's, which
    /// no other thread writes.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let throttle = Throttle::builder(Duration::from_secs(1)).counting(true).build()?;
    /// assert!(throttle.stats().is_some());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn counting(mut self, counting: bool) -> Self {
        self.counting = counting;
        self
    }

    /// Builds the throttle.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if the threshold or the lease exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// assert!(Throttle::builder(Duration::MAX).build().is_err());
    /// assert!(Throttle::builder(Duration::ZERO).lease(Duration::MAX).build().is_err());
    /// ```
    pub fn build(self) -> Result<Throttle<C>, ThresholdError> {
        let threshold = checked_threshold(self.threshold)?;
        let lease = match self.lease {
            None => NO_LEASE,
            Some(lease) if lease > Throttle::MAX_THRESHOLD => {
                return Err(ThresholdError::lease(lease))
            }
            Some(lease) => nanos_saturating(lease),
        };
        Ok(Throttle {
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(state::FRESH),
                threshold: AtomicU64::new(threshold),
                #[cfg(loom)]
                built_threshold: threshold,
                mode: self.mode,
                lease,
                owner: WakeSlot::new(),
                counters: self.counting.then(|| Box::new(Counters::new())),
                clock: self.clock,
            }),
        })
    }
}

/// `threshold` in nanoseconds, or the error that refuses it.
fn checked_threshold(threshold: Duration) -> Result<u64, ThresholdError> {
    if threshold > Throttle::MAX_THRESHOLD {
        Err(ThresholdError::threshold(threshold))
    } else {
        Ok(nanos_saturating(threshold))
    }
}

impl Throttle<DefaultClock> {
    /// The largest threshold (and lease) a throttle accepts: 2^62 ns, about 146 years.
    pub const MAX_THRESHOLD: Duration = Duration::from_nanos(state::MAX_THRESHOLD_NANOS);

    /// A throttle on the process's [`DefaultClock`], in the default
    /// [mode](Mode::LeadingAndTrailing), with no lease and no counters.
    ///
    /// A `const fn`: `static LIMIT: Throttle = Throttle::new(...)` needs no lazy
    /// initialization, allocates nothing and reads no clock; the default clock calibrates on
    /// its first reading instead (the first admission in the process pays for it).
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`] (in a `static`, that is a compile
    /// error). Use [`try_new`](Throttle::try_new) for a threshold that comes from input.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::Throttle;
    /// use std::time::Duration;
    ///
    /// static LIMIT: Throttle = Throttle::new(Duration::from_millis(250));
    /// assert!(LIMIT.admit().is_now());
    /// assert_eq!(LIMIT.threshold(), Duration::from_millis(250));
    /// ```
    #[cfg(not(loom))]
    pub const fn new(threshold: Duration) -> Self {
        if threshold.as_nanos() > state::MAX_THRESHOLD_NANOS as u128 {
            panic!(
                "Throttle::new: the threshold exceeds the largest representable threshold, \
                 Throttle::MAX_THRESHOLD (2^62 ns, about 146 years)"
            );
        }
        Self {
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(state::FRESH),
                threshold: AtomicU64::new(threshold.as_nanos() as u64),
                mode: Mode::LeadingAndTrailing,
                lease: NO_LEASE,
                owner: WakeSlot::new(),
                counters: None,
                clock: DefaultClock::new(),
            }),
        }
    }

    /// A throttle on the process's [`DefaultClock`] (not `const` under loom, whose atomics are
    /// not).
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    #[cfg(loom)]
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
        Self::builder(threshold).build()
    }

    /// Configures a throttle: clock, [`Mode`], lease and counters.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Mode, Throttle};
    /// # use std::time::Duration;
    /// let throttle = Throttle::builder(Duration::from_secs(1)).mode(Mode::TrailingOnly).build()?;
    /// assert!(throttle.admit().is_deferred());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn builder(threshold: Duration) -> ThrottleBuilder<DefaultClock> {
        ThrottleBuilder {
            threshold,
            clock: DefaultClock::new(),
            mode: Mode::default(),
            lease: None,
            counting: false,
        }
    }
}

impl<C: Clock> Throttle<C> {
    /// A throttle reading time from `clock`, in the default mode.
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
        Throttle::builder(threshold).clock(clock).build()
    }

    /// The threshold in force.
    ///
    /// Two runs are stamped at least this much apart on the throttle's clock (see
    /// [`set_threshold`](Throttle::set_threshold) across a change). Stamps are readings
    /// rounded up to a whole microsecond, so a run may become due up to 1 us after the exact
    /// deadline on a clock with finer readings; on whole microseconds it is exact.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// assert_eq!(Throttle::new(Duration::from_secs(3)).threshold(), Duration::from_secs(3));
    /// ```
    pub fn threshold(&self) -> Duration {
        Duration::from_nanos(self.threshold_nanos())
    }

    /// Changes the threshold, lock-free, from any thread.
    ///
    /// Each admission and each owner's stamp uses the threshold it reads, so across a change
    /// two runs are at least `min(old, new)` apart, and once the change is visible to every
    /// caller (this call happened before their admissions) at least `new`. A pending
    /// deferral's deadline follows the new threshold: an owner waiting for it is woken to
    /// look again, and runs at the new deadline.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`]; nothing changes.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = Throttle::with_clock(Duration::from_secs(10), clock.clone())?;
    /// assert!(throttle.admit().is_now());
    /// clock.advance(Duration::from_secs(2));
    /// assert!(throttle.admit().is_deferred());
    /// throttle.set_threshold(Duration::from_secs(1))?;
    /// assert!(throttle.admit().is_now()); // 2 s after the last run: past the new window
    /// assert!(throttle.set_threshold(Duration::MAX).is_err());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn set_threshold(&self, threshold: Duration) -> Result<(), ThresholdError> {
        let threshold = checked_threshold(threshold)?;
        // Release: an admission that reads the new threshold (Acquire, in `rules`) also sees
        // what this caller did before changing it.
        self.inner.threshold.store(threshold, Ordering::Release);
        // The waiting owner's deadline moved: wake it to look again.
        self.inner.owner.wake();
        Ok(())
    }

    /// The throttle's [`Mode`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Mode, Throttle};
    /// # use std::time::Duration;
    /// assert_eq!(Throttle::new(Duration::from_secs(1)).mode(), Mode::LeadingAndTrailing);
    /// ```
    pub fn mode(&self) -> Mode {
        self.inner.mode
    }

    /// The lease set with [`ThrottleBuilder::lease`], if any.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// assert_eq!(Throttle::new(Duration::from_secs(1)).lease(), None);
    /// let leased = Throttle::builder(Duration::from_secs(1)).lease(Duration::from_secs(2)).build()?;
    /// assert_eq!(leased.lease(), Some(Duration::from_secs(2)));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn lease(&self) -> Option<Duration> {
        (self.inner.lease != NO_LEASE).then(|| Duration::from_nanos(self.inner.lease))
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

    /// The stamp of the last run, in the clock's nanoseconds: the reading its admission (or
    /// its owner's stamp) took, rounded up to a whole microsecond. `None` before the first.
    ///
    /// Runs' stamps are spaced by the threshold (guarantee 1), and a run's work starts after
    /// its stamp, on the thread that took it: a thread descheduled in between starts its
    /// work late, which can narrow the gap between two runs' *starts*. Compare this with your
    /// own clock readings to check spacing. In [trailing-only](Mode::TrailingOnly) mode,
    /// while a deferral claimed in a quiet period is pending, this is the moment that claim
    /// opened the window.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_millis(3));
    /// let throttle = Throttle::with_clock(Duration::from_secs(1), clock.clone())?;
    /// assert_eq!(throttle.last_run(), None);
    /// assert!(throttle.admit().is_now());
    /// assert_eq!(throttle.last_run(), Some(3_000_000));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn last_run(&self) -> Option<u64> {
        // Acquire: as in `is_pending`.
        let word = self.load(Ordering::Acquire);
        state::is_stamped(word).then(|| state::stamp_nanos(word))
    }

    /// Decides this call: run [`Now`](Admission::Now), own the [`Deferred`](Admission::Deferred)
    /// run, or be [`Coalesced`](Admission::Coalesced) into the pending one
    /// ([`Suppressed`](Admission::Suppressed) in leading-only mode).
    ///
    /// Never blocks, allocates or panics. A Coalesced answer is one atomic load, with no clock
    /// read and no write to shared memory (with a lease, a clock read too; with counting, a
    /// write to this thread's own counter). Now and Deferred read the clock once and win one
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
    pub fn admit(&self) -> Admission<&Self> {
        // Acquire: a caller that sees a stamp or a claim sees what its writer did before it
        // (pairs with the AcqRel CASes in `install` and `stamp`).
        let word = self.load(Ordering::Acquire);
        if state::is_pending(word) && self.inner.lease == NO_LEASE {
            return self.coalesced();
        }
        self.decide_and_install(self, word, &mut 0)
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
    pub fn admit_counting_retries(&self) -> (Admission<&Self>, u32) {
        let mut lost = 0;
        // Acquire: as in `admit`.
        let word = self.load(Ordering::Acquire);
        if state::is_pending(word) && self.inner.lease == NO_LEASE {
            return (self.coalesced(), lost);
        }
        let answer = self.decide_and_install(self, word, &mut lost);
        (answer, lost)
    }

    /// Like [`admit`](Throttle::admit), but a Coalesced caller's earlier writes happen-before
    /// the run that covers it (guarantee 3 with a happens-before edge).
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
    /// assert_eq!(owner.run(|| latest.load(Relaxed))?, 7);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn admit_publishing(&self) -> Admission<&Self> {
        self.admit_publishing_as(self)
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
    ///     thread::spawn(move || deferral.run(|| println!("trailing run")))
    ///         .join()
    ///         .unwrap()
    ///         .unwrap();
    /// }
    /// ```
    #[inline]
    pub fn admit_owned(self: &Arc<Self>) -> OwnedAdmission<C> {
        // Acquire: as in `admit`.
        let word = self.load(Ordering::Acquire);
        if state::is_pending(word) && self.inner.lease == NO_LEASE {
            return self.coalesced();
        }
        self.decide_and_install(Arc::clone(self), word, &mut 0)
    }

    /// [`admit_owned`](Throttle::admit_owned) with the happens-before edge of
    /// [`admit_publishing`](Throttle::admit_publishing).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{OwnedAdmission, Throttle};
    /// # use std::{sync::Arc, time::Duration};
    /// let throttle = Arc::new(Throttle::new(Duration::from_secs(1)));
    /// assert!(matches!(throttle.admit_owned_publishing(), OwnedAdmission::Now));
    /// ```
    pub fn admit_owned_publishing(self: &Arc<Self>) -> OwnedAdmission<C> {
        self.admit_publishing_as(Arc::clone(self))
    }

    fn admit_publishing_as<T: ThrottleRef<Clock = C>>(&self, handle: T) -> Admission<T> {
        // AcqRel read-modify-write that changes nothing: Release heads a release sequence that
        // every later change of the word continues (all of them are read-modify-writes), so
        // the owner's stamping CAS (AcqRel, in `stamp`) synchronizes with it and this
        // caller's earlier writes happen-before the covering run. Acquire as in `admit`.
        let word = self
            .inner
            .state
            .fetch_or(0, sync::ordering(Ordering::AcqRel));
        if state::is_pending(word) && self.inner.lease == NO_LEASE {
            return self.coalesced();
        }
        self.decide_and_install(handle, word, &mut 0)
    }

    /// Withdraws the pending deferral, from any thread. Returns whether one was pending.
    ///
    /// The next admission is decided as if its owner had dropped it (Deferred inside the
    /// window, Now past it). (The 128th cancel inside one window, counted since its run, also
    /// moves the window's start 1 us later: see the README's "Implementation".) The owner learns it without polling: a blocked
    /// [`run`](Deferral::run) or an async wait is woken and returns
    /// [`Revoked::Cancelled`] without running the work, and
    /// [`try_run`](Deferral::try_run) says so. Coalesced callers that the deferral covered
    /// are no longer covered (that is what cancelling means). Idempotent; never blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, Revoked, Throttle};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::new(Duration::from_secs(60));
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// std::thread::scope(|s| {
    ///     let owner = s.spawn(|| deferral.run(|| "sent"));
    ///     while !throttle.cancel() {} // wait for the owner to be pending, then cancel
    ///     assert_eq!(owner.join().unwrap(), Err(Revoked::Cancelled)); // woken at once
    /// });
    /// assert!(!throttle.cancel()); // nothing left to cancel
    /// ```
    pub fn cancel(&self) -> bool {
        // Acquire: as in `admit`.
        let mut word = self.load(Ordering::Acquire);
        loop {
            if !state::is_pending(word) {
                return false;
            }
            // AcqRel, Acquire on failure: as in `install`.
            match self.inner.state.compare_exchange(
                word,
                state::cancelled(word),
                sync::ordering(Ordering::AcqRel),
                sync::ordering(Ordering::Acquire),
            ) {
                Ok(_) => {
                    self.count(|stats| &stats.cancels);
                    self.inner.owner.wake();
                    return true;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// Runs the pending deferral now instead of at its deadline, from any thread. Returns
    /// whether one was pending.
    ///
    /// Its owner is woken (a blocked `run`, an async wait, a timer thread) and runs at once;
    /// `try_run` runs at once. This is the one exception to the spacing guarantee, and only
    /// because a caller asked for it: the flushed run may come less than the threshold after
    /// the run before it. The next window counts from the flushed run. Idempotent; never
    /// blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let throttle = Throttle::with_clock(Duration::from_secs(60), clock.clone())?;
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// assert!(throttle.flush());
    /// assert_eq!(deferral.try_run(|| clock.now()).ok(), Some(Duration::ZERO)); // no wait
    /// assert!(!throttle.flush());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn flush(&self) -> bool {
        // Acquire: as in `admit`.
        let mut word = self.load(Ordering::Acquire);
        loop {
            if !state::is_pending(word) {
                return false;
            }
            if state::is_flushed(word) {
                self.inner.owner.wake();
                return true;
            }
            // AcqRel, Acquire on failure: as in `install`.
            match self.inner.state.compare_exchange(
                word,
                word | state::FLUSH,
                sync::ordering(Ordering::AcqRel),
                sync::ordering(Ordering::Acquire),
            ) {
                Ok(_) => {
                    self.inner.owner.wake();
                    return true;
                }
                Err(seen) => word = seen,
            }
        }
    }

    /// A snapshot of the counters, if the throttle was built with
    /// [`counting`](ThrottleBuilder::counting).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttle;
    /// # use std::time::Duration;
    /// let throttle = Throttle::builder(Duration::from_secs(1)).counting(true).build()?;
    /// let _ = throttle.admit();
    /// let _owner = throttle.admit();
    /// let _ = throttle.admit();
    /// let stats = throttle.stats().unwrap();
    /// assert_eq!((stats.leading, stats.coalesced), (1, 1));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn stats(&self) -> Option<Stats> {
        self.inner
            .counters
            .as_deref()
            .map(|counters| counters.snapshot(self.inner.mode))
    }

    /// How many calls were coalesced or suppressed since the count was last taken, for the run
    /// that covers them to report ("N calls suppressed", as the kernel prints). Each counted
    /// call is taken exactly once, by the first take after it counted itself; a call counts
    /// itself right after its admission, so a take can miss one that is still between the
    /// two, and the next take gets it. Zero without [`counting`](ThrottleBuilder::counting).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Mode, Throttle};
    /// use std::time::Duration;
    ///
    /// let throttle = Throttle::builder(Duration::from_secs(60))
    ///     .mode(Mode::LeadingOnly)
    ///     .counting(true)
    ///     .build()?;
    /// for _ in 0..5 {
    ///     if throttle.admit().is_now() {
    ///         println!("the leading run");
    ///     }
    /// }
    /// assert_eq!(throttle.take_skipped(), 4);
    /// assert_eq!(throttle.take_skipped(), 0);
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn take_skipped(&self) -> u64 {
        self.inner.counters.as_deref().map_or(0, Counters::take)
    }

    #[inline(always)]
    pub(crate) fn load(&self, ordering: Ordering) -> u64 {
        self.inner.state.load(sync::ordering(ordering))
    }

    /// The threshold in nanoseconds.
    #[inline(always)]
    pub(crate) fn threshold_nanos(&self) -> u64 {
        #[cfg(loom)]
        if sync::is_mutant(sync::mutant!(StaleThreshold)) {
            return self.inner.built_threshold;
        }
        // Acquire: pairs with the Release store in `set_threshold`.
        self.inner.threshold.load(Ordering::Acquire)
    }

    /// The rules a decision made now follows.
    #[inline(always)]
    fn rules(&self) -> Rules {
        Rules {
            threshold: self.threshold_nanos(),
            mode: self.inner.mode,
            lease: self.inner.lease,
        }
    }

    /// A Coalesced answer, counted if counting is on.
    #[inline(always)]
    fn coalesced<T: ThrottleRef>(&self) -> Admission<T> {
        if let Some(counters) = &self.inner.counters {
            counters.skipped();
        }
        Admission::Coalesced
    }

    /// Adds one to a counter of the snapshot, if counting is on.
    #[inline(always)]
    pub(crate) fn count(&self, which: impl FnOnce(&Counters) -> &AtomicU64) {
        if let Some(counters) = &self.inner.counters {
            // Relaxed: a statistic, ordered with nothing.
            which(counters).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Now/Deferred path: one clock read, then CAS until the word this call decided on is
    /// installed or a deferral turns out to be pending.
    #[inline(never)]
    fn decide_and_install<T: ThrottleRef<Clock = C>>(
        &self,
        handle: T,
        mut word: u64,
        lost: &mut u32,
    ) -> Admission<T> {
        // One reading serves every retry: if another caller stamped after it, the reading
        // looks earlier than that stamp and counts as no time, so this call is Deferred (or
        // Coalesced), never a second Now inside the window.
        let now = self.inner.clock.now_nanos();
        let rules = self.rules();
        loop {
            let next = match state::decide(word, now, &rules) {
                Decision::Coalesced => return self.coalesced(),
                Decision::Suppressed => {
                    if let Some(counters) = &self.inner.counters {
                        counters.skipped();
                    }
                    return Admission::Suppressed {
                        until: state::deadline(word, rules.threshold),
                    };
                }
                Decision::Now(next) | Decision::Deferred(next) | Decision::TakeOver(next) => next,
            };
            match self.install(word, next) {
                Ok(()) if state::is_pending(next) => {
                    return Admission::Deferred(Deferral::new(handle, next));
                }
                Ok(()) => {
                    if state::is_pending(word) {
                        self.count(|stats| &stats.takeovers);
                    } else {
                        self.count(|stats| &stats.leading);
                    }
                    return Admission::Now;
                }
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
        if sync::is_mutant(sync::mutant!(LoadStore)) {
            self.inner.state.store(next, Ordering::Release);
            return Ok(());
        }
        if sync::is_mutant(sync::mutant!(TakeoverKeepsClaim))
            && state::is_pending(current)
            && !state::is_pending(next)
        {
            // The broken takeover: the abandoned claim stays installed for the taker, and its
            // old owner can still stamp or release it.
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
    /// (`u64::MAX` if it lies past the end of the throttle's time).
    pub(crate) fn deadline_nanos(&self, word: u64) -> u64 {
        state::deadline(word, self.threshold_nanos())
    }

    /// How long until the deadline of `word`'s deferral, zero once it has passed.
    pub(crate) fn remaining(&self, word: u64) -> Duration {
        let now = self.inner.clock.now_nanos();
        Duration::from_nanos(self.deadline_nanos(word).saturating_sub(now))
    }

    /// Looks at the deferral whose owner installed `word` without changing anything: due (its
    /// deadline has passed, or it was flushed), not yet (until when), or revoked.
    pub(crate) fn look(&self, word: u64) -> Look<Result<(), Revoked>> {
        // Acquire: as in `admit`.
        let seen = self.load(Ordering::Acquire);
        if seen & !state::FLUSH != word {
            return Look::Done(Err(self.revoked(word)));
        }
        let threshold = self.threshold_nanos();
        if state::is_flushed(seen)
            || state::window_passed(word, self.inner.clock.now_nanos(), threshold)
        {
            Look::Done(Ok(()))
        } else {
            Look::Until(state::deadline(word, threshold))
        }
    }

    /// Stamps the run of the deferral whose owner installed `word` if it is due, returning
    /// the stamp in nanoseconds; or says when it will be, or that it was revoked. The clearing
    /// of "pending" and the new stamp are one CAS.
    pub(crate) fn try_stamp(&self, word: u64) -> Look<Result<u64, Revoked>> {
        // Acquire: as in `admit`.
        let mut seen = self.load(Ordering::Acquire);
        loop {
            if seen & !state::FLUSH != word {
                return Look::Done(Err(self.revoked(word)));
            }
            let now = self.inner.clock.now_nanos();
            let threshold = self.threshold_nanos();
            if !state::is_flushed(seen) && !state::window_passed(word, now, threshold) {
                return Look::Until(state::deadline(word, threshold));
            }
            let next = state::stamped(word, now);
            if sync::is_mutant(sync::mutant!(SplitStamp)) {
                // The lodash-style bug: "pending" is cleared first, so a caller in between
                // sees the old stamp, finds the window over, and runs alongside this owner.
                self.inner
                    .state
                    .store(state::released(word), Ordering::Release);
                self.inner.state.store(next, Ordering::Release);
                return Look::Done(Ok(state::stamp_nanos(next)));
            }
            // AcqRel: Release publishes the owner's writes before its run to later callers
            // (pairs with the Acquire loads in `admit`); Acquire makes the run see the writes
            // of callers that used `admit_publishing` (pairs with its AcqRel fetch_or, through
            // the release sequence every later RMW of the word continues). Failure Acquire:
            // the word seen is looked at again.
            match self.inner.state.compare_exchange(
                seen,
                next,
                sync::ordering(Ordering::AcqRel),
                sync::ordering(Ordering::Acquire),
            ) {
                Ok(_) => {
                    self.count(|stats| &stats.deferred);
                    return Look::Done(Ok(state::stamp_nanos(next)));
                }
                // A flush or a cancel came in between: look again.
                Err(changed) => seen = changed,
            }
        }
    }

    /// Why the deferral whose owner installed `word` is no longer theirs: a cancel keeps the
    /// stamp (unless its generation wrapped), a takeover moves it. If the stamp moved, the
    /// claim was taken over, or cancelled and then a run came: the owner is told it was taken
    /// over if its lease has expired by now.
    #[cold]
    fn revoked(&self, word: u64) -> Revoked {
        // Acquire: as in `admit`.
        let seen = self.load(Ordering::Acquire);
        if self.inner.lease == NO_LEASE || state::stamp(seen) == state::stamp(word) {
            return Revoked::Cancelled;
        }
        let now = self.inner.clock.now_nanos();
        if state::lease_expired(word, now, &self.rules()) {
            Revoked::TakenOver
        } else {
            Revoked::Cancelled
        }
    }

    /// Waits until the deferral of `word` is due, then stamps its run; or says why it was
    /// revoked.
    ///
    /// The wait ends (and its waker is unregistered) before the stamp, so that the stamp is the
    /// last thing before the caller starts the work.
    pub(crate) fn stamp_when_due(&self, word: u64) -> Result<u64, Revoked> {
        loop {
            wait::block_on_deadline(self.clock(), Some(&self.inner.owner), None, || {
                self.look(word)
            })?;
            // Due a moment ago; a clock that stepped back since makes this wait again.
            if let Look::Done(stamped) = self.try_stamp(word) {
                return stamped;
            }
        }
    }

    /// Like `stamp_when_due`, waiting on the futures that `sleep` returns instead of blocking.
    pub(crate) async fn stamp_when_due_async<S, F>(
        &self,
        word: u64,
        sleep: S,
    ) -> Result<u64, Revoked>
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        let mut sleep = sleep;
        loop {
            wait::wait_on_deadline(self.clock(), &self.inner.owner, &mut sleep, || {
                self.look(word)
            })
            .await?;
            if let Look::Done(stamped) = self.try_stamp(word) {
                return stamped;
            }
        }
    }

    /// Moves the stamp of the window to `next` if the word still holds `current`: for a timer
    /// thread that stamps a leading run when it starts the work.
    pub(crate) fn restamp(&self, current: u64, next: u64) -> Result<(), u64> {
        self.install(current, next)
    }

    /// The slot where an owner waiting on this throttle leaves its waker.
    pub(crate) fn owner_slot(&self) -> &WakeSlot {
        &self.inner.owner
    }

    /// Gives up the deferral whose owner installed `word`: clears "pending" only if the word is
    /// still exactly that one (flushed or not). If it was stamped, cancelled or taken over,
    /// this changes nothing.
    pub(crate) fn release(&self, word: u64) {
        if sync::is_mutant(sync::mutant!(NoRelease)) {
            return;
        }
        if sync::is_mutant(sync::mutant!(BlindRelease)) {
            self.inner
                .state
                .fetch_and(!state::PENDING, Ordering::AcqRel);
            return;
        }
        for current in [word, word | state::FLUSH] {
            // AcqRel: Release publishes what the owner did before giving up to the next caller
            // (pairs with the Acquire loads in `admit`); Acquire orders it after the claim it
            // undoes. Failure Relaxed: the other form of the word is tried, or nothing is done.
            if self
                .inner
                .state
                .compare_exchange(
                    current,
                    state::released(word),
                    sync::ordering(Ordering::AcqRel),
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.count(|stats| &stats.releases);
                return;
            }
        }
    }
}

impl<C: Clock> fmt::Debug for Throttle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: a diagnostic snapshot, ordered with nothing.
        let word = self.load(Ordering::Relaxed);
        f.debug_struct("Throttle")
            .field("threshold", &self.threshold())
            .field("mode", &self.inner.mode)
            .field("lease", &self.lease())
            .field("pending", &state::is_pending(word))
            .field("flushed", &state::is_flushed(word))
            .field("last_run", &self.last_run())
            .field("generation", &state::generation(word))
            .finish_non_exhaustive()
    }
}
