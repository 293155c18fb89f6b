//! Panics that tests raise on purpose, kept off the output without touching other tests.
//!
//! The process has one panic hook, and tests in a binary run in parallel: a test that swaps the
//! hook and restores it can swallow another test's assertion message, and two such tests can
//! restore each other's hooks in the wrong order. So the hook is replaced once per binary and
//! never restored: it stays silent for payloads of the types below, which only deliberate
//! panics use, and passes every other panic (a failing assertion) to the default hook.
#![allow(dead_code)]

use std::sync::Once;

/// The payload of a deliberate panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected(pub &'static str);

/// A deliberate panic's payload whose own `Drop` panics too (with an [`Expected`] payload).
#[derive(Debug)]
pub struct ExplodesOnDrop;

impl Drop for ExplodesOnDrop {
    fn drop(&mut self) {
        std::panic::panic_any(Expected("a payload's drop"));
    }
}

/// Installs the filtering hook, once per test binary.
pub fn quiet() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            if !(payload.is::<Expected>() || payload.is::<ExplodesOnDrop>()) {
                default(info);
            }
        }));
    });
}

/// Panics on purpose.
pub fn expected(what: &'static str) -> ! {
    quiet();
    std::panic::panic_any(Expected(what))
}

/// Panics on purpose with a payload whose drop panics.
pub fn explosive() -> ! {
    quiet();
    std::panic::panic_any(ExplodesOnDrop)
}
