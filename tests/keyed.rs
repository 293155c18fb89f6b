//! Keyed throttles: per-key decisions exactly as a `Throttle`'s, exact deadlines, the full-table
//! policy, a hostile stream of distinct keys, idle reuse, deferrals that outlive their entry,
//! a property test against a sequential model of the table, and eight threads on the real
//! clock over many keys.

use atomic_throttle::{
    Admission, Clock, DefaultClock, Deferral, KeyedAdmission, KeyedDeferral, KeyedThrottle,
    ManualClock, Mode, NotRun, Revoked, Throttle,
};
use proptest::prelude::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

#[path = "support/expected_panics.rs"]
mod expected_panics;
#[path = "support/stamp_clock.rs"]
mod stamp_clock;

use stamp_clock::{last_reading, StampClock};

const T: Duration = Duration::from_millis(10);

/// Counts this thread's allocations, to show that admission allocates nothing.
struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|bytes| bytes.set(bytes.get() + layout.size()));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes this thread allocated while `f` ran.
fn allocated_in<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATED.with(Cell::get);
    let result = f();
    (result, ALLOCATED.with(Cell::get) - before)
}

type Table = KeyedThrottle<u64, ManualClock>;

fn table(capacity: usize) -> (Table, ManualClock) {
    let clock = ManualClock::new();
    let table = KeyedThrottle::with_clock(T, capacity, clock.clone()).unwrap();
    (table, clock)
}

fn deferred(answer: KeyedAdmission<&Table>) -> KeyedDeferral<&Table> {
    match answer {
        KeyedAdmission::Deferred(deferral) => deferral,
        other => panic!("expected Deferred, got {other:?}"),
    }
}

#[test]
fn each_key_has_its_own_window_and_deferral() {
    let (table, clock) = table(64);
    assert!(table.admit(&1).is_now());
    clock.advance(T / 2);
    assert!(
        table.admit(&2).is_now(),
        "another key is not inside key 1's window"
    );
    let one = deferred(table.admit(&1));
    assert!(table.admit(&1).is_coalesced());
    assert!(
        table.admit(&2).is_deferred(),
        "key 2 is inside its own window"
    );
    assert!(!table.is_pending(&2), "key 2's deferral was dropped");
    assert!(table.is_pending(&1));
    assert_eq!(one.deadline(), T.as_nanos() as u64);
    assert_eq!(one.run(|| clock.now()), Ok(T));
    assert!(!table.is_pending(&1));
    assert_eq!(table.last_run(&1), Some(T.as_nanos() as u64));
    assert_eq!(table.last_run(&2), Some((T / 2).as_nanos() as u64));
}

#[test]
fn deadlines_are_exact_per_key() {
    for start in [0u64, 1_000, 7_000, 999_000, 1_000_000_000] {
        let (table, clock) = table(64);
        clock.advance(Duration::from_nanos(start));
        assert!(table.admit(&5).is_now());
        clock.advance(Duration::from_micros(3));
        assert!(table.admit(&6).is_now());
        clock.advance(T - Duration::from_micros(3) - Duration::from_nanos(1));
        // One nanosecond before key 5's deadline: not due; key 6 is 3 us further off.
        let five = deferred(table.admit(&5));
        assert_eq!(five.deadline(), start + T.as_nanos() as u64);
        let six = deferred(table.admit(&6));
        assert_eq!(six.deadline(), start + 3_000 + T.as_nanos() as u64);
        let five = five
            .try_run(|| ())
            .unwrap_err()
            .not_due()
            .expect("not due yet");
        clock.advance(Duration::from_nanos(1));
        assert_eq!(
            five.try_run(|| clock.now_nanos()).ok(),
            Some(start + T.as_nanos() as u64)
        );
        let six = six
            .try_run(|| ())
            .unwrap_err()
            .not_due()
            .expect("3 us to go");
        assert_eq!(
            six.run(|| clock.now_nanos()),
            Ok(start + 3_000 + T.as_nanos() as u64)
        );
    }
}

#[test]
fn every_mode_per_key() {
    let clock = ManualClock::new();
    let leading: KeyedThrottle<u64, ManualClock> = KeyedThrottle::builder(T, 64)
        .clock(clock.clone())
        .mode(Mode::LeadingOnly)
        .build()
        .unwrap();
    let trailing: KeyedThrottle<u64, ManualClock> = KeyedThrottle::builder(T, 64)
        .clock(clock.clone())
        .mode(Mode::TrailingOnly)
        .build()
        .unwrap();
    assert!(leading.admit(&1).is_now());
    clock.advance(Duration::from_millis(4));
    assert!(leading.admit(&2).is_now());
    let KeyedAdmission::Suppressed { until } = leading.admit(&1) else {
        panic!("expected Suppressed")
    };
    assert_eq!(until, T.as_nanos() as u64);
    let KeyedAdmission::Suppressed { until } = leading.admit(&2) else {
        panic!("expected Suppressed")
    };
    assert_eq!(until, (T + Duration::from_millis(4)).as_nanos() as u64);

    let one = match trailing.admit(&1) {
        KeyedAdmission::Deferred(deferral) => deferral,
        other => panic!("trailing only: {other:?}"),
    };
    assert_eq!(one.deadline(), clock.now_nanos() + T.as_nanos() as u64);
    assert!(trailing.admit(&1).is_coalesced());
    assert!(trailing.admit(&2).is_deferred());
}

