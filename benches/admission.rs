//! The cost targets, with every baseline in the same group of the same run.
//!
//! ```text
//! cargo bench --bench admission                 # everything (about 8 minutes on 2 cores)
//! cargo bench --bench admission -- contended    # one group
//! python3 benches/report.py                     # medians, ratios and the pictures
//! ```
//!
//! Groups: `floor` (a bare load, an uncontended CAS, the clocks), `coalesced` (a saturated
//! throttle on one thread: plain, publishing, counting, with a lease on the default and the
//! coarse clock; governor, the mutex port of the fix proposed for Neutron, a port of upstream
//! Neutron's try-lock), `contended/N` (N threads on one saturated throttle, cost per call),
//! `now_path` (a clock read, the microsecond stamp and a CAS), `leading_only` (a suppressed
//! call reads the clock: on the default and the coarse clock, against governor and Go's
//! `rate.Sometimes`, at 1 and 2 threads), `latest` (offering a value), and `mix` (windows
//! turning over while two threads call). After criterion's report: the deferred run's
//! lateness, the first reading's calibration, and sizes.
//!
//! # The Coalesced path in instructions
//!
//! `coalesced_admit` below is kept out of line so that the compiler's code for it can be read
//! in the bench binary (x86-64, release):
//!
//! ```text
//! cargo bench --bench admission --no-run
//! objdump -d --no-show-raw-insn -M intel target/release/deps/admission-<hash> \
//!     | awk '/<coalesced_admit>:/,/^$/'
//! ```
//!
//! On a throttle without a lease or counters, a Coalesced answer is these instructions (the
//! rest of the function, after the `jns`, is the Now / Deferred path and the counting path):
//!
//! ```text
//! mov  rsi, QWORD PTR [rdi+0x30]            ; the state word: the one atomic load (Acquire
//! test rsi, rsi                             ;   is a plain load on x86); PENDING is bit 63
//! jns  <not pending: decide and install>
//! cmp  QWORD PTR [rbx+0x18], -1             ; no lease set: read-only setting, same line
//! je   <coalesced>
//! ...
//! <coalesced>:
//! mov  rbx, QWORD PTR [rbx+0x20]            ; no counters: read-only setting, same line
//! mov  al, 0x1
//! test rbx, rbx
//! je   <return>                             ; Coalesced: no clock read, no write
//! ```
//!
//! So the word is loaded once and never written; the two other loads read the throttle's
//! settings, which share the word's cache line and never change, so they stay in every core's
//! cache.

#[path = "support/go_sometimes.rs"]
mod go_sometimes;
#[path = "support/neutron_mutex.rs"]
mod neutron_mutex;
#[path = "support/neutron_trylock.rs"]
mod neutron_trylock;

use atomic_throttle::{
    Admission, Clock, CoarseClock, DefaultClock, Detached, Dispatch, Latest, LeadingRun, Mode,
    Throttle,
};
use criterion::{criterion_group, BenchmarkId, Criterion};
use go_sometimes::GoSometimes;
use governor::{Quota, RateLimiter};
use neutron_mutex::{MutexAnswer, NeutronMutex};
use neutron_trylock::{NeutronTryLock, TryLockAnswer};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const SATURATED: Duration = Duration::from_secs(3600);

/// The process's coarse clock, refreshed every 100 us.
fn coarse() -> CoarseClock {
    static COARSE: std::sync::OnceLock<CoarseClock> = std::sync::OnceLock::new();
    COARSE
        .get_or_init(|| CoarseClock::new(Duration::from_micros(100)).unwrap())
        .clone()
}

/// A throttle with a deferral pending for the whole run: every admission is Coalesced.
fn saturated<C: Clock + 'static>(throttle: Throttle<C>) -> &'static Throttle<C> {
    let throttle: &'static Throttle<C> = Box::leak(Box::new(throttle));
    assert!(throttle.admit().is_now());
    let Admission::Deferred(deferral) = throttle.admit() else {
        unreachable!()
    };
    std::mem::forget(deferral); // pending for good: the saturated state under test
    assert!(throttle.admit().is_coalesced());
    throttle
}

/// The saturated throttles under test: plain, counting, and with a lease (on the default and
/// the coarse clock; the lease never expires within a run).
struct Saturated {
    plain: &'static Throttle,
    counting: &'static Throttle,
    leased: &'static Throttle,
    leased_coarse: &'static Throttle<CoarseClock>,
}

