//! A throttled function that takes a value: each run gets the latest value offered.

use crate::clock::{Clock, DefaultClock};
use crate::error::ThresholdError;
use crate::state::Mode;
use crate::sync::{self, Mutex};
use crate::throttle::{Admission, Throttle};
use crate::throttled::Outcome;
use core::fmt;
use core::time::Duration;

/// A function of one argument, limited to one run per threshold, whose runs get the latest
/// value offered: lodash's and RxJS's "latest arguments" (Neutron runs the first deferred
/// caller's instead).
///
/// [`call`](Latest::call) offers a value, then is decided like [`Throttled::call`]: a run at
/// once, a deferred run at the end of the window, or Coalesced into the pending one. Every run
/// takes the latest value offered when it starts (after its stamp) and passes it to the work;
/// a Coalesced caller's value waits in a slot beside the state word for the run that covers
/// it.
///
/// **What is promised.** Each value is either replaced by a later one (and dropped, once) or
/// taken by exactly one run, whose work starts after the value was offered: none is torn,
/// lost, or seen twice. A Coalesced caller's value (or a later one) is visible to the run
/// that covers it: `call` offers the value first and admits with
/// [`admit_publishing`](Throttle::admit_publishing), whose read-modify-write orders the offer
/// before the covering run's stamp. A run that finds the slot empty (a run that started
/// meanwhile took the latest value; runs can overlap when the work is slower than the
/// threshold) has nothing newer to pass on: its work does not run, and its caller is told
/// `Coalesced`.
///
/// The slot is a mutex held only to move one value in or out, never while the work runs; a
/// replaced value is dropped outside it. Calls therefore take the lock once each; the
/// admission itself stays lock-free.
///
/// **Leading-only mode.** A [leading-only](Mode::LeadingOnly) throttle defers no run, so no
/// value ever waits for one and the slot is not used: `call` admits first, a Now run gets the
/// caller's own value, and a [`Suppressed`](Outcome::Suppressed) caller's value is dropped
/// before `call` returns (no run will ever take it, so it is not kept).
///
/// [`Throttled::call`]: crate::Throttled::call
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Latest, ManualClock, Outcome, Throttle};
/// use std::time::Duration;
///
/// let clock = ManualClock::with_auto_advance(false); // moves only when told
/// let throttle = Throttle::with_clock(Duration::from_millis(100), clock.clone())?;
/// let publish = Latest::from_throttle(throttle, |price: u32| price);
/// assert_eq!(publish.call(10), Outcome::Now(10));
/// std::thread::scope(|s| {
///     let owner = s.spawn(|| publish.call(11)); // deferred: waits for the window to end
///     while !publish.throttle().is_pending() {}
///     assert_eq!(publish.call(12), Outcome::Coalesced);
///     assert_eq!(publish.call(13), Outcome::Coalesced);
///     clock.advance(Duration::from_millis(100));
///     assert_eq!(owner.join().unwrap(), Outcome::Deferred(13)); // the latest value
/// });
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
pub struct Latest<T, F, C: Clock = DefaultClock> {
    throttle: Throttle<C>,
    slot: Mutex<Option<T>>,
    work: F,
}

impl<T, F, R> Latest<T, F>
where
    F: Fn(T) -> R,
{
    /// Wraps `work` in a throttle on the process's [`DefaultClock`].
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`]; [`try_new`](Latest::try_new)
    /// returns the error instead.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Latest, Outcome};
    /// # use std::time::Duration;
    /// let save = Latest::new(Duration::from_secs(1), |text: &str| text.len());
    /// assert_eq!(save.call("draft"), Outcome::Now(5));
    /// ```
    pub fn new(threshold: Duration, work: F) -> Self {
        match Self::try_new(threshold, work) {
            Ok(latest) => latest,
            Err(err) => panic!("atomic-throttle: Latest::new: {err}"),
        }
    }

    /// Wraps `work` in a throttle on the process's [`DefaultClock`].
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Latest;
    /// # use std::time::Duration;
    /// let save = Latest::try_new(Duration::from_secs(1), |text: String| text.len())?;
    /// # let _ = save;
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn try_new(threshold: Duration, work: F) -> Result<Self, ThresholdError> {
        Ok(Self::from_throttle(Throttle::try_new(threshold)?, work))
    }
}

