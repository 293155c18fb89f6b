//! Random sequences of operations against a plain sequential model of the contract, checking
//! every answer exactly, and spacing, no stranding and clock faults after every step.
//!
//! The model is written in the contract's own terms: a window opened at a stamp (the reading
//! rounded up to a whole microsecond), due once a reading lies at least the threshold past it,
//! a backward step counting as no time. It covers every mode, zero and sub-microsecond
//! thresholds, clocks that step back, live threshold changes, flush and cancel (with the
//! generation wrapping after 127 cancels in one window), leaked owners with and without a
//! lease, and owners that come back after their deferral was revoked.

use atomic_throttle::{Admission, Clock, Deferral, ManualClock, Mode, NotRun, Revoked, Throttle};
use proptest::prelude::*;
use std::time::Duration;

#[derive(Debug, Clone)]
enum Op {
    Admit,
    Advance(u64),
    Rewind(u64),
    Run,
    TryRun,
    Drop,
    Forget,
    Cancel,
    Flush,
    SetThreshold(u64),
    /// Claim and cancel this many times in a row (the generation wraps after 127).
    CancelMany(u8),
    /// The oldest revoked owner tries to run, or is dropped.
    StaleTryRun,
    StaleDrop,
}

fn op(threshold: u64) -> impl Strategy<Value = Op> {
    let span = threshold.max(4096) * 3;
    prop_oneof![
        8 => Just(Op::Admit),
        6 => (0..span).prop_map(Op::Advance),
        // Whole microseconds now and then, where deadlines are exact.
        2 => (0..span / 1000).prop_map(|us| Op::Advance(us * 1000)),
        2 => (0..span).prop_map(Op::Rewind),
        2 => Just(Op::Run),
        3 => Just(Op::TryRun),
        2 => Just(Op::Drop),
        1 => Just(Op::Forget),
        2 => Just(Op::Cancel),
        2 => Just(Op::Flush),
        1 => threshold_nanos().prop_map(Op::SetThreshold),
        1 => any::<u8>().prop_map(Op::CancelMany),
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
        Just(1_023),
        Just(1_024),
        Just(10_000),
        1..5_000_000u64,
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        2 => Just(Mode::LeadingAndTrailing),
        1 => Just(Mode::LeadingOnly),
        1 => Just(Mode::TrailingOnly),
    ]
}

fn lease() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![2 => Just(None), 1 => (0..2_000_000u64).prop_map(Some)]
}

/// How many cancels one window's generation counts before the next moves the stamp on.
const CANCELS_PER_STAMP: u32 = 128;

/// The contract, written as plainly as possible.
#[derive(Debug)]
struct Model {
    threshold: u64,
    mode: Mode,
    lease: Option<u64>,
    /// The stamp that opened the current window, in microseconds.
    start: Option<u64>,
    pending: bool,
    flushed: bool,
    /// Cancels since the stamp last moved.
    cancels: u32,
    /// The stamp of the last run, its threshold and whether it was flushed: for spacing.
    last_run: Option<u64>,
}

impl Model {
    fn due(&self, now: u64) -> bool {
        match self.start {
            None => true,
            // A reading behind the stamp counts as no time.
            Some(start) => now.saturating_sub(start * 1000) >= self.threshold,
        }
    }

    fn deadline(&self) -> u64 {
        self.start.expect("a deferral has a window") * 1000 + self.threshold
    }

    /// Moves the window's start to the later of where it is and `now` rounded up.
    fn open_window(&mut self, now: u64) {
        let at = self.start.unwrap_or(0).max(now.div_ceil(1000));
        if self.start != Some(at) {
            self.cancels = 0;
        }
        self.start = Some(at);
    }

    /// Records a run stamped at the new window's start, checking spacing against the last.
    fn run(&mut self, now: u64, threshold: u64, flushed: bool) -> Result<(), TestCaseError> {
        self.open_window(now);
        let stamp = self.start.unwrap() * 1000;
        if let (Some(last), false) = (self.last_run, flushed) {
            prop_assert!(
                stamp >= last + threshold,
                "G1: run stamped at {stamp} ns, {} ns after the last, threshold {threshold} ns",
                stamp - last
            );
        }
        self.last_run = Some(stamp);
        self.pending = false;
        self.flushed = false;
        Ok(())
    }

    fn lease_expired(&self, start: u64, now: u64) -> bool {
        self.lease
            .is_some_and(|lease| now.saturating_sub(start * 1000) >= self.threshold + lease)
    }

    fn cancel(&mut self) {
        self.pending = false;
        self.flushed = false;
        self.cancels += 1;
        if self.cancels == CANCELS_PER_STAMP {
            *self.start.as_mut().unwrap() += 1;
            self.cancels = 0;
        }
    }
}