#[test]
fn a_full_table_refuses_new_keys_and_counts_them() {
    // One bucket of eight entries: every key may use only these eight.
    let (table, clock) = table(8);
    assert_eq!(table.capacity(), 8);
    for key in 0..8 {
        assert!(table.admit(&key).is_now());
    }
    let (answer, lost) = table.admit_counting_retries(&100);
    assert!(answer.is_full(), "{answer:?}");
    assert_eq!(lost, 0);
    assert!(table.admit(&101).is_full());
    assert_eq!(table.refused(), 2);
    assert_eq!(table.live_entries(), 8);
    // The keys that have entries are unaffected: their windows go on.
    let owner = deferred(table.admit(&3));
    assert!(table.admit(&3).is_coalesced());
    assert_eq!(table.last_run(&100), None, "a refused key has no entry");
    // A pending entry is never handed over, even long past its window.
    clock.advance(T * 10);
    for key in 100..107 {
        assert!(
            table.admit(&key).is_now(),
            "key {key}: an idle entry is free"
        );
    }
    assert!(
        table.admit(&107).is_full(),
        "key 3's pending entry was taken"
    );
    assert!(table.is_pending(&3));
    assert_eq!(owner.run(|| clock.now()), Ok(T * 10));
    assert_eq!(table.refused(), 3);
}

#[test]
fn keys_spread_over_both_buckets_so_most_of_the_table_fills_before_a_refusal() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::BuildHasherDefault;
    // A fixed hasher, so that the test is the same every run.
    let table: KeyedThrottle<u64, ManualClock, BuildHasherDefault<DefaultHasher>> =
        KeyedThrottle::builder(T, 4096)
            .clock(ManualClock::new())
            .hasher(BuildHasherDefault::default())
            .build()
            .unwrap();
    let live = 4096 * 7 / 10;
    for key in 0..live {
        assert!(table.admit(&key).is_now(), "key {key} of {live}");
    }
    assert_eq!(table.refused(), 0);
    assert_eq!(table.live_entries(), live as usize);
    // Every key is found again, in whichever of its buckets it went to.
    for key in 0..live {
        assert_eq!(table.last_run(&key), Some(0));
        assert!(table.admit(&key).is_deferred());
    }
}

#[test]
fn idle_entries_are_reused_without_a_sweeper() {
    let (table, clock) = table(8);
    for key in 0..8 {
        assert!(table.admit(&key).is_now());
    }
    assert!(table.admit(&8).is_full());
    clock.advance(T);
    // Every window has passed: the next eight keys take the eight entries over.
    for key in 8..16 {
        assert!(table.admit(&key).is_now(), "key {key}");
        assert_eq!(table.last_run(&key), Some(T.as_nanos() as u64));
    }
    for key in 0..8 {
        assert_eq!(table.last_run(&key), None, "key {key} kept its entry");
    }
    assert_eq!(table.live_entries(), 8);
    // A key that lost its entry starts afresh, a threshold after its last run.
    clock.advance(T);
    assert!(table.admit(&0).is_now());
}

#[test]
fn a_keyed_deferral_releases_only_its_own_keys_claim_even_after_its_entry_was_reused() {
    let (table, clock) = table(8);
    // Key 1 takes the bucket's first entry; seven more keys fill the rest.
    for key in 1..9 {
        assert!(table.admit(&key).is_now());
    }
    clock.advance(T / 2);
    let stale = deferred(table.admit(&1));
    assert!(table.cancel(&1), "key 1's deferral is withdrawn");
    clock.advance(T);
    // Every entry is idle and none is empty: key 20 takes the first, key 1's.
    assert!(table.admit(&20).is_now());
    assert_eq!(table.last_run(&1), None, "key 1's entry went to key 20");
    clock.advance(Duration::from_millis(1));
    let live = deferred(table.admit(&20));
    assert!(table.is_pending(&20));
    // The stale owner of key 1 looks, then leaves: key 20's claim is untouched.
    let stale = match stale.try_run(|| ()) {
        Err(NotRun::Revoked(Revoked::Cancelled)) => None,
        Err(NotRun::NotDue(stale)) => Some(stale),
        Ok(()) => panic!("a revoked deferral ran in another key's entry"),
        Err(NotRun::Revoked(why)) => panic!("{why}"),
    };
    assert!(stale.is_none(), "the revoked deferral was told to wait");
    assert!(table.is_pending(&20));
    assert!(table.admit(&20).is_coalesced());
    assert_eq!(live.run(|| clock.now()), Ok(T * 3 / 2 + T));
}

#[test]
fn a_keyed_takeover_is_counted_in_takeovers_not_in_leading() {
    let clock = ManualClock::new();
    let table: Table = KeyedThrottle::builder(T, 8)
        .clock(clock.clone())
        .lease(T)
        .counting(true)
        .build()
        .unwrap();
    assert!(table.admit(&1).is_now());
    let late = deferred(table.admit(&1));
    clock.advance(T * 2);
    assert!(table.admit(&1).is_now(), "taken over");
    let stats = table.stats().unwrap();
    assert_eq!(
        (stats.leading, stats.takeovers),
        (1, 1),
        "the takeover's Now is counted in takeovers, not in leading: {stats:?}"
    );
    drop(late);
    assert_eq!(table.stats().unwrap().releases, 0, "a revoked drop");
}

#[test]
fn a_revoked_deferral_dropped_after_its_entry_was_reused_spares_the_new_claim() {
    // The same, with a lease: key 1's owner never comes back, its own next call takes the
    // deferral over, the entry turns idle and goes to key 20, and only then is the old
    // owner dropped.
    let clock = ManualClock::new();
    let table: Table = KeyedThrottle::builder(T, 8)
        .clock(clock.clone())
        .lease(T)
        .build()
        .unwrap();
    for key in 1..9 {
        assert!(table.admit(&key).is_now());
    }
    let late = deferred(table.admit(&1));
    clock.advance(T * 2);
    assert!(
        table.admit(&1).is_now(),
        "key 1's own call takes the deferral over"
    );
    clock.advance(T);
    assert!(table.admit(&20).is_now());
    let live = deferred(table.admit(&20));
    drop(late);
    assert!(
        table.is_pending(&20),
        "a stale release cleared another key's claim"
    );
    let late_again = {
        // And a stale run is refused. (Key 1 has to claim a fresh deferral to get one.)
        clock.advance(T);
        assert!(table.admit(&1).is_now());
        deferred(table.admit(&1))
    };
    drop(late_again);
    assert!(table.is_pending(&20));
    drop(live);
    assert!(!table.is_pending(&20));
}

