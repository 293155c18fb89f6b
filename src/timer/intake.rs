//! The intake: how callers hand a registered throttle to the timer thread without a lock or an
//! allocation.
//!
//! Every registered throttle has one fixed [`Link`]. Handing it over pushes its slot index onto
//! a lock-free stack (a Treiber stack whose links live in the links themselves), unless it is
//! already on it: a `queued` flag keeps each throttle on the stack at most once, so the stack
//! never holds more entries than there are throttles. Only the timer thread takes from it, and
//! it takes the whole stack at once, so a push can never race a pop of the entry it links to
//! (the ABA problem of a Treiber stack comes from single pops).

use crate::sync::{AtomicBool, AtomicU64, Ordering, Thread};

/// The stack's head, or an entry's next link, when there is none.
pub(crate) const EMPTY: u64 = 0;

/// Where a lifecycle stands: the entry serves its throttle.
pub(crate) const OPEN: u64 = 0;
/// The entry is closed for callers and has nothing left to run.
pub(crate) const DONE: u64 = 1;
/// The timer has let go of the entry: its slot is free again.
pub(crate) const REMOVED: u64 = 2;

/// One registered throttle's place in the shared timer: its slot, its link in the intake, and
/// the flags that the timer thread, the workers and the throttle's handle share.
#[derive(Debug)]
pub(crate) struct Link {
    /// The slot index the timer knows the entry by, set once at registration.
    index: AtomicU64,
    /// Set while the entry is on the intake stack (or about to be pushed onto it).
    queued: AtomicBool,
    /// The next entry down the stack, as index + 1; [`EMPTY`] at the bottom.
    next: AtomicU64,
    /// Set by a worker when it hands the entry back (then it pushes the entry), taken by the
    /// timer thread when it finds the entry on the intake: only then does the timer thread
    /// count the entry as off the worker, so that no push of the worker's can come after.
    returned: AtomicBool,
    /// Set when the handle is gone: once done, the timer removes the entry.
    retired: AtomicBool,
    /// [`OPEN`], [`DONE`] or [`REMOVED`].
    stage: AtomicU64,
    /// The thread waiting for the entry to be done or removed, to unpark when it is.
    waiter: std::sync::Mutex<Option<Thread>>,
}

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

impl Link {
    pub(crate) fn new() -> Self {
        Self {
            index: AtomicU64::new(0),
            queued: AtomicBool::new(false),
            next: AtomicU64::new(EMPTY),
            returned: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            stage: AtomicU64::new(OPEN),
            waiter: std::sync::Mutex::new(None),
        }
    }

    /// The slot index the timer knows the entry by.
    pub(crate) fn index(&self) -> u64 {
        // Relaxed: set once under the table's lock at registration, before the handle that
        // reads it is returned to anyone; thread spawns and that lock order it.
        self.index.load(Ordering::Relaxed)
    }

    pub(crate) fn set_index(&self, index: u64) {
        // Relaxed: see `index`.
        self.index.store(index, Ordering::Relaxed);
    }

    /// Clears `queued` as the timer thread takes the entry off the stack, after it has read
    /// the entry's `next` link.
    pub(crate) fn dequeue(&self) {
        // AcqRel swap: a pusher that found the flag set (and so did not push) wrote `true`
        // with Release after its hand-off; reading that value here makes the timer thread see
        // the hand-off when it next looks at the entry. Release: a pusher that finds the flag
        // clear pushes again.
        self.queued.swap(false, Ordering::AcqRel);
    }

    pub(crate) fn is_queued(&self) -> bool {
        // Acquire: pairs with the AcqRel swaps in `Intake::push` and `dequeue`.
        self.queued.load(Ordering::Acquire)
    }

    pub(crate) fn next(&self) -> u64 {
        // Relaxed: written before the Release CAS that pushed this entry, which the timer
        // thread's Acquire swap of the head synchronizes with (the head's later pushes continue
        // that release sequence, being read-modify-writes).
        self.next.load(Ordering::Relaxed)
    }

    /// Marks the entry as handed back by its worker, before the worker pushes it.
    pub(crate) fn set_returned(&self) {
        // AcqRel swap: Release lets the timer thread's swap in `take_returned` see what the
        // worker did with the entry (its stamps, the job's `last_start`); the push that follows,
        // or the one that found the entry queued, makes the timer thread look (see `dequeue`).
        // A read-modify-write, like the timer thread's: every write to the flag is one, so they
        // form a single chain. (A plain Release store would do in the memory model; loom 0.7
        // let the timer thread's later swap read a value from before it.)
        self.returned.swap(true, Ordering::AcqRel);
    }

