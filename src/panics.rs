//! Catching what a user's code throws at a thread that must not die: the work, a panic hook,
//! and the payloads they panic with.

use core::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// What a panic hook does: receives the payload of each panic the work raises.
pub(crate) type HookFn = dyn Fn(&(dyn Any + Send)) + Send + Sync;

/// A panic hook, as a detached throttle keeps it.
pub(crate) type PanicHook = Box<HookFn>;

/// Hands a caught panic's payload to `hook`, then disposes of it; a panic in the hook, or in
/// dropping either payload, is caught too.
pub(crate) fn report(hook: Option<&HookFn>, payload: Box<dyn Any + Send>) {
    if let Some(hook) = hook {
        if let Err(from_hook) = catch_unwind(AssertUnwindSafe(|| hook(&*payload))) {
            dispose(from_hook);
        }
    }
    dispose(payload);
}

/// Drops a panic's payload, whose `Drop` may itself panic: that panic is caught, and its own
/// payload is leaked rather than dropped, so that no chain of panicking payloads can escape.
pub(crate) fn dispose(payload: Box<dyn Any + Send>) {
    if let Err(from_drop) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        core::mem::forget(from_drop);
    }
}
