//! Clocks: the trait the throttle reads time through, the default TSC clock with its fallback,
//! a coarse clock, and a manual clock for tests and loom models.

use crate::sync::{self, AtomicU64, Ordering};
use core::fmt;
use core::task::Waker;
use core::time::Duration;

/// A monotonic source of time, in nanoseconds since an origin of the clock's choosing.
///
/// The throttle tolerates clocks that misbehave: a reading earlier than the last stamp counts
/// as no time, and a reading far in the future causes no overflow. Readings need only fit in a
/// `u64`; the throttle keeps time up to 2^54 us (about 570 years) past the origin. A reading
/// far in the future is not undone, though: a run stamped there holds later calls back until
/// the clock catches up, so a clock should never run ahead of the time it reports next.
///
/// Only [`now_nanos`](Clock::now_nanos) is required. A clock that keeps its own time, as
/// [`ManualClock`] does, also implements [`wait_for`](Clock::wait_for) and
/// [`done_waiting`](Clock::done_waiting) so that a wait moves its time instead of sleeping.
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

    /// Says how `waiter` should wait for this clock to read `deadline` (nanoseconds).
    ///
    /// Every wait the crate makes (a blocking [`Deferral::run`](crate::Deferral::run), the
    /// async waits, the timer threads) calls it before each wait, and calls
    /// [`done_waiting`](Clock::done_waiting) with the same waiter when the wait ends. The
    /// default, for clocks that follow real time, answers [`Wait::Sleep`]: the waiter sleeps
    /// the remaining time on its own timer.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock, Wait, Waiter};
    /// use std::task::Waker;
    ///
    /// let clock = ManualClock::new();
    /// let waiter = Waiter::new(Waker::noop());
    /// assert_eq!(clock.wait_for(waiter, 5_000), Wait::Yield); // new: let others register first
    /// assert_eq!(clock.wait_for(waiter, 5_000), Wait::Now); // moved to its deadline
    /// assert_eq!(clock.now_nanos(), 5_000);
    /// clock.done_waiting(waiter);
    /// ```
    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        let _ = (waiter, deadline);
        Wait::Sleep
    }

    /// Ends a wait that [`wait_for`](Clock::wait_for) took part in. The default does nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, DefaultClock, Waiter};
    /// DefaultClock::new().done_waiting(Waiter::new(std::task::Waker::noop()));
    /// ```
    fn done_waiting(&self, waiter: Waiter<'_>) {
        let _ = waiter;
    }

    /// Blocks the calling thread for about `duration`, on behalf of a waiter that
    /// [`wait_for`](Clock::wait_for) told to [sleep](Wait::Sleep). It may return early, and
    /// must return when the thread is unparked: that is how a cancel, a flush or a new
    /// threshold reaches a waiting owner. The default parks the thread with a timeout (under
    /// `cfg(loom)`, it yields to the model).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, DefaultClock};
    /// use std::time::{Duration, Instant};
    ///
    /// let started = Instant::now();
    /// DefaultClock::new().sleep(Duration::from_millis(2));
    /// assert!(started.elapsed() < Duration::from_secs(1));
    /// ```
    fn sleep(&self, duration: Duration) {
        sync::park_timeout(duration);
    }
}

/// One wait for a deadline, as a [`Clock`] sees it: an identity (unique to the wait, even
/// when several waits share a task and so a waker) and the [`Waker`] that wakes it.
///
/// # Examples
///
/// ```
/// use atomic_throttle::Waiter;
/// use std::task::Waker;
///
/// let (a, b) = (Waiter::new(Waker::noop()), Waiter::new(Waker::noop()));
/// assert_ne!(a.id(), b.id());
/// a.waker().wake_by_ref();
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Waiter<'a> {
    id: u64,
    waker: &'a Waker,
}

impl<'a> Waiter<'a> {
    /// A new wait, woken through `waker`.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Waiter;
    /// let waiter = Waiter::new(std::task::Waker::noop());
    /// # let _ = waiter;
    /// ```
    pub fn new(waker: &'a Waker) -> Self {
        // Relaxed: an identity, ordered with nothing. A plain std atomic, also under loom:
        // identities are not part of any model.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        Self {
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            waker,
        }
    }

    /// The wait that [`Waiter::new`] gave identity `id`, woken through `waker`.
    pub(crate) fn known(id: u64, waker: &'a Waker) -> Self {
        Self { id, waker }
    }

    /// What tells this wait from every other.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Waiter;
    /// let waiter = Waiter::new(std::task::Waker::noop());
    /// assert_eq!(waiter.id(), waiter.id());
    /// ```
    pub fn id(&self) -> u64 {
        self.id
    }

    /// What wakes the waiter.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Waiter;
    /// Waiter::new(std::task::Waker::noop()).waker().wake_by_ref();
    /// ```
    pub fn waker(&self) -> &'a Waker {
        self.waker
    }
}

