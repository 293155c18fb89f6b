//! The service behind a [`SharedTimer`](super::SharedTimer): the table of registered entries,
//! the deadline heap, the timer thread's loop and the workers' loop.
//!
//! The timer thread owns the table (behind a lock that only registration also takes: callers
//! never do). Each turn it takes the intake, files every entry it finds there by the time its
//! next run is due, takes the entries that come due within the *lead* off the heap and hands
//! them to the workers, and moves stopping entries towards closed, done and removed. It never
//! runs work, reads no entry's state but through [`Entry::due_in`], and wakes nobody while it
//! holds the lock. A worker serves one entry at a time: it waits out the rest of the lead on
//! the entry's own clock, stamps the run and starts the work, then hands the entry back through
//! the intake.

use super::intake::{Intake, Link, DONE, EMPTY, OPEN, REMOVED};
use super::pool::Pool;
use super::Entry;
use crate::clock::Clock;
use crate::panics;
use crate::sync::{self, AtomicBool, Mutex, Ordering, Stopwatch, Thread};
use crate::wait::{self, Look};
use core::cmp::Reverse;
use core::time::Duration;
use std::collections::BinaryHeap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// The longest the timer thread sleeps in one go while a stopping entry waits for its shutdown
/// grace, which runs in real time and which nothing wakes it for.
pub(crate) const MAX_SLICE: Duration = Duration::from_millis(50);

/// How much longer than the lead a worker waits for an entry's time before it hands the entry
/// back to the timer thread (its deadline moved, or its clock stepped back).
const PATIENCE_MARGIN: u64 = 1_000_000;

pub(crate) struct Service<C> {
    pub(crate) clock: C,
    /// How long before a run's deadline the timer thread hands it to a worker, in nanoseconds.
    pub(crate) lead: u64,
    pub(crate) workers: usize,
    intake: Intake,
    table: Mutex<Table>,
    pool: Pool,
    /// Set by `SharedTimer::shutdown` or when the last handle goes.
    stopping: AtomicBool,
    /// Set by whoever puts an entry on the closing list (a throttle's shutdown or drop), which
    /// is not on the intake: the timer thread takes another turn before it sleeps.
    attention: AtomicBool,
    /// Set by the timer thread once every entry is done, or when it ends.
    stopped: AtomicBool,
    /// The timer thread, then the workers.
    threads: std::sync::OnceLock<Vec<Thread>>,
}

/// The timer thread's view of the entries, behind the service's lock.
#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    /// Slots free for the next registration.
    free: Vec<usize>,
    /// When each filed entry next needs a worker, earliest first. An item whose slot has moved
    /// on (refiled, emptied) is stale: skipped when it comes up, and dropped in bulk when there
    /// are more stale items than entries.
    heap: BinaryHeap<Reverse<Filed>>,
    stale: usize,
    /// Registered entries.
    live: usize,
    /// Registered entries that are not done yet.
    open: usize,
    /// Stopping entries waiting for something no one wakes the timer for (a grace running out
    /// in real time): looked at again every turn.
    closing: Vec<usize>,
    /// Whether the timer thread has seen the service's stop.
    stop_seen: bool,
    stopped: bool,
}

#[derive(Default)]
struct Slot {
    entry: Option<Arc<dyn Entry>>,
    /// Counts the entries the slot has held, so that a heap item for an earlier one is stale.
    generation: u64,
    /// When the heap item that counts fires, on the service's clock.
    filed: Option<u64>,
    /// Whether the slot is listed in `Table::closing`.
    closing: bool,
    /// Whether the entry is with a worker (queued for one, or being served): set when the timer
    /// thread hands it over, cleared when it takes the worker's hand-back off the intake.
    busy: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Filed {
    at: u64,
    index: usize,
    generation: u64,
}

/// What a turn leaves to do once the table's lock is released: reused from turn to turn, so
/// that a hand-off allocates nothing once they have grown.
#[derive(Default)]
struct Outbox {
    ready: Vec<Arc<dyn Entry>>,
    wake: Vec<Thread>,
    removed: Vec<Arc<dyn Entry>>,
}

/// How the timer thread waits after a turn.
struct Sleep {
    /// The earliest time an entry needs a worker, on the service's clock.
    until: Option<u64>,
    /// Whether to look again after [`MAX_SLICE`] of real time whatever happens.
    bounded: bool,
    stop_seen: bool,
}

impl<C: Clock> Service<C> {
    pub(crate) fn new(clock: C, lead: u64, workers: usize) -> Self {
        Self {
            clock,
            lead,
            workers,
            intake: Intake::new(),
            table: Mutex::new(Table::default()),
            pool: Pool::new(),
            stopping: AtomicBool::new(false),
            attention: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            threads: std::sync::OnceLock::new(),
        }
    }

