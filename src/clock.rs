//! Clocks: the trait the throttle reads time through, the default quanta clock, and a manual
//! clock for tests and loom models.

use crate::sync::{self, Arc, AtomicU64, Ordering};
use core::fmt;
use core::time::Duration;

/// A monotonic source of time, in nanoseconds since an origin of the clock's choosing.
///
/// The throttle tolerates clocks that misbehave (SPEC G5): a reading earlier than the last
/// stamp counts as no time, and a reading far in the future causes no overflow. Readings
/// must only fit in a `u64`, which covers about 584 years from the origin.
///
/// # Examples
///
/// A clock on [`std::time::Instant`]:
///
/// ```
/// use atomic_throttle::{Clock, Throttle};
/// use std::time::{Duration, Instant};
///
/// struct StdClock(Instant);
///
/// impl Clock for StdClock {
///     fn now_nanos(&self) -> u64 {
///         u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
///     }
/// }
///
/// let throttle = Throttle::with_clock(Duration::from_millis(5), StdClock(Instant::now()))?;
/// assert!(throttle.admit().is_now());
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
pub trait Clock {
    /// The current reading, in nanoseconds since the clock's origin.
    fn now_nanos(&self) -> u64;

    /// Blocks the calling thread for about `duration`, on behalf of a deferral waiting for its
    /// deadline. The default sleeps the thread (under `cfg(loom)`, it yields to the model).
    /// [`ManualClock`] overrides it to advance its own time instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.sleep(Duration::from_millis(3));
    /// assert_eq!(clock.now_nanos(), 3_000_000);
    /// ```
    fn sleep(&self, duration: Duration) {
        sync::sleep(duration);
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration)
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration)
    }
}

/// The clock a [`Throttle`](crate::Throttle) uses unless told otherwise: quanta's TSC-based
/// clock, calibrated once per process and shared by every throttle.
///
/// The first reading in a process calibrates quanta's clock, which can take up to 200 ms;
/// [`DefaultClock::new`] does it eagerly, so constructing a throttle pays it, not the first
/// admission. Readings count from the first use in the process.
///
/// The TSC can step backwards across cores by a few nanoseconds; the throttle counts such a
/// step as no time (SPEC G5).
///
/// # Waiting
///
/// A deferral waits for its deadline through [`Clock::sleep`]. `DefaultClock` sleeps the
/// thread until `spin` before the deadline, then busy-waits the rest on the clock, since an OS
/// sleep tends to overshoot by tens of microseconds. The default `spin` is
/// [`DefaultClock::DEFAULT_SPIN`]; [`DefaultClock::with_spin`] trades CPU for lateness.
///
/// Under `cfg(loom)`, `DefaultClock` is a virtual clock instead, so that code using the
/// default throttle still model-checks: it starts at zero in every execution of a model,
/// stands still unless a deferral waits on it, and a wait advances it by the time waited.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Clock, DefaultClock};
///
/// let clock = DefaultClock::new();
/// let earlier = clock.now_nanos();
/// assert!(clock.now_nanos() >= earlier);
/// ```
#[derive(Clone, Copy)]
pub struct DefaultClock {
    spin: Duration,
}

impl Default for DefaultClock {
    fn default() -> Self {
        Self::new()
    }
}

impl DefaultClock {
    /// How long before a deadline a waiting deferral stops sleeping and busy-waits.
    ///
    /// An OS sleep overshoots by tens of microseconds (70 to 100 us on the machine the crate's
    /// benches ran on), so a spin shorter than that buys little; 100 us brought the median
    /// lateness of a deferred run from about 100 us to under 1 us there (see the README's
    /// Performance section), for at most 100 us of busy-waiting per wait, less in practice, as
    /// the sleep overshoots into it.
    pub const DEFAULT_SPIN: Duration = Duration::from_micros(100);

    /// Returns the process's clock, calibrating it if this is its first use.
    ///
    /// # Examples
    ///
    /// ```
    /// let clock = atomic_throttle::DefaultClock::new();
    /// # let _ = clock;
    /// ```
    pub fn new() -> Self {
        #[cfg(not(loom))]
        let _ = process_clock();
        Self {
            spin: Self::DEFAULT_SPIN,
        }
    }

    /// The same clock, with waits that busy-wait the last `spin` before a deadline instead of
    /// sleeping through it. Zero sleeps all the way.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{DefaultClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = DefaultClock::new().with_spin(Duration::from_micros(100));
    /// assert_eq!(clock.spin(), Duration::from_micros(100));
    /// let throttle = Throttle::with_clock(Duration::from_millis(1), clock)?;
    /// # let _ = throttle;
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn with_spin(self, spin: Duration) -> Self {
        Self { spin }
    }