#[test]
fn a_hostile_stream_of_distinct_keys_never_grows_memory_and_never_evicts_a_pending_key() {
    const CAPACITY: usize = 1024;
    let (table, clock) = table(CAPACITY);
    // A legitimate key with a deferral pending, held through the whole flood.
    assert!(table.admit(&u64::MAX).is_now());
    clock.advance(Duration::from_millis(1));
    let pending = deferred(table.admit(&u64::MAX));
    let deadline = pending.deadline();

    let (counts, allocated) = allocated_in(|| {
        let (mut now, mut full, mut coalesced) = (0u64, 0u64, 0u64);
        for key in 0..1_000_000u64 {
            match table.admit(&key) {
                KeyedAdmission::Now => now += 1,
                KeyedAdmission::Full => full += 1,
                KeyedAdmission::Coalesced => coalesced += 1,
                other => panic!("a new key got {other:?}"),
            }
            if key % 1000 == 999 {
                // Time moves, so entries turn idle and are reused.
                clock.advance(Duration::from_millis(1));
                assert!(
                    table.is_pending(&u64::MAX),
                    "the pending key was evicted at key {key}"
                );
            }
        }
        (now, full, coalesced)
    });
    let (now, full, coalesced) = counts;
    assert_eq!(allocated, 0, "admission allocated {allocated} bytes");
    assert_eq!(
        coalesced, 0,
        "a new key was coalesced into another key's deferral"
    );
    // A window every ten thousand keys, each letting about a table's worth run.
    assert!(
        now > 50_000,
        "only {now} keys ran: idle entries were not reused"
    );
    assert!(full > 0, "the flood never filled the table");
    assert_eq!(table.refused(), full);
    assert!(table.live_entries() <= CAPACITY);
    assert!(table.admit(&u64::MAX).is_coalesced());
    assert_eq!(
        pending.run(|| clock.now_nanos()),
        Ok(clock.now_nanos().max(deadline))
    );
}

#[test]
fn a_clock_step_back_after_a_takeover_still_only_delays_the_evicted_key() {
    let (table, clock) = table(8);
    clock.advance(Duration::from_secs(1));
    for key in 0..8 {
        assert!(table.admit(&key).is_now());
    }
    let last_run = clock.now_nanos();
    clock.advance(T);
    // Key 0's entry goes to key 8; then the clock steps back inside key 0's old window.
    assert!(table.admit(&8).is_now());
    clock.rewind(T / 2);
    for key in 1..8 {
        let _ = table.admit(&(key + 100)); // more keys take the other entries over
    }
    clock.advance(T * 2);
    for key in 9..16 {
        let _ = table.admit(&key);
    }
    clock.rewind(T * 2);
    // Key 0 comes back, behind its old window's end: it must not run yet.
    match table.admit(&0) {
        KeyedAdmission::Now => panic!("G5: key 0 ran inside its window after a takeover"),
        KeyedAdmission::Deferred(deferral) => {
            assert!(deferral.deadline() >= last_run + T.as_nanos() as u64)
        }
        KeyedAdmission::Full => {}
        other => panic!("{other:?}"),
    };
}

// ---------------------------------------------------------------------------------------
// Each key against its own Throttle, on one shared manual clock.

#[derive(Debug, Clone)]
enum Step {
    Admit(u8),
    Advance(u64),
    Rewind(u64),
    TryRun(u8),
    Run(u8),
    Drop(u8),
    Cancel(u8),
    Flush(u8),
    SetThreshold(u64),
}

fn step(keys: u8) -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0..keys).prop_map(Step::Admit),
        4 => (0..30_000_000u64).prop_map(Step::Advance),
        2 => (0..30_000u64).prop_map(|us| Step::Advance(us * 1000)),
        1 => (0..30_000_000u64).prop_map(Step::Rewind),
        3 => (0..keys).prop_map(Step::TryRun),
        1 => (0..keys).prop_map(Step::Run),
        2 => (0..keys).prop_map(Step::Drop),
        1 => (0..keys).prop_map(Step::Cancel),
        1 => (0..keys).prop_map(Step::Flush),
        1 => (0..20_000_000u64).prop_map(Step::SetThreshold),
    ]
}

fn any_mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        Just(Mode::LeadingAndTrailing),
        Just(Mode::LeadingOnly),
        Just(Mode::TrailingOnly)
    ]
}