    /// Records the service's threads, the timer thread first.
    pub(crate) fn set_threads(&self, threads: Vec<Thread>) {
        let _ = self.threads.set(threads);
    }

    /// The names of the service's threads, the timer thread first.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn thread_names(&self) -> Vec<String> {
        let threads = self.threads.get().map_or(&[][..], Vec::as_slice);
        threads
            .iter()
            .map(|thread| thread.name().unwrap_or_default().to_owned())
            .collect()
    }

    /// Whether the calling thread is the timer thread or one of the workers.
    pub(crate) fn is_own_thread(&self) -> bool {
        let me = sync::current().id();
        self.threads
            .get()
            .is_some_and(|threads| threads.iter().any(|thread| thread.id() == me))
    }

    /// Registers `entry`; false once the service has stopped (the entry is then closed).
    pub(crate) fn install(&self, entry: Arc<dyn Entry>) -> bool {
        let stop_seen = {
            let mut table = sync::lock(&self.table);
            if table.stopped {
                return false;
            }
            let index = match table.free.pop() {
                Some(index) => index,
                None => {
                    table.slots.push(Slot::default());
                    table.slots.len() - 1
                }
            };
            entry.link().set_index(index as u64);
            table.slots[index].entry = Some(entry);
            table.live += 1;
            table.open += 1;
            if table.stop_seen {
                // The service is stopping: so is the new entry.
                table.keep_closing(index);
            }
            table.stop_seen
        };
        if stop_seen {
            self.call_attention();
        }
        true
    }

    /// Hands `link`'s entry to the timer thread and wakes it, unless the entry is already
    /// queued (then whoever queued it woke the timer thread).
    pub(crate) fn notify(&self, link: &Link) {
        if self.intake.push(link) {
            self.wake_timer();
        }
    }

    /// The `silent_timer` mutant's hand-off: files the entry without waking the timer thread.
    /// Never run by the tests that cargo-mutants runs, so not mutated.
    #[cfg_attr(mutants, mutants::skip)]
    pub(crate) fn file_silently(&self, link: &Link) {
        self.intake.push(link);
    }

    /// Has the timer thread look at `link`'s entry on its next turn, without pushing it: for
    /// the handle's shutdown and drop, which must never push an entry that the timer may
    /// remove (see `Table::refile`). `retire`: the handle is gone, and the entry is to be
    /// removed once done.
    pub(crate) fn look_again(&self, link: &Link, retire: bool) {
        {
            let mut table = sync::lock(&self.table);
            if retire {
                link.retire();
            }
            let index = link.index() as usize;
            let ours = table.slots.get(index).and_then(|slot| slot.entry.as_ref());
            if ours.is_some_and(|entry| core::ptr::eq(entry.link(), link)) {
                table.keep_closing(index);
            }
        }
        self.call_attention();
    }

    /// Has the timer thread take another turn: for changes it finds in its table, not on the
    /// intake.
    fn call_attention(&self) {
        // Release: pairs with the Acquire loads in `needs_turn` and the swap in `turn`; the
        // table's lock orders what changed.
        self.attention.store(true, Ordering::Release);
        self.wake_timer();
    }

    /// Whether something came up since the timer thread's last turn began: checked right
    /// before it sleeps, so that it does not depend on the park token of a wake-up that came
    /// during the turn. (The token would do with std's threads; loom drops a token when the
    /// thread then blocks on a lock or yields, and nothing is lost by looking.)
    fn needs_turn(&self, stop_seen: bool) -> bool {
        // Acquire: pairs with the Release store in `call_attention`.
        self.intake.has_entries()
            || self.attention.load(Ordering::Acquire)
            || (!stop_seen && self.is_stopping())
    }

