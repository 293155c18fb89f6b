//! Opt-in counters: calls that no run of their own covers, counted without a shared write on
//! the hot path, and a snapshot of the rarer events.
//!
//! A coalesced or suppressed call adds one to a cell that only its own thread writes: each
//! thread holds one of [`SLOTS`] process-wide slots while it lives, and a throttle that counts
//! has one cache-padded cell per slot. A single writer needs no read-modify-write, so a count
//! is a load and a store to a line no other core writes. Threads beyond the slots share one
//! overflow cell with `fetch_add`. Cells are never reset (a reset would race its writer's
//! store); each remembers how much of it has been taken, and a take claims the difference with
//! `fetch_max`, so every count is taken exactly once however many takes run at once.

use crate::state::Mode;
use crate::sync::{AtomicU64, Ordering};
use crossbeam_utils::CachePadded;

/// How many threads at once get a cell of their own.
#[cfg(not(loom))]
pub(crate) const SLOTS: usize = 64;
/// How many threads at once get a cell of their own (a model has at most a few).
#[cfg(loom)]
pub(crate) const SLOTS: usize = 4;

/// A snapshot of a counting throttle's counters: see
/// [`ThrottleBuilder::counting`](crate::ThrottleBuilder::counting).
///
/// Each counter counts one kind of answer or event, and none is counted in two of them: a Now
/// answer is in [`leading`](Stats::leading) or in [`takeovers`](Stats::takeovers), never both.
/// Each field is read on its own, so a snapshot taken while calls go on is not one instant's.
///
/// # Examples
///
/// ```
/// # use atomic_throttle::Throttle;
/// # use std::time::Duration;
/// let throttle = Throttle::builder(Duration::from_secs(1)).counting(true).build()?;
/// assert_eq!(throttle.stats().unwrap(), Default::default());
/// # Ok::<(), atomic_throttle::ThresholdError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Now answers to callers that found no deferral pending and the window over (or no run
    /// yet). A Now answer that takes over an expired deferral is counted in
    /// [`takeovers`](Stats::takeovers) instead, not here: `leading + takeovers` is every Now
    /// answer.
    pub leading: u64,
    /// Deferred runs: each time the owner of a Deferred answer stamped its run, at its
    /// deadline or earlier after a flush. Deferred answers themselves are not counted.
    pub deferred: u64,
    /// Coalesced answers: calls that found a deferral pending. Zero in leading-only mode.
    pub coalesced: u64,
    /// Suppressed answers: calls inside the window in leading-only mode. Zero in the other
    /// modes.
    pub suppressed: u64,
    /// Deferrals whose owner gave them up without running: dropped them, itself or with the
    /// wait that held them. The drop of a deferral already cancelled or taken over is not
    /// counted.
    pub releases: u64,
    /// Pending deferrals withdrawn by a `cancel` (one that returned `true`).
    pub cancels: u64,
    /// Now answers given in place of a pending deferral whose lease had expired; the
    /// deferral's owner is told [`Revoked::TakenOver`](crate::Revoked::TakenOver). Counted
    /// here only, not in [`leading`](Stats::leading).
    pub takeovers: u64,
}

struct Cell {
    /// Calls counted here, ever; written only by the thread holding the slot.
    count: AtomicU64,
    /// How much of `count` has been taken.
    taken: AtomicU64,
}

impl Cell {
    fn new() -> Self {
        Self {
            count: AtomicU64::new(0),
            taken: AtomicU64::new(0),
        }
    }

    /// Claims what was counted here since the last take.
    fn take(&self) -> u64 {
        // Acquire: pairs with the Release store of the counting thread, so that a take sees
        // every count made before the call it follows (a run stamped after a coalesced call
        // that counted itself).
        let count = self.count.load(Ordering::Acquire);
        // AcqRel: takes race; `fetch_max` gives each unit of count to exactly one of them.
        let before = self.taken.fetch_max(count, Ordering::AcqRel);
        count.saturating_sub(before)
    }
}

