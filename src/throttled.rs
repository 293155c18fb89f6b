//! The Neutron-style wrapper: a throttle and the work it limits, in one value.

use crate::clock::{Clock, DefaultClock};
use crate::covered::{self, Completions, Owed, Seen};
use crate::deferral::Revoked;
use crate::error::ThresholdError;
use crate::sync::Ordering;
use crate::throttle::{Admission, Throttle};
use crate::wait;
use core::fmt;
use core::time::Duration;

/// A function limited to one run per threshold, the way Neutron's `throttler` decorator
/// limits one: the first call runs at once, the first call inside the window waits for the
/// window to end and runs then, and calls while that one waits return at once.
///
/// # Examples
///
/// ```
/// use atomic_throttle::{Outcome, Throttled};
/// use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
/// use std::time::Duration;
///
/// let runs = AtomicU32::new(0);
/// let publish = Throttled::new(Duration::from_millis(1), || runs.fetch_add(1, Relaxed));
/// assert!(matches!(publish.call(), Outcome::Now(0)));
/// assert!(matches!(publish.call(), Outcome::Deferred(1))); // waited about 1 ms
/// ```
pub struct Throttled<F, C: Clock = DefaultClock> {
    throttle: Throttle<C>,
    work: F,
    publishing: bool,
    /// Runs that finished, for callers waiting in `call_covered`.
    completions: Completions,
}

/// What one [`Throttled::call`] did.
///
/// # Examples
///
/// ```
/// use atomic_throttle::Outcome;
///
/// let outcome: Outcome<u8> = Outcome::Coalesced;
/// assert_eq!(outcome.ran(), None);
/// assert_eq!(Outcome::Now(3).ran(), Some(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum Outcome<R> {
    /// The work ran at once; here is its result.
    Now(R),
    /// This call waited for the window to end, then ran the work; here is its result.
    Deferred(R),
    /// Another call's deferred run covers this one; the work did not run here.
    Coalesced,
    /// Another call's run covered this one, and this caller waited for it to finish
    /// (`call_covered`): here is a copy of its result.
    Covered(R),
    /// [Leading-only](crate::Mode::LeadingOnly): inside the window; no run covers this call.
    Suppressed,
    /// This call owned the deferred run, but it was cancelled or taken over before it ran.
    Revoked(Revoked),
}

impl<R> Outcome<R> {
    /// The work's result, if it ran in this call.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Outcome;
    /// assert_eq!(Outcome::Deferred("x").ran(), Some("x"));
    /// assert_eq!(Outcome::Covered("x").ran(), None);
    /// ```
    pub fn ran(self) -> Option<R> {
        match self {
            Outcome::Now(result) | Outcome::Deferred(result) => Some(result),
            Outcome::Covered(_)
            | Outcome::Coalesced
            | Outcome::Suppressed
            | Outcome::Revoked(_) => None,
        }
    }
    /// The result of the run that served this call: its own (`Now`, `Deferred`), or the
    /// covering run's it waited for (`Covered`).
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Outcome;
    /// assert_eq!(Outcome::Covered(3).value(), Some(3));
    /// assert_eq!(Outcome::<u8>::Coalesced.value(), None);
    /// ```
    pub fn value(self) -> Option<R> {
        match self {
            Outcome::Now(result) | Outcome::Deferred(result) | Outcome::Covered(result) => {
                Some(result)
            }
            Outcome::Coalesced | Outcome::Suppressed | Outcome::Revoked(_) => None,
        }
    }
}