/// How a waiter waits for a clock to reach its deadline: [`Clock::wait_for`]'s answer.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Clock, DefaultClock, Wait};
/// use atomic_throttle::Waiter;
/// let waiter = Waiter::new(std::task::Waker::noop());
/// assert_eq!(DefaultClock::new().wait_for(waiter, 1), Wait::Sleep);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Wait {
    /// The clock has moved: look again at once.
    Now,
    /// Let other waiters run (a thread yields; a task wakes itself and returns `Pending`),
    /// then look again.
    Yield,
    /// The clock follows real time: sleep the remaining time (a thread through
    /// [`Clock::sleep`], a task on its executor's timer), then look again.
    Sleep,
    /// The clock wakes the waker when it moves: wait for that, with no timer.
    UntilWoken,
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        (**self).wait_for(waiter, deadline)
    }
    fn done_waiting(&self, waiter: Waiter<'_>) {
        (**self).done_waiting(waiter)
    }
    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration)
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_nanos(&self) -> u64 {
        (**self).now_nanos()
    }
    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        (**self).wait_for(waiter, deadline)
    }
    fn done_waiting(&self, waiter: Waiter<'_>) {
        (**self).done_waiting(waiter)
    }
    fn sleep(&self, duration: Duration) {
        (**self).sleep(duration)
    }
}

/// The clock a [`Throttle`](crate::Throttle) uses unless told otherwise: quanta's TSC-based
/// clock, calibrated once per process and shared by every throttle, with the operating
/// system's monotonic clock as its fallback.
///
/// [`DefaultClock::new`] is a `const fn` that does nothing: the clock calibrates on its first
/// reading in the process (quanta measures the TSC against the OS clock, which takes up to a
/// few tens of milliseconds), so a `static` throttle costs nothing until it is first used.
/// [`DefaultClock::calibrate`] does it eagerly. Readings count from the first use.
///
/// # Skewed TSCs
///
/// On machines whose cores' TSCs are not synchronized, readings taken on different cores can
/// step backwards and forwards by up to seconds (quanta issue 111). The throttle counts a
/// backward step as no time, so such a step would delay deferred runs by up to its size.
/// `DefaultClock` watches for it: each reading is compared with a process-wide high-water
/// mark of earlier readings (written only once the readings are 1 ms past it, to keep shared
/// writes rare, so it may trail the latest reading by up to 1 ms), and a reading more than
/// [`DefaultClock::SKEW_BOUND`] (10 ms) behind the mark switches the whole process to the OS monotonic clock (`std::time::Instant`),
/// continued from the high-water mark so that time never runs backwards across the switch.
/// Smaller steps are not detected; they delay a run by at most their size.
/// [`DefaultClock::source`] says which source is in use.
///
/// # Waiting
///
/// A deferral waits for its deadline through [`Clock::sleep`]. `DefaultClock` parks the
/// thread until `spin` before the deadline, then busy-waits the rest on the clock, since an OS
/// sleep tends to overshoot by tens of microseconds. The default `spin` is
/// [`DefaultClock::DEFAULT_SPIN`]; [`DefaultClock::with_spin`] trades CPU for lateness.
///
/// Under `cfg(loom)`, `DefaultClock` is a virtual clock instead, so that code using the
/// default throttle still model-checks: it starts at zero in every execution of a model and
/// moves like a [`ManualClock`] that advances for its waiters.
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
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct DefaultClock {
    spin: Duration,
}