/// Answers compared by kind and deadline.
fn same_answer<A, B>(keyed: &KeyedAdmission<A>, throttle: &Admission<B>) -> bool
where
    A: atomic_throttle::KeyedThrottleRef,
    B: atomic_throttle::ThrottleRef,
{
    match (keyed, throttle) {
        (KeyedAdmission::Now, Admission::Now) => true,
        (KeyedAdmission::Coalesced, Admission::Coalesced) => true,
        (KeyedAdmission::Suppressed { until: a }, Admission::Suppressed { until: b }) => a == b,
        (KeyedAdmission::Deferred(a), Admission::Deferred(b)) => a.deadline() == b.deadline(),
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    // With room for every key, each key answers exactly as a Throttle of its own would, step
    // by step: the same answers, deadlines, stamps, runs, cancels and flushes.
    #[test]
    fn each_key_decides_exactly_like_its_own_throttle(
        mode in any_mode(),
        lease in prop_oneof![Just(None), (0..20_000_000u64).prop_map(Some)],
        steps in prop::collection::vec(step(6), 1..150),
    ) {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(1));
        let mut builder = KeyedThrottle::builder(T, 4096).clock(clock.clone()).mode(mode);
        let mut single = Throttle::builder(T).clock(clock.clone()).mode(mode);
        if let Some(lease) = lease {
            builder = builder.lease(Duration::from_nanos(lease));
            single = single.lease(Duration::from_nanos(lease));
        }
        let keyed: KeyedThrottle<u8, ManualClock> = builder.build().unwrap();
        let throttles: Vec<Throttle<ManualClock>> =
            (0..6).map(|_| single.clone().build().unwrap()).collect();
        type Owners<'a> = HashMap<
            u8,
            (KeyedDeferral<&'a KeyedThrottle<u8, ManualClock>>, Deferral<&'a Throttle<ManualClock>>),
        >;
        let mut owners: Owners<'_> = HashMap::new();
        for step in steps {
            match step {
                Step::Admit(key) => {
                    let a = keyed.admit(&key);
                    let b = throttles[key as usize].admit();
                    prop_assert!(same_answer(&a, &b), "key {key}: keyed {a:?}, throttle {b:?}");
                    if let (KeyedAdmission::Deferred(a), Admission::Deferred(b)) = (a, b) {
                        owners.insert(key, (a, b));
                    }
                }
                Step::Advance(nanos) => clock.advance(Duration::from_nanos(nanos)),
                Step::Rewind(nanos) => clock.rewind(Duration::from_nanos(nanos)),
                Step::TryRun(key) => {
                    if let Some((a, b)) = owners.remove(&key) {
                        match (a.try_run(|| clock.now_nanos()), b.try_run(|| clock.now_nanos())) {
                            (Ok(x), Ok(y)) => prop_assert_eq!(x, y),
                            (Err(NotRun::NotDue(a)), Err(NotRun::NotDue(b))) => {
                                owners.insert(key, (a, b));
                            }
                            (Err(NotRun::Revoked(x)), Err(NotRun::Revoked(y))) => {
                                prop_assert_eq!(x, y)
                            }
                            (x, y) => prop_assert!(false, "key {key}: {x:?} / {y:?}"),
                        }
                    }
                }
                Step::Run(key) => {
                    if let Some((a, b)) = owners.remove(&key) {
                        let x = a.run(|| clock.now_nanos());
                        let y = b.run(|| clock.now_nanos());
                        prop_assert_eq!(x, y, "key {}", key);
                    }
                }
                Step::Drop(key) => drop(owners.remove(&key)),
                Step::Cancel(key) => {
                    prop_assert_eq!(keyed.cancel(&key), throttles[key as usize].cancel());
                }
                Step::Flush(key) => {
                    prop_assert_eq!(keyed.flush(&key), throttles[key as usize].flush());
                }
                Step::SetThreshold(nanos) => {
                    let threshold = Duration::from_nanos(nanos);
                    keyed.set_threshold(threshold).unwrap();
                    for throttle in &throttles {
                        throttle.set_threshold(threshold).unwrap();
                    }
                }
            }
            for (key, throttle) in throttles.iter().enumerate() {
                let key = key as u8;
                prop_assert_eq!(keyed.is_pending(&key), throttle.is_pending(), "key {}", key);
                prop_assert_eq!(keyed.last_run(&key), throttle.last_run(), "key {}", key);
            }
        }
        prop_assert_eq!(keyed.refused(), 0);
    }
}

// ---------------------------------------------------------------------------------------
// The table against a sequential model of it: one bucket of eight entries shared by twelve
// keys, so that keys are refused, take idle entries over, and come back.

const KEYS: u8 = 12;
const ENTRIES: usize = 8;
const CANCELS_PER_STAMP: u32 = 128;

#[derive(Debug, Clone)]
enum Op {
    Admit(u8),
    Advance(u64),
    Rewind(u64),
    Run(u8),
    TryRun(u8),
    Drop(u8),
    Forget(u8),
    Cancel(u8),
    Flush(u8),
    CancelMany(u8, u8),
    SetThreshold(u64),
    StaleTryRun,
    StaleDrop,
}

fn op(threshold: u64) -> impl Strategy<Value = Op> {
    let span = threshold.max(4096) * 3;
    prop_oneof![
        12 => (0..KEYS).prop_map(Op::Admit),
        5 => (0..span).prop_map(Op::Advance),
        2 => (0..span / 1000).prop_map(|us| Op::Advance(us * 1000)),
        2 => (0..span).prop_map(Op::Rewind),
        2 => (0..KEYS).prop_map(Op::Run),
        3 => (0..KEYS).prop_map(Op::TryRun),
        2 => (0..KEYS).prop_map(Op::Drop),
        1 => (0..KEYS).prop_map(Op::Forget),
        2 => (0..KEYS).prop_map(Op::Cancel),
        1 => (0..KEYS).prop_map(Op::Flush),
        1 => (0..KEYS, any::<u8>()).prop_map(|(key, times)| Op::CancelMany(key, times)),
        1 => threshold_nanos().prop_map(Op::SetThreshold),
        1 => Just(Op::StaleTryRun),
        1 => Just(Op::StaleDrop),
    ]
}

fn threshold_nanos() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(999),
        Just(1_000),
        Just(10_000),
        1..5_000_000u64,
    ]
}

/// One entry of the model table: whose it is, and the state word's content in the contract's
/// terms.
#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    key: Option<u8>,
    /// The stamp that opened the window, in microseconds.
    start: Option<u64>,
    /// Cancels and handovers since the stamp last moved.
    generation: u32,
    pending: bool,
    flushed: bool,
}

impl Entry {
    fn due(&self, now: u64, threshold: u64) -> bool {
        self.start
            .is_none_or(|start| now.saturating_sub(start * 1000) >= threshold)
    }

    /// Moves the window's start to the later of where it is and `now` rounded up.
    fn open_window(&mut self, now: u64) {
        let at = self.start.unwrap_or(0).max(now.div_ceil(1000));
        if self.start != Some(at) {
            self.generation = 0;
        }
        self.start = Some(at);
    }

    /// A cancel, or the advance of a handover: the generation moves on, and after 127 in
    /// one window the stamp moves on by 1 us instead.
    fn advance_generation(&mut self) {
        self.pending = false;
        self.flushed = false;
        self.generation += 1;
        if self.generation == CANCELS_PER_STAMP {
            self.start = Some(self.start.unwrap_or(0) + 1);
            self.generation = 0;
        }
    }
}

