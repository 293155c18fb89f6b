//! What a detached throttle does, whichever thread serves it: deciding a call and handing its
//! run over, serving the runs handed over (spaced, stamped when the work starts, every panic
//! caught), and shutting down by its policy. Its own timer thread (`own_thread.rs`) and a
//! shared timer's workers (`crate::timer`) both drive it through [`Job::serve_once`].

use super::{Dispatch, LeadingRun, Shutdown};
use crate::clock::Clock;
use crate::panics::{self, PanicHook};
use crate::state;
use crate::sync::{self, AtomicBool, AtomicU64, Ordering, Stopwatch, Thread};
use crate::throttle::{Admission, Throttle};
use crate::timer::{Entry, Link, Service, MAX_SLICE};
use crate::wait::{self, Look};
use core::time::Duration;
use std::any::Any;
use std::sync::Arc;

/// `last_start` before the first work started.
const NO_START: u64 = u64::MAX;

/// A detached throttle's state, shared by its handle and the threads that serve it.
pub(super) struct Job<F, C: Clock> {
    pub(super) throttle: Throttle<C>,
    work: F,
    pub(super) leading: LeadingRun,
    pub(super) shutdown: Shutdown,
    pub(super) grace: Duration,
    on_panic: Option<PanicHook>,
    /// Whether callers admit with `admit_publishing`.
    pub(super) publishing: bool,
    /// Leading runs answered to callers, for the serving thread to run.
    leading_requested: AtomicU64,
    /// Set by `shutdown` (or dropping the handle).
    stopping: AtomicBool,
    /// When the serving side first saw the shutdown, for the grace.
    stopping_since: std::sync::OnceLock<Stopwatch>,
    /// Set once the job is closed for callers: its timer thread has ended (or could not
    /// start), or the shared timer closed it.
    stopped: AtomicBool,
    panics: AtomicU64,
    /// The clock reading when the last work served here started, [`NO_START`] before the
    /// first: the next leading run is spaced from it.
    last_start: AtomicU64,
    pub(super) driver: Driver<C>,
    /// The job's place in a shared timer (unused on its own thread).
    pub(super) link: Link,
}

/// Who serves the job's runs.
pub(super) enum Driver<C> {
    /// Its own timer thread, once started.
    Own(std::sync::OnceLock<Thread>),
    /// A shared timer's timer thread and workers.
    Shared(Arc<Service<C>>),
}

/// What waiting for a deferral's deadline came to.
enum Stamp {
    /// Stamped at this reading: run the work.
    Stamped(u64),
    /// Cancelled or taken over: nothing to run or release.
    Revoked,
    /// Given up under [`Shutdown::CancelPending`]: release it.
    GivenUp,
    /// Not due within the patience: left for the timer thread to hand over again.
    Later,
}