    /// Like `notify`, but wakes the timer thread in any case.
    pub(crate) fn nudge(&self, link: &Link) {
        self.intake.push(link);
        self.wake_timer();
    }

    pub(crate) fn wake_timer(&self) {
        if let Some(timer) = self.threads.get().and_then(|threads| threads.first()) {
            timer.unpark();
        }
    }

    /// Asks the service to stop: every entry shuts down by its own policy, then the threads end.
    pub(crate) fn request_stop(&self) {
        // Release: pairs with the Acquire load in `is_stopping`: entries told to stop see
        // everything the caller did before.
        self.stopping.store(true, Ordering::Release);
        self.wake_timer();
    }

    pub(crate) fn is_stopping(&self) -> bool {
        // Acquire: pairs with the Release store in `request_stop`.
        self.stopping.load(Ordering::Acquire)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        // Acquire: pairs with the Release store in `mark_stopped`: a thread that sees the
        // service stopped sees every entry closed.
        self.stopped.load(Ordering::Acquire)
    }

    /// How many throttles are registered.
    pub(crate) fn registered(&self) -> usize {
        sync::lock(&self.table).live
    }

    /// Removes `link`'s entry from a stopped service, whose timer thread no longer does; returns
    /// it, to be dropped once the lock is released.
    pub(crate) fn remove_after_stop(&self, link: &Link) -> Option<Arc<dyn Entry>> {
        let mut table = sync::lock(&self.table);
        if !table.stopped {
            return None;
        }
        let index = link.index() as usize;
        let ours = table.slots.get(index).and_then(|slot| slot.entry.as_ref());
        if !ours.is_some_and(|entry| core::ptr::eq(entry.link(), link)) {
            return None;
        }
        let entry = table.remove(index);
        let waiter = link.reach(REMOVED);
        drop(table);
        if let Some(waiter) = waiter {
            waiter.unpark();
        }
        entry
    }

    /// The timer thread: turns until the service has stopped. A panic inside a turn (a clock's,
    /// or a bug) is caught and the loop goes on; if the thread ends anyway, every entry is
    /// closed and gives its pending deferral up.
    pub(crate) fn run_timer(&self) {
        let _gone = TimerGone(self);
        let mut out = Outbox::default();
        loop {
            let turned = catch_unwind(AssertUnwindSafe(|| self.turn(&mut out)));
            self.deliver(&mut out);
            match turned {
                Ok(None) => return,
                Ok(Some(sleep)) => {
                    let slept = catch_unwind(AssertUnwindSafe(|| self.sleep(&sleep)));
                    if let Err(payload) = slept {
                        // The clock panicked while the timer thread waited on it: wait on real
                        // time for a while instead, and look again.
                        panics::dispose(payload);
                        sync::park_timeout(MAX_SLICE);
                    }
                }
                Err(payload) => {
                    panics::dispose(payload);
                    sync::park_timeout(MAX_SLICE);
                }
            }
        }
    }

    /// One turn of the timer thread; `None` once the service has stopped.
    fn turn(&self, out: &mut Outbox) -> Option<Sleep> {
        // AcqRel: Acquire pairs with the Release store in `call_attention`; a request made
        // after this swap sets the flag again, for the next turn.
        self.attention.swap(false, Ordering::AcqRel);
        let mut table = sync::lock(&self.table);
        let now = self.clock.now_nanos();
        let lead = self.lead;
        if !table.stop_seen && self.is_stopping() {
            // Every entry now stops by its own policy.
            table.stop_seen = true;
            for index in 0..table.slots.len() {
                if table.slots[index].entry.is_some() {
                    table.keep_closing(index);
                }
            }
        }
        // What callers, workers and shutdowns handed over.
        let mut head = self.intake.take();
        while head != EMPTY {
            let index = (head - 1) as usize;
            let Some(entry) = table.slots.get(index).and_then(|slot| slot.entry.clone()) else {
                break; // cannot happen: an entry is removed only while off the intake
            };
            head = entry.link().next();
            entry.link().dequeue();
            if entry.link().take_returned() {
                table.slots[index].busy = false;
            }
            table.refile(index, &entry, now, lead, out);
        }
        // What came due.
        while let Some(Reverse(top)) = table.heap.peek().copied() {
            if top.at > now.saturating_add(lead) {
                break;
            }
            table.heap.pop();
            if !table.is_current(&top) {
                table.stale = table.stale.saturating_sub(1);
                continue;
            }
            table.slots[top.index].filed = None;
            if let Some(entry) = table.slots[top.index].entry.clone() {
                table.refile(top.index, &entry, now, lead, out);
            }
        }
        // Stopping entries, whose grace may have run out since.
        for index in core::mem::take(&mut table.closing) {
            table.slots[index].closing = false;
            if let Some(entry) = table.slots[index].entry.clone() {
                table.refile(index, &entry, now, lead, out);
            }
        }
        if table.has_many_stale() {
            let Table { heap, slots, .. } = &mut *table;
            heap.retain(|Reverse(filed)| Table::current_in(slots, filed));
            table.stale = 0;
        }
        if table.stop_seen && table.open == 0 {
            table.stopped = true;
            self.mark_stopped();
            return None;
        }
        Some(Sleep {
            until: table
                .heap
                .peek()
                .map(|Reverse(top)| top.at.saturating_sub(lead)),
            bounded: !table.closing.is_empty(),
            stop_seen: table.stop_seen,
        })
    }