impl Default for DefaultClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Which source a [`DefaultClock`] reads.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{ClockSource, DefaultClock};
/// let source = DefaultClock::source();
/// assert!(source == ClockSource::Tsc || source == ClockSource::Os);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClockSource {
    /// quanta's TSC clock: about 10 ns a reading.
    Tsc,
    /// The operating system's monotonic clock, after a skewed TSC was detected.
    Os,
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

    /// How far behind the process's earlier readings a reading may fall before the clock
    /// treats the TSC as skewed and switches to the OS clock.
    pub const SKEW_BOUND: Duration = Duration::from_millis(10);

    /// The process's clock. Calibration waits for its first reading.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::DefaultClock;
    /// const CLOCK: DefaultClock = DefaultClock::new();
    /// # let _ = CLOCK;
    /// ```
    pub const fn new() -> Self {
        Self {
            spin: Self::DEFAULT_SPIN,
        }
    }

    /// Calibrates the process's clock now, if it has not been, so that the first admission
    /// does not pay for it; returns the clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, DefaultClock};
    /// let clock = DefaultClock::calibrate();
    /// assert!(clock.now_nanos() < u64::MAX);
    /// ```
    pub fn calibrate() -> Self {
        #[cfg(not(loom))]
        let _ = tsc::process();
        Self::new()
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
    /// let clock = DefaultClock::new().with_spin(Duration::from_micros(20));
    /// assert_eq!(clock.spin(), Duration::from_micros(20));
    /// let throttle = Throttle::with_clock(Duration::from_millis(1), clock)?;
    /// # let _ = throttle;
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub const fn with_spin(self, spin: Duration) -> Self {
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
    pub const fn spin(&self) -> Duration {
        self.spin
    }

    /// Which source the process's clock reads: the TSC, or the OS clock once a skewed TSC has
    /// been detected (see "Skewed TSCs" above).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ClockSource, DefaultClock};
    /// let _ = DefaultClock::new().now_nanos();
    /// match DefaultClock::source() {
    ///     ClockSource::Tsc => println!("reading the TSC"), // a machine with synced TSCs
    ///     ClockSource::Os => println!("reading the OS clock: a skewed TSC was detected"),
    /// }
    /// ```
    pub fn source() -> ClockSource {
        #[cfg(not(loom))]
        {
            tsc::process().source()
        }
        #[cfg(loom)]
        {
            ClockSource::Tsc
        }
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
impl Clock for DefaultClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        tsc::process().now_nanos()
    }

    /// Parks until `spin` before the end of `duration`; inside the last `spin`, busy-waits one
    /// step and returns, so that the waiter looks at its deadline (and at a cancel or flush)
    /// on every step.
    fn sleep(&self, duration: Duration) {
        match duration.checked_sub(self.spin) {
            Some(sleep) if !sleep.is_zero() => sync::park_timeout(sleep),
            _ => sync::spin(),
        }
    }
}

/// The TSC clock with its high-water mark and OS fallback.
#[cfg(not(loom))]
mod tsc {
    use super::ClockSource;
    use crate::sync::{AtomicBool, AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::Instant;

    /// A raw source of nanoseconds: the TSC in production, a simulated one in tests.
    pub(super) trait Source {
        fn read(&self) -> u64;
    }

    impl Source for (quanta::Clock, u64) {
        #[inline]
        fn read(&self) -> u64 {
            // `delta_as_nanos` answers zero for a raw reading at or before the origin.
            self.0.delta_as_nanos(self.1, self.0.raw())
        }
    }

    /// The OS monotonic clock, continued from where the skewed source was abandoned.
    #[derive(Debug)]
    struct Fallback {
        since: Instant,
        from: u64,
    }

    /// A source watched for backward steps, with the OS clock as its fallback.
    pub(super) struct Watched<S> {
        source: S,
        /// The latest reading any thread has published; readings more than `bound` behind it
        /// mean the source is skewed.
        high_water: AtomicU64,
        skewed: AtomicBool,
        fallback: OnceLock<Fallback>,
        bound: u64,
    }

    /// How often, at most, a reading moves the high-water mark: it is a shared write.
    const PUBLISH_EVERY: u64 = 1_000_000;

    impl<S: Source> Watched<S> {
        pub(super) fn new(source: S, bound: u64) -> Self {
            Self {
                source,
                high_water: AtomicU64::new(0),
                skewed: AtomicBool::new(false),
                fallback: OnceLock::new(),
                bound,
            }
        }

        #[inline]
        pub(super) fn now_nanos(&self) -> u64 {
            // Relaxed: the flag and the mark are hints about one clock, ordered with nothing
            // else; a stale value costs one more TSC reading or a later switch.
            if self.skewed.load(Ordering::Relaxed) {
                return self.os_now();
            }
            // The mark is read before the source, so that on synchronized TSCs the reading can
            // only be later than every reading the mark holds, however long this thread is
            // descheduled in between.
            let high = self.high_water.load(Ordering::Relaxed);
            let now = self.source.read();
            if now >= high {
                if now - high >= PUBLISH_EVERY {
                    self.high_water.fetch_max(now, Ordering::Relaxed);
                }
                now
            } else if high - now > self.bound {
                self.switch(high)
            } else {
                now
            }
        }

        #[cold]
        fn switch(&self, high: u64) -> u64 {
            self.fallback.get_or_init(|| Fallback {
                since: Instant::now(),
                from: high,
            });
            self.skewed.store(true, Ordering::Relaxed);
            self.os_now()
        }

        fn os_now(&self) -> u64 {
            let fallback = self
                .fallback
                .get()
                .expect("the fallback is set before the flag");
            let elapsed = u64::try_from(fallback.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            fallback.from.saturating_add(elapsed)
        }

        pub(super) fn source(&self) -> ClockSource {
            if self.skewed.load(Ordering::Relaxed) {
                ClockSource::Os
            } else {
                ClockSource::Tsc
            }
        }
    }

    /// The process's clock, calibrated on first use.
    pub(super) fn process() -> &'static Watched<(quanta::Clock, u64)> {
        static CLOCK: OnceLock<Watched<(quanta::Clock, u64)>> = OnceLock::new();
        CLOCK.get_or_init(|| {
            let clock = quanta::Clock::new();
            let origin = clock.raw();
            let bound = super::DefaultClock::SKEW_BOUND.as_nanos() as u64;
            Watched::new((clock, origin), bound)
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use std::cell::Cell;
        use std::sync::atomic::AtomicU64 as StdU64;

        thread_local! {
            /// How far this thread's simulated core lags the others.
            static LAG: Cell<u64> = const { Cell::new(0) };
        }

        /// A TSC whose readings lag by a per-thread offset: a core that is behind the others.
        struct PerThreadOffset(StdU64);

        impl Source for PerThreadOffset {
            fn read(&self) -> u64 {
                let now = self.0.fetch_add(1_000, Ordering::Relaxed) + 1_000;
                now.saturating_sub(LAG.with(Cell::get))
            }
        }

        #[test]
        fn a_core_far_behind_switches_the_process_to_the_os_clock() {
            let clock = Watched::new(PerThreadOffset(StdU64::new(5_000_000_000)), 10_000_000);
            let ahead = clock.now_nanos();
            // Past the publishing interval: the mark moves up to this core's readings.
            for _ in 0..2_000 {
                clock.now_nanos();
            }
            let high = clock.now_nanos();
            assert_eq!(clock.source(), ClockSource::Tsc);
            let behind = std::thread::scope(|s| {
                s.spawn(|| {
                    LAG.with(|lag| lag.set(1_600_000_000)); // 1.6 s behind, as in quanta #111
                    clock.now_nanos()
                })
                .join()
                .unwrap()
            });
            assert_eq!(clock.source(), ClockSource::Os, "the skew was not detected");
            // Time did not step back across the switch, and moves on from there.
            assert!(
                behind >= high.min(ahead) && behind + 2_000_000 >= high,
                "{behind} < {high}"
            );
            let later = clock.now_nanos();
            assert!(later >= behind);
        }

        #[test]
        fn small_steps_back_are_tolerated() {
            let clock = Watched::new(PerThreadOffset(StdU64::new(5_000_000_000)), 10_000_000);
            for _ in 0..2_000 {
                clock.now_nanos();
            }
            std::thread::scope(|s| {
                s.spawn(|| {
                    LAG.with(|lag| lag.set(3_000_000)); // 3 ms behind: within the bound
                    clock.now_nanos()
                });
            });
            assert_eq!(clock.source(), ClockSource::Tsc);
        }

        /// A TSC that reads what the test scripts, one reading at a time.
        struct Scripted(std::sync::Mutex<Vec<u64>>);

        impl Source for Scripted {
            fn read(&self) -> u64 {
                self.0.lock().unwrap().remove(0)
            }
        }

        #[test]
        fn a_step_back_of_exactly_the_bound_is_tolerated_and_one_more_switches() {
            const HIGH: u64 = 5_000_000_000;
            const BOUND: u64 = 10_000_000;
            let readings = vec![HIGH, HIGH - BOUND, HIGH - BOUND - 1];
            let clock = Watched::new(Scripted(std::sync::Mutex::new(readings)), BOUND);
            assert_eq!(clock.now_nanos(), HIGH, "published as the mark");
            assert_eq!(clock.now_nanos(), HIGH - BOUND);
            assert_eq!(
                clock.source(),
                ClockSource::Tsc,
                "a step of the bound is tolerated"
            );
            assert!(clock.now_nanos() >= HIGH, "continued from the mark");
            assert_eq!(clock.source(), ClockSource::Os, "one more is a skew");
        }

        #[test]
        fn the_mark_is_written_only_once_readings_are_a_millisecond_past_it() {
            const HIGH: u64 = 5_000_000_000;
            const BOUND: u64 = 10_000_000;
            let readings = vec![HIGH, HIGH + PUBLISH_EVERY - 1, HIGH + PUBLISH_EVERY];
            let clock = Watched::new(Scripted(std::sync::Mutex::new(readings)), BOUND);
            let mark = || clock.high_water.load(Ordering::Relaxed);
            assert_eq!(clock.now_nanos(), HIGH);
            assert_eq!(mark(), HIGH, "the first reading is published");
            assert_eq!(clock.now_nanos(), HIGH + PUBLISH_EVERY - 1);
            assert_eq!(mark(), HIGH, "less than a millisecond on: no shared write");
            assert_eq!(clock.now_nanos(), HIGH + PUBLISH_EVERY);
            assert_eq!(mark(), HIGH + PUBLISH_EVERY);
            assert_eq!(clock.source(), ClockSource::Tsc);
        }

        #[test]
        fn the_process_clock_moves_forward() {
            let clock = process();
            let earlier = clock.now_nanos();
            std::thread::sleep(std::time::Duration::from_millis(2));
            assert!(clock.now_nanos() >= earlier + 2_000_000);
        }
    }
}

#[cfg(loom)]
loom::lazy_static! {
    static ref VIRTUAL_NANOS: ManualClock = ManualClock::new();
}

#[cfg(loom)]
#[cfg_attr(mutants, mutants::skip)] // loom-only: never built by the tests
impl Clock for DefaultClock {
    fn now_nanos(&self) -> u64 {
        VIRTUAL_NANOS.now_nanos()
    }
    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        VIRTUAL_NANOS.wait_for(waiter, deadline)
    }
    fn done_waiting(&self, waiter: Waiter<'_>) {
        VIRTUAL_NANOS.done_waiting(waiter)
    }
}

/// A clock that reads a value an upkeep thread refreshes: a reading costs one atomic load.
///
/// For throttles that read the clock on every call: a [leading-only](crate::Mode::LeadingOnly)
/// throttle, or a throttle with a [lease](crate::ThrottleBuilder::lease), whose suppressed
/// and coalesced answers then cost a load of this clock instead of a TSC reading.
///
/// **Error bound.** A reading is a [`DefaultClock`] reading the upkeep thread took at most
/// `resolution` earlier, plus however long that thread was kept from running; it is never
/// ahead of the default clock. So a throttle on a `CoarseClock` never runs early on the default
/// clock's time either: its runs are spaced by at least the threshold less `resolution` (and
/// the upkeep thread's scheduling delay) there, and exactly by the threshold on its own
/// readings; a deferred run starts up to `resolution` late.
///
/// The upkeep thread stops once every clone of the clock is dropped. Under `cfg(loom)` there is
/// no thread: the clock reads the virtual default clock.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Clock, CoarseClock};
/// use std::time::Duration;
///
/// let clock = CoarseClock::new(Duration::from_micros(100))?;
/// let earlier = clock.now_nanos();
/// // The upkeep thread moves it every 100 us or so (later on a loaded machine).
/// while clock.now_nanos() == earlier {
///     std::thread::sleep(Duration::from_micros(100));
/// }
/// assert!(clock.now_nanos() > earlier);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct CoarseClock {
    shared: std::sync::Arc<CoarseShared>,
}

struct CoarseShared {
    #[cfg_attr(loom, allow(dead_code))]
    nanos: AtomicU64,
    resolution: Duration,
}

impl CoarseClock {
    /// The coarsest resolution [`new`](CoarseClock::new) accepts: one second.
    ///
    /// A refresh a second already costs nothing measurable, so a coarser clock would only add
    /// error (up to its resolution on every run) and keep its upkeep thread alive that much
    /// longer after the last clone is dropped (the thread notices on its next refresh). A
    /// resolution of minutes or more, or a `Duration::MAX` meant as "never", would make a clock
    /// that hardly moves, and every throttle on it would stall.
    pub const MAX_RESOLUTION: Duration = Duration::from_secs(1);

    /// A clock refreshed every `resolution` by its own upkeep thread. A resolution under 1 us
    /// (zero included) is raised to 1 us; one over [`MAX_RESOLUTION`](CoarseClock::MAX_RESOLUTION)
    /// is refused.
    ///
    /// # Errors
    ///
    /// An error of kind [`InvalidInput`](std::io::ErrorKind::InvalidInput) if `resolution`
    /// exceeds [`MAX_RESOLUTION`](CoarseClock::MAX_RESOLUTION) (nothing is started); the
    /// operating system's error if the upkeep thread cannot be started.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{CoarseClock, Mode, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = CoarseClock::new(Duration::from_micros(200))?;
    /// let throttle = Throttle::builder(Duration::from_millis(10))
    ///     .clock(clock)
    ///     .mode(Mode::LeadingOnly)
    ///     .build()
    ///     .expect("a valid threshold");
    /// assert!(throttle.admit().is_now());
    ///
    /// let err = CoarseClock::new(Duration::from_secs(60)).unwrap_err();
    /// assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    /// assert_eq!(
    ///     err.to_string(),
    ///     "CoarseClock resolution of 60000000000 ns exceeds the largest accepted, \
    ///      1000000000 ns (CoarseClock::MAX_RESOLUTION: 1 s)"
    /// );
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(resolution: Duration) -> std::io::Result<Self> {
        if resolution > Self::MAX_RESOLUTION {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "CoarseClock resolution of {} ns exceeds the largest accepted, {} ns \
                     (CoarseClock::MAX_RESOLUTION: 1 s)",
                    resolution.as_nanos(),
                    Self::MAX_RESOLUTION.as_nanos()
                ),
            ));
        }
        let resolution = resolution.max(Duration::from_micros(1));
        let shared = std::sync::Arc::new(CoarseShared {
            nanos: AtomicU64::new(DefaultClock::new().now_nanos()),
            resolution,
        });
        #[cfg(not(loom))]
        {
            let weak = std::sync::Arc::downgrade(&shared);
            std::thread::Builder::new()
                .name("atomic-throttle-coarse-clock".into())
                .spawn(move || {
                    let clock = DefaultClock::new();
                    while let Some(shared) = weak.upgrade() {
                        // Relaxed: a reading, ordered with nothing; readers tolerate any age.
                        shared.nanos.store(clock.now_nanos(), Ordering::Relaxed);
                        drop(shared);
                        std::thread::sleep(resolution);
                    }
                })?;
        }
        Ok(Self { shared })
    }

    /// How often the upkeep thread refreshes the reading.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::CoarseClock;
    /// # use std::time::Duration;
    /// let clock = CoarseClock::new(Duration::from_micros(50))?;
    /// assert_eq!(clock.resolution(), Duration::from_micros(50));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn resolution(&self) -> Duration {
        self.shared.resolution
    }
}

