//! A mutex port of the fix proposed for Neutron's `throttler`: one lock around the decision.
//!
//! The review's version held the lock across the deferred call's sleep and deadlocked; this
//! port takes the lock only to decide and to stamp, as a working mutex design would. It is the
//! baseline the demo and the benches compare against, not part of the crate. Like Neutron's
//! code, it has no answer for a deferred caller that panics while it sleeps: the flag stays set
//! and every later call is swallowed.

use atomic_throttle::Clock;
use std::sync::Mutex;
use std::time::Duration;

/// What one call did, as in Neutron: ran, ran after waiting, or returned at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutexAnswer {
    Now,
    Deferred,
    Coalesced,
}

#[derive(Default)]
struct State {
    last: Option<u64>,
    is_deferred: bool,
}

pub struct NeutronMutex<C> {
    state: Mutex<State>,
    threshold: u64,
    clock: C,
}

impl<C: Clock> NeutronMutex<C> {
    pub fn new(threshold: Duration, clock: C) -> Self {
        Self {
            state: Mutex::new(State::default()),
            threshold: threshold.as_nanos() as u64,
            clock,
        }
    }

    /// The decision alone: what `call` would answer, without sleeping. A Deferred answer sets
    /// the flag; `finish_deferred` clears it, as the deferred call's stamp does.
    pub fn decide(&self) -> MutexAnswer {
        let mut state = self.state.lock().unwrap();
        if state.is_deferred {
            return MutexAnswer::Coalesced;
        }
        let now = self.clock.now_nanos();
        match state.last {
            Some(last) if now.saturating_sub(last) < self.threshold => {
                state.is_deferred = true;
                MutexAnswer::Deferred
            }
            _ => {
                state.last = Some(now);
                MutexAnswer::Now
            }
        }
    }

    /// Sleeps until the window ends, then stamps and clears the flag.
    pub fn finish_deferred(&self) {
        loop {
            let last = self.state.lock().unwrap().last.unwrap_or(0);
            let now = self.clock.now_nanos();
            let deadline = last + self.threshold;
            if now >= deadline {
                break;
            }
            self.clock.sleep(Duration::from_nanos(deadline - now));
        }
        let mut state = self.state.lock().unwrap();
        state.last = Some(self.clock.now_nanos());
        state.is_deferred = false;
    }

    /// A whole call, as the Neutron decorator makes it.
    #[allow(dead_code)] // the demo calls it; the benches time its parts
    pub fn call<R>(&self, work: impl Fn() -> R) -> (MutexAnswer, Option<R>) {
        match self.decide() {
            MutexAnswer::Coalesced => (MutexAnswer::Coalesced, None),
            MutexAnswer::Now => (MutexAnswer::Now, Some(work())),
            MutexAnswer::Deferred => {
                self.finish_deferred();
                (MutexAnswer::Deferred, Some(work()))
            }
        }
    }
}