    /// Does what a turn left to do, with no lock held: hands the entries that came due to the
    /// workers, wakes the threads waiting on entries, and drops the entries removed.
    fn deliver(&self, out: &mut Outbox) {
        if !out.ready.is_empty() {
            self.pool.hand_over(out.ready.drain(..), &mut out.wake);
        }
        for thread in out.wake.drain(..) {
            thread.unpark();
        }
        for entry in out.removed.drain(..) {
            // The last reference to a throttle's work may go here: a panic in its drop must
            // not end the timer thread.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(entry))) {
                panics::dispose(payload);
            }
        }
    }

    /// Waits until the next entry needs a worker, something is handed over, or, while an entry
    /// waits for a grace, [`MAX_SLICE`] of real time has passed.
    fn sleep(&self, sleep: &Sleep) {
        if self.needs_turn(sleep.stop_seen) {
            return;
        }
        let Some(until) = sleep.until else {
            // Nothing filed: no reason to wait on the clock (a manual clock would jump to the
            // deadline of a waiter).
            if sleep.bounded {
                sync::park_timeout(MAX_SLICE);
            } else {
                sync::park();
            }
            return;
        };
        let started = Stopwatch::start();
        let bound = sleep.bounded.then_some(MAX_SLICE);
        // No busy-wait here: a worker gets the entry a lead early and waits out the rest on
        // the clock, precisely; this thread only has to be roughly on time.
        wait::park_on_deadline(&self.clock, bound, || {
            let interrupted = self.needs_turn(sleep.stop_seen)
                || (sleep.bounded && started.has_elapsed(MAX_SLICE));
            if interrupted || self.clock.now_nanos() >= until {
                Look::Done(())
            } else {
                Look::Until(until)
            }
        });
    }

    fn mark_stopped(&self) {
        // Release: pairs with the Acquire load in `is_stopped`.
        self.stopped.store(true, Ordering::Release);
    }

    /// A worker: serves the entries the timer thread hands over until the service stops.
    pub(crate) fn run_worker(&self) {
        let patience = self.lead.saturating_add(PATIENCE_MARGIN);
        while let Some(entry) = self.pool.next() {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| entry.serve(patience))) {
                entry.report(payload);
            }
            let link = entry.link();
            link.set_returned();
            self.notify(link);
            // The last reference to a throttle's work may go here.
            if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(entry))) {
                panics::dispose(payload);
            }
        }
    }
}

impl Table {
    /// Whether enough stale entries piled up in the heap to sweep them out. Only a cost: a
    /// stale entry is skipped when it comes to the top (`is_current`).
    fn has_many_stale(&self) -> bool {
        self.stale > self.live + 64
    }

    fn is_current(&self, filed: &Filed) -> bool {
        Self::current_in(&self.slots, filed)
    }

    fn current_in(slots: &[Slot], filed: &Filed) -> bool {
        let slot = &slots[filed.index];
        slot.generation == filed.generation && slot.filed == Some(filed.at)
    }

