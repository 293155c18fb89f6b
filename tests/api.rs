//! The small things a user reads: what `Debug` and `Display` print, what accessors return,
//! and the controls (flush, cancel, counters) seen without blocking.

#[path = "support/wait_for.rs"]
mod wait_for;

use atomic_throttle::{
    Admission, Clock, ClockSource, CoarseClock, DefaultClock, Detached, Dispatch, Latest,
    LeadingRun, ManualClock, Mode, NotRun, Outcome, Revoked, Shutdown, Stats, ThresholdError,
    Throttle, Throttled, Wait, Waiter,
};
use std::sync::Arc;
use std::time::Duration;

const T: Duration = Duration::from_millis(10);

fn manual(threshold: Duration) -> (Throttle<ManualClock>, ManualClock) {
    let clock = ManualClock::new();
    (
        Throttle::with_clock(threshold, clock.clone()).unwrap(),
        clock,
    )
}

#[test]
fn a_flush_makes_the_pending_deferral_due_at_once() {
    let (throttle, clock) = manual(T);
    assert!(!throttle.flush(), "nothing pending");
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert!(throttle.flush());
    assert!(throttle.flush(), "idempotent while pending");
    assert!(format!("{throttle:?}").contains("flushed: true"));
    assert_eq!(deferral.try_run(|| clock.now_nanos()).ok(), Some(0));
    assert!(!throttle.is_pending());
    assert!(!throttle.flush());
    // The next window counts from the flushed run.
    clock.advance(T - Duration::from_nanos(1));
    assert!(throttle.admit().is_deferred());
    clock.advance(Duration::from_nanos(1));
    assert!(throttle.admit().is_now());
}