impl Clock for CoarseClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        #[cfg(loom)]
        {
            DefaultClock::new().now_nanos()
        }
        #[cfg(not(loom))]
        {
            // Relaxed: see the upkeep thread's store.
            self.shared.nanos.load(Ordering::Relaxed)
        }
    }

    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        DefaultClock::new().wait_for(waiter, deadline)
    }
}

impl fmt::Debug for CoarseClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CoarseClock")
            .field("now_nanos", &self.now_nanos())
            .field("resolution", &self.shared.resolution)
            .finish()
    }
}

/// A clock that moves only when told to, or for its waiters: for deterministic tests and loom
/// models.
///
/// Clones share one time. It starts at zero; [`advance`](ManualClock::advance) moves it
/// forward, [`rewind`](ManualClock::rewind) steps it backwards (a faulty clock), and both
/// saturate at the ends of the `u64` range rather than wrap.
///
/// # Waiting
///
/// By default the clock advances for its waiters, the way tokio's paused clock does, so that a
/// test needs no second thread to move time along: every wait the crate offers (a blocking
/// [`Deferral::run`](crate::Deferral::run), [`Deferral::wait_with`](crate::Deferral::wait_with),
/// the tokio waits, the timer threads) registers its deadline with the clock, lets other
/// waiters register too (one yield), then moves the clock to the **earliest** registered
/// deadline, never further. A waiter with a later deadline waits until the earlier ones are
/// done, then the clock moves on to the next. In a test that waits on one thread, or on one
/// executor thread, every wait therefore ends exactly at its deadline. A waiter that registers
/// after the clock moved past its deadline (another thread's wait got there first) finds its
/// deadline passed: its run is late, never early.
///
/// [`ManualClock::with_auto_advance(false)`](ManualClock::with_auto_advance) makes a clock
/// that only the test moves: waiters then wait until [`advance`](ManualClock::advance) reaches
/// their deadline (or a cancel, flush or new threshold wakes them), with no real timer.
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
/// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
/// deferral.run(|| ())?; // the clock moves to the deadline, exactly
/// assert_eq!(clock.now(), Duration::from_millis(10));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ManualClock {
    shared: std::sync::Arc<ManualShared>,
}