/// An owner whose deferral was revoked, with the window its claim saw.
struct Stale<'a> {
    deferral: Deferral<&'a Throttle<ManualClock>>,
    claimed_at: u64,
}

/// One admission, checked against the model.
fn admit<'t>(
    throttle: &'t Throttle<ManualClock>,
    clock: &ManualClock,
    model: &mut Model,
    owner: &mut Option<Deferral<&'t Throttle<ManualClock>>>,
    stale: &mut Vec<Stale<'t>>,
    leaked: &mut bool,
) -> Result<(), TestCaseError> {
    let now = clock.now_nanos();
    let answer = throttle.admit();
    if model.pending {
        let start = model.start.unwrap();
        if model.lease_expired(start, now) {
            prop_assert!(
                answer.is_now(),
                "{answer:?}: the lease expired, expected a takeover"
            );
            drop(answer);
            let taken = model.start.unwrap() + 1;
            model.start = Some(taken.max(now.div_ceil(1000)));
            model.cancels = 0;
            let stamp = model.start.unwrap() * 1000;
            model.last_run = Some(stamp);
            model.pending = false;
            model.flushed = false;
            *leaked = false;
            if let Some(deferral) = owner.take() {
                stale.push(Stale {
                    deferral,
                    claimed_at: start,
                });
            }
        } else {
            prop_assert!(
                answer.is_coalesced(),
                "{answer:?} while a deferral is pending"
            );
        }
        return Ok(());
    }
    let due = model.due(now);
    match (answer, model.mode, due) {
        (Admission::Now, Mode::LeadingAndTrailing | Mode::LeadingOnly, true) => {
            model.run(now, model.threshold, false)?;
        }
        (Admission::Deferred(deferral), Mode::TrailingOnly, true) => {
            model.open_window(now);
            model.pending = true;
            *owner = Some(deferral);
        }
        (Admission::Deferred(deferral), Mode::LeadingAndTrailing | Mode::TrailingOnly, false) => {
            prop_assert_eq!(
                deferral.deadline(),
                model.deadline(),
                "G8: the deadline is exact"
            );
            model.pending = true;
            *owner = Some(deferral);
        }
        (Admission::Suppressed { until }, Mode::LeadingOnly, false) => {
            prop_assert_eq!(until, model.deadline());
        }
        (answer, mode, due) => {
            prop_assert!(
                false,
                "{answer:?} in {mode:?}, due: {due}, at {now} ns, model {model:?}"
            )
        }
    }
    Ok(())
}