impl<F, C: Clock> Job<F, C> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        throttle: Throttle<C>,
        work: F,
        leading: LeadingRun,
        shutdown: Shutdown,
        grace: Duration,
        on_panic: Option<PanicHook>,
        publishing: bool,
        driver: Driver<C>,
    ) -> Self {
        Self {
            throttle,
            work,
            leading,
            shutdown,
            grace,
            on_panic,
            publishing,
            leading_requested: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            stopping_since: std::sync::OnceLock::new(),
            stopped: AtomicBool::new(false),
            panics: AtomicU64::new(0),
            last_start: AtomicU64::new(NO_START),
            driver,
            link: Link::new(),
        }
    }

    /// How many panics were caught.
    pub(super) fn panics(&self) -> u64 {
        // Relaxed: a count, ordered with nothing else.
        self.panics.load(Ordering::Relaxed)
    }

    /// Whether calls are answered [`Dispatch::Closed`].
    pub(super) fn is_closed(&self) -> bool {
        // Acquire: pairs with the SeqCst store in `close` (and the Release one in
        // `own_thread::Gone`); a caller that sees it also sees the pending deferral given up.
        self.stopped.load(Ordering::Acquire)
    }

    /// Closes the job for callers. The SeqCst store and fence pair with the fence a caller
    /// makes between handing a run over and looking at `stopped` (`closed_after_hand_off`):
    /// either what the serving side looks at after this sees the caller's hand-off, or the
    /// caller sees the job closed and takes its run back.
    pub(super) fn close(&self) {
        // SeqCst, then a SeqCst fence: the store-buffering handshake with the fence and load
        // in `closed_after_hand_off` (the serving side's loads after the fence are its look).
        self.stopped.store(true, Ordering::SeqCst);
        sync::fence_seq_cst();
    }

    /// Closes the job for callers without the handshake, when its timer thread is gone.
    pub(super) fn mark_gone(&self) {
        // Release: pairs with the Acquire load in `is_closed`.
        self.stopped.store(true, Ordering::Release);
    }

    /// Whether the job was closed, looked at after a hand-off; see `close`.
    fn closed_after_hand_off(&self) -> bool {
        sync::fence_seq_cst();
        // SeqCst, after a SeqCst fence: pairs with the store and fence in `close`; the
        // hand-off this follows (an AcqRel CAS or a Release fetch_add) comes before the fence.
        self.stopped.load(Ordering::SeqCst)
    }

    /// Asks the job to shut down.
    pub(super) fn request_stop(&self) {
        // Release: every call made through the handle happened before; the serving side's
        // Acquire load in `is_stopping` then sees their hand-offs.
        self.stopping.store(true, Ordering::Release);
    }

    /// Whether the job is shutting down: its own shutdown, or its shared timer's.
    pub(super) fn is_stopping(&self) -> bool {
        // Acquire: pairs with the Release store in `request_stop`.
        self.stopping.load(Ordering::Acquire)
            || matches!(&self.driver, Driver::Shared(service) if service.is_stopping())
    }

    /// When the serving side first saw the shutdown, if it is shutting down.
    fn stopping_since(&self) -> Option<Stopwatch> {
        self.is_stopping()
            .then(|| *self.stopping_since.get_or_init(Stopwatch::start))
    }

    /// Whether a shutdown's grace has run out: spacing and deadlines no longer hold it up.
    fn is_graceless(&self) -> bool {
        self.stopping_since()
            .is_some_and(|since| since.has_elapsed(self.grace))
    }

    fn last_start(&self) -> Option<u64> {
        // Relaxed: written and read only by the thread serving the job, one at a time; a
        // shared timer's hand-offs between its threads order them.
        let last = self.last_start.load(Ordering::Relaxed);
        (last != NO_START).then_some(last)
    }

    fn set_last_start(&self, reading: u64) {
        // Relaxed: see `last_start`.
        self.last_start.store(reading, Ordering::Relaxed);
    }

    /// Gives the pending deferral up, if any: nobody will run it.
    pub(super) fn give_up(&self) {
        // Acquire: as in an admission.
        let word = self.throttle.load(Ordering::Acquire);
        if state::is_pending(word) {
            let _ = self.throttle.word().release(word & !state::FLUSH);
        }
    }

    /// Tells whoever serves the job that a caller handed a run over.
    fn hand_off(&self) {
        match &self.driver {
            Driver::Own(timer) => {
                if sync::is_mutant(sync::mutant!(NoUnpark)) {
                    return;
                }
                if let Some(timer) = timer.get() {
                    timer.unpark();
                }
            }
            Driver::Shared(service) => {
                if sync::is_mutant(sync::mutant!(SilentTimer)) {
                    service.file_silently(&self.link);
                    return;
                }
                service.notify(&self.link);
            }
        }
    }

    /// Tells whoever serves the job to look at it again: a flush, a cancel, a new threshold or
    /// a shutdown. (A waiting serving thread is also woken through the throttle's wake slot.)
    pub(super) fn nudge(&self) {
        match &self.driver {
            Driver::Own(timer) => {
                if let Some(timer) = timer.get() {
                    timer.unpark();
                }
            }
            Driver::Shared(service) => service.nudge(&self.link),
        }
    }

    /// Counts a caught panic, hands it to the hook, and disposes of its payload.
    pub(super) fn report_panic(&self, payload: Box<dyn Any + Send>) {
        // Relaxed: a count, ordered with nothing else.
        self.panics.fetch_add(1, Ordering::Relaxed);
        panics::report(self.on_panic.as_deref(), payload);
    }
}

