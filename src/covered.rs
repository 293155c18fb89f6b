//! Waiting for the run that covers a coalesced call: a record of finished runs that coalesced
//! callers who chose to wait can watch, without adding anything to the path of callers who
//! do not.

use crate::state;
use crate::sync::{self, Mutex};
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
    active: usize,
    /// The claims (deferrals' words) of the runs under way, once per run that holds one, and
    /// whether that run has started its work (a claim not started is no run yet, and, if its
    /// owner never comes back, never will be).
    owned: Vec<(u64, bool)>,
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
    /// Each must be settled once, by `record`, `notify_settled` or `settle`.
    pub(crate) fn own(&self, claim: Option<u64>) {
        let mut record = sync::lock(&self.inner);
        record.active += 1;
        record.owned.extend(claim.map(|claim| (claim, false)));
    }

    /// The run of `claim` (see `own`) has started its work.
    fn started(&self, claim: u64) {
        let mut record = sync::lock(&self.inner);
        if let Some(owned) = record.owned.iter_mut().find(|(known, _)| *known == claim) {
            owned.1 = true;
        }
    }

    /// Records a finished run, with a copy of its result if one is given and waiters asked for
    /// results, settles it (see `own`), and wakes every waiter.
    fn record(&self, claim: Option<u64>, stamp: u64, result: Option<&(dyn Any + Send)>) {
        let waiters = {
            let mut record = sync::lock(&self.inner);
            record.settle(claim);
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

    /// Settles a run that ended without running (see `own`), and wakes every waiter to look
    /// again.
    pub(crate) fn notify_settled(&self, claim: Option<u64>) {
        let waiters = {
            let mut record = sync::lock(&self.inner);
            record.settle(claim);
            core::mem::take(&mut record.waiters)
        };
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Looks for the run that covers a caller coalesced into the claim `seen` (the pending
    /// word it saw); `now` is the state word as it is; `lease_over`: the claim has outlived
    /// its deadline and the throttle's lease. Registers `waker` (as waiter `id`) unless the
    /// answer is final.
    pub(crate) fn look<R: Clone + 'static>(
        &self,
        seen: u64,
        now: u64,
        lease_over: bool,
        id: u64,
        waker: &Waker,
    ) -> Seen<R> {
        // The claim as its owner knows it: a flush may have set its FLUSH bit since.
        let seen = seen & !state::FLUSH;
        let mut record = sync::lock(&self.inner);
        if let Some(last) = &record.last {
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
        let outside = match record.owned.iter().find(|(known, _)| *known == seen) {
            Some(&(_, started)) => !started && lease_over,
            None => true,
        };
        // Runs of the wrapper's that have started their work (leading runs hold no claim).
        let unstarted = record.owned.iter().filter(|(_, started)| !started).count();
        let running = record.active.saturating_sub(unstarted);
        // The window moved on after the call, and no run of the wrapper's is under way to
        // finish: a run started outside the wrapper covers it. It cannot be seen finishing.
        if outside && running == 0 && state::stamp(now) > state::stamp(seen) {
            return Seen::Covered(None);
        }
        match record.waiters.iter_mut().find(|(known, _)| *known == id) {
            Some(entry) => entry.1.clone_from(waker),
            None => record.waiters.push((id, waker.clone())),
        }
        if outside {
            Seen::Watching
        } else {
            Seen::Waiting
        }
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
    claim: Option<u64>,
    stamp: Option<u64>,
    /// `finish` recorded the run: nothing left to do.
    paid: bool,
}

impl<D: Deref<Target = Completions>> Owed<D> {
    /// Owed for a run of `claim` (a deferral's word), or a leading run (`None`); under way
    /// from now (see `Completions::own`).
    pub(crate) fn new(completions: D, claim: Option<u64>) -> Self {
        completions.own(claim);
        Self {
            completions,
            claim,
            stamp: None,
            paid: false,
        }
    }

    /// A leading run stamped `stamp` (nanoseconds), about to start.
    pub(crate) fn leading(completions: D, stamp: u64) -> Self {
        completions.own(None);
        Self {
            completions,
            claim: None,
            stamp: Some(stamp),
            paid: false,
        }
    }

    /// The run was stamped `stamp` (nanoseconds) and its work is about to start.
    pub(crate) fn started(&mut self, stamp: u64) {
        self.stamp = Some(stamp);
        if let Some(claim) = self.claim {
            self.completions.started(claim);
        }
    }

    /// The run finished with `result`: records it, with a copy for waiters that asked.
    pub(crate) fn finish(mut self, result: &(dyn Any + Send)) {
        match self.stamp {
            Some(stamp) => self.completions.record(self.claim, stamp, Some(result)),
            None => self.completions.notify_settled(self.claim),
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
            Some(stamp) => self.completions.record(self.claim, stamp, None),
            None => self.completions.notify_settled(self.claim),
        }
    }
}

impl Record {
    /// Settles a run under way (see `Completions::own`).
    fn settle(&mut self, claim: Option<u64>) {
        self.active = self.active.saturating_sub(1);
        if let Some(position) =
            claim.and_then(|claim| self.owned.iter().position(|(c, _)| *c == claim))
        {
            self.owned.swap_remove(position);
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
        let looked = completions.look::<u32>(seen, after, false, 1, Waker::noop());
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
        let looked = completions.look::<u32>(claim, claim, false, 1, Waker::noop());
        assert!(matches!(looked, Seen::Watching));
        // The owner's run started at 9 us: covered, with nothing to copy.
        let looked = completions.look::<u32>(claim, state::STAMPED | 9, false, 1, Waker::noop());
        assert!(matches!(looked, Seen::Covered(None)));
        // But while a run of the wrapper's is under way, it waits for that run to finish.
        let owed = Owed::leading(&completions, 9_000);
        let looked = completions.look::<u32>(claim, state::STAMPED | 9, false, 1, Waker::noop());
        assert!(matches!(looked, Seen::Watching));
        drop(owed);
        let looked = completions.look::<u32>(claim, state::STAMPED | 9, false, 1, Waker::noop());
        assert!(matches!(looked, Seen::Covered(None)));
    }

    #[test]
    fn a_waiter_watches_an_owner_of_the_wrapper_that_has_not_started_by_the_end_of_its_lease() {
        let completions = Completions::default();
        let claim = state::PENDING | state::STAMPED | 5;
        let mut owed = Owed::new(&completions, Some(claim));
        // Within the lease, the owner tells the waiters.
        let looked = completions.look::<u32>(claim, claim, false, 1, Waker::noop());
        assert!(matches!(looked, Seen::Waiting));
        // Past it, and not started: it may never come back.
        let looked = completions.look::<u32>(claim, claim, true, 1, Waker::noop());
        assert!(matches!(looked, Seen::Watching));
        // Taken over by a caller outside the wrapper, whose run started at 9 us: covered,
        // though the owner's run is still counted as under way.
        let looked = completions.look::<u32>(claim, state::STAMPED | 9, true, 1, Waker::noop());
        assert!(matches!(looked, Seen::Covered(None)));
        // Started (late, and nobody took it over): the waiters wait for its end.
        owed.started(6_000);
        let looked = completions.look::<u32>(claim, state::STAMPED | 6, true, 1, Waker::noop());
        assert!(matches!(looked, Seen::Waiting));
        drop(owed);
        let looked = completions.look::<u32>(claim, state::STAMPED | 6, true, 1, Waker::noop());
        assert!(matches!(looked, Seen::Covered(None)));
    }

    #[test]
    fn a_claim_of_the_wrapper_not_started_is_no_run_under_way() {
        let completions = Completions::default();
        let outside = state::PENDING | state::STAMPED | 5;
        // The outside claim ran at 9 us; the wrapper claimed the next deferral, not yet run.
        let next = state::PENDING | state::STAMPED | 9;
        let owed = Owed::new(&completions, Some(next));
        let looked = completions.look::<u32>(outside, next, false, 1, Waker::noop());
        assert!(
            matches!(looked, Seen::Covered(None)),
            "waited for a run that has not started"
        );
        drop(owed);
    }
}