fn check(
    threshold: u64,
    mode: Mode,
    lease: Option<u64>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1));
    let mut builder = Throttle::builder(Duration::from_nanos(threshold))
        .clock(clock.clone())
        .mode(mode);
    if let Some(lease) = lease {
        builder = builder.lease(Duration::from_nanos(lease));
    }
    let throttle = builder.build().unwrap();
    let mut model = Model {
        threshold,
        mode,
        lease,
        start: None,
        pending: false,
        flushed: false,
        cancels: 0,
        last_run: None,
    };
    let mut owner: Option<Deferral<&Throttle<ManualClock>>> = None;
    let mut stale: Vec<Stale<'_>> = Vec::new();
    let mut leaked = false;

    for op in ops {
        let now = clock.now_nanos();
        match op {
            Op::Admit => admit(
                &throttle,
                &clock,
                &mut model,
                &mut owner,
                &mut stale,
                &mut leaked,
            )?,
            Op::Advance(nanos) => clock.advance(Duration::from_nanos(nanos)),
            Op::Rewind(nanos) => clock.rewind(Duration::from_nanos(nanos)),
            Op::Run => {
                if let Some(deferral) = owner.take() {
                    let expected = if model.flushed || model.due(now) {
                        now
                    } else {
                        model.deadline()
                    };
                    let ran_at = deferral.run(|| clock.now_nanos());
                    prop_assert_eq!(ran_at, Ok(expected), "the run came at the wrong time");
                    let flushed = model.flushed;
                    model.run(expected, model.threshold, flushed)?;
                }
            }
            Op::TryRun => {
                if let Some(deferral) = owner.take() {
                    let due = model.flushed || model.due(now);
                    match deferral.try_run(|| clock.now_nanos()) {
                        Ok(ran_at) => {
                            prop_assert!(
                                due,
                                "try_run ran {} ns before the deadline",
                                model.deadline() - now
                            );
                            prop_assert_eq!(ran_at, now);
                            let flushed = model.flushed;
                            model.run(now, model.threshold, flushed)?;
                        }
                        Err(NotRun::NotDue(deferral)) => {
                            prop_assert!(
                                !due,
                                "try_run refused a due deferral at {now} ns, deadline {}",
                                model.deadline()
                            );
                            owner = Some(deferral);
                        }
                        Err(NotRun::Revoked(why)) => {
                            prop_assert!(false, "the live owner was revoked: {why}")
                        }
                    }
                }
            }
            Op::Drop => {
                if owner.take().is_some() {
                    model.pending = false;
                    model.flushed = false;
                }
            }
            Op::Forget => {
                if let Some(deferral) = owner.take() {
                    std::mem::forget(deferral);
                    leaked = true;
                }
            }
            Op::Cancel => {
                prop_assert_eq!(throttle.cancel(), model.pending);
                if model.pending {
                    let claimed_at = model.start.unwrap();
                    model.cancel();
                    leaked = false;
                    if let Some(deferral) = owner.take() {
                        stale.push(Stale {
                            deferral,
                            claimed_at,
                        });
                    }
                }
                prop_assert!(!throttle.cancel(), "cancel is idempotent");
            }
            Op::Flush => {
                prop_assert_eq!(throttle.flush(), model.pending);
                if model.pending {
                    model.flushed = true;
                }
            }
            Op::SetThreshold(nanos) => {
                throttle.set_threshold(Duration::from_nanos(nanos)).unwrap();
                model.threshold = nanos;
            }
            Op::CancelMany(times) => {
                for _ in 0..times {
                    if !model.pending {
                        admit(
                            &throttle,
                            &clock,
                            &mut model,
                            &mut owner,
                            &mut stale,
                            &mut leaked,
                        )?;
                    }
                    if model.pending {
                        let claimed_at = model.start.unwrap();
                        prop_assert!(throttle.cancel());
                        model.cancel();
                        leaked = false;
                        if let Some(deferral) = owner.take() {
                            stale.push(Stale {
                                deferral,
                                claimed_at,
                            });
                        }
                    }
                }
            }
            Op::StaleTryRun => {
                if !stale.is_empty() {
                    let Stale {
                        deferral,
                        claimed_at,
                    } = stale.remove(0);
                    let moved = model.start != Some(claimed_at);
                    let expected = if moved && model.lease_expired(claimed_at, now) {
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
                if !stale.is_empty() {
                    drop(stale.remove(0));
                }
            }
        }
        // The throttle and the model agree on the state after every step.
        prop_assert_eq!(throttle.is_pending(), model.pending, "after {:?}", model);
        prop_assert_eq!(throttle.last_run(), model.start.map(|start| start * 1000));
        // G2: a deferral is pending only while someone holds it (or a leaked owner does).
        prop_assert_eq!(model.pending, owner.is_some() || leaked);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn the_throttle_follows_the_sequential_model(
        (threshold, mode, lease, ops) in (threshold_nanos(), mode(), lease())
            .prop_flat_map(|(t, mode, lease)| {
                (Just(t), Just(mode), Just(lease), prop::collection::vec(op(t), 1..120))
            })
    ) {
        check(threshold, mode, lease, ops)?;
    }
}

#[test]
fn a_cancelled_owner_held_through_many_cancels_never_touches_a_later_claim() {
    // The generation wraps after 127 cancels in one window; the 128th moves the stamp on.
    // An owner cancelled at the start and held through 300 more claim-and-cancel cycles
    // still finds its deferral revoked, and its drop clears nobody else's claim.
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Duration::from_millis(10), clock.clone()).unwrap();
    assert!(throttle.admit().is_now());
    let Admission::Deferred(first) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert!(throttle.cancel());
    let Admission::Deferred(second) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert!(throttle.cancel());
    for cycle in 0..299 {
        let next = throttle.admit();
        assert!(next.is_deferred(), "cycle {cycle}: {next:?}");
        std::mem::forget(next); // held elsewhere
        assert!(throttle.cancel());
        let live = throttle.admit();
        assert!(live.is_deferred());
        drop(live);
    }
    assert_eq!(
        throttle.last_run(),
        Some(2_000),
        "two wraps moved the window 2 us on"
    );
    let Admission::Deferred(live) = throttle.admit() else {
        panic!("expected Deferred")
    };
    assert_eq!(
        first.try_run(|| ()).unwrap_err().to_string(),
        "the deferral was cancelled"
    );
    drop(second);
    assert!(
        throttle.is_pending(),
        "a stale owner cleared the live claim"
    );
    assert!(throttle.admit().is_coalesced());
    assert_eq!(live.run(|| clock.now_nanos()), Ok(10_002_000));
}
