//! Chaos: everything at once, for a bounded time, from a printed seed.
//!
//! Eight threads hammer six throttles (thresholds of 0, 1 ns, 1023 ns, 1024 ns, 1 ms and
//! 3 ms; the last three with a lease) and a `Detached` beside them, on one clock that jumps
//! forward, steps back and freezes. Owners run, `try_run`, give up, leak their deferral
//! (`mem::forget`, on throttles with a lease), panic in the work, panic with a payload whose
//! own `Drop` panics, and wait asynchronously only to be cancelled at random; callers cancel
//! deferrals from outside. Checked throughout, on the exact stamps:
//!
//! - G1: no two runs of a throttle stamped less than its threshold apart;
//! - G2: once every owner is gone and the leases have passed, nothing is pending (a leaked
//!   deferral is taken over by the next admission, never Coalesced behind);
//! - G3: every call the `Detached` answered Coalesced is followed by a run that started after
//!   it (its runs are the timer thread's, which no caller can give up);
//! - no panic escapes the crate but the work's own.
//!
//! `CHAOS_SEED` replays a seed (printed at the start, and in every failure); `CHAOS_SECONDS`
//! sets the length (10 s unless set). `.ci/test` also runs it against two deliberately broken
//! builds of the crate (`--cfg atomic_throttle_mutants`, `ATOMIC_THROTTLE_MUTANT`) and expects
//! it to catch both.

#[path = "support/expected_panics.rs"]
mod expected_panics;

use atomic_throttle::{
    Admission, Clock, DefaultClock, Deferral, Detached, Dispatch, LeadingRun, NotRun, Throttle,
};
use expected_panics::{Expected, ExplodesOnDrop};
use std::cell::Cell;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

const THREADS: usize = 8;
const LEASE: Duration = Duration::from_millis(4);

thread_local! {
    /// This thread's last reading of the chaos clock: read inside a run's work, it is the
    /// reading the throttle stamped the run with.
    static LAST_READING: Cell<u64> = const { Cell::new(0) };
}

/// The default clock, moved about by the chaos: an offset that jumps forward and steps back,
/// and a value it freezes at.
#[derive(Clone)]
struct ChaosClock {
    offset: Arc<AtomicI64>,
    /// Zero, or the reading the clock is frozen at.
    frozen: Arc<AtomicU64>,
}

