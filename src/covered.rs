//! Waiting for the run that covers a coalesced call: a record of finished runs that coalesced
//! callers who chose to wait can watch, without adding anything to the path of callers who
//! do not.

use crate::state;
use crate::sync::{self, Mutex};
use crate::wait::Look;
use crate::word::Attempt;
use crate::Revoked;
use core::any::Any;
use core::ops::Deref;
use core::task::Waker;

/// Clones a run's result, type-erased: registered by the first waiter, who knows the result
/// can be cloned.
pub(crate) type Cloner = fn(&(dyn Any + Send)) -> Box<dyn Any + Send>;

/// The runs that finished, as coalesced waiters need to see them.
#[derive(Default)]
pub(crate) struct Completions {
    inner: Mutex<Record>,
}

#[derive(Default)]
struct Record {
    /// The last finished run: the word its claim installed (none for a leading run), its
    /// stamp in microseconds, and a copy of its result if a waiter asked for results.
    last: Option<Finished>,
    /// Set by the first caller that waits for results of a cloneable type.
    cloner: Option<Cloner>,
    waiters: Vec<(u64, Waker)>,
    /// The wrapper's runs under way (owners waiting or running, handed-on runs): each settles
    /// here when it ends, so waiters are woken. A run started outside the wrapper (through
    /// the throttle itself) does not, and waiters watch for it instead.
    runs: Vec<Run>,
    /// The id of the next run under way.
    next_run: u64,
}

/// A run of the wrapper's under way.
struct Run {
    id: u64,
    /// The word its deferral's claim installed; none for a leading run.
    claim: Option<u64>,
    /// Its stamp in microseconds, once its work has started. A claim not started is no run
    /// yet, and, if its owner never comes back, never will be.
    started: Option<u64>,
    /// Its owner is trying to stamp it right now (`Completions::stamping`): counted as
    /// started, since the stamp may already be in the state word.
    stamping: bool,
}

struct Finished {
    claim: Option<u64>,
    stamp: u64,
    result: Option<Box<dyn Any + Send>>,
}

/// What a waiter saw when it looked.
pub(crate) enum Seen<R> {
    /// A run that covers it finished, with a copy of its result.
    Covered(Option<R>),
    /// Nothing covers it any more: its deferral was given up with no run after it.
    Uncovered,
    /// Not yet; the answer will come with a wake-up.
    Waiting,
    /// Not yet, and the run that covers it (or may) is not the wrapper's: nothing will wake the
    /// waiter, which looks again after a while.
    Watching,
}

/// How long a waiter watching for a run outside the wrapper first waits before it looks again;
/// it doubles with each look, up to `WATCH_INTERVAL_MAX`.
pub(crate) const WATCH_INTERVAL: core::time::Duration = core::time::Duration::from_millis(1);

/// The longest a watching waiter waits between looks.
pub(crate) const WATCH_INTERVAL_MAX: core::time::Duration = core::time::Duration::from_millis(16);

impl Completions {
    /// Lets finished runs keep copies of their results for waiters (idempotent).
    pub(crate) fn keep_results(&self, cloner: Cloner) {
        sync::lock(&self.inner).cloner.get_or_insert(cloner);
    }

    /// A run of the wrapper's is under way: a deferral's claim, or a leading run (`None`).
    /// Returns its id, by which it must be settled once (`record`, `notify_settled`).
    pub(crate) fn own(&self, claim: Option<u64>) -> u64 {
        let mut record = sync::lock(&self.inner);
        let id = record.next_run;
        record.next_run += 1;
        record.runs.push(Run {
            id,
            claim,
            started: None,
            stamping: false,
        });
        id
    }

    /// Run `id` (see `own`) has started its work, stamped `stamp` (nanoseconds).
    pub(crate) fn started(&self, id: u64, stamp: u64) {
        sync::lock(&self.inner).start(id, stamp);
    }

