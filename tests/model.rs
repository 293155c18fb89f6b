//! Random sequences of operations against a plain sequential model of SPEC.md, checking G1,
//! G2 and G5 after every step.

use atomic_throttle::{Admission, Clock, Deferral, ManualClock, Throttle};
use proptest::prelude::*;
use std::time::Duration;

/// The state counts time in ticks of 1024 ns, so a window may end up to two ticks after the
/// threshold; inside that slack either answer is allowed.
const SLACK: u64 = 2 * 1024;

#[derive(Debug, Clone)]
enum Op {
    Admit,
    Advance(u64),
    Rewind(u64),
    Run,
    TryRun,
    Drop,
}

fn op(threshold: u64) -> impl Strategy<Value = Op> {
    let span = threshold.max(4096) * 3;
    prop_oneof![
        4 => Just(Op::Admit),
        3 => (0..span).prop_map(Op::Advance),
        1 => (0..span).prop_map(Op::Rewind),
        1 => Just(Op::Run),
        2 => Just(Op::TryRun),
        1 => Just(Op::Drop),
    ]
}

fn threshold() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(1_023),
        Just(1_024),
        Just(10_000),
        1..5_000_000u64,
    ]
}

/// SPEC.md, written as plainly as possible, in nanoseconds.
#[derive(Debug, Default)]
struct Model {
    /// The clock reading of the last run.
    last: Option<u64>,
    /// Whether a deferral is pending.
    pending: bool,
}

impl Model {
    /// Time since the last run; a reading behind it counts as no time (G5).
    fn elapsed(&self, now: u64) -> Option<u64> {
        self.last.map(|last| now.saturating_sub(last))
    }

    /// Records a run at `now` and checks G1 against the previous one. A reading behind the
    /// last run counts as no time, so the run happens, on the throttle's clock, at the later
    /// of the two (only a zero threshold runs such a reading).
    fn run_at(&mut self, now: u64, threshold: u64) -> Result<(), TestCaseError> {
        let now = self.last.map_or(now, |last| now.max(last));
        if let Some(last) = self.last {
            prop_assert!(
                now >= last + threshold,
                "G1: run at {now} ns, {} ns after the last, threshold {threshold} ns",
                now.wrapping_sub(last)
            );
        }
        self.last = Some(now);
        Ok(())
    }
}

fn check(threshold: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1));
    let throttle = Throttle::with_clock(Duration::from_nanos(threshold), clock.clone()).unwrap();
    let mut model = Model::default();
    let mut owner: Option<Deferral<'_, ManualClock>> = None;

    for op in ops {
        let now = clock.now_nanos();
        match op {
            Op::Admit => match throttle.admit() {
                Admission::Coalesced => prop_assert!(model.pending, "Coalesced with no owner"),
                answer => {
                    prop_assert!(!model.pending, "{answer:?} while a deferral is pending");
                    let elapsed = model.elapsed(now);
                    match answer {
                        Admission::Now => {
                            if let Some(elapsed) = elapsed {
                                prop_assert!(elapsed >= threshold, "Now after {elapsed} ns");
                            }
                            model.run_at(now, threshold)?;
                        }
                        Admission::Deferred(deferral) => {
                            let elapsed = elapsed.expect("Deferred before any run");
                            prop_assert!(
                                elapsed < threshold + SLACK,
                                "Deferred after {elapsed} ns, threshold {threshold} ns"
                            );
                            model.pending = true;
                            owner = Some(deferral);
                        }
                        Admission::Coalesced => unreachable!(),
                    }
                }
            },
            Op::Advance(nanos) => clock.advance(Duration::from_nanos(nanos)),
            Op::Rewind(nanos) => clock.rewind(Duration::from_nanos(nanos)),
            Op::Run => {
                if let Some(deferral) = owner.take() {
                    let ran_at = deferral.run(|| clock.now_nanos());
                    model.run_at(ran_at, threshold)?;
                    model.pending = false;
                }
            }
            Op::TryRun => {
                if let Some(deferral) = owner.take() {
                    let elapsed = model.elapsed(now).unwrap();
                    match deferral.try_run(|| clock.now_nanos()) {
                        Ok(ran_at) => {
                            prop_assert_eq!(ran_at, now);
                            model.run_at(ran_at, threshold)?;
                            model.pending = false;
                        }
                        Err(deferral) => {
                            prop_assert!(
                                elapsed < threshold + SLACK,
                                "try_run refused {elapsed} ns after the last run"
                            );
                            owner = Some(deferral);
                        }
                    }
                }
            }
            Op::Drop => {
                if owner.take().is_some() {
                    model.pending = false;
                }
            }
        }
        // G2: the throttle reports a pending deferral exactly while an owner holds one.
        prop_assert_eq!(throttle.is_pending(), model.pending);
        prop_assert_eq!(owner.is_some(), model.pending);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_throttle_follows_the_sequential_model(
        (threshold, ops) in threshold().prop_flat_map(|t| (Just(t), prop::collection::vec(op(t), 1..80)))
    ) {
        check(threshold, ops)?;
    }
}