#[derive(Debug)]
struct TableModel {
    threshold: u64,
    mode: Mode,
    lease: Option<u64>,
    entries: [Entry; ENTRIES],
    /// The latest stamp of an entry taken over, plus one (us); 0 for none.
    horizon: u64,
    refused: u64,
    /// Each key's last run (ns), across entries, and the smallest threshold since: G1.
    last_run: HashMap<u8, (u64, u64)>,
}

impl TableModel {
    fn find(&self, key: u8) -> Option<usize> {
        self.entries.iter().position(|entry| entry.key == Some(key))
    }

    fn deadline(&self, slot: usize) -> u64 {
        self.entries[slot].start.expect("a deferral has a window") * 1000 + self.threshold
    }

    fn lease_expired(&self, slot: usize, now: u64) -> bool {
        let start = self.entries[slot].start.unwrap();
        self.lease
            .is_some_and(|lease| now.saturating_sub(start * 1000) >= self.threshold + lease)
    }

    /// Records a run of `key` stamped at its entry's new window, checking spacing.
    fn ran(&mut self, key: u8, slot: usize, flushed: bool) -> Result<(), TestCaseError> {
        let stamp = self.entries[slot].start.unwrap() * 1000;
        if let (Some(&(last, threshold)), false) = (self.last_run.get(&key), flushed) {
            prop_assert!(
                stamp >= last + threshold,
                "G1: key {key} ran at {stamp} ns, {} ns after its last run, threshold {threshold}",
                stamp as i128 - last as i128
            );
        }
        self.last_run.insert(key, (stamp, self.threshold));
        Ok(())
    }

    /// The entry a key without one takes at `now`: the first with no key, else the first
    /// idle one, handed over as the table does; `None` if the table is full for it.
    fn take_entry(&mut self, key: u8, now: u64) -> Option<usize> {
        let threshold = self.threshold;
        let idle = |entry: &Entry| !entry.pending && entry.due(now, threshold);
        let slot = self
            .entries
            .iter()
            .position(|entry| entry.key.is_none() && idle(entry))
            .or_else(|| self.entries.iter().position(idle))?;
        let entry = &mut self.entries[slot];
        if let (Some(_), Some(start)) = (entry.key, entry.start) {
            self.horizon = self.horizon.max(start + 1);
        }
        entry.advance_generation();
        if self.horizon > 0 {
            entry.open_window((self.horizon - 1) * 1000);
        }
        entry.key = Some(key);
        Some(slot)
    }
}

struct Stale<'a> {
    deferral: KeyedDeferral<&'a KeyedThrottle<u8, ManualClock>>,
    slot: usize,
    claimed_at: u64,
}

/// A live owner's deferral, and the index of its claim among the model's.
type Owner<'a> = (KeyedDeferral<&'a KeyedThrottle<u8, ManualClock>>, usize);

struct Run<'a> {
    throttle: &'a KeyedThrottle<u8, ManualClock>,
    clock: ManualClock,
    model: TableModel,
    owners: HashMap<u8, Owner<'a>>,
    leaked: HashMap<u8, usize>,
    stale: Vec<Stale<'a>>,
}

impl<'a> Run<'a> {
    /// Makes the owner of the deferral pending in `slot` (if anyone holds it) a stale one.
    fn revoke(&mut self, slot: usize, claimed_at: u64) {
        let holder = self
            .owners
            .iter()
            .find(|(_, (_, owned))| *owned == slot)
            .map(|(key, _)| *key);
        if let Some(key) = holder {
            let (deferral, slot) = self.owners.remove(&key).unwrap();
            self.stale.push(Stale {
                deferral,
                slot,
                claimed_at,
            });
        }
        self.leaked.retain(|_, leaked| *leaked != slot);
    }

    fn admit(&mut self, key: u8) -> Result<(), TestCaseError> {
        let now = self.clock.now_nanos();
        let answer = self.throttle.admit(&key);
        let slot = match self.model.find(key) {
            Some(slot) => slot,
            None => match self.model.take_entry(key, now) {
                Some(slot) => slot,
                None => {
                    prop_assert!(answer.is_full(), "key {key}: {answer:?}, expected Full");
                    self.model.refused += 1;
                    return Ok(());
                }
            },
        };
        let threshold = self.model.threshold;
        if self.model.entries[slot].pending {
            if self.model.lease_expired(slot, now) {
                prop_assert!(
                    answer.is_now(),
                    "key {key}: {answer:?}, expected a takeover"
                );
                let claimed_at = self.model.entries[slot].start.unwrap();
                let entry = &mut self.model.entries[slot];
                entry.start = Some((claimed_at + 1).max(now.div_ceil(1000)));
                entry.generation = 0;
                entry.pending = false;
                entry.flushed = false;
                self.model.ran(key, slot, false)?;
                self.revoke(slot, claimed_at);
            } else {
                prop_assert!(
                    answer.is_coalesced(),
                    "key {key}: {answer:?}, expected Coalesced"
                );
            }
            return Ok(());
        }
        let due = self.model.entries[slot].due(now, threshold);
        match (answer, self.model.mode, due) {
            (KeyedAdmission::Now, Mode::LeadingAndTrailing | Mode::LeadingOnly, true) => {
                self.model.entries[slot].open_window(now);
                self.model.ran(key, slot, false)?;
            }
            (KeyedAdmission::Deferred(deferral), Mode::TrailingOnly, true) => {
                let entry = &mut self.model.entries[slot];
                entry.open_window(now);
                entry.pending = true;
                prop_assert_eq!(deferral.deadline(), self.model.deadline(slot));
                self.owners.insert(key, (deferral, slot));
            }
            (
                KeyedAdmission::Deferred(deferral),
                Mode::LeadingAndTrailing | Mode::TrailingOnly,
                false,
            ) => {
                prop_assert_eq!(deferral.deadline(), self.model.deadline(slot), "G8: exact");
                self.model.entries[slot].pending = true;
                self.owners.insert(key, (deferral, slot));
            }
            (KeyedAdmission::Suppressed { until }, Mode::LeadingOnly, false) => {
                prop_assert_eq!(until, self.model.deadline(slot));
            }
            (answer, mode, due) => prop_assert!(
                false,
                "key {key}: {answer:?} in {mode:?}, due: {due}, at {now} ns, entry {:?}",
                self.model.entries[slot]
            ),
        }
        Ok(())
    }