fn saturated_throttles() -> Saturated {
    let builder = || Throttle::builder(SATURATED);
    Saturated {
        plain: saturated(builder().build().unwrap()),
        counting: saturated(builder().counting(true).build().unwrap()),
        leased: saturated(builder().lease(SATURATED).build().unwrap()),
        leased_coarse: saturated(builder().clock(coarse()).lease(SATURATED).build().unwrap()),
    }
}

/// A governor limiter that rejects every call.
fn saturated_governor() -> governor::DefaultDirectRateLimiter {
    let limiter = RateLimiter::direct(Quota::with_period(SATURATED).unwrap());
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_err());
    limiter
}

/// The mutex port with its deferred flag set: every call is Coalesced.
fn saturated_mutex() -> NeutronMutex<DefaultClock> {
    let mutex = NeutronMutex::new(SATURATED, DefaultClock::new());
    assert_eq!(mutex.decide(), MutexAnswer::Now);
    assert_eq!(mutex.decide(), MutexAnswer::Deferred);
    assert_eq!(mutex.decide(), MutexAnswer::Coalesced);
    mutex
}

/// The try-lock port with its lock held (a deferred caller sleeping out the window): every
/// call is Coalesced.
fn saturated_trylock() -> NeutronTryLock<DefaultClock> {
    let trylock = NeutronTryLock::new(SATURATED, DefaultClock::new());
    assert_eq!(trylock.decide(), TryLockAnswer::Now);
    assert_eq!(trylock.decide(), TryLockAnswer::Deferred); // holds the lock from here
    assert_eq!(trylock.decide(), TryLockAnswer::Coalesced);
    trylock
}

fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor");
    let word = AtomicU64::new(0);
    group.bench_function("atomic_load_acquire", |b| {
        b.iter(|| black_box(&word).load(Ordering::Acquire))
    });
    group.bench_function("atomic_cas_uncontended", |b| {
        let mut current = 0;
        b.iter(|| {
            let next = current + 1;
            let _ = black_box(&word).compare_exchange(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            current = next;
        })
    });
    let clock = quanta::Clock::new();
    group.bench_function("quanta_now", |b| b.iter(|| black_box(&clock).now()));
    group.bench_function("quanta_raw", |b| b.iter(|| black_box(&clock).raw()));
    group.bench_function("quanta_recent", |b| b.iter(|| black_box(&clock).recent()));
    let default = DefaultClock::new();
    group.bench_function("default_clock_now_nanos", |b| {
        b.iter(|| black_box(&default).now_nanos())
    });
    let coarse = coarse();
    group.bench_function("coarse_clock_now_nanos", |b| {
        b.iter(|| black_box(&coarse).now_nanos())
    });
    // The stamp's rounding up to a microsecond: a division by a constant, a multiply.
    group.bench_function("microsecond_round_up", |b| {
        let mut nanos = 123_456_789u64;
        b.iter(|| {
            nanos += 7;
            black_box(black_box(nanos).div_ceil(1000) * 1000)
        })
    });
    group.finish();
}

/// The Coalesced path as the compiler emits it, kept out of line so that it can be read in the
/// bench binary (see the module docs, "The Coalesced path in instructions").
#[inline(never)]
#[no_mangle]
pub fn coalesced_admit(throttle: &Throttle) -> bool {
    throttle.admit().is_coalesced()
}

fn coalesced(c: &mut Criterion) {
    let mut group = c.benchmark_group("coalesced");
    let word = AtomicU64::new(1 << 63);
    group.bench_function("atomic_load_acquire", |b| {
        b.iter(|| black_box(&word).load(Ordering::Acquire) >> 63 != 0)
    });
    let throttles = saturated_throttles();
    group.bench_function("throttle_admit", |b| {
        b.iter(|| coalesced_admit(black_box(throttles.plain)))
    });
    group.bench_function("throttle_admit_publishing", |b| {
        b.iter(|| black_box(throttles.plain).admit_publishing().is_coalesced())
    });
    group.bench_function("throttle_admit_counting", |b| {
        b.iter(|| black_box(throttles.counting).admit().is_coalesced())
    });
    group.bench_function("throttle_admit_leased", |b| {
        b.iter(|| black_box(throttles.leased).admit().is_coalesced())
    });
    group.bench_function("throttle_admit_leased_coarse", |b| {
        b.iter(|| black_box(throttles.leased_coarse).admit().is_coalesced())
    });
    let limiter = saturated_governor();
    group.bench_function("governor_check", |b| {
        b.iter(|| black_box(&limiter).check().is_err())
    });
    let mutex = saturated_mutex();
    group.bench_function("mutex_port", |b| {
        b.iter(|| black_box(&mutex).decide() == MutexAnswer::Coalesced)
    });
    let trylock = saturated_trylock();
    group.bench_function("neutron_trylock", |b| {
        b.iter(|| black_box(&trylock).decide() == TryLockAnswer::Coalesced)
    });
    group.finish();
}

