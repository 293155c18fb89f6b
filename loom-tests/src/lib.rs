//! Support for the loom models in `tests/`: the models themselves use only the public API of
//! `atomic-throttle`, as a downstream crate's loom tests would.
//!
//! Build and run them with `--cfg loom` (see `.ci/test`). Each model is a negative control for
//! one or more deliberately broken variants of the crate, selected at run time with
//! `ATOMIC_THROTTLE_MUTANT`: [`verify`] then asserts that the model fails, and how.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Runs `model` under loom and checks the outcome the active mutant calls for.
///
/// - No mutant: every interleaving must pass.
/// - A mutant listed in `catches`, as `(mutant, failure)`: some interleaving must fail, with a
///   panic whose message contains `failure` (the assertion the bug is meant to break, or
///   loom's own report of it), or the model does not check what it claims.
/// - Any other mutant: refused, so that a run cannot pass by checking nothing.
///
/// Prints how many executions loom explored and how long it took.
///
/// Every interleaving is explored, with no preemption bound (unless `LOOM_MAX_PREEMPTIONS`
/// sets one); see [`verify_bounded`] for models too large for that.
pub fn verify<F>(name: &str, catches: &[(&str, &str)], model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    verify_bounded(name, None, catches, model)
}

/// [`verify`], exploring only the interleavings with at most `preemptions` preemptions (loom's
/// own bound, as its docs recommend for models with several threads that each take many
/// steps), unless `LOOM_MAX_PREEMPTIONS` sets another.
pub fn verify_bounded<F>(name: &str, preemptions: Option<usize>, catches: &[(&str, &str)], model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    let executions = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = {
        let executions = executions.clone();
        move || {
            executions.fetch_add(1, Ordering::Relaxed);
            model();
        }
    };
    let started = Instant::now();
    let builder = builder(preemptions);
    let Ok(mutant) = std::env::var("ATOMIC_THROTTLE_MUTANT") else {
        builder.check(counted);
        eprintln!(
            "{name}: passed {} executions in {:.2?}",
            executions.load(Ordering::Relaxed),
            started.elapsed()
        );
        return;
    };
    let Some((_, failure)) = catches.iter().find(|(caught, _)| *caught == mutant) else {
        panic!(
            "{name} is not a negative control for mutant {mutant}; select its controls with a \
             test name filter"
        );
    };
    let context = format!("{name} against mutant {mutant}");
    let message = expect_failure(&context, failure, move || builder.check(counted));
    eprintln!(
        "{name}: caught mutant {mutant} after {} executions in {:.2?}: {}",
        executions.load(Ordering::Relaxed),
        started.elapsed(),
        message.lines().next().unwrap_or_default()
    );
}

/// Expects `model` to fail under loom with a panic whose message contains `failure`: for a
/// model that demonstrates a reordering the docs warn of. Refuses to run under a mutant.
pub fn demonstrate_failure<F>(name: &str, failure: &str, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    assert!(
        std::env::var("ATOMIC_THROTTLE_MUTANT").is_err(),
        "{name} demonstrates documented behaviour and is no mutant's control"
    );
    let started = Instant::now();
    expect_failure(name, failure, move || loom::model(model));
    eprintln!(
        "{name}: showed the documented reordering in {:.2?}",
        started.elapsed()
    );
}

/// Keeps the panics that the models cause on purpose out of the output.
pub fn silence_expected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&"owner crashed") {
                default(info);
            }
        }));
    });
}

/// A loom model builder with `preemptions` as its bound, unless the environment sets one.
fn builder(preemptions: Option<usize>) -> loom::model::Builder {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = preemptions;
    }
    builder
}

/// Runs `check` (a loom model), which must find an interleaving that panics with a message
/// containing `failure`; returns the message. `context` names the run in the assertions.
fn expect_failure(context: &str, failure: &str, check: impl FnOnce()) -> String {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check));
    let Err(payload) = outcome else {
        panic!("{context}: every interleaving passed; the model does not catch what it is about");
    };
    let message = panic_message(&*payload);
    assert!(
        message.contains(failure),
        "{context}: failed, but not with {failure:?}: {message}"
    );
    message
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "(a panic without a message)".to_owned()
    }
}