struct ManualShared {
    nanos: AtomicU64,
    auto_advance: bool,
    /// Every waiter's identity, deadline and waker, until its wait ends. A plain `std` mutex,
    /// also under loom: no loom operation happens while it is held, so it cannot hold up a
    /// model.
    waiters: std::sync::Mutex<Vec<(u64, u64, Waker)>>,
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl ManualClock {
    /// A clock at zero that advances for its waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Clock, ManualClock};
    /// assert_eq!(ManualClock::new().now_nanos(), 0);
    /// ```
    pub fn new() -> Self {
        Self::with_auto_advance(true)
    }

    /// A clock at zero that advances for its waiters (`true`, as [`new`](ManualClock::new)),
    /// or only when [`advance`](ManualClock::advance) is called (`false`).
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Admission, ManualClock, Throttle};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::with_auto_advance(false);
    /// let throttle = Throttle::with_clock(Duration::from_millis(10), clock.clone())?;
    /// let _ = throttle.admit();
    /// let Admission::Deferred(deferral) = throttle.admit() else { unreachable!() };
    /// std::thread::scope(|s| {
    ///     let owner = s.spawn(|| deferral.run(|| clock.now()));
    ///     clock.advance(Duration::from_millis(10)); // the waiting owner wakes and runs
    ///     assert_eq!(owner.join().unwrap(), Ok(Duration::from_millis(10)));
    /// });
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn with_auto_advance(auto_advance: bool) -> Self {
        Self {
            shared: std::sync::Arc::new(ManualShared {
                nanos: AtomicU64::new(0),
                auto_advance,
                waiters: std::sync::Mutex::new(Vec::new()),
            }),
        }
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

    /// Moves the clock forward by `duration`, saturating at `u64::MAX` nanoseconds, and wakes
    /// the waiters whose deadline it reached.
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
        let now = self.update(|now| now.saturating_add(step));
        self.wake_due(now);
    }