fn now_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("now_path");
    let clock = DefaultClock::new();
    let word = AtomicU64::new(0);
    group.bench_function("clock_read_plus_cas", |b| {
        b.iter(|| {
            let now = black_box(&clock).now_nanos();
            let seen = black_box(&word).load(Ordering::Acquire);
            black_box(&word).compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
        })
    });
    // A zero threshold answers every admission Now: one clock read, the stamp rounded up to a
    // microsecond, and one CAS.
    let open = Throttle::new(Duration::ZERO);
    group.bench_function("throttle_admit", |b| {
        b.iter(|| black_box(&open).admit().is_now())
    });
    let limiter = RateLimiter::direct(Quota::per_second(NonZeroU32::MAX));
    group.bench_function("governor_check", |b| {
        b.iter(|| black_box(&limiter).check().is_ok())
    });
    let mutex = NeutronMutex::new(Duration::ZERO, DefaultClock::new());
    group.bench_function("mutex_port", |b| {
        b.iter(|| black_box(&mutex).decide() == MutexAnswer::Now)
    });
    let trylock = NeutronTryLock::new(Duration::ZERO, DefaultClock::new());
    group.bench_function("neutron_trylock", |b| {
        b.iter(|| black_box(&trylock).decide() == TryLockAnswer::Now)
    });
    group.finish();
}

/// Cost per call with `threads` threads each making `iters` calls at once, behind a barrier:
/// the slowest thread's time divided by `iters`. Generic, so that the call inlines into the
/// loop as it would in a user's code.
fn per_call_contended<F: Fn() + Sync>(threads: usize, iters: u64, call: F) -> Duration {
    let barrier = Barrier::new(threads);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for _ in 0..iters {
                        call();
                    }
                    start.elapsed()
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .max()
            .unwrap()
    })
}

/// The thread counts of the contended groups: 1, 2 and 4 unless `BENCH_MAX_THREADS` says more.
fn thread_counts() -> Vec<usize> {
    let max_threads: usize = std::env::var("BENCH_MAX_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4);
    [1, 2, 4, 8, 16]
        .into_iter()
        .filter(|&n| n <= max_threads)
        .collect()
}

fn contended(c: &mut Criterion) {
    let throttles = saturated_throttles();
    let limiter = saturated_governor();
    let mutex = saturated_mutex();
    let trylock = saturated_trylock();
    let word = AtomicU64::new(1 << 63);
    for threads in thread_counts() {
        let mut group = c.benchmark_group(format!("contended_{threads}"));
        macro_rules! bench {
            ($name:literal, $call:expr) => {
                group.bench_function(BenchmarkId::from_parameter($name), |b| {
                    b.iter_custom(|iters| per_call_contended(threads, iters, $call))
                });
            };
        }
        bench!("atomic_load_acquire", || {
            black_box(black_box(&word).load(Ordering::Acquire) >> 63 != 0);
        });
        bench!("throttle_admit", || {
            black_box(black_box(throttles.plain).admit().is_coalesced());
        });
        bench!("throttle_admit_publishing", || {
            black_box(black_box(throttles.plain).admit_publishing().is_coalesced());
        });
        bench!("throttle_admit_counting", || {
            black_box(black_box(throttles.counting).admit().is_coalesced());
        });
        bench!("throttle_admit_leased", || {
            black_box(black_box(throttles.leased).admit().is_coalesced());
        });
        bench!("throttle_admit_leased_coarse", || {
            black_box(black_box(throttles.leased_coarse).admit().is_coalesced());
        });
        bench!("governor_check", || {
            black_box(black_box(&limiter).check().is_err());
        });
        bench!("mutex_port", || {
            black_box(black_box(&mutex).decide());
        });
        bench!("neutron_trylock", || {
            black_box(black_box(&trylock).decide());
        });
        group.finish();
    }
}

/// Leading-only throttles answer Suppressed inside the window, and read the clock on every
/// call to know whether it has ended; a coarse clock makes that read a load.
fn leading_only(c: &mut Criterion) {
    let suppressing = |clock| {
        let throttle: &'static Throttle<_> = Box::leak(Box::new(
            Throttle::builder(SATURATED)
                .clock(clock)
                .mode(Mode::LeadingOnly)
                .build()
                .unwrap(),
        ));
        assert!(throttle.admit().is_now());
        assert!(throttle.admit().is_suppressed());
        throttle
    };
    let on_default = suppressing(DefaultClock::new());
    let on_coarse = Box::leak(Box::new(
        Throttle::builder(SATURATED)
            .clock(coarse())
            .mode(Mode::LeadingOnly)
            .build()
            .unwrap(),
    ));
    assert!(on_coarse.admit().is_now());
    let limiter = saturated_governor();
    let sometimes = GoSometimes::new(SATURATED, DefaultClock::new());
    assert!(sometimes.allow());
    for threads in [1, 2] {
        let mut group = c.benchmark_group(format!("leading_only_{threads}"));
        macro_rules! bench {
            ($name:literal, $call:expr) => {
                group.bench_function(BenchmarkId::from_parameter($name), |b| {
                    b.iter_custom(|iters| per_call_contended(threads, iters, $call))
                });
            };
        }
        bench!("throttle_default_clock", || {
            black_box(black_box(&on_default).admit().is_suppressed());
        });
        bench!("throttle_coarse_clock", || {
            black_box(black_box(&*on_coarse).admit().is_suppressed());
        });
        bench!("governor_check", || {
            black_box(black_box(&limiter).check().is_err());
        });
        bench!("go_sometimes", || {
            black_box(black_box(&sometimes).allow());
        });
        group.finish();
    }
}