    /// How long before a deadline a wait stops sleeping and busy-waits.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::DefaultClock;
    /// assert_eq!(DefaultClock::new().spin(), DefaultClock::DEFAULT_SPIN);
    /// ```
    pub fn spin(&self) -> Duration {
        self.spin
    }
}

impl fmt::Debug for DefaultClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultClock")
            .field("now_nanos", &self.now_nanos())
            .field("spin", &self.spin)
            .finish()
    }
}

#[cfg(not(loom))]
struct ProcessClock {
    clock: quanta::Clock,
    origin: u64,
}

#[cfg(not(loom))]
fn process_clock() -> &'static ProcessClock {
    static CLOCK: std::sync::OnceLock<ProcessClock> = std::sync::OnceLock::new();
    CLOCK.get_or_init(|| {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        ProcessClock { clock, origin }
    })
}

#[cfg(not(loom))]
impl Clock for DefaultClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        let process = process_clock();
        // `delta_as_nanos` answers zero for a raw reading at or before the origin.
        process
            .clock
            .delta_as_nanos(process.origin, process.clock.raw())
    }

    fn sleep(&self, duration: Duration) {
        let end = self.now_nanos().saturating_add(nanos_saturating(duration));
        if let Some(sleep) = duration.checked_sub(self.spin) {
            sync::sleep(sleep);
        }
        while self.now_nanos() < end {
            sync::spin();
        }
    }
}

#[cfg(loom)]
loom::lazy_static! {
    static ref VIRTUAL_NANOS: ManualClock = ManualClock::new();
}

#[cfg(loom)]
impl Clock for DefaultClock {
    fn now_nanos(&self) -> u64 {
        VIRTUAL_NANOS.now_nanos()
    }
    fn sleep(&self, duration: Duration) {
        VIRTUAL_NANOS.sleep(duration)
    }
}

/// A clock that moves only when told to: for deterministic tests and loom models.
///
/// Clones share one time. It starts at zero; [`advance`](ManualClock::advance) moves it
/// forward, [`rewind`](ManualClock::rewind) steps it backwards (a faulty clock, for SPEC G5),
/// and both saturate at the ends of the `u64` range rather than wrap. A deferral that waits on a
/// `ManualClock` advances it by the time it waits, the way tokio's paused clock auto-advances,
/// so a test needs no second thread to move time along.
///
/// It is built on the crate's sync shim, so under `cfg(loom)` its time is a loom atomic that
/// the model checker sees.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Admission, ManualClock, Throttle};
/// use std::time::Duration;
///
/// let clock = ManualClock::new();
/// let throttle = Throttle::with_clock(Duration::from_millis(10), clock.clone())?;
/// assert!(throttle.admit().is_now());
/// clock.advance(Duration::from_millis(5));
/// assert!(throttle.admit().is_deferred());
/// clock.advance(Duration::from_millis(6));
/// assert!(throttle.admit().is_now());
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock};
    /// assert_eq!(ManualClock::new().now_nanos(), 0);
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The current reading as a [`Duration`] since the clock's origin.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::ManualClock;
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(clock.now(), Duration::from_secs(2));
    /// ```
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now_nanos())
    }

    /// Moves the clock forward by `duration`, saturating at `u64::MAX` nanoseconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_micros(7));
    /// assert_eq!(clock.now_nanos(), 7_000);
    /// clock.advance(Duration::MAX);
    /// assert_eq!(clock.now_nanos(), u64::MAX);
    /// ```
    pub fn advance(&self, duration: Duration) {
        let step = nanos_saturating(duration);
        self.update(|now| now.saturating_add(step));
    }

    /// Steps the clock backwards by `duration`, saturating at zero: the fault SPEC G5 asks the
    /// throttle to survive.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// clock.advance(Duration::from_micros(7));
    /// clock.rewind(Duration::from_micros(5));
    /// assert_eq!(clock.now_nanos(), 2_000);
    /// clock.rewind(Duration::from_secs(1));
    /// assert_eq!(clock.now_nanos(), 0);
    /// ```
    pub fn rewind(&self, duration: Duration) {
        let step = nanos_saturating(duration);
        self.update(|now| now.saturating_sub(step));
    }

    fn update(&self, step: impl Fn(u64) -> u64) {
        // AcqRel: a test's advance happens-before the readings that see it, and a reading that
        // sees it sees whatever the test did before moving time. The throttle itself needs no
        // ordering from its clock: a reading that looks stale counts as no time.
        let _ = self
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| Some(step(now)));
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        // Acquire: pairs with the AcqRel update in `advance`/`rewind` (see there).
        self.nanos.load(Ordering::Acquire)
    }

    /// Advances the clock by `duration`, then yields.
    fn sleep(&self, duration: Duration) {
        self.advance(duration);
        sync::yield_now();
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_nanos", &self.now_nanos())
            .finish()
    }
}

/// `duration` in nanoseconds, saturating at `u64::MAX`.
pub(crate) fn nanos_saturating(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
