//! The workers: a small fixed set of threads that start the work of the entries the timer thread
//! hands them, so that a slow work holds up one worker, never the timer thread.

use super::Entry;
use crate::sync::{self, Mutex, Thread};
use std::collections::VecDeque;
use std::sync::Arc;

/// Entries handed over by the timer thread, and the workers waiting for one.
pub(crate) struct Pool {
    ready: Mutex<Ready>,
}

struct Ready {
    /// Entries to serve, in the order they came due. Each entry is here at most once (the
    /// timer thread's `busy` mark), so this never holds more than there are throttles.
    queue: VecDeque<Arc<dyn Entry>>,
    /// Workers parked for want of an entry.
    idle: Vec<Thread>,
    /// Set when the service has stopped: workers end once the queue is empty.
    closing: bool,
}

impl Pool {
    pub(crate) fn new() -> Self {
        Self {
            ready: Mutex::new(Ready {
                queue: VecDeque::new(),
                idle: Vec::new(),
                closing: false,
            }),
        }
    }

    /// Queues `entries` for the workers and says which idle workers to unpark: the caller
    /// unparks them once no lock is held.
    pub(crate) fn hand_over(
        &self,
        entries: impl Iterator<Item = Arc<dyn Entry>>,
        wake: &mut Vec<Thread>,
    ) {
        let mut ready = sync::lock(&self.ready);
        for entry in entries {
            ready.queue.push_back(entry);
            if let Some(worker) = ready.idle.pop() {
                wake.push(worker);
            }
        }
    }

    /// Tells the workers to end once the queue is empty; returns the idle ones to unpark.
    pub(crate) fn close(&self) -> Vec<Thread> {
        let mut ready = sync::lock(&self.ready);
        ready.closing = true;
        core::mem::take(&mut ready.idle)
    }

    /// The next entry for the calling worker, parking while there is none; `None` once the
    /// service has stopped.
    pub(crate) fn next(&self) -> Option<Arc<dyn Entry>> {
        let me = sync::current();
        loop {
            {
                let mut ready = sync::lock(&self.ready);
                // A worker unparked spuriously may still be listed as idle: take it off, so
                // that the timer thread wakes a worker that is really waiting.
                ready.idle.retain(|worker| worker.id() != me.id());
                if let Some(entry) = ready.queue.pop_front() {
                    return Some(entry);
                }
                if ready.closing {
                    return None;
                }
                ready.idle.push(me.clone());
            }
            // An entry handed over after the lock was released unparks this thread, and
            // `park` returns at once if that came first.
            sync::park();
        }
    }
}
