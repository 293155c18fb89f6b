//! `AsyncThrottled`'s hand-off of a cancelled owner's run, under loom.
#![cfg(loom)]

use atomic_throttle::{AsyncThrottled, Job, ManualClock, Outcome, Runtime, Task, Throttle};
use loom::sync::atomic::AtomicU32;
use loom::thread;
use loom_tests::verify_bounded;
use std::future::Future;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::task::{Context, Waker};
use std::time::Duration;

const T: Duration = Duration::from_millis(10);

/// A runtime of loom threads: a task is a thread of its own, driven by loom's `block_on`, and
/// a blocking job runs on the task's thread. The model joins the tasks it started.
#[derive(Clone, Default)]
struct LoomRuntime {
    tasks: Arc<Mutex<Vec<thread::JoinHandle<()>>>>,
}

impl Runtime for LoomRuntime {
    fn sleep(&self, _: Duration) -> impl Future<Output = ()> + Send {
        // The manual clock moves for the wait itself; the sleep is only an await point.
        std::future::ready(())
    }
    fn spawn(&self, task: Task) -> Result<(), Task> {
        let handle = thread::spawn(move || loom::future::block_on(task));
        self.tasks.lock().unwrap().push(handle);
        Ok(())
    }
    fn spawn_blocking(&self, job: Job) {
        job();
    }
    fn block_on<F: Future>(&self, future: F) -> F::Output {
        loom::future::block_on(future)
    }
}

/// Model 21: the owner of an `AsyncThrottled` deferral is polled once (it claims the deferral
/// and waits for the deadline), then its future is dropped while another caller calls. The run
/// is handed to a task of the runtime: a caller Coalesced into it is covered by a run (G3),
/// and nothing is left pending (G2), whichever order the drop, the call and the task come in.
#[test]
fn model_21_a_cancelled_async_owner_hands_its_run_on() {
    verify_bounded("model 21", Some(3), &[("no_hand_off", "G3")], || {
        let clock = ManualClock::new();
        let runs = Arc::new(AtomicU32::new(0));
        let runtime = LoomRuntime::default();
        let tasks = runtime.tasks.clone();
        let throttle = Throttle::with_clock(T, clock).unwrap();
        let job = Arc::new(AsyncThrottled::with_runtime(throttle, runtime, {
            let runs = runs.clone();
            async move || {
                runs.fetch_add(1, SeqCst);
            }
        }));
        assert_eq!(loom::future::block_on(job.call()), Outcome::Now(()));
        let mut owner = Box::pin(job.call());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(owner.as_mut().poll(&mut cx).is_pending());
        assert!(job.is_pending(), "the owner claimed the deferral");
        let caller = {
            let job = job.clone();
            thread::spawn(move || loom::future::block_on(job.call()))
        };
        drop(owner); // cancelled while it waits: the run is handed on
        let theirs = caller.join().unwrap();
        let handed: Vec<_> = tasks.lock().unwrap().drain(..).collect();
        for task in handed {
            task.join().unwrap();
        }
        match theirs {
            Outcome::Coalesced => assert!(
                runs.load(SeqCst) >= 2,
                "G3: the coalesced call was not covered after its owner was cancelled"
            ),
            Outcome::Deferred(()) => {}
            other => panic!("G1: {other:?} inside the window"),
        }
        assert!(!job.is_pending(), "G2: a deferral outlived its owners");
    });
}