    /// Files the entry in slot `index` to fire at `at`, unless it fires earlier already (it is
    /// looked at again then).
    fn file(&mut self, index: usize, at: u64) {
        let slot = &mut self.slots[index];
        match slot.filed {
            Some(filed) if filed <= at => {}
            previous => {
                if previous.is_some() {
                    self.stale += 1;
                }
                slot.filed = Some(at);
                let generation = slot.generation;
                self.heap.push(Reverse(Filed {
                    at,
                    index,
                    generation,
                }));
            }
        }
    }

    fn unfile(&mut self, index: usize) {
        if self.slots[index].filed.take().is_some() {
            self.stale += 1;
        }
    }

    fn keep_closing(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if !slot.closing {
            slot.closing = true;
            self.closing.push(index);
        }
    }

    /// Looks at the entry in slot `index` again: hands it to a worker if its next run is due
    /// within the lead, files it if it is due later, and moves a stopping entry on towards
    /// closed, done and removed.
    fn refile(
        &mut self,
        index: usize,
        entry: &Arc<dyn Entry>,
        now: u64,
        lead: u64,
        out: &mut Outbox,
    ) {
        let link = entry.link();
        if self.slots[index].busy {
            return; // its worker hands it back when done, and it is looked at then
        }
        let due = match catch_unwind(AssertUnwindSafe(|| entry.due_in())) {
            Ok(due) => due,
            Err(payload) => {
                // Its clock panicked: nothing can be run on time; give the deferral up rather
                // than strand it.
                entry.report(payload);
                entry.give_up();
                None
            }
        };
        match due {
            Some(due) if due <= lead => {
                self.unfile(index);
                self.slots[index].busy = true;
                out.ready.push(entry.clone());
                return;
            }
            Some(u64::MAX) | None => self.unfile(index),
            Some(due) => self.file(index, now.saturating_add(due)),
        }
        if !entry.is_stopping() {
            return;
        }
        if due.is_some() {
            self.keep_closing(index);
            return;
        }
        // Stopping, with nothing left to run.
        if !entry.is_closed() {
            entry.close();
            // The final look, after the close: a hand-off it misses was made by a caller who
            // then sees the entry closed and takes it back.
            return self.refile(index, entry, now, lead, out);
        }
        if link.stage() == OPEN {
            self.open -= 1;
            out.wake.extend(link.reach(DONE));
        }
        // Removed only once its handle is gone (no call can push it any more), it is off
        // every worker (`busy`, cleared when the timer thread took the worker's last push) and
        // off the intake (a caller's push from before the drop is taken first): nothing can
        // push it after its slot is freed for another entry. (Retired with Release after the
        // handle's last action; read here with Acquire before `queued`.)
        if link.is_retired() && !link.is_queued() {
            out.removed.extend(self.remove(index));
            out.wake.extend(link.reach(REMOVED));
        }
    }

    /// Empties slot `index`; returns its entry.
    fn remove(&mut self, index: usize) -> Option<Arc<dyn Entry>> {
        self.unfile(index);
        let slot = &mut self.slots[index];
        let entry = slot.entry.take()?;
        slot.generation += 1;
        slot.busy = false;
        self.live -= 1;
        if entry.link().stage() == OPEN {
            self.open -= 1;
        }
        self.free.push(index);
        Some(entry)
    }
}

/// Closes the service when the timer thread ends, however it ends: if it did not stop normally,
/// every entry is closed and gives its pending deferral up, so that no call is coalesced into a
/// run that will not come. Either way the workers end.
struct TimerGone<'a, C: Clock>(&'a Service<C>);

impl<C: Clock> Drop for TimerGone<'_, C> {
    fn drop(&mut self) {
        let service = self.0;
        let mut wake = Vec::new();
        {
            let mut table = sync::lock(&service.table);
            if !table.stopped {
                table.stopped = true;
                for slot in &table.slots {
                    if let Some(entry) = &slot.entry {
                        let _ = catch_unwind(AssertUnwindSafe(|| entry.abandon()));
                        wake.extend(entry.link().reach(DONE));
                    }
                }
                service.mark_stopped();
            }
        }
        wake.extend(service.pool.close());
        for thread in wake {
            thread.unpark();
        }
    }
}