pub(crate) struct Counters {
    cells: Box<[CachePadded<Cell>]>,
    overflow: CachePadded<Cell>,
    pub(crate) leading: AtomicU64,
    pub(crate) deferred: AtomicU64,
    pub(crate) releases: AtomicU64,
    pub(crate) cancels: AtomicU64,
    pub(crate) takeovers: AtomicU64,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            cells: (0..SLOTS).map(|_| CachePadded::new(Cell::new())).collect(),
            overflow: CachePadded::new(Cell::new()),
            leading: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            releases: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
        }
    }

    /// Counts one call that no run of its own covers.
    #[inline]
    pub(crate) fn skipped(&self) {
        match slot::current() {
            Some(slot) if !crate::sync::is_mutant(crate::sync::mutant!(SharedCount)) => {
                let cell = &self.cells[slot].count;
                // Relaxed load: only this thread writes the cell. Release store: a take that
                // sees the count sees the call's earlier writes too.
                cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Release);
            }
            Some(_) => self.skipped_on_one_cell(),
            // Release: as above.
            None => {
                self.overflow.count.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// The broken variant of [`skipped`](Counters::skipped), for the negative control of loom
    /// model 17: every thread's load-and-store on one shared cell, so counts are lost.
    #[cold]
    fn skipped_on_one_cell(&self) {
        let cell = &self.overflow.count;
        cell.store(cell.load(Ordering::Relaxed) + 1, Ordering::Release);
    }

    /// Claims every count made since the last take.
    pub(crate) fn take(&self) -> u64 {
        self.cells.iter().map(|cell| cell.take()).sum::<u64>() + self.overflow.take()
    }

    pub(crate) fn snapshot(&self, mode: Mode) -> Stats {
        // Relaxed everywhere: a statistic, ordered with nothing.
        let skipped = self
            .cells
            .iter()
            .chain(core::iter::once(&self.overflow))
            .map(|cell| cell.count.load(Ordering::Relaxed))
            .sum();
        let (coalesced, suppressed) = match mode {
            Mode::LeadingOnly => (0, skipped),
            Mode::LeadingAndTrailing | Mode::TrailingOnly => (skipped, 0),
        };
        Stats {
            leading: self.leading.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            coalesced,
            suppressed,
            releases: self.releases.load(Ordering::Relaxed),
            cancels: self.cancels.load(Ordering::Relaxed),
            takeovers: self.takeovers.load(Ordering::Relaxed),
        }
    }
}

/// The process-wide slots: each thread that counts holds one while it lives.
#[cfg(not(loom))]
mod slot {
    use super::SLOTS;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// One bit per slot, set while a thread holds it.
    pub(super) static TAKEN: AtomicU64 = AtomicU64::new(0);
    const _: () = assert!(SLOTS == 64, "one bit of TAKEN per slot");

    struct Held(Option<usize>);

    impl Drop for Held {
        fn drop(&mut self) {
            if let Some(slot) = self.0 {
                // Release: the next holder of the slot sees this thread's last count, so the
                // cell keeps a single writer at a time.
                TAKEN.fetch_and(!(1 << slot), Ordering::Release);
            }
        }
    }

    fn acquire() -> Option<usize> {
        // Acquire: pairs with the Release in `Held::drop` of the slot's last holder.
        let mut taken = TAKEN.load(Ordering::Acquire);
        loop {
            let free = (!taken).trailing_zeros() as usize;
            if free >= SLOTS {
                return None;
            }
            match TAKEN.compare_exchange_weak(
                taken,
                taken | (1 << free),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(free),
                Err(seen) => taken = seen,
            }
        }
    }

    thread_local! {
        static HELD: Held = Held(acquire());
    }

    /// This thread's slot, if it has one (none once all are taken, or while the thread is
    /// being torn down).
    #[inline]
    pub(super) fn current() -> Option<usize> {
        HELD.try_with(|held| held.0).ok().flatten()
    }
}

/// Under loom each model thread gets the next slot of the execution.
// Not compiled outside loom, so not mutated: cargo-mutants sees only the attribute's name.
#[cfg(loom)]
#[cfg_attr(mutants, mutants::skip)]
mod slot {
    use super::SLOTS;

    loom::lazy_static! {
        static ref NEXT: loom::sync::atomic::AtomicUsize = loom::sync::atomic::AtomicUsize::new(0);
    }

    loom::thread_local! {
        static HELD: Option<usize> = {
            let slot = NEXT.fetch_add(1, loom::sync::atomic::Ordering::Relaxed);
            (slot < SLOTS).then_some(slot)
        };
    }

    pub(super) fn current() -> Option<usize> {
        HELD.with(|held| *held)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{slot, SLOTS};
    use std::sync::atomic::Ordering;
    use std::sync::{mpsc, Arc, Barrier};

    #[test]
    fn threads_alive_together_count_in_slots_of_their_own() {
        const THREADS: usize = 8;
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let slot = slot::current();
                    barrier.wait();
                    slot
                })
            })
            .collect();
        let mut slots: Vec<usize> = handles
            .into_iter()
            .map(|handle| handle.join().unwrap().expect("a thread without a slot"))
            .collect();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), THREADS, "two live threads shared a slot");
    }

    #[test]
    fn a_finished_thread_gives_back_its_own_slot_and_no_other() {
        let (stop, stopped) = mpsc::channel::<()>();
        let (tell, told) = mpsc::channel();
        let holder = std::thread::spawn(move || {
            tell.send(slot::current()).unwrap();
            let _ = stopped.recv();
        });
        let held = told.recv().unwrap().expect("a slot");
        let taken = || slot::TAKEN.load(Ordering::Relaxed) & (1 << held) != 0;
        assert!(taken());
        // More threads, one after another, than there are slots: each finds one free.
        for _ in 0..2 * SLOTS {
            let slot = std::thread::spawn(slot::current).join().unwrap();
            assert!(
                slot.is_some(),
                "finished threads did not give their slots back"
            );
            assert_ne!(slot, Some(held), "a live thread's slot was handed out");
            assert!(taken(), "a finished thread gave back a live thread's slot");
        }
        drop(stop);
        holder.join().unwrap();
    }
}
