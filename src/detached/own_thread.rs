//! A detached throttle's own timer thread: it serves one job, waiting for each run's time
//! itself, until the job shuts down.

use super::job::{Driver, Job};
use crate::clock::Clock;
use crate::sync::{self, JoinHandle};

/// The timer thread: runs what callers hand over until the job is asked to stop. Whatever
/// panics inside is caught and the loop goes on; if the thread ends anyway, `Gone` gives its
/// pending deferral up and closes the handle for callers.
pub(super) fn serve<F, C>(job: &Job<F, C>)
where
    F: Fn() + Send + Sync + 'static,
    C: Clock,
{
    let _gone = Gone(job);
    loop {
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            serve_until_stopped(job);
        }));
        match served {
            Ok(()) => break,
            Err(payload) => job.report_panic(payload),
        }
    }
    // Closed for callers from here: either this thread's last look below sees a caller's
    // hand-off, or the caller sees the job closed and takes its run back (`Job::call`).
    job.close();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job.serve_once(None)));
}

fn serve_until_stopped<F, C>(job: &Job<F, C>)
where
    F: Fn() + Send + Sync + 'static,
    C: Clock,
{
    loop {
        // Read first: `stop` comes after every call, so once this sees it, the look below sees
        // every hand-off.
        let stopping = job.is_stopping();
        if job.serve_once(None) {
            continue;
        }
        if stopping {
            return;
        }
        // A hand-off that came after the checks above unparked this thread already, so this
        // returns at once; spurious wake-ups just go round the loop.
        sync::park();
    }
}

/// Asks the timer thread to stop and, unless this is the timer thread, joins it.
pub(super) fn stop<F, C: Clock>(job: &Job<F, C>, join: &std::sync::Mutex<Option<JoinHandle<()>>>) {
    job.request_stop();
    job.nudge();
    let Driver::Own(timer) = &job.driver else {
        return;
    };
    let on_timer = timer
        .get()
        .is_some_and(|timer| timer.id() == sync::current().id());
    if on_timer {
        return; // the thread ends once the work that called this returns
    }
    // The lock is held while joining, so that a second caller stopping the job at the same
    // time waits for the thread to end too, rather than return while it still runs.
    let mut handle = join
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = handle.take() {
        // The timer thread catches every panic, so it ends normally.
        let _ = handle.join();
    }
}

/// Marks the job as closed when its timer thread ends, however it ends, and gives up the
/// deferral it would have run, so that calls are not coalesced into a run that will not come.
struct Gone<'a, F, C: Clock>(&'a Job<F, C>);

impl<F, C: Clock> Drop for Gone<'_, F, C> {
    fn drop(&mut self) {
        self.0.mark_gone();
        // A claim handed over after the thread's last look, or one it had when it ended:
        // nobody will run it now.
        self.0.give_up();
    }
}