    fn cancel(&mut self, key: u8) -> Result<(), TestCaseError> {
        let slot = self
            .model
            .find(key)
            .filter(|&slot| self.model.entries[slot].pending);
        prop_assert_eq!(
            self.throttle.cancel(&key),
            slot.is_some(),
            "cancel of key {}",
            key
        );
        if let Some(slot) = slot {
            let claimed_at = self.model.entries[slot].start.unwrap();
            self.model.entries[slot].advance_generation();
            self.revoke(slot, claimed_at);
        }
        prop_assert!(!self.throttle.cancel(&key), "cancel is idempotent");
        Ok(())
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        let now = self.clock.now_nanos();
        let threshold = self.model.threshold;
        match op {
            Op::Admit(key) => self.admit(key)?,
            Op::Advance(nanos) => self.clock.advance(Duration::from_nanos(nanos)),
            Op::Rewind(nanos) => self.clock.rewind(Duration::from_nanos(nanos)),
            Op::Run(key) => {
                if let Some((deferral, slot)) = self.owners.remove(&key) {
                    let entry = self.model.entries[slot];
                    let expected = if entry.flushed || entry.due(now, threshold) {
                        now
                    } else {
                        self.model.deadline(slot)
                    };
                    let clock = &self.clock;
                    prop_assert_eq!(deferral.run(|| clock.now_nanos()), Ok(expected));
                    let entry = &mut self.model.entries[slot];
                    let flushed = entry.flushed;
                    entry.open_window(expected);
                    entry.pending = false;
                    entry.flushed = false;
                    self.model.ran(key, slot, flushed)?;
                }
            }
            Op::TryRun(key) => {
                if let Some((deferral, slot)) = self.owners.remove(&key) {
                    let entry = self.model.entries[slot];
                    let due = entry.flushed || entry.due(now, threshold);
                    let clock = &self.clock;
                    match deferral.try_run(|| clock.now_nanos()) {
                        Ok(ran_at) => {
                            prop_assert!(due, "key {key} ran before its deadline");
                            prop_assert_eq!(ran_at, now);
                            let entry = &mut self.model.entries[slot];
                            let flushed = entry.flushed;
                            entry.open_window(now);
                            entry.pending = false;
                            entry.flushed = false;
                            self.model.ran(key, slot, flushed)?;
                        }
                        Err(NotRun::NotDue(deferral)) => {
                            prop_assert!(!due, "key {key}: a due deferral was refused");
                            self.owners.insert(key, (deferral, slot));
                        }
                        Err(NotRun::Revoked(why)) => {
                            prop_assert!(false, "key {key}'s live owner was revoked: {why}")
                        }
                    }
                }
            }
            Op::Drop(key) => {
                if let Some((_, slot)) = self.owners.remove(&key) {
                    self.model.entries[slot].pending = false;
                    self.model.entries[slot].flushed = false;
                }
            }
            Op::Forget(key) => {
                if let Some((deferral, slot)) = self.owners.remove(&key) {
                    std::mem::forget(deferral);
                    self.leaked.insert(key, slot);
                }
            }
            Op::Cancel(key) => self.cancel(key)?,
            Op::Flush(key) => {
                let slot = self
                    .model
                    .find(key)
                    .filter(|&slot| self.model.entries[slot].pending);
                prop_assert_eq!(self.throttle.flush(&key), slot.is_some());
                if let Some(slot) = slot {
                    self.model.entries[slot].flushed = true;
                }
            }
            Op::CancelMany(key, times) => {
                for _ in 0..times {
                    if !self
                        .model
                        .find(key)
                        .is_some_and(|slot| self.model.entries[slot].pending)
                    {
                        self.admit(key)?;
                    }
                    if self
                        .model
                        .find(key)
                        .is_some_and(|slot| self.model.entries[slot].pending)
                    {
                        self.cancel(key)?;
                    }
                }
            }
            Op::SetThreshold(nanos) => {
                self.throttle
                    .set_threshold(Duration::from_nanos(nanos))
                    .unwrap();
                self.model.threshold = nanos;
                for (_, threshold) in self.model.last_run.values_mut() {
                    *threshold = (*threshold).min(nanos);
                }
            }
            Op::StaleTryRun => {
                if !self.stale.is_empty() {
                    let Stale {
                        deferral,
                        slot,
                        claimed_at,
                    } = self.stale.remove(0);
                    let entry = self.model.entries[slot];
                    let moved = entry.start != Some(claimed_at);
                    let expired = self.model.lease.is_some_and(|lease| {
                        now.saturating_sub(claimed_at * 1000) >= threshold + lease
                    });
                    let expected = if moved && expired {
                        Revoked::TakenOver
                    } else {
                        Revoked::Cancelled
                    };
                    match deferral.try_run(|| ()) {
                        Err(NotRun::Revoked(why)) => prop_assert_eq!(why, expected),
                        Ok(()) => prop_assert!(false, "a revoked owner ran"),
                        Err(NotRun::NotDue(_)) => {
                            prop_assert!(false, "a revoked owner was told to wait")
                        }
                    }
                }
            }
            Op::StaleDrop => {
                if !self.stale.is_empty() {
                    drop(self.stale.remove(0));
                }
            }
        }
        Ok(())
    }

