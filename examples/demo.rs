//! Hammers one throttled publisher from every core, then the same load on a mutex port of the
//! fix proposed for Neutron's throttler, and compares.
//!
//! ```text
//! cargo run --release --example demo [-- --threads N --threshold-us N --seconds N --detached]
//! ```
//!
//! With `--detached`, the publisher is a `Detached` throttle: deferred runs happen on its
//! timer thread and no caller ever waits.

#[path = "../benches/support/neutron_mutex.rs"]
mod neutron_mutex;
#[path = "../tests/support/stamp_clock.rs"]
mod stamp_clock;

use atomic_throttle::{
    Clock, DefaultClock, Detached, Dispatch, LeadingRun, Outcome, Throttle, Throttled,
};
use neutron_mutex::{MutexAnswer, NeutronMutex};
use stamp_clock::{last_reading, StampClock};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

/// Calls timed together; one pair of clock reads costs more than an admission.
const BATCH: u64 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Now,
    Deferred,
    Coalesced,
}

/// One publisher under test.
trait Publisher: Sync {
    fn call(&self) -> Answer;
}

/// What the work records: the stamp of every run.
#[derive(Default)]
struct Runs {
    stamps: Mutex<Vec<u64>>,
    count: AtomicU64,
}

impl Runs {
    fn record(&self) {
        self.stamps.lock().unwrap().push(last_reading());
        self.count.fetch_add(1, Relaxed);
    }
}

impl<F: Fn() + Sync> Publisher for Throttled<F, StampClock> {
    fn call(&self) -> Answer {
        match Throttled::call(self) {
            Outcome::Now(()) => Answer::Now,
            Outcome::Deferred(()) => Answer::Deferred,
            Outcome::Coalesced => Answer::Coalesced,
            Outcome::Covered(_) | Outcome::Suppressed | Outcome::Revoked(_) => {
                unreachable!("the demo's throttle trails, and nobody cancels")
            }
        }
    }
}

impl<F: Fn() + Send + Sync + 'static> Publisher for Detached<F, StampClock> {
    fn call(&self) -> Answer {
        match Detached::call(self) {
            Dispatch::Leading => Answer::Now,
            Dispatch::Deferred => Answer::Deferred,
            Dispatch::Coalesced => Answer::Coalesced,
            Dispatch::Suppressed | Dispatch::Closed => {
                unreachable!("the demo's throttle trails, and runs until dropped")
            }
        }
    }
}

struct MutexPublisher<F> {
    throttle: NeutronMutex<StampClock>,
    work: F,
}

impl<F: Fn() + Sync> Publisher for MutexPublisher<F> {
    fn call(&self) -> Answer {
        match self.throttle.call(&self.work).0 {
            MutexAnswer::Now => Answer::Now,
            MutexAnswer::Deferred => Answer::Deferred,
            MutexAnswer::Coalesced => Answer::Coalesced,
        }
    }
}

#[derive(Default)]
struct Report {
    calls: u64,
    leading: u64,
    deferred: u64,
    coalesced: u64,
    min_gap: Option<u64>,
    max_coalesced_wait: u64,
    p99_coalesced_wait: u64,
    cost_p50: f64,
    cost_p99: f64,
    seconds: f64,
}

#[derive(Default)]
struct ThreadTally {
    calls: u64,
    leading: u64,
    deferred: u64,
    coalesced: u64,
    /// Per-call cost of batches answered Coalesced throughout, in ns.
    costs: Vec<f64>,
    /// For each window this thread saw, the time just before its first Coalesced call.
    first_coalesced: Vec<u64>,
}

fn hammer(publisher: &dyn Publisher, runs: &Runs, threads: usize, seconds: f64) -> Report {
    let clock = DefaultClock::new();
    let barrier = Barrier::new(threads);
    let end = Arc::new(AtomicU64::new(u64::MAX));
    let started = std::time::Instant::now();
    let tallies: Vec<ThreadTally> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (barrier, end) = (&barrier, end.clone());
                scope.spawn(move || {
                    let mut tally = ThreadTally::default();
                    if barrier.wait().is_leader() {
                        end.store(clock.now_nanos() + (seconds * 1e9) as u64, Relaxed);
                    }
                    barrier.wait();
                    let end = end.load(Relaxed);
                    let mut seen_runs = u64::MAX;
                    let count = |answer: Answer, tally: &mut ThreadTally| {
                        tally.calls += 1;
                        match answer {
                            Answer::Now => tally.leading += 1,
                            Answer::Deferred => tally.deferred += 1,
                            Answer::Coalesced => tally.coalesced += 1,
                        }
                    };
                    loop {
                        // One tracked call: the first Coalesced call of each window marks
                        // the start of the longest wait in that window.
                        let before = clock.now_nanos();
                        if before >= end {
                            break;
                        }
                        let window = runs.count.load(Relaxed);
                        let answer = publisher.call();
                        if answer == Answer::Coalesced && window != seen_runs {
                            seen_runs = window;
                            tally.first_coalesced.push(before);
                        }
                        count(answer, &mut tally);
                        // A timed batch: its cost per call is kept if every call coalesced.
                        let start = clock.now_nanos();
                        let mut all_coalesced = true;
                        for _ in 0..BATCH {
                            let answer = publisher.call();
                            all_coalesced &= answer == Answer::Coalesced;
                            count(answer, &mut tally);
                        }
                        if all_coalesced {
                            let elapsed = clock.now_nanos().saturating_sub(start);
                            tally.costs.push(elapsed as f64 / BATCH as f64);
                        }
                    }
                    tally
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });

    let mut stamps = runs.stamps.lock().unwrap().clone();
    stamps.sort_unstable();
    let mut report = Report {
        // Measured, not the nominal length: a caller that owns a deferral when time is up
        // finishes waiting for it first.
        seconds: started.elapsed().as_secs_f64(),
        min_gap: stamps.windows(2).map(|pair| pair[1] - pair[0]).min(),
        ..Report::default()
    };
    let mut costs = Vec::new();
    let mut waits = Vec::new();
    for tally in tallies {
        report.calls += tally.calls;
        report.leading += tally.leading;
        report.deferred += tally.deferred;
        report.coalesced += tally.coalesced;
        costs.extend(tally.costs);
        for mark in tally.first_coalesced {
            // The run that covers a Coalesced call is the first one stamped after it.
            let covering = stamps.partition_point(|&stamp| stamp <= mark);
            if let Some(&covering) = stamps.get(covering) {
                waits.push(covering - mark);
            }
        }
    }
    waits.sort_unstable();
    if let Some(&max) = waits.last() {
        report.max_coalesced_wait = max;
        report.p99_coalesced_wait = waits[waits.len() * 99 / 100];
    }
    costs.sort_by(f64::total_cmp);
    if !costs.is_empty() {
        report.cost_p50 = costs[costs.len() / 2];
        report.cost_p99 = costs[costs.len() * 99 / 100];
    }
    report
}

