//! The throttle: the CAS loop over the packed state word.

use crate::clock::{nanos_saturating, Clock, DefaultClock};
use crate::counters::{Counters, Stats};
use crate::deferral::Deferral;
use crate::error::ThresholdError;
use crate::state::{self, Mode, NO_LEASE};
use crate::sync::{self, AtomicU64, Ordering};
use crate::wait::WakeSlot;
use crate::word::{Answer, Core, Word};
use core::fmt;
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
    /// The threshold, mode, lease, counters and clock.
    core: Core<C>,
    /// Where a waiting owner leaves its waker.
    owner: WakeSlot,
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
    /// abandoned owner, if it ever returns, is refused ([`Revoked::TakenOver`](crate::Revoked::TakenOver)). This closes
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
        let counters = self.counting.then(|| Box::new(Counters::new()));
        Ok(Throttle {
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(state::FRESH),
                core: Core::new(threshold, self.mode, lease, counters, self.clock),
                owner: WakeSlot::new(),
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
        Self::const_new(threshold, Mode::LeadingAndTrailing, "Throttle::new")
    }

    /// A throttle on the process's [`DefaultClock`] in `mode`, with no lease and no counters:
    /// [`new`](Throttle::new) for another mode, also a `const fn`.
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`] (in a `static`, a compile error).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Mode, Throttle};
    /// use std::time::Duration;
    ///
    /// static WARN: Throttle = Throttle::with_mode(Duration::from_secs(1), Mode::LeadingOnly);
    /// assert!(WARN.admit().is_now());
    /// assert!(WARN.admit().is_suppressed());
    /// ```
    #[cfg(not(loom))]
    pub const fn with_mode(threshold: Duration, mode: Mode) -> Self {
        Self::const_new(threshold, mode, "Throttle::with_mode")
    }

    /// The `const` constructors' work; `constructor` names the one called, for its panic.
    #[cfg(not(loom))]
    const fn const_new(threshold: Duration, mode: Mode, constructor: &str) -> Self {
        if threshold.as_nanos() > state::MAX_THRESHOLD_NANOS as u128 {
            ThresholdError::threshold(threshold).panic_in(constructor);
        }
        let core = Core::new(
            threshold.as_nanos() as u64,
            mode,
            NO_LEASE,
            None,
            DefaultClock::new(),
        );
        Self {
            inner: CachePadded::new(Inner {
                state: AtomicU64::new(state::FRESH),
                core,
                owner: WakeSlot::new(),
            }),
        }
    }

    /// A throttle on the process's [`DefaultClock`] in `mode` (not `const` under loom).
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    #[cfg(loom)]
    #[cfg_attr(mutants, mutants::skip)] // loom-only: never built by the tests
    pub fn with_mode(threshold: Duration, mode: Mode) -> Self {
        match Self::builder(threshold).mode(mode).build() {
            Ok(throttle) => throttle,
            Err(err) => panic!("atomic-throttle: Throttle::with_mode: {err}"),
        }
    }

    /// A throttle on the process's [`DefaultClock`] (not `const` under loom, whose atomics are
    /// not).
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    #[cfg(loom)]
    #[cfg_attr(mutants, mutants::skip)] // loom-only: never built by the tests
    pub fn new(threshold: Duration) -> Self {
        match Self::try_new(threshold) {
            Ok(throttle) => throttle,
            Err(err) => panic!("atomic-throttle: Throttle::new: {err}"),
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
        Duration::from_nanos(self.inner.core.threshold_nanos())
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
        checked_threshold(threshold)?;
        self.inner.core.set_threshold(threshold);
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
        self.inner.core.mode
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
        let lease = self.inner.core.lease;
        (lease != NO_LEASE).then(|| Duration::from_nanos(lease))
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
        &self.inner.core.clock
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
        if self.inner.core.coalesces(word) {
            self.inner.core.skipped();
            return Admission::Coalesced;
        }
        self.decide(self, word, &mut 0)
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
        let answer = self.decide(self, word, &mut lost);
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
        if self.inner.core.coalesces(word) {
            self.inner.core.skipped();
            return Admission::Coalesced;
        }
        self.decide(Arc::clone(self), word, &mut 0)
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
        self.decide(handle, word, &mut 0)
    }

    /// Withdraws the pending deferral, from any thread. Returns whether one was pending.
    ///
    /// The next admission is decided as if its owner had dropped it (Deferred inside the
    /// window, Now past it). (The 128th cancel inside one window, counted since its run, also
    /// moves the window's start 1 us later: see the README's "Implementation".) The owner learns it without polling: a blocked
    /// [`run`](Deferral::run) or an async wait is woken and returns
    /// [`Revoked::Cancelled`](crate::Revoked::Cancelled) without running the work, and
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
        self.word().cancel()
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
        self.word().flush()
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
        let core = &self.inner.core;
        core.counters
            .as_deref()
            .map(|counters| counters.snapshot(core.mode))
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
        self.inner
            .core
            .counters
            .as_deref()
            .map_or(0, Counters::take)
    }

    #[inline(always)]
    pub(crate) fn load(&self, ordering: Ordering) -> u64 {
        self.inner.state.load(sync::ordering(ordering))
    }

    /// The throttle's word, through its core.
    #[inline(always)]
    pub(crate) fn word(&self) -> Word<'_, C> {
        Word {
            state: &self.inner.state,
            core: &self.inner.core,
            owner: Some(&self.inner.owner),
        }
    }

    /// The throttle's core: threshold, mode, lease, counters, clock.
    #[inline(always)]
    pub(crate) fn core(&self) -> &Core<C> {
        &self.inner.core
    }

    /// Admits a call (publishing or not), and says which word the decision saw: for a
    /// Coalesced answer, the pending word whose run covers the call.
    pub(crate) fn admit_seen(&self, publishing: bool) -> (Admission<&Self>, u64) {
        let word = if publishing {
            // AcqRel: as in `admit_publishing_as`.
            self.inner
                .state
                .fetch_or(0, sync::ordering(Ordering::AcqRel))
        } else {
            // Acquire: as in `admit`.
            self.load(Ordering::Acquire)
        };
        if self.inner.core.coalesces(word) {
            self.inner.core.skipped();
            return (Admission::Coalesced, word);
        }
        match self.word().decide_and_install(word, &mut 0) {
            Answer::Coalesced(seen) => (Admission::Coalesced, seen),
            Answer::Now => (Admission::Now, word),
            Answer::Claimed(claim) => (Admission::Deferred(Deferral::new(self, claim)), word),
            Answer::Suppressed { until } => (Admission::Suppressed { until }, word),
        }
    }

    /// Decides an admission that saw `word`, and wraps the answer for `handle`.
    #[inline]
    fn decide<T: ThrottleRef<Clock = C>>(
        &self,
        handle: T,
        word: u64,
        lost: &mut u32,
    ) -> Admission<T> {
        if self.inner.core.coalesces(word) {
            self.inner.core.skipped();
            return Admission::Coalesced;
        }
        match self.word().decide_and_install(word, lost) {
            Answer::Now => Admission::Now,
            Answer::Claimed(word) => Admission::Deferred(Deferral::new(handle, word)),
            Answer::Coalesced(_) => Admission::Coalesced,
            Answer::Suppressed { until } => Admission::Suppressed { until },
        }
    }
}

impl<C: Clock> fmt::Debug for Throttle<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Relaxed: a diagnostic snapshot, ordered with nothing.
        let word = self.load(Ordering::Relaxed);
        f.debug_struct("Throttle")
            .field("threshold", &self.threshold())
            .field("mode", &self.inner.core.mode)
            .field("lease", &self.lease())
            .field("pending", &state::is_pending(word))
            .field("flushed", &state::is_flushed(word))
            .field("last_run", &self.last_run())
            .field("generation", &state::generation(word))
            .finish_non_exhaustive()
    }
}