    /// The table and the model agree on every key, and a deferral is pending only while
    /// someone holds it (G2).
    fn check(&self, after: &Op) -> Result<(), TestCaseError> {
        for key in 0..KEYS {
            let entry = self.model.find(key).map(|slot| self.model.entries[slot]);
            let pending = entry.is_some_and(|entry| entry.pending);
            prop_assert_eq!(
                self.throttle.is_pending(&key),
                pending,
                "key {} after {:?}",
                key,
                after
            );
            prop_assert_eq!(
                self.throttle.last_run(&key),
                entry
                    .and_then(|entry| entry.start)
                    .map(|start| start * 1000),
                "key {} after {:?}: {:?}",
                key,
                after,
                self.model
            );
            prop_assert_eq!(
                pending,
                self.owners.contains_key(&key) || self.leaked.contains_key(&key),
                "G2: key {}",
                key
            );
        }
        prop_assert_eq!(self.throttle.refused(), self.model.refused);
        Ok(())
    }
}

fn check_table(
    threshold: u64,
    mode: Mode,
    lease: Option<u64>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1));
    let mut builder = KeyedThrottle::builder(Duration::from_nanos(threshold), ENTRIES)
        .clock(clock.clone())
        .mode(mode);
    if let Some(lease) = lease {
        builder = builder.lease(Duration::from_nanos(lease));
    }
    let throttle: KeyedThrottle<u8, ManualClock> = builder.build().unwrap();
    prop_assert_eq!(throttle.capacity(), ENTRIES);
    let mut run = Run {
        throttle: &throttle,
        clock,
        model: TableModel {
            threshold,
            mode,
            lease,
            entries: [Entry::default(); ENTRIES],
            horizon: 0,
            refused: 0,
            last_run: HashMap::new(),
        },
        owners: HashMap::new(),
        leaked: HashMap::new(),
        stale: Vec::new(),
    };
    for op in ops {
        run.apply(op.clone())?;
        run.check(&op)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_table_follows_the_sequential_model(
        (threshold, mode, lease, ops) in (threshold_nanos(), any_mode(), prop_oneof![2 => Just(None), 1 => (0..2_000_000u64).prop_map(Some)])
            .prop_flat_map(|(t, mode, lease)| {
                (Just(t), Just(mode), Just(lease), prop::collection::vec(op(t), 1..150))
            })
    ) {
        check_table(threshold, mode, lease, ops)?;
    }
}

// ---------------------------------------------------------------------------------------
// Eight threads on the real clock.

const THREADS: usize = 8;
const STRESS_THRESHOLD: Duration = Duration::from_micros(50);
const RUN_FOR: Duration = Duration::from_millis(1500);
/// Keys every thread hammers, so that callers race on one entry.
const HOT_KEYS: u64 = 4;
/// Keys drawn at random besides, far more than the table holds at once, so that entries
/// change hands while others are admitted.
const COLD_KEYS: u64 = 20_000;
const STRESS_CAPACITY: usize = 512;

#[test]
fn eight_threads_over_many_keys_keep_each_keys_runs_apart() {
    expected_panics::quiet();
    let throttle: Arc<KeyedThrottle<u64, StampClock>> = Arc::new(
        KeyedThrottle::builder(STRESS_THRESHOLD, STRESS_CAPACITY)
            .clock(StampClock(DefaultClock::new()))
            .build()
            .unwrap(),
    );
    let lost_cas = Arc::new(AtomicU64::new(0));
    let panics = Arc::new(AtomicU64::new(0));
    let full = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(THREADS));

    let threads: Vec<_> = (0..THREADS)
        .map(|id| {
            let (throttle, lost_cas, panics, full, barrier) = (
                throttle.clone(),
                lost_cas.clone(),
                panics.clone(),
                full.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let mut stamps: Vec<(u64, u64)> = Vec::new();
                let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ (id as u64 + 1);
                let mut next = move || {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed
                };
                barrier.wait();
                let start = Instant::now();
                while start.elapsed() < RUN_FOR {
                    let draw = next();
                    let key = if draw % 2 == 0 {
                        draw / 2 % HOT_KEYS
                    } else {
                        HOT_KEYS + draw / 2 % COLD_KEYS
                    };
                    let (answer, lost) = throttle.admit_counting_retries(&key);
                    lost_cas.fetch_add(u64::from(lost), Relaxed);
                    match answer {
                        KeyedAdmission::Now => stamps.push((key, last_reading())),
                        KeyedAdmission::Coalesced => {}
                        KeyedAdmission::Full => {
                            full.fetch_add(1, Relaxed);
                        }
                        KeyedAdmission::Suppressed { .. } => unreachable!("not leading-only"),
                        KeyedAdmission::Deferred(deferral) => match next() % 4 {
                            0 => stamps.extend(deferral.run(|| (key, last_reading())).ok()),
                            1 => drop(deferral),
                            2 => {
                                let crashed = std::panic::catch_unwind(
                                    std::panic::AssertUnwindSafe(move || {
                                        let _owner = deferral;
                                        expected_panics::expected("owner crashed");
                                    }),
                                );
                                assert!(crashed.is_err());
                                panics.fetch_add(1, Relaxed);
                            }
                            _ => {
                                if let Ok(stamp) = deferral.try_run(|| (key, last_reading())) {
                                    stamps.push(stamp);
                                }
                            }
                        },
                    }
                }
                stamps
            })
        })
        .collect();

    let mut stamps: Vec<(u64, u64)> = threads
        .into_iter()
        .flat_map(|thread| thread.join().unwrap())
        .collect();
    stamps.sort_unstable();
    let threshold = STRESS_THRESHOLD.as_nanos() as u64;
    let mut keys_run = 0;
    for pair in stamps.windows(2) {
        let ((a, earlier), (b, later)) = (pair[0], pair[1]);
        if a == b {
            assert!(
                later - earlier >= threshold,
                "G1: key {a} ran twice {} ns apart, threshold {threshold} ns",
                later - earlier
            );
        } else {
            keys_run += 1;
        }
    }
    assert!(stamps.len() > 1000, "only {} runs", stamps.len());
    assert!(
        keys_run > 1000,
        "only {keys_run} keys ran: entries did not change hands"
    );
    // Quiescent: nobody owns a deferral, so none may be pending.
    for key in 0..HOT_KEYS + COLD_KEYS {
        assert!(
            !throttle.is_pending(&key),
            "key {key}'s deferral was stranded"
        );
    }
    assert!(
        panics.load(Relaxed) > 0,
        "no owner crashed: the test exercised nothing"
    );
    let lost = lost_cas.load(Relaxed);
    assert!(
        lost > 0,
        "no CAS was ever lost: the threads did not contend"
    );
    eprintln!(
        "{} runs of {} keys, {} owner crashes, {lost} lost CASes, {} refused",
        stamps.len(),
        keys_run + 1,
        panics.load(Relaxed),
        full.load(Relaxed)
    );
}