    /// Makes `attempt` to stamp the deferral of run `id` (see `own`), and records the run as
    /// started if it stamped. Waiters take the run for started from before the attempt until
    /// they know how it went, and read the state word under the record's lock (`look`): so a
    /// stamp of the wrapper's they see is a started run's. The attempt itself (which reads the
    /// user's clock) is made without the lock.
    pub(crate) fn stamping(&self, id: u64, attempt: Attempt<'_>) -> Look<Result<u64, Revoked>> {
        sync::lock(&self.inner).mark_stamping(id, true);
        let stamped = attempt();
        let mut record = sync::lock(&self.inner);
        record.mark_stamping(id, false);
        if let Look::Done(Ok(stamp)) = stamped {
            record.start(id, stamp);
        }
        stamped
    }

    /// Records a finished run, with a copy of its result if one is given and waiters asked for
    /// results, settles it (see `own`), and wakes every waiter.
    fn record(&self, id: u64, claim: Option<u64>, stamp: u64, result: Option<&(dyn Any + Send)>) {
        let waiters = {
            let mut record = sync::lock(&self.inner);
            record.settle(id);
            let cloner = record.cloner;
            let result = result.and_then(|result| cloner.map(|clone| clone(result)));
            // A later-stamped run may finish first; keep the latest stamp.
            let stamp = stamp / state::NANOS_PER_STAMP;
            if record.last.as_ref().is_none_or(|last| last.stamp <= stamp) {
                record.last = Some(Finished {
                    claim,
                    stamp,
                    result,
                });
            }
            core::mem::take(&mut record.waiters)
        };
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Wakes every waiter to look again: a deferral was given up or cancelled.
    pub(crate) fn notify(&self) {
        let waiters = core::mem::take(&mut sync::lock(&self.inner).waiters);
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Settles run `id`, which ended without running (see `own`), and wakes every waiter to
    /// look again.
    pub(crate) fn notify_settled(&self, id: u64) {
        let waiters = {
            let mut record = sync::lock(&self.inner);
            record.settle(id);
            core::mem::take(&mut record.waiters)
        };
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Looks for the run that covers a caller coalesced into the claim `seen` (the pending
    /// word it saw); `load` reads the state word as it is; `lease_over`: the claim has
    /// outlived its deadline and the throttle's lease. Registers `waker` (as waiter `id`)
    /// unless the answer is final. Returns the state word it read, with the answer.
    pub(crate) fn look<R: Clone + 'static>(
        &self,
        seen: u64,
        load: impl FnOnce() -> u64,
        lease_over: bool,
        id: u64,
        waker: &Waker,
    ) -> (Seen<R>, u64) {
        let mut record = sync::lock(&self.inner);
        // Read under the lock, after the mark an owner of the wrapper makes before it tries to
        // stamp (`stamping`): a stamp of the wrapper's seen here is a started or stamping
        // run's.
        let now = load();
        (record.look(seen, now, lease_over, id, waker), now)
    }
    /// How many callers wait for a covering run right now.
    pub(crate) fn waiting(&self) -> usize {
        sync::lock(&self.inner).waiters.len()
    }

    /// Forgets waiter `id` (its wait ended, or its future was dropped).
    pub(crate) fn forget(&self, id: u64) {
        sync::lock(&self.inner)
            .waiters
            .retain(|(known, _)| *known != id);
    }
}

/// What the caller who owns a run owes the callers waiting for it, paid on every path out:
/// dropped before its run started (given up, cancelled, taken over, its future dropped), it
/// wakes them to look again; dropped after, without [`finish`](Owed::finish) (the work
/// panicked, its future was dropped mid-way, or its result is not kept), it records the run
/// as finished with no result to copy, so that the callers it covers stop waiting.
pub(crate) struct Owed<D: Deref<Target = Completions>> {
    completions: D,
    /// Its id among the runs under way (`Completions::own`).
    run: u64,
    claim: Option<u64>,
    stamp: Option<u64>,
    /// `finish` recorded the run: nothing left to do.
    paid: bool,
}

impl<D: Deref<Target = Completions>> Owed<D> {
    /// Owed for a run of `claim` (a deferral's word), or a leading run (`None`); under way
    /// from now (see `Completions::own`).
    pub(crate) fn new(completions: D, claim: Option<u64>) -> Self {
        let run = completions.own(claim);
        Self {
            completions,
            run,
            claim,
            stamp: None,
            paid: false,
        }
    }

    /// A leading run stamped `stamp` (nanoseconds), about to start.
    pub(crate) fn leading(completions: D, stamp: u64) -> Self {
        let run = completions.own(None);
        completions.started(run, stamp);
        Self {
            completions,
            run,
            claim: None,
            stamp: Some(stamp),
            paid: false,
        }
    }

    /// The run was stamped `stamp` (nanoseconds) and its work is about to start.
    pub(crate) fn started(&mut self, stamp: u64) {
        self.stamp = Some(stamp);
        self.completions.started(self.run, stamp);
    }

    /// Makes `attempt` to stamp the run's deferral, and records the run as started if it
    /// stamped, in one step for the waiters (`Completions::stamping`).
    pub(crate) fn stamping(&mut self, attempt: Attempt<'_>) -> Look<Result<u64, Revoked>> {
        let stamped = self.completions.stamping(self.run, attempt);
        if let Look::Done(Ok(stamp)) = stamped {
            self.stamp = Some(stamp);
        }
        stamped
    }

    /// The run finished with `result`: records it, with a copy for waiters that asked.
    pub(crate) fn finish(mut self, result: &(dyn Any + Send)) {
        match self.stamp {
            Some(stamp) => self
                .completions
                .record(self.run, self.claim, stamp, Some(result)),
            None => self.completions.notify_settled(self.run),
        }
        self.paid = true;
    }
}

impl<D: Deref<Target = Completions>> Drop for Owed<D> {
    fn drop(&mut self) {
        if self.paid {
            return;
        }
        match self.stamp {
            Some(stamp) => self.completions.record(self.run, self.claim, stamp, None),
            None => self.completions.notify_settled(self.run),
        }
    }
}

impl Record {
    /// What a waiter coalesced into the claim `seen` sees, the state word being `now`; see
    /// `Completions::look`.
    fn look<R: Clone + 'static>(
        &mut self,
        seen: u64,
        now: u64,
        lease_over: bool,
        id: u64,
        waker: &Waker,
    ) -> Seen<R> {
        // The claim as its owner knows it: a flush may have set its FLUSH bit since.
        let seen = seen & !state::FLUSH;
        if let Some(last) = &self.last {
            // The claim it was coalesced into ran, or a run stamped after it: covered.
            if last.claim == Some(seen) || last.stamp > state::stamp(seen) {
                let result = last
                    .result
                    .as_ref()
                    .and_then(|result| result.downcast_ref::<R>())
                    .cloned();
                return Seen::Covered(result);
            }
        }
        // Given up with nothing after it: no claim pending, and the window not moved on.
        if !state::is_pending(now) && state::stamp(now) == state::stamp(seen) {
            return Seen::Uncovered;
        }
        // A run of the wrapper's that holds the claim tells the waiters how it ends. One that
        // has not started its work by the end of the lease may never (its owner's future was
        // leaked, or its thread is stuck): the waiters watch the state for the claim instead,
        // as for an owner outside the wrapper, and may take it over.
        let held = self.runs.iter().any(|run| run.claim == Some(seen));
        let started = self
            .runs
            .iter()
            .any(|run| run.claim == Some(seen) && (run.started.is_some() || run.stamping));
        let outside = !held || (!started && lease_over);
        // A run of the wrapper's under way that started after the call (stamped after the
        // window the call came in) may be what moved the stamp, and its result is on its way.
        let running = self
            .runs
            .iter()
            .any(|run| run.stamping || run.started.is_some_and(|stamp| stamp > state::stamp(seen)));
        // The window moved on after the call, and no run of the wrapper's that started since
        // is under way to finish: a run started outside the wrapper covers it. It cannot be
        // seen finishing.
        if outside && !running && state::stamp(now) > state::stamp(seen) {
            return Seen::Covered(None);
        }
        match self.waiters.iter_mut().find(|(known, _)| *known == id) {
            Some(entry) => entry.1.clone_from(waker),
            None => self.waiters.push((id, waker.clone())),
        }
        if outside {
            Seen::Watching
        } else {
            Seen::Waiting
        }
    }

    /// Whether run `id`'s owner is trying to stamp it right now.
    fn mark_stamping(&mut self, id: u64, stamping: bool) {
        if let Some(run) = self.runs.iter_mut().find(|run| run.id == id) {
            run.stamping = stamping;
        }
    }

    /// Run `id` has started, stamped `stamp` (nanoseconds).
    fn start(&mut self, id: u64, stamp: u64) {
        if let Some(run) = self.runs.iter_mut().find(|run| run.id == id) {
            run.started = Some(stamp / state::NANOS_PER_STAMP);
        }
    }

    /// Settles run `id` (see `Completions::own`).
    fn settle(&mut self, id: u64) {
        if let Some(position) = self.runs.iter().position(|run| run.id == id) {
            self.runs.swap_remove(position);
        }
    }
}

/// Clones a result of type `R`, seen as `dyn Any`.
pub(crate) fn clone_as<R: Clone + Send + 'static>(
    result: &(dyn Any + Send),
) -> Box<dyn Any + Send> {
    match result.downcast_ref::<R>() {
        Some(result) => Box::new(result.clone()),
        None => Box::new(()),
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_that_saw_the_flushed_word_knows_its_claims_run() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5; // claimed in the window stamped at 5 us
        let mut owed = Owed::new(&completions, Some(claim));
        owed.started(5_000); // flushed: run at once, at the same stamp
        owed.finish(&7_u32);
        let after = state::STAMPED | 5;
        // Coalesced after the flush, it saw the claim with its FLUSH bit.
        let seen = claim | state::FLUSH;
        let looked = completions
            .look::<u32>(seen, || after, false, 1, Waker::noop())
            .0;
        assert!(
            matches!(looked, Seen::Covered(_)),
            "the run of its own claim was taken for a cancel"
        );
        assert_eq!(completions.waiting(), 0);
    }

    #[test]
    fn a_waiter_behind_an_owner_outside_the_wrapper_watches() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5;
        // Still pending: nothing will wake it, so it watches.
        let looked = completions
            .look::<u32>(claim, || claim, false, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Watching));
        // The owner's run started at 9 us: covered, with nothing to copy.
        let looked = completions
            .look::<u32>(claim, || state::STAMPED | 9, false, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Covered(None)));
        // But while a run of the wrapper's is under way, it waits for that run to finish.
        let owed = Owed::leading(&completions, 9_000);
        let looked = completions
            .look::<u32>(claim, || state::STAMPED | 9, false, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Watching));
        drop(owed);
        let looked = completions
            .look::<u32>(claim, || state::STAMPED | 9, false, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Covered(None)));
    }

    #[test]
    fn a_waiter_watches_an_owner_of_the_wrapper_that_has_not_started_by_the_end_of_its_lease() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5;
        let mut owed = Owed::new(&completions, Some(claim));
        // Within the lease, the owner tells the waiters.
        let looked = completions
            .look::<u32>(claim, || claim, false, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Waiting));
        // Past it, and not started: it may never come back.
        let looked = completions
            .look::<u32>(claim, || claim, true, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Watching));
        // Taken over by a caller outside the wrapper, whose run started at 9 us: covered,
        // though the owner's run is still counted as under way.
        let looked = completions
            .look::<u32>(claim, || state::STAMPED | 9, true, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Covered(None)));
        // Started (late, and nobody took it over): the waiters wait for its end.
        owed.started(6_000);
        let looked = completions
            .look::<u32>(claim, || state::STAMPED | 6, true, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Waiting));
        drop(owed);
        let looked = completions
            .look::<u32>(claim, || state::STAMPED | 6, true, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Covered(None)));
    }

    #[test]
    fn a_claim_of_the_wrapper_not_started_is_no_run_under_way() {
        let completions = Completions::default();
        let outside = state::PENDING | state::STAMPED | 5;
        // The outside claim ran at 9 us; the wrapper claimed the next deferral, not yet run.
        let next = state::PENDING | state::STAMPED | 9;
        let owed = Owed::new(&completions, Some(next));
        let looked = completions
            .look::<u32>(outside, || next, false, 1, Waker::noop())
            .0;
        assert!(
            matches!(looked, Seen::Covered(None)),
            "waited for a run that has not started"
        );
        drop(owed);
    }

    #[test]
    fn a_run_under_way_from_before_the_call_does_not_hold_a_waiter_up() {
        let completions = Completions::default();
        // A leading run of the wrapper's, stamped at 5 us, still under way.
        let before = Owed::leading(&completions, 5_000);
        // A call coalesced into a claim made outside the wrapper in that run's window, which
        // ran at 9 us: covered, though the earlier run has not finished.
        let claim = state::PENDING | state::STAMPED | 5;
        let after = state::STAMPED | 9;
        let looked = completions
            .look::<u32>(claim, || after, false, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Covered(None)));
        // A run of the wrapper's started since (at 9 us) is waited for: its result is coming.
        let since = Owed::leading(&completions, 9_000);
        let looked = completions
            .look::<u32>(claim, || after, false, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Watching));
        drop((since, before));
    }

    #[test]
    fn runs_holding_the_same_claim_word_each_settle_their_own() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5;
        // An owner of the claim that never comes back, and, the clock standing still, another
        // run of the same word, flushed, that ran at its claim's own stamp and ends.
        let gone = Owed::new(&completions, Some(claim));
        let mut ran = Owed::new(&completions, Some(claim));
        ran.started(5_000);
        drop(ran);
        let runs = &sync::lock(&completions.inner).runs;
        assert_eq!(runs.len(), 1);
        assert!(
            runs[0].started.is_none(),
            "the run that ended is still under way"
        );
        core::mem::forget(gone);
    }

    #[test]
    fn each_waiter_is_counted_once() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5;
        let _owed = Owed::new(&completions, Some(claim));
        for id in [1, 2, 1, 2] {
            let looked = completions
                .look::<u32>(claim, || claim, false, id, Waker::noop())
                .0;
            assert!(matches!(looked, Seen::Waiting));
        }
        assert_eq!(completions.waiting(), 2);
        completions.forget(1);
        assert_eq!(completions.waiting(), 1);
    }

    #[test]
    fn a_run_being_stamped_counts_as_started() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5;
        // Another run of the wrapper's, started: no reason to take this claim for started.
        let _leading = Owed::leading(&completions, 9_000);
        let mut owed = Owed::new(&completions, Some(claim));
        let lease_over = |completions: &Completions| {
            let now = state::STAMPED | 9;
            completions
                .look::<u32>(claim, || now, true, 1, Waker::noop())
                .0
        };
        // Past the lease and not started: watched, like an owner outside the wrapper.
        assert!(matches!(lease_over(&completions), Seen::Watching));
        // While its owner tries to stamp it (the stamp may be in the word already): waited for.
        let mut during = None;
        let _ = owed.stamping(&mut || {
            during = Some(matches!(lease_over(&completions), Seen::Waiting));
            Look::Until(20_000)
        });
        assert_eq!(
            during,
            Some(true),
            "a run being stamped was taken for abandoned"
        );
        // The attempt failed (not due after all): not started again.
        assert!(matches!(lease_over(&completions), Seen::Watching));
    }
    #[test]
    fn a_stamp_made_in_stamping_is_a_started_run() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5;
        let mut owed = Owed::new(&completions, Some(claim));
        let stamped = owed.stamping(&mut || Look::Done(Ok(9_000)));
        assert!(matches!(stamped, Look::Done(Ok(9_000))));
        // Past the lease, a run that stamped is waited for, not taken for abandoned.
        let looked = completions
            .look::<u32>(claim, || state::STAMPED | 9, true, 1, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Waiting));
        // Not stamped: still no run.
        let other = state::PENDING | state::STAMPED | 9;
        let mut late = Owed::new(&completions, Some(other));
        let _ = late.stamping(&mut || Look::Until(20_000));
        let looked = completions
            .look::<u32>(other, || other, true, 2, Waker::noop())
            .0;
        assert!(matches!(looked, Seen::Watching));
        drop((late, owed));
    }
}
