//! Waiting for a deadline: the slot where a waiting owner leaves its waker, wakers for
//! threads, and the one loop that blocking waits, async waits and timer threads share.

use crate::clock::{Clock, Wait, Waiter};
use crate::sync::{self, Mutex, Thread};
use core::future::Future;
use core::task::{Poll, Waker};
use core::time::Duration;

/// Where the owner of a pending deferral (or a timer thread) leaves its waker while it waits,
/// so that a cancel, a flush or a new threshold wakes it instead of leaving it to sleep out its
/// window. Waiting owners register; the event side never blocks on it.
#[derive(Debug, Default)]
pub(crate) struct WakeSlot {
    waker: Mutex<Option<Waker>>,
}

impl WakeSlot {
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            waker: Mutex::new(None),
        }
    }

    #[cfg(loom)]
    #[cfg_attr(mutants, mutants::skip)] // loom-only: never built by the tests
    pub(crate) fn new() -> Self {
        Self {
            waker: Mutex::new(None),
        }
    }

    /// Leaves `waker` to be woken by the next event, replacing any other. The caller looks at
    /// the state word again afterwards, so an event that came before this is not missed.
    pub(crate) fn register(&self, waker: &Waker) {
        sync::lock(&self.waker).replace(waker.clone());
    }

    /// Takes `waker` out again, if it is still the registered one.
    pub(crate) fn unregister(&self, waker: &Waker) {
        let mut slot = sync::lock(&self.waker);
        if slot.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *slot = None;
        }
    }

    /// Wakes the registered waiter, if any, after the caller changed the state word. Never
    /// blocks: if the slot is busy, its holder is a waiter registering (it looks at the word
    /// after that, and sees the change) or another event waking it.
    pub(crate) fn wake(&self) {
        if sync::is_mutant(sync::mutant!(SilentEvents)) {
            return;
        }
        let waker = sync::try_lock(&self.waker).and_then(|slot| slot.clone());
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// Wakes a thread by unparking it.
struct Unpark(Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// A waker that unparks the calling thread: one per thread, made on its first wait.
pub(crate) fn thread_waker() -> Waker {
    #[cfg(not(loom))]
    {
        thread_local! {
            static WAKER: Waker = Waker::from(std::sync::Arc::new(Unpark(sync::current())));
        }
        WAKER.with(Waker::clone)
    }
    #[cfg(loom)]
    {
        // loom's threads share one OS thread, so each wait makes its own.
        Waker::from(std::sync::Arc::new(Unpark(sync::current())))
    }
}

/// What a waiter found when it looked at its deadline.
pub(crate) enum Look<T> {
    /// Done waiting, with this result.
    Done(T),
    /// Not yet: the deadline, in the clock's nanoseconds.
    Until(u64),
}

/// Unregisters a waiter from its clock and its wake slot when the wait ends, however it ends.
pub(crate) struct Registration<'a, C: Clock> {
    clock: &'a C,
    slot: Option<&'a WakeSlot>,
    /// The waiter's identity with the clock.
    id: u64,
    waker: Waker,
}

impl<'a, C: Clock> Registration<'a, C> {
    pub(crate) fn new(clock: &'a C, slot: Option<&'a WakeSlot>, waker: Waker) -> Self {
        let id = Waiter::new(&waker).id();
        Self {
            clock,
            slot,
            id,
            waker,
        }
    }

    /// The waiter, as its clock knows it, woken through `waker`.
    fn waiter<'w>(&self, waker: &'w Waker) -> Waiter<'w> {
        Waiter::known(self.id, waker)
    }
}

impl<C: Clock> Drop for Registration<'_, C> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.unregister(&self.waker);
        }
        self.clock.done_waiting(self.waiter(&self.waker));
    }
}

/// Blocks the calling thread until `look` is done. `look` stamps or gives up as it sees fit;
/// between looks the thread waits as the clock says, and is woken early through `slot`.
///
/// `bound` caps each sleep, for waiters that must also notice something no one wakes them for
/// (a timer thread's shutdown grace).
pub(crate) fn block_on_deadline<C: Clock, T>(
    clock: &C,
    slot: Option<&WakeSlot>,
    bound: Option<Duration>,
    look: impl FnMut() -> Look<T>,
) -> T {
    block(clock, slot, bound, Precision::Clock, look)
}

/// Like [`block_on_deadline`], for a waiter that needs no precision (a shared timer's thread,
/// whose workers start the runs): a real-time wait parks on the OS's timer for the whole
/// remaining time, without [`Clock::sleep`], which may busy-wait the end of it.
pub(crate) fn park_on_deadline<C: Clock, T>(
    clock: &C,
    bound: Option<Duration>,
    look: impl FnMut() -> Look<T>,
) -> T {
    block(clock, None, bound, Precision::Os, look)
}