impl ChaosClock {
    fn new() -> Self {
        Self {
            offset: Arc::new(AtomicI64::new(1_000_000_000)),
            frozen: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl Clock for ChaosClock {
    fn now_nanos(&self) -> u64 {
        let frozen = self.frozen.load(SeqCst);
        let now = if frozen != 0 {
            frozen
        } else {
            let real = DefaultClock::new().now_nanos() as i64;
            (real + self.offset.load(SeqCst)).max(0) as u64
        };
        LAST_READING.with(|last| last.set(now));
        now
    }
}

/// The stamp of a run, read inside its work: the throttle's reading, rounded up to the whole
/// microsecond as stamps are. (A run with a threshold over zero and no flush is only ever due
/// at a reading past the last stamp, so the stamp is that reading's.)
fn stamp_of_this_run() -> u64 {
    LAST_READING.with(Cell::get).div_ceil(1000) * 1000
}

/// xorshift64*: the chaos, replayable from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A throttle under test and the stamps of its runs, checked for spacing as they come.
struct Subject {
    throttle: Throttle<ChaosClock>,
    threshold: u64,
    leased: bool,
    /// The latest stamps, for G1 against each new one.
    stamps: Mutex<BTreeSet<u64>>,
    runs: AtomicU64,
}

/// What went wrong first, with the seed.
struct Verdict {
    seed: u64,
    failed: AtomicBool,
    first: Mutex<Option<String>>,
}

impl Verdict {
    fn fail(&self, what: String) {
        let mut first = self.first.lock().unwrap();
        if first.is_none() {
            *first = Some(format!("seed {}: {what}", self.seed));
        }
        self.failed.store(true, SeqCst);
    }
}

impl Subject {
    /// Records a run's stamp; G1 against its neighbours.
    fn ran(&self, index: usize, verdict: &Verdict) {
        if self.threshold == 0 {
            return; // any two runs are far enough apart
        }
        let stamp = stamp_of_this_run();
        let mut stamps = self.stamps.lock().unwrap();
        let before = stamps.range(..=stamp).next_back().copied();
        let after = stamps.range(stamp..).next().copied();
        for neighbour in before.into_iter().chain(after) {
            let gap = stamp.abs_diff(neighbour);
            if gap < self.threshold {
                verdict.fail(format!(
                    "G1: throttle {index} (threshold {} ns) ran at {neighbour} and {stamp} ns, \
                     {gap} ns apart",
                    self.threshold
                ));
            }
        }
        stamps.insert(stamp);
        // Stamps arrive nearly in order: the oldest are no one's neighbours any more.
        if stamps.len() > 4096 {
            stamps.pop_first();
        }
        self.runs.fetch_add(1, SeqCst);
    }
}

/// A timer that never fires: an async wait on it only ever completes by finding its deadline
/// passed when polled.
struct Never;

impl Future for Never {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
        Poll::Pending
    }
}

/// What one owner does with its deferral.
fn own(
    deferral: Deferral<&Throttle<ChaosClock>>,
    subject: &Subject,
    index: usize,
    verdict: &Verdict,
    rng: &mut Rng,
) {
    let record = || subject.ran(index, verdict);
    match rng.below(8) {
        0 => {
            let _ = deferral.run(record);
        }
        1 => {
            // Its own event loop: try a few times, then give up.
            let mut deferral = deferral;
            for _ in 0..20 {
                match deferral.try_run(record) {
                    Ok(()) | Err(NotRun::Revoked(_)) => return,
                    Err(NotRun::NotDue(again)) => deferral = again,
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        2 => drop(deferral),
        3 if subject.leased => std::mem::forget(deferral), // never comes back
        3 | 4 => {
            let _ = deferral.run(|| {
                record();
                std::panic::panic_any(Expected("the work failed"));
            });
        }
        5 => {
            let _ = deferral.run(|| {
                record();
                std::panic::panic_any(ExplodesOnDrop);
            });
        }
        _ => {
            // An async wait polled a few times, then cancelled if it has not finished.
            let mut wait = std::pin::pin!(deferral.wait_with(|_| Never));
            let mut cx = Context::from_waker(Waker::noop());
            for _ in 0..rng.below(4) + 1 {
                if let Poll::Ready(stamped) = wait.as_mut().poll(&mut cx) {
                    if stamped.is_ok() {
                        record();
                    }
                    return;
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            // Dropped here: cancelled mid-wait.
        }
    }
}

/// Drops a caught panic's payload, whose own drop may panic.
fn dispose(payload: Box<dyn std::any::Any + Send>) {
    if let Err(again) =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(payload)))
    {
        std::mem::forget(again);
    }
}

#[test]
fn everything_at_once_keeps_every_guarantee() {
    expected_panics::quiet();
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |since| since.as_nanos() as u64);
            nanos | 1
        });
    let seconds: f64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|seconds| seconds.parse().ok())
        .unwrap_or(10.0);
    eprintln!("chaos: seed {seed} (CHAOS_SEED={seed} replays it), {seconds} s");
    let verdict = Arc::new(Verdict {
        seed,
        failed: AtomicBool::new(false),
        first: Mutex::new(None),
    });

    let clock = ChaosClock::new();
    let subjects: Arc<Vec<Subject>> = Arc::new(
        [
            (0u64, false),
            (1, false),
            (1_023, false),
            (1_024, true),
            (1_000_000, true),
            (3_000_000, true),
        ]
        .into_iter()
        .map(|(threshold, leased)| {
            let mut builder =
                Throttle::builder(Duration::from_nanos(threshold)).clock(clock.clone());
            if leased {
                builder = builder.lease(LEASE);
            }
            Subject {
                throttle: builder.build().unwrap(),
                threshold,
                leased,
                stamps: Mutex::default(),
                runs: AtomicU64::new(0),
            }
        })
        .collect(),
    );

    // The Detached beside them: G3 on its runs, by a sequence that follows real time.
    let sequence = Arc::new(AtomicU64::new(0));
    let detached_runs = Arc::new(Mutex::new(Vec::new()));
    let detached = Arc::new(
        Detached::builder(Throttle::with_clock(Duration::from_millis(1), clock.clone()).unwrap())
            .leading_run(LeadingRun::Inline)
            .spawn({
                let (sequence, runs) = (sequence.clone(), detached_runs.clone());
                move || runs.lock().unwrap().push(sequence.fetch_add(1, SeqCst))
            })
            .unwrap(),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let quiet = Instant::now() + Duration::from_secs_f64(seconds * 0.8);
    let barrier = Arc::new(Barrier::new(THREADS + 2)); // the workers, the clock's director, and this thread

    // The clock's own chaos.
    let director = {
        let (clock, stop, barrier) = (clock.clone(), stop.clone(), barrier.clone());
        let mut rng = Rng(seed ^ 0x9E37_79B9_7F4A_7C15);
        std::thread::spawn(move || {
            barrier.wait();
            while !stop.load(SeqCst) {
                match rng.below(10) {
                    0 => {
                        clock.offset.fetch_add(rng.below(20_000_000) as i64, SeqCst);
                    }
                    1 | 2 => {
                        clock.offset.fetch_sub(rng.below(3_000_000) as i64, SeqCst);
                    }
                    3 => {
                        let now = clock.now_nanos().max(1);
                        clock.frozen.store(now, SeqCst);
                        std::thread::sleep(Duration::from_micros(rng.below(2_000)));
                        clock.frozen.store(0, SeqCst);
                    }
                    _ => {}
                }
                std::thread::sleep(Duration::from_micros(500 + rng.below(2_000)));
            }
        })
    };

    let workers: Vec<_> = (0..THREADS)
        .map(|id| {
            let (subjects, detached, sequence, verdict, stop, barrier) = (
                subjects.clone(),
                detached.clone(),
                sequence.clone(),
                verdict.clone(),
                stop.clone(),
                barrier.clone(),
            );
            let mut rng = Rng(seed.wrapping_mul(id as u64 + 1) | 1);
            std::thread::spawn(move || {
                // The latest call to the Detached that this thread saw Coalesced.
                let mut last_coalesced = None;
                barrier.wait();
                while !stop.load(SeqCst) {
                    let choice = rng.below(subjects.len() as u64 + 2) as usize;
                    let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        if choice >= subjects.len() {
                            // The Detached.
                            let mark = sequence.fetch_add(1, SeqCst);
                            if detached.call() == Dispatch::Coalesced {
                                last_coalesced = Some(mark);
                            }
                            return;
                        }
                        let subject = &subjects[choice];
                        // Cancels, but not in the last fifth: a deferral stranded then must
                        // show at the end (a cancel would rescue it).
                        if rng.below(50) == 0 && Instant::now() < quiet {
                            subject.throttle.cancel();
                            return;
                        }
                        match subject.throttle.admit() {
                            Admission::Now => subject.ran(choice, &verdict),
                            Admission::Deferred(deferral) => {
                                own(deferral, subject, choice, &verdict, &mut rng)
                            }
                            Admission::Coalesced => {}
                            Admission::Suppressed { .. } => {
                                verdict.fail("Suppressed by a leading-and-trailing throttle".into())
                            }
                        }
                    }));
                    if let Err(payload) = step {
                        let ours = payload.is::<Expected>() || payload.is::<ExplodesOnDrop>();
                        if !ours {
                            let message = payload
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| payload.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            verdict.fail(format!("a panic escaped the crate: {message}"));
                        }
                        dispose(payload);
                    }
                    if verdict.failed.load(SeqCst) {
                        break;
                    }
                }
                last_coalesced
            })
        })
        .collect();

    barrier.wait();
    while Instant::now() < end && !verdict.failed.load(SeqCst) {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, SeqCst);
    director.join().unwrap();
    let last_coalesced = workers
        .into_iter()
        .filter_map(|worker| worker.join().unwrap())
        .max();

    // G2: every owner is gone. Past the leases, a leaked deferral is taken over by the next
    // admission; on a throttle without a lease, nothing may be pending at all.
    clock.frozen.store(0, SeqCst);
    clock
        .offset
        .fetch_add((LEASE * 4).as_nanos() as i64, SeqCst);
    for (index, subject) in subjects.iter().enumerate() {
        if subject.leased {
            let answer = subject.throttle.admit();
            if answer.is_coalesced() {
                verdict.fail(format!(
                    "G2: throttle {index}'s leaked deferral was never taken over"
                ));
            }
            if answer.is_now() {
                subject.ran(index, &verdict);
            }
        }
        if subject.throttle.is_pending() {
            verdict.fail(format!(
                "G2: throttle {index} has a deferral pending with every owner gone"
            ));
        }
    }

    // G3: the Detached runs its pending deferral on shutdown; every Coalesced call is
    // followed by a run that started after it.
    let detached = Arc::into_inner(detached).expect("the workers are gone");
    drop(detached);
    let runs = detached_runs.lock().unwrap().clone();
    let last_run = runs.iter().max().copied();
    // Every Coalesced call is followed by a later run if the latest one is.
    if let (Some(mark), false) = (last_coalesced, last_run > last_coalesced) {
        verdict.fail(format!(
            "G3: a call to the Detached at {mark} was coalesced into nothing"
        ));
    }

    let total_runs: u64 = subjects.iter().map(|s| s.runs.load(SeqCst)).sum();
    eprintln!(
        "chaos: {total_runs} stamped runs over {} throttles, {} Detached runs",
        subjects.len(),
        runs.len(),
    );
    if let Some(failure) = verdict.first.lock().unwrap().take() {
        panic!("{failure}");
    }
    assert!(
        total_runs > 100,
        "seed {seed}: only {total_runs} runs: the chaos did little"
    );
    assert!(
        last_coalesced.is_some(),
        "seed {seed}: the Detached never coalesced a call"
    );
}
