//! The operations on one state word, for every component that keeps one (a throttle, an entry
//! of a keyed throttle): deciding an admission, stamping a run, releasing, cancelling and
//! flushing a deferral, and waiting for its deadline.
//!
//! [`Core`] holds what the words of one component share (the threshold, mode, lease, counters
//! and clock); [`Word`] is one state word seen through its core. Nothing here knows how the
//! word is held or how an answer is handed to the caller: that is the component's business.

use crate::clock::{nanos_saturating, Clock};
use crate::counters::Counters;
use crate::deferral::Revoked;
use crate::state::{self, Decision, Mode, Rules, NO_LEASE};
use crate::sync::{self, AtomicU64, Ordering};
use crate::wait::{self, Look, WakeSlot};
use core::future::Future;
use core::time::Duration;

/// What the words of one component share.
pub(crate) struct Core<C> {
    /// The threshold in nanoseconds; `set_threshold` changes it.
    threshold: AtomicU64,
    /// The threshold the core was built with, for the `stale_threshold` mutant.
    #[cfg(any(loom, atomic_throttle_mutants))]
    built_threshold: u64,
    pub(crate) mode: Mode,
    /// The lease in nanoseconds, [`NO_LEASE`] for none.
    pub(crate) lease: u64,
    pub(crate) counters: Option<Box<Counters>>,
    pub(crate) clock: C,
}

/// An admission's answer, before the component wraps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// Run at once (a leading run, or a takeover).
    Now,
    /// The caller owns the deferral whose claim installed this word.
    Claimed(u64),
    /// A deferral is pending and covers the call: the word that says so.
    Coalesced(u64),
    /// Leading-only, inside the window that ends `until`.
    Suppressed { until: u64 },
}

impl<C> Core<C> {
    /// A core with `threshold` nanoseconds (already checked against the largest).
    #[cfg(not(loom))]
    pub(crate) const fn new(
        threshold: u64,
        mode: Mode,
        lease: u64,
        counters: Option<Box<Counters>>,
        clock: C,
    ) -> Self {
        Self {
            threshold: AtomicU64::new(threshold),
            #[cfg(atomic_throttle_mutants)]
            built_threshold: threshold,
            mode,
            lease,
            counters,
            clock,
        }
    }

    /// A core with `threshold` nanoseconds (already checked against the largest); not `const`
    /// under loom, whose atomics are not.
    #[cfg(loom)]
    #[cfg_attr(mutants, mutants::skip)] // loom-only: never built by the tests
    pub(crate) fn new(
        threshold: u64,
        mode: Mode,
        lease: u64,
        counters: Option<Box<Counters>>,
        clock: C,
    ) -> Self {
        Self {
            threshold: AtomicU64::new(threshold),
            built_threshold: threshold,
            mode,
            lease,
            counters,
            clock,
        }
    }

    /// The threshold in nanoseconds.
    #[inline(always)]
    pub(crate) fn threshold_nanos(&self) -> u64 {
        #[cfg(any(loom, atomic_throttle_mutants))]
        if sync::is_mutant(sync::mutant!(StaleThreshold)) {
            return self.built_threshold;
        }
        // Acquire: pairs with the Release store in `set_threshold`.
        self.threshold.load(Ordering::Acquire)
    }

    /// Changes the threshold (already checked against the largest).
    pub(crate) fn set_threshold(&self, threshold: Duration) {
        // Release: an admission that reads the new threshold (Acquire, in `threshold_nanos`)
        // also sees what this caller did before changing it.
        self.threshold
            .store(nanos_saturating(threshold), Ordering::Release);
    }

    /// Whether an admission that saw `word` is Coalesced without reading the clock: a deferral
    /// is pending, and no lease can have expired.
    #[inline(always)]
    pub(crate) fn coalesces(&self, word: u64) -> bool {
        state::is_pending(word) && self.lease == NO_LEASE
    }

    /// Counts a call that no run of its own covers, if counting is on.
    #[inline(always)]
    pub(crate) fn skipped(&self) {
        if let Some(counters) = &self.counters {
            counters.skipped();
        }
    }