impl<F, C> Job<F, C>
where
    F: Fn() + Send + Sync + 'static,
    C: Clock,
{
    /// Decides a call and hands its run over; never waits.
    pub(super) fn call(&self) -> Dispatch {
        let admission = if self.publishing {
            self.throttle.admit_publishing()
        } else {
            self.throttle.admit()
        };
        match admission {
            Admission::Coalesced => Dispatch::Coalesced,
            Admission::Suppressed { .. } => Dispatch::Suppressed,
            Admission::Now => match self.leading {
                LeadingRun::Inline => {
                    if self.is_closed() || self.is_stopping() {
                        // Shut down: nothing runs, inline or not. (The window this admission
                        // opened holds no claim, so it strands nothing.)
                        return Dispatch::Closed;
                    }
                    self.run_work();
                    Dispatch::Leading
                }
                LeadingRun::OnTimer => {
                    if self.is_stopping() {
                        // Shutting down: no new run is taken on, so that a work that calls
                        // its own handle cannot keep the shutdown from ending.
                        return Dispatch::Closed;
                    }
                    // Release: the serving thread's Acquire loads see this caller's writes
                    // before the call, as the work on an inline run would.
                    self.leading_requested.fetch_add(1, Ordering::Release);
                    if self.closed_after_hand_off() && self.take_leading() {
                        // Taken back: the serving side's last look did not take it.
                        return Dispatch::Closed;
                    }
                    self.hand_off();
                    Dispatch::Leading
                }
            },
            Admission::Deferred(deferral) => {
                // The serving side owns the deferral from here: it finds the claimed word in
                // the state, which only it changes while the deferral is pending (besides a
                // cancel or flush, which wake it). That holds because the throttle is private
                // to the handle: every claim goes through here and is handed over.
                let word = deferral.disown();
                // Shutting down, or shut down: no new run is taken on (a work that calls its
                // own handle cannot keep the shutdown from ending).
                if self.is_stopping() || self.closed_after_hand_off() {
                    // Nobody left to run it: give it up rather than strand it. If that finds it
                    // gone, the serving side's last look took it after all (it runs, unless the
                    // shutdown policy gives it up): the call was handed over.
                    let took_back = self.throttle.word().release(word);
                    if took_back || sync::is_mutant(sync::mutant!(BlindTakeBack)) {
                        return Dispatch::Closed;
                    }
                    return Dispatch::Deferred;
                }
                self.hand_off();
                Dispatch::Deferred
            }
        }
    }

    /// Takes one leading run handed over, unless none is left; says whether it took one.
    fn take_leading(&self) -> bool {
        // AcqRel: Acquire sees the writes of the caller whose fetch_add this takes (pairs with
        // its Release); Release keeps the count a release sequence for the callers after.
        // Failure Acquire: nothing is taken, and the value is only compared.
        self.leading_requested
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Runs the leading runs handed over, then the pending deferral, if any; says whether there
    /// was anything to run. Waits for each run's time as long as that lies within `patience`
    /// nanoseconds of the job's clock (`None`: however long); what lies further is left.
    pub(super) fn serve_once(&self, patience: Option<u64>) -> bool {
        let mut served = false;
        // Acquire: pairs with the Release fetch_add in `call`. Each leading run answered is
        // run once, spaced from the work started before it.
        while self.leading_requested.load(Ordering::Acquire) > 0 {
            if !self.wait_for_spacing(patience) {
                return true; // later: the timer thread hands it over again
            }
            if !self.take_leading() {
                break; // a caller who saw the job closed took it back
            }
            self.set_last_start(self.restamp());
            self.run_work();
            served = true;
        }
        // Acquire: pairs with the claiming CAS (AcqRel) of the caller who handed the deferral
        // over; while it is pending, its word is the one that CAS installed (or that word with
        // the flush bit, or re-stamped by `restamp` here).
        let word = self.throttle.load(Ordering::Acquire);
        if state::is_pending(word) {
            self.serve_deferral(word & !state::FLUSH, patience);
            return true;
        }
        served
    }

    /// Waits until a threshold after the last work started here (or until a shutdown's grace
    /// has run out); false if that lies beyond `patience`.
    fn wait_for_spacing(&self, patience: Option<u64>) -> bool {
        let Some(last) = self.last_start() else {
            return true;
        };
        let clock = self.throttle.clock();
        wait::block_on_deadline(clock, None, Some(MAX_SLICE), || {
            let due = last.saturating_add(self.throttle.core().threshold_nanos());
            let now = clock.now_nanos();
            if self.is_graceless() || now >= due {
                Look::Done(true)
            } else if patience.is_some_and(|patience| due - now > patience) {
                Look::Done(false)
            } else {
                Look::Until(due)
            }
        })
    }

    /// Moves the window's start to now, the moment a leading run's work starts here, so that
    /// the next run is due a threshold after the work started, not after the caller's
    /// admission. Stamps only move forward. Returns the reading, which the next run here is
    /// spaced from.
    fn restamp(&self) -> u64 {
        let now = self.throttle.clock().now_nanos();
        // Acquire: as in an admission.
        let mut word = self.throttle.load(Ordering::Acquire);
        loop {
            let at = state::stamp(state::stamped(word, now));
            let next = (word & !state::STAMP_MASK) | state::STAMPED | at;
            if next == word {
                return now;
            }
            match self.throttle.word().install(word, next) {
                Ok(()) => return now,
                Err(seen) => word = seen,
            }
        }
    }

    /// Waits for the deadline of the deferral that installed `word`, then runs it; or gives it
    /// up, if a shutdown under [`Shutdown::CancelPending`] comes first, or if the clock panics
    /// (reported like a panic in the work), so that the deferral is never stranded; or leaves
    /// it for later, if its deadline lies beyond `patience`.
    fn serve_deferral(&self, word: u64, patience: Option<u64>) {
        let stamped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.stamp_unless_cancelled(word, patience)
        }));
        match stamped {
            Ok(Stamp::Stamped(stamp)) => {
                self.set_last_start(stamp);
                self.run_work();
            }
            Ok(Stamp::Revoked | Stamp::Later) => {}
            Ok(Stamp::GivenUp) => {
                let _ = self.throttle.word().release(word);
            }
            Err(payload) => {
                let _ = self.throttle.word().release(word);
                self.report_panic(payload);
            }
        }
    }

    /// Waits for `word`'s deadline and stamps its run. Under [`Shutdown::RunPending`], once
    /// the shutdown grace has passed, the run is flushed: it runs at once. The wait ends before
    /// the stamp, so that the stamp is the last thing before the work starts.
    fn stamp_unless_cancelled(&self, word: u64, patience: Option<u64>) -> Stamp {
        let clock = self.throttle.clock();
        let slot = self.throttle.word().owner;
        loop {
            let waited = wait::block_on_deadline(clock, slot, Some(MAX_SLICE), || {
                let stopping = self.stopping_since();
                if let Some(since) = stopping {
                    match self.shutdown {
                        Shutdown::CancelPending => return Look::Done(Some(Stamp::GivenUp)),
                        Shutdown::RunPending if since.has_elapsed(self.grace) => {
                            self.throttle.flush();
                        }
                        Shutdown::RunPending => {}
                    }
                }
                match self.throttle.word().look(word) {
                    Look::Done(Ok(())) => Look::Done(None),
                    Look::Done(Err(_)) => Look::Done(Some(Stamp::Revoked)),
                    Look::Until(deadline) => {
                        let now = clock.now_nanos();
                        // Look again when the grace runs out, whatever the clock does.
                        let until = match stopping {
                            Some(since) => {
                                let left = since.left_of(self.grace).as_nanos() as u64;
                                deadline.min(now.saturating_add(left))
                            }
                            None => deadline,
                        };
                        if patience.is_some_and(|patience| until.saturating_sub(now) > patience) {
                            Look::Done(Some(Stamp::Later))
                        } else {
                            Look::Until(until)
                        }
                    }
                }
            });
            if let Some(outcome) = waited {
                return outcome;
            }
            match self.throttle.word().try_stamp(word) {
                Look::Done(Ok(stamp)) => return Stamp::Stamped(stamp),
                Look::Done(Err(_)) => return Stamp::Revoked,
                // The clock stepped back since it was due: wait again.
                Look::Until(_) => {}
            }
        }
    }

    /// Runs the work, catching and reporting a panic.
    pub(super) fn run_work(&self) {
        if let Err(payload) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(&self.work)) {
            self.report_panic(payload);
        }
    }

    /// How long until the job next has a run to serve, on its clock; see [`Entry::due_in`].
    fn next_due_in(&self) -> Option<u64> {
        let clock = self.throttle.clock();
        let now = clock.now_nanos();
        let graceless = self.is_graceless();
        let threshold = self.throttle.core().threshold_nanos();
        // Acquire: pairs with the Release fetch_add in `call`.
        let leading =
            (self.leading_requested.load(Ordering::Acquire) > 0).then(|| match self.last_start() {
                Some(last) if !graceless => last.saturating_add(threshold).saturating_sub(now),
                _ => 0,
            });
        // Acquire: as in an admission.
        let word = self.throttle.load(Ordering::Acquire);
        let deferred = state::is_pending(word).then(|| {
            let cancelling = self.shutdown == Shutdown::CancelPending && self.is_stopping();
            if state::is_flushed(word) || graceless || cancelling {
                return 0;
            }
            match self.throttle.core().deadline_nanos(word & !state::FLUSH) {
                u64::MAX => u64::MAX,
                deadline => deadline.saturating_sub(now),
            }
        });
        match (leading, deferred) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<F, C> Entry for Job<F, C>
where
    F: Fn() + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
{
    fn link(&self) -> &Link {
        &self.link
    }

    fn due_in(&self) -> Option<u64> {
        self.next_due_in()
    }

    fn serve(&self, patience: u64) {
        self.serve_once(Some(patience));
    }

    fn is_stopping(&self) -> bool {
        Job::is_stopping(self)
    }

    fn is_closed(&self) -> bool {
        Job::is_closed(self)
    }

    fn close(&self) {
        Job::close(self)
    }

    fn give_up(&self) {
        Job::give_up(self)
    }

    fn report(&self, payload: Box<dyn Any + Send>) {
        self.report_panic(payload)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use crate::{Detached, Throttle};
    use core::time::Duration;

    /// A shutdown asked for is seen by the serving side at once, with the moment it was first
    /// seen (the shutdown grace counts from it). Checked here, in the first test binary to
    /// run: a handle that cannot be stopped hangs the tests that drop one. (A failing check
    /// leaks the handle rather than wait on its drop; on its own timer thread, since a shared
    /// timer that a broken build cannot stop would hang this binary too.)
    #[test]
    fn a_shutdown_asked_for_is_seen_with_when_it_was_first_seen() {
        let detached = Detached::builder(Throttle::new(Duration::from_secs(1)))
            .spawn(|| ())
            .unwrap();
        let job = &detached.job;
        let before = job.is_stopping() || job.stopping_since().is_some();
        job.request_stop();
        let seen = job.is_stopping() && job.stopping_since().is_some();
        if before || !seen {
            std::mem::forget(detached);
            panic!("stopping before: {before}, after: {seen}");
        }
        // Its timer thread ends: the drop, on a thread of its own, is over within 10 s.
        let dropper = std::thread::spawn(move || drop(detached));
        assert!(
            crate::test_support::within(|| dropper.is_finished()),
            "the drop did not end"
        );
    }
}