#[test]
fn a_cancelled_owner_of_a_leased_throttle_is_told_cancelled_even_once_its_lease_ran_out() {
    let clock = ManualClock::new();
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .lease(Duration::from_millis(5))
        .build()
        .unwrap();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert!(throttle.cancel());
    clock.advance(T + Duration::from_millis(6));
    let answer = deferral.try_run(|| unreachable!("a cancelled deferral ran"));
    match answer {
        Err(NotRun::Revoked(why)) => assert_eq!(why, Revoked::Cancelled),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cancel_revokes_the_owner_without_blocking() {
    let (throttle, _) = manual(T);
    assert!(!throttle.cancel());
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert!(throttle.cancel());
    assert!(!throttle.is_pending());
    assert!(!throttle.cancel(), "idempotent");
    match deferral.try_run(|| unreachable!("a cancelled deferral ran")) {
        Err(NotRun::Revoked(why)) => assert_eq!(why, Revoked::Cancelled),
        other => panic!("{other:?}"),
    }
    assert!(
        throttle.admit().is_deferred(),
        "decided as if the owner had dropped it"
    );
}

#[test]
fn a_lease_takes_an_abandoned_deferral_over_and_refuses_its_owner() {
    let clock = ManualClock::new();
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .lease(Duration::from_millis(5))
        .counting(true)
        .build()
        .unwrap();
    assert_eq!(throttle.lease(), Some(Duration::from_millis(5)));
    assert!(throttle.admit().is_now());
    let Admission::Deferred(late) = throttle.admit() else {
        panic!("expected Deferred")
    };
    clock.advance(T + Duration::from_millis(5) - Duration::from_nanos(1));
    assert!(throttle.admit().is_coalesced(), "the lease has not expired");
    clock.advance(Duration::from_nanos(1));
    assert!(throttle.admit().is_now(), "taken over at deadline + lease");
    assert_eq!(throttle.last_run(), Some(15_000_000));
    match late.try_run(|| unreachable!("a taken-over deferral ran")) {
        Err(NotRun::Revoked(why)) => assert_eq!(why, Revoked::TakenOver),
        other => panic!("{other:?}"),
    }
    let stats = throttle.stats().unwrap();
    assert_eq!(
        (stats.leading, stats.takeovers, stats.coalesced),
        (1, 1, 1),
        "the takeover's Now is counted in takeovers, not in leading"
    );
    assert_eq!((stats.deferred, stats.releases), (0, 0), "{stats:?}");
}

#[test]
fn a_takeover_with_the_clock_at_the_claims_stamp_still_moves_the_stamp() {
    // A zero lease, and the threshold dropped to zero while the deferral is pending: the lease
    // has expired with the clock still at the claim's stamp. The takeover must stamp past the
    // claim, or the next claim would be the old owner's word, bit for bit.
    let clock = ManualClock::new();
    clock.advance(Duration::from_millis(1));
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .lease(Duration::ZERO)
        .build()
        .unwrap();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(late) = throttle.admit() else {
        panic!("expected Deferred")
    };
    throttle.set_threshold(Duration::ZERO).unwrap();
    assert!(throttle.admit().is_now(), "taken over");
    assert_eq!(
        throttle.last_run(),
        Some(1_001_000),
        "1 us past the claim's stamp"
    );
    throttle.set_threshold(T).unwrap();
    let Admission::Deferred(next) = throttle.admit() else {
        panic!("expected Deferred")
    };
    drop(late);
    assert!(
        throttle.is_pending(),
        "the late owner's release cleared the next claim"
    );
    drop(next);
}

#[test]
fn counters_count_every_path() {
    let clock = ManualClock::new();
    let throttle = Throttle::builder(T)
        .clock(clock.clone())
        .counting(true)
        .build()
        .unwrap();
    assert_eq!(throttle.stats(), Some(Stats::default()));
    assert!(throttle.admit().is_now());
    drop(throttle.admit()); // a release
    let Admission::Deferred(deferral) = throttle.admit() else {
        panic!("expected Deferred")
    };
    for _ in 0..3 {
        assert!(throttle.admit().is_coalesced());
    }
    assert_eq!(throttle.take_skipped(), 3);
    assert!(throttle.admit().is_coalesced());
    assert!(deferral.run(|| ()).is_ok());
    let cancelled = throttle.admit();
    assert!(cancelled.is_deferred() && throttle.cancel());
    drop(cancelled); // revoked: its release changes nothing, and is not counted
    let stats = throttle.stats().unwrap();
    assert_eq!(stats.leading, 1);
    assert_eq!(stats.deferred, 1);
    assert_eq!(stats.coalesced, 4);
    assert_eq!(stats.suppressed, 0);
    assert_eq!(stats.releases, 1, "the dropped claim");
    assert_eq!(stats.cancels, 1);
    assert_eq!(stats.takeovers, 0);
    assert_eq!(throttle.take_skipped(), 1);
    assert_eq!(throttle.take_skipped(), 0);

    let leading = Throttle::builder(T)
        .clock(ManualClock::new())
        .mode(Mode::LeadingOnly)
        .counting(true)
        .build()
        .unwrap();
    assert!(leading.admit().is_now());
    let Admission::Suppressed { until } = leading.admit() else {
        panic!("expected Suppressed")
    };
    assert_eq!(until, 10_000_000);
    let stats = leading.stats().unwrap();
    assert_eq!((stats.suppressed, stats.coalesced), (1, 0));
    assert_eq!(Throttle::new(T).stats(), None);
    assert_eq!(Throttle::new(T).take_skipped(), 0);
}

#[test]
fn what_debug_and_display_print() {
    let (throttle, clock) = manual(T);
    assert_eq!(format!("{:?}", throttle.admit()), "Now");
    let deferred = format!("{:?}", throttle.admit());
    assert!(
        deferred.starts_with("Deferred(Deferral { deadline: 10000000"),
        "{deferred}"
    );
    assert!(format!("{clock:?}")
        .contains("ManualClock { now_nanos: 0, auto_advance: true, waiters: 0 }"));
    let leading = Throttle::builder(T)
        .mode(Mode::LeadingOnly)
        .clock(clock.clone())
        .build()
        .unwrap();
    let _ = leading.admit();
    assert_eq!(
        format!("{:?}", leading.admit()),
        "Suppressed { until: 10000000 }"
    );
    assert!(format!("{:?}", DefaultClock::new()).contains("spin: 100µs"));
    assert!(format!("{:?}", Throttle::builder(T)).contains("ThrottleBuilder"));
    assert_eq!(
        Revoked::TakenOver.to_string(),
        "the deferral's lease expired and it was taken over"
    );
    assert_eq!(Revoked::Cancelled.to_string(), "the deferral was cancelled");
    let not_due: NotRun<()> = NotRun::NotDue(());
    assert_eq!(not_due.to_string(), "the deferral is not due yet");
    assert_eq!(format!("{not_due:?}"), "NotDue(..)");
    let revoked: NotRun<()> = NotRun::Revoked(Revoked::Cancelled);
    assert_eq!(revoked.to_string(), "the deferral was cancelled");
    assert_eq!(format!("{revoked:?}"), "Revoked(Cancelled)");
    assert!(revoked.not_due().is_none());
    let job = Throttled::new(T, || ());
    let text = format!("{job:?}");
    assert!(
        text.contains("Throttled") && text.contains("publishing: false"),
        "{text}"
    );
    let latest = Latest::new(T, |_: u8| ());
    assert!(format!("{latest:?}").contains("holds_a_value: false"));
    let err = Throttle::builder(Duration::ZERO)
        .lease(Duration::MAX)
        .build()
        .unwrap_err();
    assert_eq!(err.what(), "lease");
    assert!(err.to_string().starts_with("lease "), "{err}");
    let err: ThresholdError = Detached::builder(Throttle::new(T))
        .shutdown_grace(Duration::MAX)
        .err()
        .unwrap();
    assert_eq!(err.what(), "shutdown grace");
    assert_eq!(
        err.to_string(),
        "shutdown grace of 18446744073709551615999999999 ns exceeds the largest accepted \
         shutdown grace, 4611686018427387904 ns (Throttle::MAX_THRESHOLD: 2^62 ns, about 146 \
         years)"
    );
}

#[test]
fn detached_accessors_and_debug() {
    let job = Detached::builder(Throttle::new(Duration::from_secs(60)))
        .leading_run(LeadingRun::Inline)
        .on_shutdown(Shutdown::CancelPending)
        .publishing(true)
        .spawn(|| ())
        .unwrap();
    assert_eq!(job.call(), Dispatch::Leading);
    assert!(job.last_run().is_some());
    assert!(!job.is_pending());
    assert_eq!(job.call(), Dispatch::Deferred);
    assert!(job.is_pending(), "a minute to go");
    let counting = Detached::builder(
        Throttle::builder(Duration::from_secs(60))
            .counting(true)
            .build()
            .unwrap(),
    )
    .leading_run(LeadingRun::Inline)
    .on_shutdown(Shutdown::CancelPending)
    .spawn(|| ())
    .unwrap();
    assert_eq!(counting.call(), Dispatch::Leading);
    assert_eq!(counting.call(), Dispatch::Deferred);
    assert_eq!(counting.call(), Dispatch::Coalesced);
    assert_eq!(counting.call(), Dispatch::Coalesced);
    let stats = counting.stats().unwrap();
    assert_eq!((stats.leading, stats.coalesced), (1, 2), "{stats:?}");
    assert_eq!(counting.take_skipped(), 2);
    assert_eq!(counting.take_skipped(), 0);
    assert_eq!(job.threshold(), Duration::from_secs(60));
    assert_eq!(job.stats(), None);
    assert_eq!(job.take_skipped(), 0);
    let text = format!("{job:?}");
    for field in [
        "leading: Inline",
        "shutdown: CancelPending",
        "publishing: true",
        "panics: 0",
    ] {
        assert!(text.contains(field), "{field} missing from {text}");
    }
    let builder = Detached::builder(Throttle::new(T)).on_panic(|_| {});
    assert!(format!("{builder:?}").contains("on_panic: true"));
}

#[test]
fn clocks_report_what_they_are() {
    assert!(ManualClock::new().auto_advances());
    assert!(!ManualClock::with_auto_advance(false).auto_advances());
    let far = ManualClock::new();
    far.advance(Duration::MAX);
    assert_eq!(far.now_nanos(), u64::MAX, "saturates, not truncates");
    let default = DefaultClock::new();
    assert_eq!(default.spin(), DefaultClock::DEFAULT_SPIN);
    let quick = default.with_spin(Duration::from_micros(3));
    assert_eq!(quick.spin(), Duration::from_micros(3));
    let earlier = DefaultClock::calibrate().now_nanos();
    // A wait shorter than the spin busy-waits a step; a longer one parks: either returns.
    quick.sleep(Duration::from_micros(1));
    quick.sleep(Duration::from_micros(3));
    quick.sleep(Duration::from_micros(500));
    assert!(default.now_nanos() > earlier);
    // The TSC on a machine with synced TSCs; the OS clock where a skew was detected (some
    // virtual machines): either is a working clock, which the lines above checked.
    assert!(matches!(
        DefaultClock::source(),
        ClockSource::Tsc | ClockSource::Os
    ));

    let coarse = CoarseClock::new(Duration::from_micros(200)).unwrap();
    assert_eq!(coarse.resolution(), Duration::from_micros(200));
    let first = coarse.now_nanos();
    // The upkeep thread refreshes it every 200 us, or as soon as a loaded machine lets it.
    let patience = std::time::Instant::now() + wait_for::patience();
    while coarse.now_nanos() == first {
        assert!(
            std::time::Instant::now() < patience,
            "out of patience: the upkeep thread had not refreshed the coarse clock"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        coarse.now_nanos() <= default.now_nanos(),
        "never ahead of the default clock"
    );
    assert!(format!("{coarse:?}").contains("resolution: 200µs"));
    let tiny = CoarseClock::new(Duration::ZERO).unwrap();
    assert_eq!(tiny.resolution(), Duration::from_micros(1), "at least 1 us");
}

#[test]
fn a_coarse_clock_refuses_a_resolution_it_could_not_keep_to() {
    let largest = CoarseClock::new(CoarseClock::MAX_RESOLUTION).unwrap();
    assert_eq!(largest.resolution(), Duration::from_secs(1));
    for (resolution, nanos) in [
        (
            CoarseClock::MAX_RESOLUTION + Duration::from_nanos(1),
            "1000000001",
        ),
        (Duration::MAX, "18446744073709551615999999999"),
    ] {
        let err = CoarseClock::new(resolution).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert_eq!(
            err.to_string(),
            format!(
                "CoarseClock resolution of {nanos} ns exceeds the largest accepted, \
                 1000000000 ns (CoarseClock::MAX_RESOLUTION: 1 s)"
            )
        );
    }
}

#[test]
fn outcome_accessors() {
    assert_eq!(Outcome::Now(1).ran(), Some(1));
    assert_eq!(Outcome::Deferred(2).ran(), Some(2));
    assert_eq!(Outcome::Covered(3).ran(), None);
    assert_eq!(Outcome::Covered(3).value(), Some(3));
    assert_eq!(Outcome::<u8>::Suppressed.value(), None);
    assert_eq!(Outcome::<u8>::Revoked(Revoked::Cancelled).ran(), None);
}

/// A clock that counts its readings.
#[derive(Clone, Default)]
struct CountingClock {
    inner: ManualClock,
    reads: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Clock for CountingClock {
    fn now_nanos(&self) -> u64 {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.now_nanos()
    }
}

impl CountingClock {
    fn reads(&self) -> u64 {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The cost the docs promise: a Coalesced answer reads no clock (one load of the word), unless
/// a lease asks whether the owner has overstayed.
#[test]
fn a_coalesced_call_reads_no_clock_unless_a_lease_is_set() {
    let clock = CountingClock::default();
    let throttle = Throttle::with_clock(T, clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    let deferral = throttle.admit();
    assert!(deferral.is_deferred());
    let before = clock.reads();
    for _ in 0..100 {
        assert!(throttle.admit().is_coalesced());
        assert!(throttle.admit_publishing().is_coalesced());
    }
    assert_eq!(clock.reads(), before, "a Coalesced answer read the clock");
    drop(deferral);

    let leased = Throttle::builder(T)
        .clock(clock.clone())
        .lease(T)
        .build()
        .unwrap();
    assert!(leased.admit().is_now());
    let deferral = leased.admit();
    assert!(deferral.is_deferred());
    let before = clock.reads();
    assert!(leased.admit().is_coalesced());
    assert!(
        clock.reads() > before,
        "with a lease, a Coalesced answer reads the clock"
    );
}

/// A clock that records which of its methods were called.
#[derive(Default)]
struct Recording {
    calls: std::sync::Mutex<Vec<&'static str>>,
}

impl atomic_throttle::Clock for Recording {
    fn now_nanos(&self) -> u64 {
        self.calls.lock().unwrap().push("now_nanos");
        7
    }
    fn wait_for(&self, _: atomic_throttle::Waiter<'_>, _: u64) -> atomic_throttle::Wait {
        self.calls.lock().unwrap().push("wait_for");
        atomic_throttle::Wait::Now
    }
    fn done_waiting(&self, _: atomic_throttle::Waiter<'_>) {
        self.calls.lock().unwrap().push("done_waiting");
    }
    fn sleep(&self, _: Duration) {
        self.calls.lock().unwrap().push("sleep");
    }
}

/// Every method of a clock seen through `&C` or `Arc<C>` is the clock's own.
fn uses_every_method(clock: impl atomic_throttle::Clock) {
    let waiter = atomic_throttle::Waiter::new(std::task::Waker::noop());
    assert_eq!(clock.now_nanos(), 7);
    assert_eq!(clock.wait_for(waiter, 1), atomic_throttle::Wait::Now);
    clock.done_waiting(waiter);
    clock.sleep(Duration::from_secs(3600));
}

#[test]
fn references_to_a_clock_forward_every_method() {
    let all = ["now_nanos", "wait_for", "done_waiting", "sleep"];
    let clock = Recording::default();
    uses_every_method(&clock);
    assert_eq!(*clock.calls.lock().unwrap(), all);
    let clock = Arc::new(Recording::default());
    uses_every_method(clock.clone());
    assert_eq!(*clock.calls.lock().unwrap(), all);
}

/// A clock that only reads time: the trait's default wait sleeps for real.
struct ReadOnly;

impl atomic_throttle::Clock for ReadOnly {
    fn now_nanos(&self) -> u64 {
        0
    }
}

#[test]
fn sleeps_block_for_about_their_duration() {
    // A sleep may return early (a spurious wake-up), so one of three tries must block.
    let blocks = |sleep: &dyn Fn()| {
        (0..3).any(|_| {
            let started = std::time::Instant::now();
            sleep();
            started.elapsed() >= Duration::from_millis(5)
        })
    };
    assert!(blocks(&|| ReadOnly.sleep(Duration::from_millis(20))));
    // The default clock parks until `spin` before the end, then busy-waits in steps.
    let clock = DefaultClock::new().with_spin(Duration::from_micros(100));
    assert!(blocks(&|| clock.sleep(Duration::from_millis(20))));
    // Inside the spin it takes one short step and returns, for the waiter to look again.
    let started = std::time::Instant::now();
    clock.sleep(Duration::from_micros(100));
    assert!(started.elapsed() < Duration::from_millis(500));
}

/// A clock of the test's own: each wait moves it on by `step` and answers `answer`, and, for
/// `UntilWoken`, wakes the waiter itself from another thread; its `sleep` must not be used.
struct Stepping {
    now: std::sync::atomic::AtomicU64,
    step: u64,
    answer: Wait,
}

impl Clock for Stepping {
    fn now_nanos(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn wait_for(&self, waiter: Waiter<'_>, _deadline: u64) -> Wait {
        self.now
            .fetch_add(self.step, std::sync::atomic::Ordering::SeqCst);
        if self.answer == Wait::UntilWoken {
            let waker = waiter.waker().clone();
            std::thread::spawn(move || waker.wake());
        }
        self.answer
    }
    fn sleep(&self, _: Duration) {
        panic!("asked to sleep after answering {:?}", self.answer)
    }
}

#[test]
fn a_clock_that_answers_now_yield_or_until_woken_is_looked_at_again_without_a_sleep() {
    for answer in [Wait::Now, Wait::Yield, Wait::UntilWoken] {
        let clock = Stepping {
            now: std::sync::atomic::AtomicU64::new(0),
            step: 1_000_000,
            answer,
        };
        let throttle = Throttle::with_clock(T, &clock).unwrap();
        assert!(throttle.admit().is_now());
        let Admission::Deferred(deferral) = throttle.admit() else {
            panic!("expected Deferred")
        };
        assert_eq!(
            deferral.run(|| clock.now_nanos()),
            Ok(10_000_000),
            "{answer:?}"
        );
    }
}