    /// Steps the clock backwards by `duration`, saturating at zero: the fault the throttle
    /// must survive.
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

    /// Whether the clock advances for its waiters.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::ManualClock;
    /// assert!(ManualClock::new().auto_advances());
    /// assert!(!ManualClock::with_auto_advance(false).auto_advances());
    /// ```
    pub fn auto_advances(&self) -> bool {
        self.shared.auto_advance
    }

    /// How many waits are registered with the clock right now: for tests that must know that
    /// an owner is waiting before they move time or cancel it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::ManualClock;
    /// assert_eq!(ManualClock::new().waiters(), 0);
    /// ```
    pub fn waiters(&self) -> usize {
        self.waiters_lock().len()
    }

    fn update(&self, step: impl Fn(u64) -> u64) -> u64 {
        // AcqRel: a test's advance happens-before the readings that see it, and a reading that
        // sees it sees whatever the test did before moving time. The throttle itself needs no
        // ordering from its clock: a reading that looks stale counts as no time.
        let before = self
            .shared
            .nanos
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| Some(step(now)))
            .unwrap_or_else(|now| now);
        step(before)
    }

    fn waiters_lock(&self) -> std::sync::MutexGuard<'_, Vec<(u64, u64, Waker)>> {
        self.shared
            .waiters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes every waiter whose deadline `now` has reached.
    fn wake_due(&self, now: u64) {
        let due: Vec<Waker> = self
            .waiters_lock()
            .iter()
            .filter(|(_, deadline, _)| *deadline <= now)
            .map(|(_, _, waker)| waker.clone())
            .collect();
        for waker in due {
            waker.wake();
        }
    }
}