impl<T, F, R, C> Latest<T, F, C>
where
    F: Fn(T) -> R,
    C: Clock,
{
    /// Wraps `work` in `throttle` (any clock, mode, lease or counters).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Latest, Throttle};
    /// # use std::time::Duration;
    /// let show = Latest::from_throttle(Throttle::new(Duration::from_millis(16)), |frame: u64| frame);
    /// assert_eq!(show.throttle().threshold(), Duration::from_millis(16));
    /// ```
    pub fn from_throttle(throttle: Throttle<C>, work: F) -> Self {
        Self {
            throttle,
            slot: Mutex::new(None),
            work,
        }
    }

    /// Offers `value`, then calls the work through the throttle: at once, after waiting for
    /// the window to end (this call then blocks), or not at all when a pending deferred run
    /// covers this call (it will get this value, or a later one). The work gets the latest
    /// value offered when its run starts.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Latest, Outcome};
    /// # use std::time::Duration;
    /// let echo = Latest::try_new(Duration::from_secs(60), |word: &str| word)?;
    /// assert_eq!(echo.call("first"), Outcome::Now("first"));
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn call(&self, value: T) -> Outcome<R> {
        if self.throttle.mode() == Mode::LeadingOnly {
            return self.call_leading_only(value);
        }
        let late = sync::is_mutant(sync::mutant!(LateValue));
        let mut value = Some(value);
        if !late {
            self.offer(value.take());
        }
        // Publishing: a Coalesced answer's read-modify-write orders the offer above before the
        // covering run's stamp, so that the run's take sees it.
        let admission = self.throttle.admit_publishing();
        if late {
            // The broken variant: offered after the admission, too late for a run that has
            // already taken the slot.
            self.offer(value.take());
        }
        match admission {
            Admission::Now => self.run_latest().map_or(Outcome::Coalesced, Outcome::Now),
            Admission::Deferred(deferral) => match deferral.run(|| self.run_latest()) {
                Ok(Some(result)) => Outcome::Deferred(result),
                Ok(None) => Outcome::Coalesced,
                Err(revoked) => Outcome::Revoked(revoked),
            },
            Admission::Coalesced => Outcome::Coalesced,
            Admission::Suppressed { .. } => Outcome::Suppressed,
        }
    }

    /// Whether a value waits in the slot for a run to take it: true only while a run that
    /// will take it is still to come (or when its throttle's deferral was cancelled). Never
    /// true in leading-only mode, where a suppressed caller's value is dropped at once.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Latest;
    /// # use std::time::Duration;
    /// let job = Latest::try_new(Duration::from_secs(1), |_: u8| ())?;
    /// let _ = job.call(1);
    /// assert!(!job.holds_a_value()); // the leading run took it
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn holds_a_value(&self) -> bool {
        sync::lock(&self.slot).is_some()
    }

    /// The throttle that decides the calls.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Latest;
    /// # use std::time::Duration;
    /// let job = Latest::try_new(Duration::from_secs(1), |_: ()| ())?;
    /// assert!(!job.throttle().is_pending());
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn throttle(&self) -> &Throttle<C> {
        &self.throttle
    }

    /// A call in leading-only mode: no run is ever deferred, so no value waits in the slot.
    /// A Now run gets this caller's value; a Suppressed caller's value is dropped here.
    fn call_leading_only(&self, value: T) -> Outcome<R> {
        match self.throttle.admit() {
            Admission::Now => Outcome::Now((self.work)(value)),
            Admission::Suppressed { .. } => {
                drop(value);
                Outcome::Suppressed
            }
            Admission::Deferred(_) | Admission::Coalesced => {
                unreachable!("a leading-only throttle neither defers nor coalesces")
            }
        }
    }

    /// Puts `value` in the slot, dropping the one it replaces outside the lock.
    fn offer(&self, value: Option<T>) {
        let replaced = match value {
            Some(value) => sync::lock(&self.slot).replace(value),
            None => None,
        };
        drop(replaced);
    }

    /// Takes the latest value and runs the work with it, if there is one.
    fn run_latest(&self) -> Option<R> {
        let latest = sync::lock(&self.slot).take();
        latest.map(&self.work)
    }
}

impl<T, F, C: Clock> fmt::Debug for Latest<T, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Latest")
            .field("throttle", &self.throttle)
            .field("holds_a_value", &sync::lock(&self.slot).is_some())
            .finish_non_exhaustive()
    }
}