    /// Adds one to a counter of the snapshot, if counting is on.
    #[inline(always)]
    pub(crate) fn count(&self, which: impl FnOnce(&Counters) -> &AtomicU64) {
        if let Some(counters) = &self.counters {
            // Relaxed: a statistic, ordered with nothing.
            which(counters).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The rules a decision made now follows.
    #[inline(always)]
    fn rules(&self) -> Rules {
        Rules {
            threshold: self.threshold_nanos(),
            mode: self.mode,
            lease: self.lease,
        }
    }

    /// The deadline of the deferral whose owner installed `word`, in the clock's nanoseconds
    /// (`u64::MAX` if it lies past the end of the throttle's time).
    pub(crate) fn deadline_nanos(&self, word: u64) -> u64 {
        state::deadline(word, self.threshold_nanos())
    }
}

impl<C: Clock> Core<C> {
    /// How long until the deadline of `word`'s deferral, zero once it has passed.
    pub(crate) fn remaining(&self, word: u64) -> Duration {
        let now = self.clock.now_nanos();
        Duration::from_nanos(self.deadline_nanos(word).saturating_sub(now))
    }
}

/// The deadline of the deferral of `word`, whose window had not passed at `now`: later than
/// `now`, or never (`u64::MAX`, past the end of the stamp's range). A wait for a deadline
/// already reached would never end, so in debug builds a bug here fails instead. (A macro, so
/// that mutation testing does not mutate the check itself.)
macro_rules! deadline_ahead {
    ($word:expr, $now:expr, $threshold:expr) => {{
        let (deadline, now) = (state::deadline($word, $threshold), $now);
        debug_assert!(
            deadline > now || deadline == u64::MAX,
            "the window ends at {deadline} ns, now {now} ns"
        );
        deadline
    }};
}

/// An attempt to stamp a deferral, made inside a wrapper's closure (`stamp_when_due_around`).
pub(crate) type Attempt<'a> = &'a mut dyn FnMut() -> Look<Result<u64, Revoked>>;

/// What makes an attempt to stamp inside something of its own: calls the attempt once and
/// returns its result.
pub(crate) trait Around: FnMut(Attempt<'_>) -> Look<Result<u64, Revoked>> {}

impl<T: FnMut(Attempt<'_>) -> Look<Result<u64, Revoked>>> Around for T {}

/// One state word, seen through the core that rules it, with the slot where its waiting owner
/// leaves its waker (a word without one wakes its owner only when the owner's own wait ends:
/// at its deadline, or when its clock moves).
pub(crate) struct Word<'a, C> {
    pub(crate) state: &'a AtomicU64,
    pub(crate) core: &'a Core<C>,
    pub(crate) owner: Option<&'a WakeSlot>,
}

impl<C> Clone for Word<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Word<'_, C> {}

impl<C: Clock> Word<'_, C> {
    #[inline(always)]
    pub(crate) fn load(&self, ordering: Ordering) -> u64 {
        self.state.load(sync::ordering(ordering))
    }

    /// Decides an admission that saw `word`, on the slow path: one clock read, then CAS until
    /// the word this call decided on is installed or a deferral turns out to be pending.
    /// `lost` counts the CASes lost to other callers.
    #[inline(never)]
    pub(crate) fn decide_and_install(&self, word: u64, lost: &mut u32) -> Answer {
        match self.decide_and_install_while(word, lost, |_| true) {
            Some(answer) => answer,
            // Every word is ours here: this arm is never taken.
            None => Answer::Coalesced(word),
        }
    }

    /// [`decide_and_install`](Word::decide_and_install) for a word that can change hands (an
    /// entry of a keyed throttle, which an idle entry's reuse gives to another key): after a
    /// lost CAS, the word seen is decided on only if `ours(word)` says it still belongs to the
    /// caller; if not, nothing is installed and the answer is `None`. The caller vouches for
    /// the first `word`.
    #[inline(always)]
    pub(crate) fn decide_and_install_while(
        &self,
        mut word: u64,
        lost: &mut u32,
        ours: impl Fn(u64) -> bool,
    ) -> Option<Answer> {
        let core = self.core;
        // One reading serves every retry: if another caller stamped after it, the reading
        // looks earlier than that stamp and counts as no time, so this call is Deferred (or
        // Coalesced), never a second Now inside the window.
        let now = core.clock.now_nanos();
        let rules = core.rules();
        loop {
            let next = match state::decide(word, now, &rules) {
                Decision::Coalesced => {
                    core.skipped();
                    return Some(Answer::Coalesced(word));
                }
                Decision::Suppressed => {
                    core.skipped();
                    return Some(Answer::Suppressed {
                        until: state::deadline(word, rules.threshold),
                    });
                }
                Decision::Now(next) | Decision::Deferred(next) | Decision::TakeOver(next) => next,
            };
            match self.install(word, next) {
                Ok(()) if state::is_pending(next) => return Some(Answer::Claimed(next)),
                Ok(()) => {
                    if state::is_pending(word) {
                        core.count(|stats| &stats.takeovers);
                    } else {
                        core.count(|stats| &stats.leading);
                    }
                    return Some(Answer::Now);
                }
                Err(seen) => {
                    *lost += 1;
                    if !ours(seen) {
                        return None;
                    }
                    word = seen;
                }
            }
        }
    }

    /// Replaces `current` with `next` if the word still holds `current`.
    #[inline(always)]
    pub(crate) fn install(&self, current: u64, next: u64) -> Result<(), u64> {
        if sync::is_mutant(sync::mutant!(LoadStore)) {
            self.state.store(next, Ordering::Release);
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
        // new stamp or claim (pairs with the Acquire loads of admissions and `is_pending`);
        // Acquire makes this caller see what the writer of the word it replaces did before
        // writing it (an earlier caller's admission, an owner's stamp or release), not that
        // run's work, which starts after its stamp. Failure Acquire: the word seen is decided
        // on again, so it needs the same view as an admission's load.
        self.state
            .compare_exchange(
                current,
                next,
                sync::ordering(Ordering::AcqRel),
                sync::ordering(Ordering::Acquire),
            )
            .map(drop)
    }

    /// Whether the deferral pending in `word` has outlived its deadline and the lease, now:
    /// the test an admission makes before it takes the deferral over. Reads the clock only on
    /// a throttle with a lease.
    pub(crate) fn lease_over(&self, word: u64) -> bool {
        let core = self.core;
        core.lease != NO_LEASE
            && state::is_pending(word)
            && state::lease_expired(word, core.clock.now_nanos(), &core.rules())
    }

    /// Takes the deferral pending in `word` over, as an admission would once its lease has run
    /// out, but only while the state still holds `word`: true if it did, and the caller now
    /// runs (counted as a takeover). False, changing and counting nothing, if the lease has
    /// not run out or the state changed (the claim ran, was given up, or another caller took
    /// it over).
    pub(crate) fn take_over(&self, word: u64) -> bool {
        let core = self.core;
        if core.lease == NO_LEASE || !state::is_pending(word) {
            return false;
        }
        let now = core.clock.now_nanos();
        if !state::lease_expired(word, now, &core.rules()) {
            return false;
        }
        let taken = self.install(word, state::taken_over(word, now)).is_ok();
        if taken {
            core.count(|stats| &stats.takeovers);
        }
        taken
    }

    /// Looks at the deferral whose owner installed `word` without changing anything: due (its
    /// deadline has passed, or it was flushed), not yet (until when), or revoked.
    pub(crate) fn look(&self, word: u64) -> Look<Result<(), Revoked>> {
        // Acquire: as in an admission.
        let seen = self.load(Ordering::Acquire);
        if seen & !state::FLUSH != word {
            return Look::Done(Err(self.revoked(word)));
        }
        let threshold = self.core.threshold_nanos();
        let now = self.core.clock.now_nanos();
        if state::is_flushed(seen) || state::window_passed(word, now, threshold) {
            Look::Done(Ok(()))
        } else {
            Look::Until(deadline_ahead!(word, now, threshold))
        }
    }

    /// Stamps the run of the deferral whose owner installed `word` if it is due, returning
    /// the stamp in nanoseconds; or says when it will be, or that it was revoked. The clearing
    /// of "pending" and the new stamp are one CAS.
    pub(crate) fn try_stamp(&self, word: u64) -> Look<Result<u64, Revoked>> {
        // Acquire: as in an admission.
        let mut seen = self.load(Ordering::Acquire);
        loop {
            if seen & !state::FLUSH != word {
                return Look::Done(Err(self.revoked(word)));
            }
            let now = self.core.clock.now_nanos();
            let threshold = self.core.threshold_nanos();
            if !state::is_flushed(seen) && !state::window_passed(word, now, threshold) {
                return Look::Until(deadline_ahead!(word, now, threshold));
            }
            let next = state::stamped(word, now);
            if sync::is_mutant(sync::mutant!(SplitStamp)) {
                // The lodash-style bug: "pending" is cleared first, so a caller in between
                // sees the old stamp, finds the window over, and runs alongside this owner.
                self.state.store(state::released(word), Ordering::Release);
                self.state.store(next, Ordering::Release);
                return Look::Done(Ok(state::stamp_nanos(next)));
            }
            // AcqRel: Release publishes the owner's writes before its run to later callers
            // (pairs with the Acquire loads of admissions); Acquire makes the run see the
            // writes of callers that used `admit_publishing` (pairs with its AcqRel fetch_or,
            // through the release sequence every later RMW of the word continues). Failure
            // Acquire: the word seen is looked at again.
            match self.state.compare_exchange(
                seen,
                next,
                sync::ordering(Ordering::AcqRel),
                sync::ordering(Ordering::Acquire),
            ) {
                Ok(_) => {
                    self.core.count(|stats| &stats.deferred);
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
        // Acquire: as in an admission.
        let seen = self.load(Ordering::Acquire);
        if self.core.lease == NO_LEASE || state::stamp(seen) == state::stamp(word) {
            return Revoked::Cancelled;
        }
        let now = self.core.clock.now_nanos();
        if state::lease_expired(word, now, &self.core.rules()) {
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
        self.stamp_when_due_around(word, |stamp| stamp())
    }

    /// Like `stamp_when_due`, with each attempt to stamp made inside `around` (which must call
    /// the attempt it is given once, and return its result): for a wrapper that records the
    /// run as started atomically with its stamp.
    pub(crate) fn stamp_when_due_around(
        &self,
        word: u64,
        mut around: impl Around,
    ) -> Result<u64, Revoked> {
        loop {
            wait::block_on_deadline(&self.core.clock, self.owner, None, || self.look(word))?;
            // Due a moment ago; a clock that stepped back since makes this wait again.
            if let Look::Done(stamped) = around(&mut || self.try_stamp(word)) {
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
        self.stamp_when_due_async_around(word, sleep, |stamp| stamp())
            .await
    }

    /// `stamp_when_due_async` with each attempt to stamp made inside `around`, as in
    /// `stamp_when_due_around`.
    pub(crate) async fn stamp_when_due_async_around<S, F>(
        &self,
        word: u64,
        mut sleep: S,
        mut around: impl Around,
    ) -> Result<u64, Revoked>
    where
        S: FnMut(Duration) -> F,
        F: Future<Output = ()>,
    {
        loop {
            wait::wait_on_deadline(&self.core.clock, self.owner, &mut sleep, || self.look(word))
                .await?;
            if let Look::Done(stamped) = around(&mut || self.try_stamp(word)) {
                return stamped;
            }
        }
    }

    /// Gives up the deferral whose owner installed `word`: clears "pending" only if the word is
    /// still exactly that one (flushed or not). If it was stamped, cancelled or taken over,
    /// this changes nothing. Says whether it released it.
    pub(crate) fn release(&self, word: u64) -> bool {
        if sync::is_mutant(sync::mutant!(NoRelease)) {
            return false;
        }
        if sync::is_mutant(sync::mutant!(BlindRelease)) {
            self.state.fetch_and(!state::PENDING, Ordering::AcqRel);
            return true;
        }
        for current in [word, word | state::FLUSH] {
            // AcqRel: Release publishes what the owner did before giving up to the next caller
            // (pairs with the Acquire loads of admissions); Acquire orders it after the claim
            // it undoes. Failure Relaxed: the other form of the word is tried, or nothing is
            // done.
            if self
                .state
                .compare_exchange(
                    current,
                    state::released(word),
                    sync::ordering(Ordering::AcqRel),
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.core.count(|stats| &stats.releases);
                return true;
            }
        }
        false
    }

    /// Withdraws the pending deferral and wakes its owner; whether one was pending.
    pub(crate) fn cancel(&self) -> bool {
        self.cancel_while(|_| true)
    }

    /// Makes the pending deferral due at once and wakes its owner; whether one was pending.
    pub(crate) fn flush(&self) -> bool {
        self.flush_while(|_| true)
    }

    /// [`cancel`](Word::cancel) for a word that can change hands: every word seen, the first
    /// included, is acted on only if `ours(word)` says it still belongs to the caller
    /// (otherwise: nothing was pending).
    pub(crate) fn cancel_while(&self, ours: impl Fn(u64) -> bool) -> bool {
        self.replace_pending(
            state::cancelled,
            |core| core.count(|stats| &stats.cancels),
            ours,
        )
    }

    /// [`flush`](Word::flush) for a word that can change hands, as
    /// [`cancel_while`](Word::cancel_while).
    pub(crate) fn flush_while(&self, ours: impl Fn(u64) -> bool) -> bool {
        self.replace_pending(|word| word | state::FLUSH, |_| {}, ours)
    }

    /// Replaces a pending word with `next(word)`, then wakes the owner; whether one was
    /// pending. A word that `ours` disowns counts as nothing pending.
    fn replace_pending(
        &self,
        next: impl Fn(u64) -> u64,
        done: impl FnOnce(&Core<C>),
        ours: impl Fn(u64) -> bool,
    ) -> bool {
        // Acquire: as in an admission.
        let mut word = self.load(Ordering::Acquire);
        loop {
            if !state::is_pending(word) || !ours(word) {
                return false;
            }
            let replacement = next(word);
            if replacement == word {
                break; // already so (a second flush): wake the owner all the same
            }
            // AcqRel: Release publishes this caller's earlier writes to the owner it wakes and
            // to later admissions; Acquire as an admission's load. Failure Acquire: the word
            // seen is looked at again.
            match self.state.compare_exchange(
                word,
                replacement,
                sync::ordering(Ordering::AcqRel),
                sync::ordering(Ordering::Acquire),
            ) {
                Ok(_) => {
                    done(self.core);
                    break;
                }
                Err(seen) => word = seen,
            }
        }
        if let Some(owner) = self.owner {
            owner.wake();
        }
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{ManualClock, Throttle};

    /// A caller whose CAS fails because another call changed the word after it was read.
    #[test]
    fn a_lost_cas_is_counted_and_the_word_seen_is_decided_on() {
        let clock = ManualClock::new();
        let throttle = Throttle::with_clock(Duration::from_millis(10), clock).unwrap();
        assert!(throttle.admit().is_now());
        let before_that_run = state::FRESH;
        let mut lost = 0;
        let answer = throttle
            .word()
            .decide_and_install(before_that_run, &mut lost);
        assert_eq!(lost, 1, "one CAS lost to the run");
        assert!(
            matches!(answer, Answer::Claimed(word) if state::is_pending(word)),
            "decided again on the stamped word: a claim inside its window, got {answer:?}"
        );
        assert!(throttle.is_pending());
    }

    /// The same for a word that changed hands: nothing is installed.
    #[test]
    fn a_lost_cas_to_a_word_that_is_no_longer_ours_installs_nothing() {
        let clock = ManualClock::new();
        let throttle = Throttle::with_clock(Duration::from_millis(10), clock).unwrap();
        assert!(throttle.admit().is_now());
        let seen = throttle.load(Ordering::Relaxed);
        let mut lost = 0;
        let answer = throttle
            .word()
            .decide_and_install_while(state::FRESH, &mut lost, |word| word == state::FRESH);
        assert!(answer.is_none(), "{answer:?}");
        assert_eq!(lost, 1);
        assert_eq!(throttle.load(Ordering::Relaxed), seen, "nothing installed");
    }
}