/// Offering a value to a `Latest` whose deferral is pending (a lock, a replace, a publishing
/// admission), against a plain publishing admission.
fn latest(c: &mut Criterion) {
    let mut group = c.benchmark_group("latest");
    let latest = Latest::new(SATURATED, |value: u64| value);
    assert!(latest.call(0).ran().is_some());
    let Admission::Deferred(deferral) = latest.throttle().admit() else {
        unreachable!()
    };
    std::mem::forget(deferral);
    let throttles = saturated_throttles();
    group.bench_function("throttle_admit_publishing", |b| {
        b.iter(|| black_box(throttles.plain).admit_publishing().is_coalesced())
    });
    group.bench_function("latest_call", |b| {
        let mut value = 0;
        b.iter(|| {
            value += 1;
            black_box(&latest).call(value)
        })
    });
    group.finish();
}

/// `threads` threads make `iters` calls between them through `call`, which returns how long
/// the call spent as a deferral's owner, waiting for the deadline and running the work, or
/// `None`. Calls are claimed in batches from a shared budget, so that every thread calls until
/// the end. Returns the threads' time for `iters` calls, the owners' waits excluded. Every
/// sample makes at least 2^20 calls, many windows' worth, so that the window in progress when
/// the budget runs out does not weigh on the result.
fn caller_cost<F: Fn() -> Option<Duration> + Sync>(
    threads: usize,
    iters: u64,
    call: F,
) -> Duration {
    const BATCH: u64 = 1024;
    let budget = AtomicU64::new(iters.max(1 << 20).div_ceil(BATCH));
    let barrier = Barrier::new(threads);
    let (busy, calls) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    let (mut waited, mut calls) = (Duration::ZERO, 0);
                    let claim = |left: u64| left.checked_sub(1);
                    while budget
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, claim)
                        .is_ok()
                    {
                        for _ in 0..BATCH {
                            waited += call().unwrap_or_default();
                        }
                        calls += BATCH;
                    }
                    (start.elapsed().saturating_sub(waited), calls)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap())
            .fold((Duration::ZERO, 0), |(t, n), (dt, dn)| (t + dt, n + dn))
    });
    busy.mul_f64(iters as f64 / calls.max(1) as f64)
}

/// A realistic mix: two threads call continuously while windows of 50 us turn over, so Now,
/// Deferred and Coalesced answers all occur, and each deferral's owner waits for its deadline
/// and runs the work. Cost per call, all threads' time together, the owners' waits excluded.
fn mix(c: &mut Criterion) {
    const THRESHOLD: Duration = Duration::from_micros(50);
    let mut group = c.benchmark_group("mix");
    let threads = 2;
    let runs = AtomicU64::new(0);
    let work = || {
        runs.fetch_add(1, Ordering::Relaxed);
    };
    let throttle = Throttle::new(THRESHOLD);
    group.bench_function("throttle", |b| {
        b.iter_custom(|iters| {
            caller_cost(threads, iters, || match throttle.admit() {
                Admission::Now => {
                    work();
                    None
                }
                Admission::Deferred(deferral) => {
                    let start = Instant::now();
                    let _ = deferral.run(work);
                    Some(start.elapsed())
                }
                Admission::Coalesced | Admission::Suppressed { .. } => None,
            })
        })
    });
    let mutex = NeutronMutex::new(THRESHOLD, DefaultClock::new());
    group.bench_function("mutex_port", |b| {
        b.iter_custom(|iters| {
            caller_cost(threads, iters, || match mutex.decide() {
                MutexAnswer::Now => {
                    work();
                    None
                }
                MutexAnswer::Deferred => {
                    let start = Instant::now();
                    mutex.finish_deferred();
                    work();
                    Some(start.elapsed())
                }
                MutexAnswer::Coalesced => None,
            })
        })
    });
    let trylock = NeutronTryLock::new(THRESHOLD, DefaultClock::new());
    group.bench_function("neutron_trylock", |b| {
        b.iter_custom(|iters| {
            caller_cost(threads, iters, || match trylock.decide() {
                TryLockAnswer::Now => {
                    work();
                    None
                }
                TryLockAnswer::Deferred => {
                    let start = Instant::now();
                    trylock.finish();
                    work();
                    Some(start.elapsed())
                }
                TryLockAnswer::Coalesced => None,
            })
        })
    });
    group.finish();
}

