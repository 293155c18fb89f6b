//! Hammers one throttled publisher from every core, then the same load on a port of upstream
//! Neutron's try-lock `throttler` and on a mutex port of the fix proposed in a review of a
//! `Throttler` class, and compares.
//!
//! ```text
//! cargo run --release --example demo [-- --threads N --threshold-us N --seconds N]
//! cargo run --release --example demo -- --detached       # a Detached publisher instead
//! cargo run --release --example demo -- --count          # leading-only, suppressed counts
//! cargo run --release --example demo -- --timeline FILE  # events of one short run, as CSV
//! ```

#[path = "../benches/support/neutron_mutex.rs"]
mod neutron_mutex;
#[path = "../benches/support/neutron_trylock.rs"]
mod neutron_trylock;
#[path = "../tests/support/stamp_clock.rs"]
mod stamp_clock;

use atomic_throttle::{
    Admission, Clock, DefaultClock, Detached, Dispatch, LeadingRun, Mode, Outcome, Throttle,
    Throttled,
};
use neutron_mutex::{MutexAnswer, NeutronMutex};
use neutron_trylock::{NeutronTryLock, TryLockAnswer};
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
            other => unreachable!("{other:?}: the demo's throttle trails, and nobody cancels"),
        }
    }
}

impl<F: Fn() + Send + Sync + 'static> Publisher for Detached<F, StampClock> {
    fn call(&self) -> Answer {
        match Detached::call(self) {
            Dispatch::Leading => Answer::Now,
            Dispatch::Deferred => Answer::Deferred,
            Dispatch::Coalesced => Answer::Coalesced,
            other => unreachable!("{other:?}: the demo's throttle trails, and runs until dropped"),
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

struct TryLockPublisher<F> {
    throttle: NeutronTryLock<StampClock>,
    work: F,
}

impl<F: Fn() + Sync> Publisher for TryLockPublisher<F> {
    fn call(&self) -> Answer {
        match self.throttle.call(&self.work).0 {
            TryLockAnswer::Now => Answer::Now,
            TryLockAnswer::Deferred => Answer::Deferred,
            TryLockAnswer::Coalesced => Answer::Coalesced,
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

/// Which way a measure is better.
#[derive(Clone, Copy)]
enum Better {
    Higher,
    Lower,
}

/// How our measure compares with theirs, always as a ratio of at least 1: "N.Nx {better}"
/// when ours is the better one, "N.Nx {worse}" when it is the worse.
fn compared(ours: f64, theirs: f64, better: Better, [if_better, if_worse]: [&str; 2]) -> String {
    let measured = |x: f64| x.is_finite() && x > 0.0;
    if !measured(ours) || !measured(theirs) {
        return format!("no ratio ({ours} against {theirs})");
    }
    let ours_better = match better {
        Better::Higher => ours >= theirs,
        Better::Lower => ours <= theirs,
    };
    let ratio = ours.max(theirs) / ours.min(theirs);
    format!(
        "{ratio:.1}x {}",
        if ours_better { if_better } else { if_worse }
    )
}

fn print_row(label: &str, columns: &[String]) {
    print!("  {label:<38}");
    for column in columns {
        print!(" {column:>18}");
    }
    println!();
}

struct Options {
    threads: usize,
    threshold: Duration,
    seconds: f64,
    detached: bool,
    count: bool,
    timeline: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        threshold: Duration::from_micros(1000),
        seconds: 2.0,
        detached: false,
        count: false,
        timeline: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--threads" => {
                options.threads = value().parse().unwrap_or_else(|_| usage("bad --threads"))
            }
            "--threshold-us" => {
                let micros = value()
                    .parse()
                    .unwrap_or_else(|_| usage("bad --threshold-us"));
                options.threshold = Duration::from_micros(micros);
            }
            "--seconds" => {
                options.seconds = value().parse().unwrap_or_else(|_| usage("bad --seconds"))
            }
            "--detached" => options.detached = true,
            "--count" => options.count = true,
            "--timeline" => options.timeline = Some(value()),
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    if options.threads == 0 || !options.seconds.is_finite() || options.seconds <= 0.0 {
        usage("--threads and --seconds must be positive");
    }
    options
}

fn main() {
    let options = options();
    if let Some(file) = &options.timeline {
        return timeline(&options, file);
    }
    if options.count {
        return count(&options);
    }
    let (threads, threshold, seconds) = (options.threads, options.threshold, options.seconds);
    let clock = StampClock(DefaultClock::new());

    println!(
        "atomic-throttle demo: {threads} threads hammer one {} publisher for {seconds} s each, \
         threshold {threshold:?}\n",
        if options.detached {
            "detached"
        } else {
            "throttled"
        }
    );
    let throttle =
        Throttle::with_clock(threshold, clock).unwrap_or_else(|err| usage(&err.to_string()));
    let atomic_runs: &'static Runs = Box::leak(Box::default());
    let a = if options.detached {
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

    let trylock_runs = Runs::default();
    let trylock = TryLockPublisher {
        throttle: NeutronTryLock::new(threshold, clock),
        work: || trylock_runs.record(),
    };
    let t = hammer(&trylock, &trylock_runs, threads, seconds);

    let mutex_runs = Runs::default();
    let mutex = MutexPublisher {
        throttle: NeutronMutex::new(threshold, clock),
        work: || mutex_runs.record(),
    };
    let m = hammer(&mutex, &mutex_runs, threads, seconds);

    let reports = [&a, &t, &m];
    let row = |label: &str, show: &dyn Fn(&Report) -> String| {
        print_row(label, &reports.map(show));
    };
    print_row(
        "",
        &[
            "atomic-throttle".into(),
            "Neutron try-lock".into(),
            "mutex port".into(),
        ],
    );
    row("calls", &|r| r.calls.to_string());
    row("runs: leading + deferred", &|r| {
        format!("{} + {}", r.leading, r.deferred)
    });
    row("coalesced", &|r| r.coalesced.to_string());
    row("smallest gap between two runs", &|r| {
        r.min_gap
            .map_or("-".into(), |g| format!("{:.3} ms", g as f64 / 1e6))
    });
    row("coalesced call to its run, p99 / longest", &|r| {
        let ms = |nanos: u64| nanos as f64 / 1e6;
        format!(
            "{:.3} / {:.3} ms",
            ms(r.p99_coalesced_wait),
            ms(r.max_coalesced_wait)
        )
    });
    row("admission cost, median / p99", &|r| {
        format!("{:.1} / {:.1} ns", r.cost_p50, r.cost_p99)
    });
    let rate = |r: &Report| r.calls as f64 / r.seconds;
    row("calls per second", &|r| format!("{:.3e}", rate(r)));
    println!();
    for (name, other) in [("Neutron try-lock", &t), ("mutex port", &m)] {
        println!(
            "atomic-throttle against the {name}: {}, {}",
            compared(
                rate(&a),
                rate(other),
                Better::Higher,
                ["more calls per second", "fewer calls per second"]
            ),
            compared(
                a.cost_p50,
                other.cost_p50,
                Better::Lower,
                ["cheaper median admission", "dearer median admission"]
            ),
        );
    }
    let spaced = a
        .min_gap
        .is_none_or(|gap| gap >= threshold.as_nanos() as u64);
    println!(
        "spacing (guarantee 1): every pair of runs at least {threshold:?} apart: {}",
        if spaced { "yes" } else { "NO" }
    );
    if !spaced {
        std::process::exit(1);
    }
}

/// `--count`: a leading-only throttle that counts, the shape of the kernel's
/// `printk_ratelimited`: each run reports how many calls were suppressed since the last.
fn count(options: &Options) {
    let (threads, threshold, seconds) = (options.threads, options.threshold, options.seconds);
    println!(
        "atomic-throttle demo: {threads} threads call one leading-only, counting throttle for \
         {seconds} s, threshold {threshold:?}\n"
    );
    let throttle = Throttle::builder(threshold)
        .mode(Mode::LeadingOnly)
        .counting(true)
        .build()
        .unwrap_or_else(|err| usage(&err.to_string()));
    let reported = AtomicU64::new(0);
    let printed = AtomicU64::new(0);
    let end = std::time::Instant::now() + Duration::from_secs_f64(seconds);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while std::time::Instant::now() < end {
                    if let Admission::Now = throttle.admit() {
                        let skipped = throttle.take_skipped();
                        reported.fetch_add(skipped, Relaxed);
                        if printed.fetch_add(1, Relaxed) < 5 {
                            println!("  run: {skipped} calls suppressed since the last run");
                        }
                    }
                }
            });
        }
    });
    let left = throttle.take_skipped();
    let stats = throttle.stats().expect("a counting throttle");
    println!(
        "  ...\n\n  leading runs                     {:>14}\n  \
         suppressed calls (counted)       {:>14}\n  \
         reported to the runs + left over {:>14} + {}",
        stats.leading,
        stats.suppressed,
        reported.load(Relaxed),
        left
    );
    let exact = reported.load(Relaxed) + left == stats.suppressed;
    println!(
        "every suppressed call reported exactly once: {}",
        if exact { "yes" } else { "NO" }
    );
    if !exact {
        std::process::exit(1);
    }
}