    /// Whether a worker handed the entry back since the timer thread last looked; clears it.
    pub(crate) fn take_returned(&self) -> bool {
        // AcqRel: Acquire pairs with the Release store in `set_returned`; Release orders the
        // clearing before the entry's next hand-over to a worker.
        self.returned.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn retire(&self) {
        // Release: pairs with the Acquire load in `is_retired`.
        self.retired.store(true, Ordering::Release);
    }

    pub(crate) fn is_retired(&self) -> bool {
        // Acquire: pairs with the Release store in `retire`.
        self.retired.load(Ordering::Acquire)
    }

    pub(crate) fn stage(&self) -> u64 {
        // Acquire: pairs with the Release store in `reach`: a waiter that sees the entry done
        // sees everything the entry ran before.
        self.stage.load(Ordering::Acquire)
    }

    /// Whether the entry is closed for callers and has nothing left to run.
    pub(crate) fn is_done(&self) -> bool {
        self.stage() >= DONE
    }

    /// Whether the timer has let go of the entry.
    pub(crate) fn is_removed(&self) -> bool {
        self.stage() >= REMOVED
    }

    /// Moves the lifecycle on to `stage` and returns the thread to unpark for it, if any.
    pub(crate) fn reach(&self, stage: u64) -> Option<Thread> {
        // Release: pairs with the Acquire load in `stage`.
        self.stage.store(stage, Ordering::Release);
        self.waiter_lock().clone()
    }

    /// Leaves the calling thread to be unparked when the lifecycle moves on.
    pub(crate) fn wait_here(&self) {
        *self.waiter_lock() = Some(crate::sync::current());
    }

    fn waiter_lock(&self) -> std::sync::MutexGuard<'_, Option<Thread>> {
        self.waiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The stack of entries handed to the timer thread.
#[derive(Debug)]
pub(crate) struct Intake {
    /// The top entry, as index + 1; [`EMPTY`] when there is none.
    head: AtomicU64,
}

impl Intake {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicU64::new(EMPTY),
        }
    }

    /// Pushes `link`'s entry unless it is already queued; says whether it pushed (then the
    /// caller wakes the timer thread). Lock-free: a failed CAS means another push succeeded.
    pub(crate) fn push(&self, link: &Link) -> bool {
        // AcqRel swap: Release publishes the caller's hand-off to the timer thread's `dequeue`
        // (which reads this value or a later one); Acquire orders this push after the
        // `dequeue` that cleared the flag, so `next` below is not overwritten under a reader.
        if link.queued.swap(true, Ordering::AcqRel) {
            return false;
        }
        let me = link.index() + 1;
        // Relaxed: a first guess, checked by the CAS.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // Relaxed: published by the Release CAS below.
            link.next.store(head, Ordering::Relaxed);
            // Release: the timer thread's Acquire swap in `take` sees `next` and the hand-off.
            // Failure Relaxed: only the value is needed, to link to.
            match self
                .head
                .compare_exchange(head, me, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(seen) => head = seen,
            }
        }
    }

    /// Takes the whole stack; returns the top entry's index + 1, or [`EMPTY`]. Follow the
    /// entries' [`Link::next`] from there.
    pub(crate) fn take(&self) -> u64 {
        // Acquire: pairs with the Release CASes in `push`.
        self.head.swap(EMPTY, Ordering::Acquire)
    }

    /// Whether something is waiting on the stack: a hint for a timer thread about to sleep.
    pub(crate) fn has_entries(&self) -> bool {
        // Relaxed: a hint; whoever pushed also unparks the timer thread, after the push.
        self.head.load(Ordering::Relaxed) != EMPTY
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// The entries' indices from the top of a taken stack down, dequeuing each (at most 10).
    fn take_all(intake: &Intake, links: &[Link]) -> Vec<u64> {
        let mut indices = Vec::new();
        let mut at = intake.take();
        while at != EMPTY && indices.len() < 10 {
            let link = &links[(at - 1) as usize];
            indices.push(link.index());
            at = link.next();
            link.dequeue();
        }
        indices
    }

    #[test]
    fn a_take_gets_every_push_last_first_and_an_entry_is_pushed_once_until_dequeued() {
        let links: Vec<Link> = (0..3)
            .map(|index| {
                let link = Link::new();
                link.set_index(index);
                link
            })
            .collect();
        let intake = Intake::new();
        assert!(!intake.has_entries());
        assert!(intake.push(&links[0]));
        assert!(intake.push(&links[2]));
        assert!(!intake.push(&links[0]), "already on the stack");
        assert!(links[0].is_queued() && !links[1].is_queued());
        assert!(intake.has_entries());
        assert_eq!(take_all(&intake, &links), [2, 0]);
        assert!(!intake.has_entries());
        assert_eq!(intake.take(), EMPTY);
        assert!(!links[0].is_queued());
        assert!(intake.push(&links[0]), "pushed again once taken off");
        assert_eq!(take_all(&intake, &links), [0]);
    }

    #[test]
    fn a_returned_mark_is_taken_once() {
        let link = Link::new();
        assert!(!link.take_returned());
        link.set_returned();
        assert!(link.take_returned());
        assert!(!link.take_returned());
    }

    #[test]
    fn the_lifecycle_moves_on_and_names_its_waiter() {
        let link = Link::new();
        assert!(!link.is_done() && !link.is_removed() && !link.is_retired());
        assert!(link.reach(DONE).is_none(), "no waiter yet");
        assert!(link.is_done() && !link.is_removed());
        link.wait_here();
        let waiter = link.reach(REMOVED).map(|thread| thread.id());
        assert_eq!(waiter, Some(std::thread::current().id()));
        assert!(link.is_removed());
        link.retire();
        assert!(link.is_retired());
    }
}