impl Clock for ManualClock {
    fn now_nanos(&self) -> u64 {
        // Acquire: pairs with the AcqRel update in `advance`/`rewind` (see there).
        self.shared.nanos.load(Ordering::Acquire)
    }

    /// Registers the waiter. Without auto-advance, it then waits to be woken (or looks again
    /// at once if its deadline has come). With auto-advance, a new waiter first yields, so
    /// that others can register; after that the clock moves to the earliest registered
    /// deadline, never past it, and wakes the waiters that reached theirs.
    fn wait_for(&self, waiter: Waiter<'_>, deadline: u64) -> Wait {
        let earliest = {
            let mut waiters = self.waiters_lock();
            match waiters.iter_mut().find(|(id, _, _)| *id == waiter.id) {
                Some(entry) => {
                    entry.1 = deadline;
                    if !entry.2.will_wake(waiter.waker) {
                        entry.2 = waiter.waker.clone();
                    }
                }
                None => {
                    waiters.push((waiter.id, deadline, waiter.waker.clone()));
                    if self.shared.auto_advance {
                        return Wait::Yield;
                    }
                }
            }
            waiters.iter().map(|(_, deadline, _)| *deadline).min()
        };
        if let (true, Some(earliest)) = (self.shared.auto_advance, earliest) {
            // Outside the lock: under loom this is a model operation.
            let now = self.update(|now| now.max(earliest));
            if now >= earliest {
                self.wake_due(now);
            }
        }
        if self.now_nanos() >= deadline {
            Wait::Now
        } else {
            Wait::UntilWoken
        }
    }