/// `--timeline FILE`: 30 ms of calls from two threads on a 1 ms throttle, every answer but the
/// Coalesced ones (one in 64 of those) and every run, as `nanos,kind` lines, for
/// `benches/report.py --timeline FILE`.
fn timeline(options: &Options, file: &str) {
    let clock = StampClock(DefaultClock::new());
    let events = Mutex::new(vec![(0u64, "start")]);
    let throttle = Throttle::with_clock(Duration::from_millis(1), clock).unwrap();
    let end = clock.now_nanos() + 30_000_000;
    events.lock().unwrap()[0].0 = clock.now_nanos();
    std::thread::scope(|scope| {
        for _ in 0..options.threads.min(2) {
            scope.spawn(|| {
                let mut coalesced = 0u64;
                let mut mine = Vec::new();
                while clock.now_nanos() < end {
                    let before = clock.now_nanos();
                    match throttle.admit() {
                        Admission::Now => {
                            mine.push((last_reading(), "leading"));
                        }
                        Admission::Deferred(deferral) => {
                            mine.push((before, "deferred_call"));
                            let _ = deferral.run(|| mine.push((last_reading(), "deferred_run")));
                        }
                        Admission::Coalesced => {
                            coalesced += 1;
                            if coalesced.is_multiple_of(64) {
                                mine.push((before, "coalesced"));
                            }
                        }
                        Admission::Suppressed { .. } => unreachable!("not leading-only"),
                    }
                }
                events.lock().unwrap().extend(mine);
            });
        }
    });
    let mut events = events.into_inner().unwrap();
    events.sort_unstable();
    let csv: String = std::iter::once("nanos,kind\n".to_string())
        .chain(
            events
                .iter()
                .map(|(nanos, kind)| format!("{nanos},{kind}\n")),
        )
        .collect();
    std::fs::write(file, csv).unwrap_or_else(|err| usage(&format!("cannot write {file}: {err}")));
    println!("wrote {} events to {file}", events.len());
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("demo: {problem}");
    }
    eprintln!(
        "usage: cargo run --release --example demo \
         [-- --threads N --threshold-us N --seconds N --detached --count --timeline FILE]"
    );
    std::process::exit(if problem.is_empty() { 0 } else { 2 })
}

#[cfg(test)]
mod tests {
    use super::{compared, Better};

    const COST: [&str; 2] = ["cheaper", "dearer"];
    const RATE: [&str; 2] = ["more calls", "fewer calls"];

    #[test]
    fn a_ratio_in_our_favour_says_so() {
        assert_eq!(compared(10.0, 25.0, Better::Lower, COST), "2.5x cheaper");
        assert_eq!(
            compared(30.0, 10.0, Better::Higher, RATE),
            "3.0x more calls"
        );
    }

    #[test]
    fn a_ratio_against_us_says_so_and_is_never_below_one() {
        // Ours costs 20 ns where theirs costs 12: 1.7x dearer, never "0.6x cheaper".
        assert_eq!(compared(20.0, 12.0, Better::Lower, COST), "1.7x dearer");
        assert_eq!(
            compared(10.0, 40.0, Better::Higher, RATE),
            "4.0x fewer calls"
        );
    }

    #[test]
    fn nothing_measured_gives_no_ratio() {
        assert_eq!(
            compared(0.0, 12.0, Better::Lower, COST),
            "no ratio (0 against 12)"
        );
    }
}