#[test]
fn each_answer_reads_as_its_own_kind_and_prints_what_it_is() {
    let clock = ManualClock::new();
    let both: Table = KeyedThrottle::with_clock(T, 8, clock.clone()).unwrap();
    let leading: Table = KeyedThrottle::builder(T, 8)
        .clock(clock.clone())
        .mode(Mode::LeadingOnly)
        .build()
        .unwrap();
    let full: Table = KeyedThrottle::with_clock(T, 8, clock.clone()).unwrap();
    for key in 0..8 {
        assert!(full.admit(&key).is_now());
    }
    let _ = leading.admit(&1);
    let answers = [
        (both.admit(&1), "Now"),
        (
            both.admit(&1),
            "Deferred(KeyedDeferral { deadline: 10000000, spent: false, .. })",
        ),
        (both.admit(&1), "Coalesced"),
        (leading.admit(&1), "Suppressed { until: 10000000 }"),
        (full.admit(&8), "Full"),
    ];
    for (index, (answer, text)) in answers.iter().enumerate() {
        let kinds = [
            answer.is_now(),
            answer.is_deferred(),
            answer.is_coalesced(),
            answer.is_suppressed(),
            answer.is_full(),
        ];
        let mut expected = [false; 5];
        expected[index] = true;
        assert_eq!(kinds, expected, "{answer:?}");
        assert_eq!(format!("{answer:?}"), *text);
    }
    let text = format!("{full:?}");
    assert!(
        text.starts_with("KeyedThrottle { capacity: 8, threshold: 10ms, mode: LeadingAndTrailing")
            && text.contains("refused: 1"),
        "{text}"
    );
    let builder = KeyedThrottle::<u64>::builder(T, 8).counting(true);
    let text = format!("{builder:?}");
    assert!(
        text.starts_with("KeyedThrottleBuilder { threshold: 10ms, capacity: 8,")
            && text.contains("counting: true"),
        "{text}"
    );
}

#[test]
fn a_keyed_deferral_reads_its_remaining_time_and_waits_asynchronously() {
    let (table, clock) = table(8);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let no_timer = |_: Duration| -> std::future::Ready<()> {
        panic!("a wait on a ManualClock asked for a real timer")
    };
    assert!(table.admit(&1).is_now());
    clock.advance(Duration::from_millis(4));
    let deferral = deferred(table.admit(&1));
    assert_eq!(deferral.remaining(), Duration::from_millis(6));
    assert_eq!(runtime.block_on(deferral.wait_with(no_timer)), Ok(()));
    assert_eq!(clock.now(), T, "the clock moved exactly to the deadline");
    assert_eq!(
        table.last_run(&1),
        Some(10_000_000),
        "the wait stamped the run"
    );
    let deferral = deferred(table.admit(&1));
    assert!(table.cancel(&1));
    assert_eq!(
        runtime.block_on(deferral.wait_with(no_timer)),
        Err(Revoked::Cancelled)
    );
    #[cfg(feature = "tokio")]
    {
        let deferral = deferred(table.admit(&1));
        assert!(table.cancel(&1));
        assert_eq!(
            runtime.block_on(deferral.wait_async()),
            Err(Revoked::Cancelled)
        );
        let deferral = deferred(table.admit(&1));
        assert_eq!(runtime.block_on(deferral.wait_async()), Ok(()));
        assert_eq!(table.last_run(&1), Some(20_000_000));
    }
    assert!(!table.is_pending(&1));
}

#[test]
fn a_keyed_throttle_reports_its_mode_and_hands_over_its_skipped_count() {
    let clock = ManualClock::new();
    let table: Table = KeyedThrottle::builder(T, 8)
        .clock(clock.clone())
        .counting(true)
        .build()
        .unwrap();
    assert_eq!(table.mode(), Mode::LeadingAndTrailing);
    assert!(table.admit(&1).is_now());
    let _owner = deferred(table.admit(&1));
    for _ in 0..3 {
        assert!(table.admit(&1).is_coalesced());
    }
    assert_eq!(table.take_skipped(), 3);
    assert_eq!(table.take_skipped(), 0, "taken, so counted afresh");
    let leading: Table = KeyedThrottle::builder(T, 8)
        .clock(clock)
        .mode(Mode::LeadingOnly)
        .build()
        .unwrap();
    assert_eq!(leading.mode(), Mode::LeadingOnly);
    assert!(leading.admit(&1).is_now());
    assert!(leading.admit(&1).is_suppressed());
    assert_eq!(leading.take_skipped(), 0, "not counting");
}

#[test]
fn a_new_key_takes_an_entry_that_never_had_a_key_before_an_idle_one() {
    let (table, clock) = table(8);
    assert!(table.admit(&1).is_now());
    clock.advance(T * 2); // key 1's entry is idle
    assert!(table.admit(&2).is_now());
    assert_eq!(
        table.last_run(&1),
        Some(0),
        "key 2 took key 1's idle entry while others had never had a key"
    );
    assert_eq!(table.live_entries(), 1);
}