impl<F> Throttled<F> {
    /// Wraps `work` in a throttle on the process's [`DefaultClock`].
    ///
    /// # Panics
    ///
    /// If `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttled;
    /// # use std::time::Duration;
    /// let flush = Throttled::new(Duration::from_millis(100), || println!("flushed"));
    /// # let _ = flush;
    /// ```
    pub fn new(threshold: Duration, work: F) -> Self {
        match Self::try_new(threshold, work) {
            Ok(throttled) => throttled,
            Err(err) => panic!("atomic-throttle: Throttled::new: {err}"),
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
    /// # use atomic_throttle::Throttled;
    /// # use std::time::Duration;
    /// assert!(Throttled::try_new(Duration::MAX, || ()).is_err());
    /// ```
    pub fn try_new(threshold: Duration, work: F) -> Result<Self, ThresholdError> {
        Ok(Self::from_throttle(Throttle::try_new(threshold)?, work))
    }
}

impl<F, C: Clock> Throttled<F, C> {
    /// Wraps `work` in a throttle reading time from `clock`.
    ///
    /// # Errors
    ///
    /// [`ThresholdError`] if `threshold` exceeds [`Throttle::MAX_THRESHOLD`].
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{ManualClock, Outcome, Throttled};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new();
    /// let tick = Throttled::with_clock(Duration::from_secs(1), clock.clone(), || clock.now())?;
    /// assert_eq!(tick.call(), Outcome::Now(Duration::ZERO));
    /// assert_eq!(tick.call(), Outcome::Deferred(Duration::from_secs(1))); // exactly T later
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn with_clock(threshold: Duration, clock: C, work: F) -> Result<Self, ThresholdError> {
        Ok(Self::from_throttle(
            Throttle::with_clock(threshold, clock)?,
            work,
        ))
    }

    /// Wraps `work` in an existing throttle.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Throttle, Throttled};
    /// # use std::time::Duration;
    /// let log = Throttled::from_throttle(Throttle::new(Duration::from_secs(5)), || ());
    /// assert_eq!(log.throttle().threshold(), Duration::from_secs(5));
    /// ```
    pub fn from_throttle(throttle: Throttle<C>, work: F) -> Self {
        Self {
            throttle,
            work,
            publishing: false,
            completions: Completions::default(),
        }
    }

    /// Whether a Coalesced caller's earlier writes happen-before the run that covers it: off
    /// by default ([`call`](Throttled::call) admits with [`Throttle::admit`], one load); on,
    /// it admits with [`Throttle::admit_publishing`], a read-modify-write of the shared word
    /// on every call. Turn it on when the work reads what callers wrote just before calling.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{Outcome, Throttled};
    /// use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    /// use std::time::Duration;
    ///
    /// let latest = AtomicU32::new(0);
    /// let publish = Throttled::new(Duration::from_millis(1), || latest.load(Relaxed)).publishing(true);
    /// latest.store(5, Relaxed);
    /// assert_eq!(publish.call(), Outcome::Now(5));
    /// ```
    pub fn publishing(mut self, publishing: bool) -> Self {
        self.publishing = publishing;
        self
    }

    /// The throttle that decides the calls.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttled;
    /// # use std::time::Duration;
    /// let job = Throttled::new(Duration::from_secs(1), || ());
    /// assert!(!job.throttle().is_pending());
    /// ```
    pub fn throttle(&self) -> &Throttle<C> {
        &self.throttle
    }

    /// The work.
    #[cfg(feature = "tokio")]
    pub(crate) fn work(&self) -> &F {
        &self.work
    }

    /// The record of finished runs, for callers waiting in `call_covered`.
    #[cfg(feature = "tokio")]
    pub(crate) fn completions(&self) -> &Completions {
        &self.completions
    }

    /// Admits a call, publishing or not as configured.
    #[cfg(feature = "tokio")]
    pub(crate) fn admit(&self) -> Admission<&Throttle<C>> {
        if self.publishing {
            self.throttle.admit_publishing()
        } else {
            self.throttle.admit()
        }
    }

    /// Calls the work through the throttle: at once, after waiting for the window to end (this
    /// call then blocks), or not at all when a pending deferred call covers this one.
    ///
    /// If the work panics, the panic propagates to this caller; the run was stamped before the
    /// work started, so the throttle is unharmed.
    ///
    /// A Coalesced call's earlier writes are not guaranteed to be visible to the run that
    /// covers it unless the wrapper is [`publishing`](Throttled::publishing) (see the crate
    /// docs, "Memory ordering"). If a waiting caller panics or unwinds before its run, the
    /// deferral is released and the next call claims it.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::{Outcome, Throttled};
    /// # use std::time::Duration;
    /// let job = Throttled::new(Duration::from_secs(60), || "sent");
    /// assert_eq!(job.call(), Outcome::Now("sent"));
    /// ```
    pub fn call<R>(&self) -> Outcome<R>
    where
        F: Fn() -> R,
    {
        let (admission, _) = self.throttle.admit_seen(self.publishing);
        match admission {
            Admission::Now => {
                let _owed = Owed::leading(&self.completions, self.last_stamp());
                Outcome::Now((self.work)())
            }
            Admission::Deferred(deferral) => {
                let mut owed = Owed::new(&self.completions, Some(deferral.word()));
                match deferral.run_around(|attempt| owed.stamping(attempt), || (self.work)()) {
                    Ok(result) => Outcome::Deferred(result),
                    Err(revoked) => Outcome::Revoked(revoked),
                }
            }
            Admission::Coalesced => Outcome::Coalesced,
            Admission::Suppressed { .. } => Outcome::Suppressed,
        }
    }

    /// The stamp of the run just stamped, in nanoseconds.
    fn last_stamp(&self) -> u64 {
        self.throttle.last_run().unwrap_or_default()
    }

    /// Like [`call`](Throttled::call), but a caller that would be Coalesced blocks until the
    /// run that covers it has finished, and gets a copy of its result: `Covered(result)` (a
    /// single-flight call). The covering run is the first to finish of the runs started
    /// after the call: the deferred run it was coalesced into, or a later one that finished
    /// first (a leading run that came after that deferred run, while its work still ran). If
    /// that run is cancelled with nothing after it, the answer is `Revoked(Cancelled)`. A
    /// covering run started by [`call`](Throttled::call) (or `call_async`) rather than
    /// `call_covered` keeps no result to copy: the waiter then gets `Coalesced`, after that
    /// run has finished; so does a waiter whose covering run panicked.
    /// Whatever the owner does (runs, panics, is cancelled, gives up, is dropped mid-wait),
    /// the waiters hear of it: none is left blocked. A deferral claimed, run, given up,
    /// cancelled or taken over through [`throttle()`](Throttled::throttle) itself, outside the
    /// wrapper, tells the waiters nothing; they watch the throttle's state for it instead
    /// (looking again after a millisecond, then less and less often, at least every 16 ms),
    /// and a run started there ends their wait when it starts, since it cannot be seen
    /// finishing (`Coalesced`); one that keeps the stamp (flushed on a clock that has not moved
    /// since the claim) looks exactly like a deferral given up, and its waiters are told
    /// `Revoked(Cancelled)`. So where calls go through `throttle()` as well as the wrapper,
    /// a waiter may also end `Coalesced` as a covering run of the wrapper's starts, before it
    /// finishes. Every waiter looks again that way, behind an owner of the wrapper's too: a
    /// cancel made through `throttle()`, or an owner whose future was leaked, tells it nothing.
    /// On a throttle with a [lease](crate::ThrottleBuilder::lease), a waiter whose
    /// owner outside the wrapper let the lease run out takes the run over itself, as a call
    /// would (answered `Now`), unless another caller took it over first: that caller's run
    /// then covers it (`Coalesced`). The same holds behind an owner inside the wrapper that has
    /// not started its run by the end of the lease (its `call_async` future was leaked, or
    /// its thread is stuck): it may never come back, so there too waiters watch the state, on
    /// such a throttle, rather than wait for a word from it. A waiter that took the run over
    /// is counted as the Coalesced answer it got first (in [stats](Throttle::stats) and
    /// [`take_skipped`](Throttle::take_skipped)), and in stats as the takeover too.
    ///
    /// Waiters read the throttle's state and the record of finished runs, which has two
    /// limits: a claim made at the stamp of a run just flushed (on a clock that has not moved
    /// since) repeats that run's claim word, and a waiter coalesced into it may be told
    /// `Covered` with the earlier run's result; and after 128 deferrals given up in one
    /// window, the stamp moves on by a microsecond, which a waiter behind an owner outside the
    /// wrapper takes for a run (`Coalesced`).
    ///
    /// Callers that do not wait pay nothing for this: their Coalesced answer is still one
    /// load.
    ///
    /// # Examples
    ///
    /// ```
    /// use atomic_throttle::{ManualClock, Outcome, Throttled};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::with_auto_advance(false);
    /// let refresh = Throttled::with_clock(Duration::from_millis(50), clock.clone(), || "fresh")?;
    /// assert_eq!(refresh.call_covered(), Outcome::Now("fresh"));
    /// std::thread::scope(|s| {
    ///     let owner = s.spawn(|| refresh.call_covered());
    ///     while !refresh.throttle().is_pending() {}
    ///     let waiter = s.spawn(|| refresh.call_covered());
    ///     while refresh.waiting() < 1 {} // until the waiter waits for the owner's run
    ///     clock.advance(Duration::from_millis(50));
    ///     assert_eq!(owner.join().unwrap(), Outcome::Deferred("fresh"));
    ///     assert_eq!(waiter.join().unwrap(), Outcome::Covered("fresh"));
    /// });
    /// # Ok::<(), atomic_throttle::ThresholdError>(())
    /// ```
    pub fn call_covered<R>(&self) -> Outcome<R>
    where
        F: Fn() -> R,
        R: Clone + Send + 'static,
    {
        self.completions.keep_results(covered::clone_as::<R>);
        let run_now = || {
            let owed = Owed::leading(&self.completions, self.last_stamp());
            let result = (self.work)();
            owed.finish(&result);
            Outcome::Now(result)
        };
        let (admission, seen) = self.throttle.admit_seen(self.publishing);
        match admission {
            Admission::Now => run_now(),
            Admission::Deferred(deferral) => {
                let mut owed = Owed::new(&self.completions, Some(deferral.word()));
                let ran = deferral.run_around(|attempt| owed.stamping(attempt), || (self.work)());
                match ran {
                    Ok(result) => {
                        owed.finish(&result);
                        Outcome::Deferred(result)
                    }
                    Err(revoked) => Outcome::Revoked(revoked),
                }
            }
            // `None`: its owner, outside the wrapper, let its lease run out, and this caller
            // took the run over.
            Admission::Coalesced => self.wait_for_cover(seen).unwrap_or_else(run_now),
            Admission::Suppressed { .. } => Outcome::Suppressed,
        }
    }

    /// How many callers wait in [`call_covered`](Throttled::call_covered) for their covering
    /// run right now.
    ///
    /// # Examples
    ///
    /// ```
    /// # use atomic_throttle::Throttled;
    /// # use std::time::Duration;
    /// let job = Throttled::new(Duration::from_secs(1), || ());
    /// assert_eq!(job.waiting(), 0);
    /// ```
    pub fn waiting(&self) -> usize {
        self.completions.waiting()
    }

    /// Blocks until the run that covers a caller Coalesced on `seen` has finished.
    /// `None` if the deferral's owner is outside the wrapper and its lease has run out: the
    /// caller has taken the run over, and runs it now.
    fn wait_for_cover<R: Clone + 'static>(&self, seen: u64) -> Option<Outcome<R>> {
        let waker = wait::thread_waker();
        let id = crate::clock::Waiter::new(&waker).id();
        // However the wait ends (its clock may panic), the waiter is forgotten.
        let _forget = Forget(&self.completions, id);
        let word = self.throttle.word();
        let mut watch = covered::WATCH_INTERVAL;
        loop {
            let lease_over = word.lease_over(seen);
            // Acquire: as in `Throttle::admit`.
            let load = || self.throttle.load(Ordering::Acquire);
            let (looked, now) = self
                .completions
                .look::<R>(seen, load, lease_over, id, &waker);
            match looked {
                Seen::Covered(Some(result)) => return Some(Outcome::Covered(result)),
                Seen::Covered(None) => return Some(Outcome::Coalesced),
                Seen::Uncovered => return Some(Outcome::Revoked(Revoked::Cancelled)),
                // An owner it watches let the lease run out: the waiter takes the run over,
                // but only the claim it looked at, and only if no one changed the state since;
                // a caller that took it over first has a run that covers this one, which a
                // later look sees.
                Seen::Watching if word.take_over(now) => return None,
                // Woken by the owner's news, or not: an owner may never come back (its future
                // leaked), and a cancel through the throttle itself tells nobody. So the waiter
                // looks again from time to time, less often the longer it waits: many waiters
                // cost little.
                Seen::Waiting | Seen::Watching => {
                    crate::sync::park_timeout(watch);
                    watch = (watch * 2).min(covered::WATCH_INTERVAL_MAX);
                }
            }
        }
    }
}

/// Forgets a waiter of a covered call when dropped: when its wait ends, or unwinds.
struct Forget<'a>(&'a Completions, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.forget(self.1);
    }
}

impl<F, C: Clock> fmt::Debug for Throttled<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttled")
            .field("throttle", &self.throttle)
            .field("publishing", &self.publishing)
            .finish_non_exhaustive()
    }
}