/// How a real-time wait sleeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Precision {
    /// Through the clock's `sleep`, as precisely as it can.
    Clock,
    /// Parked on the OS's timer, a few tens of microseconds late.
    Os,
}

fn block<C: Clock, T>(
    clock: &C,
    slot: Option<&WakeSlot>,
    bound: Option<Duration>,
    precision: Precision,
    mut look: impl FnMut() -> Look<T>,
) -> T {
    let waker = thread_waker();
    let _registration = Registration::new(clock, slot, waker.clone());
    if let Some(slot) = slot {
        slot.register(&waker);
    }
    loop {
        let deadline = match look() {
            Look::Done(result) => return result,
            Look::Until(deadline) => deadline,
        };
        match clock.wait_for(_registration.waiter(&waker), deadline) {
            Wait::Now => {}
            Wait::Yield => sync::yield_now(),
            Wait::UntilWoken => match bound {
                Some(bound) => sync::park_timeout(bound),
                None => sync::park(),
            },
            // `Wait` is non-exhaustive for users; every other answer sleeps on real time.
            _ => {
                let remaining = Duration::from_nanos(deadline.saturating_sub(clock.now_nanos()));
                let remaining = match bound {
                    Some(bound) => remaining.min(bound),
                    None => remaining,
                };
                match precision {
                    Precision::Clock => clock.sleep(remaining),
                    Precision::Os => sync::park_timeout(remaining),
                }
            }
        }
    }
}

/// The async form of [`block_on_deadline`]: waits on the futures `sleep` returns for real-time
/// waits, and on the task's waker otherwise.
pub(crate) async fn wait_on_deadline<C, T, S, F>(
    clock: &C,
    slot: Option<&WakeSlot>,
    mut sleep: S,
    mut look: impl FnMut() -> Look<T>,
) -> T
where
    C: Clock,
    S: FnMut(Duration) -> F,
    F: Future<Output = ()>,
{
    let waker = core::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
    let mut registration = Registration::new(clock, slot, waker);
    loop {
        // Look, and decide how to wait, in one poll: the waker registered is this poll's.
        let step = core::future::poll_fn(|cx| {
            if !registration.waker.will_wake(cx.waker()) {
                // Polled with another waker: the slot takes the new one; the clock updates
                // the waiter's waker on the next `wait_for`.
                if let Some(slot) = slot {
                    slot.unregister(&registration.waker);
                }
                registration.waker = cx.waker().clone();
            }
            if let Some(slot) = slot {
                slot.register(cx.waker());
            }
            let deadline = match look() {
                Look::Done(result) => return Poll::Ready(Err(result)),
                Look::Until(deadline) => deadline,
            };
            match clock.wait_for(registration.waiter(cx.waker()), deadline) {
                Wait::Now => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Wait::Yield => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                Wait::UntilWoken => Poll::Pending,
                _ => Poll::Ready(Ok(deadline)),
            }
        });
        let deadline = match step.await {
            Err(result) => return result,
            Ok(deadline) => deadline,
        };
        // A real-time wait: the executor's timer, or an event through the slot, whichever
        // comes first.
        let remaining = Duration::from_nanos(deadline.saturating_sub(clock.now_nanos()));
        let mut timer = core::pin::pin!(sleep(remaining));
        let mut first = true;
        // The first poll starts the timer; any later one means the timer fired or an event
        // (or a spurious wake-up) came through the slot: look again either way.
        let woken = core::future::poll_fn(|cx| {
            if !core::mem::replace(&mut first, false) {
                return Poll::Ready(());
            }
            if let Some(slot) = slot {
                slot.register(cx.waker());
            }
            timer.as_mut().poll(cx)
        });
        woken.await;
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// A thread's waker unparks that thread, woken by value or by reference. (The test gives
    /// the parked thread 10 s, and leaves it if it is never woken.)
    #[test]
    fn a_thread_waker_unparks_its_thread() {
        for by_ref in [false, true] {
            let woken = Arc::new(AtomicBool::new(false));
            let (send, waker) = std::sync::mpsc::channel();
            let parked = std::thread::spawn({
                let woken = woken.clone();
                move || {
                    send.send(thread_waker()).unwrap();
                    // Parks at least once: only the waker (or a spurious wake-up) ends a park.
                    loop {
                        sync::park();
                        if woken.load(Ordering::Acquire) {
                            break;
                        }
                    }
                }
            });
            let waker = waker.recv().unwrap();
            woken.store(true, Ordering::Release);
            if by_ref {
                waker.wake_by_ref();
            } else {
                waker.wake();
            }
            assert!(
                crate::test_support::within(|| parked.is_finished()),
                "by ref: {by_ref}: the thread was not woken"
            );
        }
    }
}