    /// Unregisters the waiter, and wakes the others so that the clock can move on to the next
    /// deadline.
    fn done_waiting(&self, waiter: Waiter<'_>) {
        let others: Vec<Waker> = {
            let mut waiters = self.waiters_lock();
            waiters.retain(|(id, _, _)| *id != waiter.id);
            waiters.iter().map(|(_, _, waker)| waker.clone()).collect()
        };
        if self.shared.auto_advance {
            for waker in others {
                waker.wake();
            }
        }
    }

    /// Blocks for a moment of real time, or until unparked: only reached by a caller that does
    /// not go through [`wait_for`](Clock::wait_for).
    fn sleep(&self, duration: Duration) {
        sync::park_timeout(duration.min(Duration::from_millis(1)));
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_nanos", &self.now_nanos())
            .field("auto_advance", &self.shared.auto_advance)
            .field("waiters", &self.waiters())
            .finish()
    }
}

/// `duration` in nanoseconds, saturating at `u64::MAX`.
pub(crate) const fn nanos_saturating(duration: Duration) -> u64 {
    let nanos = duration.as_nanos();
    if nanos > u64::MAX as u128 {
        u64::MAX
    } else {
        nanos as u64
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn nanos_saturate_at_the_largest_u64_and_are_exact_below() {
        assert_eq!(nanos_saturating(Duration::ZERO), 0);
        assert_eq!(nanos_saturating(Duration::from_nanos(1_500)), 1_500);
        assert_eq!(nanos_saturating(Duration::from_nanos(u64::MAX)), u64::MAX);
        // Past 2^64 ns (about 584 years), and far past it: the largest value, not what is left
        // of it modulo 2^64.
        let past = Duration::from_nanos(u64::MAX) + Duration::from_nanos(2);
        assert_eq!(nanos_saturating(past), u64::MAX);
        assert_eq!(nanos_saturating(Duration::MAX), u64::MAX);
    }

    /// The manual clock's bookkeeping, checked directly: here, in the first test binary to
    /// run, a clock that does not move fails at once, rather than hang the tests whose owners
    /// wait on it.
    #[test]
    fn a_manual_clock_moves_only_when_told_and_keeps_one_entry_per_waiter() {
        let clock = ManualClock::with_auto_advance(false);
        assert_eq!(clock.now_nanos(), 0);
        clock.advance(Duration::from_micros(5));
        assert_eq!(clock.now_nanos(), 5_000);
        clock.advance(Duration::from_micros(2));
        assert_eq!(clock.now_nanos(), 7_000);
        clock.rewind(Duration::from_micros(3));
        assert_eq!(clock.now_nanos(), 4_000);
        let (first, second) = (Waker::noop(), Waker::noop());
        let (first, second) = (Waiter::new(first), Waiter::new(second));
        assert_eq!(clock.wait_for(first, 9_000), Wait::UntilWoken);
        assert_eq!(clock.wait_for(second, 8_000), Wait::UntilWoken);
        // A waiter asking again updates its own entry.
        assert_eq!(clock.wait_for(first, 10_000), Wait::UntilWoken);
        assert_eq!(clock.waiters(), 2);
        assert_eq!(clock.wait_for(second, 4_000), Wait::Now);
        clock.done_waiting(second);
        assert_eq!(clock.waiters(), 1, "one waiter left, the other still waits");
        // The one left is the first: the second, waiting again, is a new entry.
        assert_eq!(clock.wait_for(second, 20_000), Wait::UntilWoken);
        assert_eq!(clock.waiters(), 2);
        clock.done_waiting(first);
        clock.done_waiting(second);
        assert_eq!(clock.waiters(), 0);
    }
}