fn print_row(label: &str, atomic: String, mutex: String) {
    println!("  {label:<38} {atomic:>18} {mutex:>18}");
}

fn main() {
    let mut threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut threshold_us = 1000u64;
    let mut seconds = 3.0f64;
    let mut detached = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--threads" => threads = value().parse().unwrap_or_else(|_| usage("bad --threads")),
            "--threshold-us" => {
                threshold_us = value()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --threshold-us"))
            }
            "--seconds" => seconds = value().parse().unwrap_or_else(|_| usage("bad --seconds")),
            "--detached" => detached = true,
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if threads == 0 || !seconds.is_finite() || seconds <= 0.0 {
        usage("--threads and --seconds must be positive");
    }
    let threshold = Duration::from_micros(threshold_us);
    let clock = StampClock(DefaultClock::new());

    println!(
        "atomic-throttle demo: {threads} threads hammer one {} publisher for {seconds} s each, \
         threshold {threshold:?}\n",
        if detached { "detached" } else { "throttled" }
    );
    let throttle =
        Throttle::with_clock(threshold, clock).unwrap_or_else(|err| usage(&err.to_string()));
    let atomic_runs: &'static Runs = Box::leak(Box::default());
    let a = if detached {
        // Leading runs inline, so that every run's work reads its own stamp; deferred runs on
        // the timer thread.
        let publisher = Detached::builder(throttle)
            .leading_run(LeadingRun::Inline)
            .spawn(|| atomic_runs.record())
            .unwrap_or_else(|err| usage(&format!("cannot start the timer thread: {err}")));
        let report = hammer(&publisher, atomic_runs, threads, seconds);
        drop(publisher); // runs the last pending deferral, joins the timer thread
        report
    } else {
        let publisher = Throttled::from_throttle(throttle, || atomic_runs.record());
        hammer(&publisher, atomic_runs, threads, seconds)
    };

    let mutex_runs = Runs::default();
    let mutex = MutexPublisher {
        throttle: NeutronMutex::new(threshold, clock),
        work: || mutex_runs.record(),
    };
    let m = hammer(&mutex, &mutex_runs, threads, seconds);

    print_row("", "atomic-throttle".into(), "mutex port".into());
    let int = |v: u64| v.to_string();
    print_row("calls", int(a.calls), int(m.calls));
    print_row(
        "runs: leading + deferred",
        format!("{} + {}", a.leading, a.deferred),
        format!("{} + {}", m.leading, m.deferred),
    );
    print_row("coalesced", int(a.coalesced), int(m.coalesced));
    let gap = |r: &Report| {
        r.min_gap
            .map_or("-".into(), |g| format!("{:.3} ms", g as f64 / 1e6))
    };
    print_row("smallest gap between two runs", gap(&a), gap(&m));
    let wait = |r: &Report| {
        let ms = |nanos: u64| nanos as f64 / 1e6;
        format!(
            "{:.3} / {:.3} ms",
            ms(r.p99_coalesced_wait),
            ms(r.max_coalesced_wait)
        )
    };
    print_row(
        "coalesced call to its run, p99 / longest",
        wait(&a),
        wait(&m),
    );
    let cost = |r: &Report| format!("{:.1} / {:.1} ns", r.cost_p50, r.cost_p99);
    print_row("admission cost, median / p99", cost(&a), cost(&m));
    let rate = |r: &Report| r.calls as f64 / r.seconds;
    print_row(
        "calls per second",
        format!("{:.3e}", rate(&a)),
        format!("{:.3e}", rate(&m)),
    );
    println!();
    println!(
        "atomic-throttle: {:.1}x the mutex port's calls per second, {:.1}x cheaper median admission",
        rate(&a) / rate(&m),
        m.cost_p50 / a.cost_p50
    );
    let spaced = a
        .min_gap
        .map_or(true, |gap| gap >= threshold.as_nanos() as u64);
    println!(
        "spacing (SPEC G1): every pair of runs at least {threshold:?} apart: {}",
        if spaced { "yes" } else { "NO" }
    );
    if !spaced {
        std::process::exit(1);
    }
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("demo: {problem}");
    }
    eprintln!(
        "usage: cargo run --release --example demo \
         [-- --threads N --threshold-us N --seconds N --detached]"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 })
}