/// How long after its deadline `Deferral::run` starts the work, for several spin settings.
fn lateness() {
    const THRESHOLD: Duration = Duration::from_millis(1);
    const RUNS: usize = 300;
    println!(
        "\nlateness of Deferral::run after its deadline ({RUNS} runs, threshold {THRESHOLD:?})"
    );
    println!("  {:<12} {:>10} {:>10} {:>10}", "spin", "p50", "p99", "max");
    for spin in [
        Duration::ZERO,
        Duration::from_micros(20),
        Duration::from_micros(100),
    ] {
        let clock = DefaultClock::new().with_spin(spin);
        let throttle = Throttle::with_clock(THRESHOLD, clock).unwrap();
        let mut late = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let _ = throttle.admit();
            let Admission::Deferred(deferral) = throttle.admit() else {
                continue;
            };
            let deadline = deferral.deadline();
            let started = deferral.run(|| clock.now_nanos()).unwrap();
            late.push(started.saturating_sub(deadline));
        }
        print_lateness(spin, late, "");
    }
    detached_lateness(THRESHOLD, RUNS);
}

/// The same for a `Detached` throttle's timer thread: how long after the window ends (a
/// threshold after the leading run's start) the deferred run starts.
fn detached_lateness(threshold: Duration, runs: usize) {
    let clock = DefaultClock::new();
    let starts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let job = Detached::builder(Throttle::new(threshold))
        .leading_run(LeadingRun::Inline)
        .spawn({
            let starts = starts.clone();
            move || starts.lock().unwrap().push(clock.now_nanos())
        })
        .unwrap();
    let mut late = Vec::with_capacity(runs);
    for _ in 0..runs {
        std::thread::sleep(threshold * 2); // let the last window end
        starts.lock().unwrap().clear();
        assert_eq!(job.call(), Dispatch::Leading);
        assert_eq!(job.call(), Dispatch::Deferred);
        while starts.lock().unwrap().len() < 2 {
            std::thread::yield_now();
        }
        let starts = starts.lock().unwrap();
        let deadline = starts[0] + threshold.as_nanos() as u64;
        late.push(starts[1].saturating_sub(deadline));
    }
    print_lateness(
        DefaultClock::DEFAULT_SPIN,
        late,
        "   (Detached timer thread, default spin)",
    );
}

/// One row of the lateness table: the spin, then the p50, p99 and maximum of `late` (ns).
fn print_lateness(spin: Duration, mut late: Vec<u64>, note: &str) {
    late.sort_unstable();
    let pct = |p: usize| Duration::from_nanos(late[(late.len() - 1) * p / 100]);
    println!(
        "  {:<12} {:>10.1?} {:>10.1?} {:>10.1?}{note}",
        format!("{spin:?}"),
        pct(50),
        pct(99),
        pct(100)
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = floor, coalesced, now_path, contended, leading_only, latest, mix
}

fn main() {
    // The default clock calibrates on its first reading in the process: what the first
    // admission of a `static` throttle pays.
    let started = Instant::now();
    let first = DefaultClock::new().now_nanos();
    let calibration = started.elapsed();
    benches();
    Criterion::default().configure_from_args().final_summary();
    // Under `cargo test --benches` the harness only checks that benches run.
    if !std::env::args().any(|arg| arg == "--test" || arg == "--list") {
        lateness();
        println!(
            "\nfirst DefaultClock reading in the process (calibration): {calibration:?} \
             (reading {first})"
        );
        println!(
            "size_of::<Throttle>() = {} bytes",
            std::mem::size_of::<Throttle>()
        );
    }
}
