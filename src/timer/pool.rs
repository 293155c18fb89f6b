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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::super::intake::Link;
    use super::*;
    use std::any::Any;

    /// An entry that is only ever queued.
    struct Queued(Link);

    impl Entry for Queued {
        fn link(&self) -> &Link {
            &self.0
        }
        fn due_in(&self) -> Option<u64> {
            None
        }
        fn serve(&self, _: u64) {}
        fn is_stopping(&self) -> bool {
            false
        }
        fn is_closed(&self) -> bool {
            false
        }
        fn close(&self) {}
        fn give_up(&self) {}
        fn report(&self, _: Box<dyn Any + Send>) {}
    }

    fn entry(index: u64) -> Arc<dyn Entry> {
        let link = Link::new();
        link.set_index(index);
        Arc::new(Queued(link))
    }

    /// Waits (at most 30 s, failing the test) until `workers` workers are parked idle.
    fn until_idle(pool: &Pool, workers: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while sync::lock(&pool.ready).idle.len() < workers {
            assert!(
                std::time::Instant::now() < deadline,
                "{workers} workers never parked"
            );
            std::thread::yield_now();
        }
    }

    fn index(entry: Option<Arc<dyn Entry>>) -> Option<u64> {
        entry.map(|entry| entry.link().index())
    }

    /// Workers get the entries in the order handed over, and each idle worker is named to be
    /// woken for one; closing names the idle workers, which then get what is left, then
    /// `None`. (Threads that fail are left, not joined: a broken pool fails the test, and
    /// does not hang it.)
    #[test]
    fn workers_get_the_entries_in_order_then_none_once_closed() {
        let pool = Arc::new(Pool::new());
        let mut wake = Vec::new();
        pool.hand_over([entry(1), entry(2)].into_iter(), &mut wake);
        assert!(wake.is_empty(), "no worker waits yet");
        assert_eq!(sync::lock(&pool.ready).queue.len(), 2);
        assert_eq!(index(pool.next()), Some(1));
        assert_eq!(index(pool.next()), Some(2));
        // Two workers park, each listed as idle; each entry handed over names one to wake.
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                std::thread::spawn(move || index(pool.next()))
            })
            .collect();
        until_idle(&pool, 2);
        let mut wake = Vec::new();
        pool.hand_over([entry(3), entry(4)].into_iter(), &mut wake);
        assert_eq!(wake.len(), 2, "each idle worker is named to be woken");
        wake.into_iter().for_each(|thread| thread.unpark());
        let mut got: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        got.sort();
        assert_eq!(got, [Some(3), Some(4)]);
        // Closing names the idle worker; it finds the queue empty and ends.
        let worker = {
            let pool = pool.clone();
            std::thread::spawn(move || index(pool.next()))
        };
        until_idle(&pool, 1);
        let idle = pool.close();
        assert_eq!(idle.len(), 1, "the idle worker is named to be woken");
        idle.into_iter().for_each(|thread| thread.unpark());
        assert_eq!(worker.join().unwrap(), None);
        // What is queued after the close is still served, then `None`.
        pool.hand_over([entry(5)].into_iter(), &mut Vec::new());
        assert_eq!(index(pool.next()), Some(5));
        assert!(pool.next().is_none(), "closed and empty");
    }
}
