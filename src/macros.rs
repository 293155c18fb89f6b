//! A throttle per call site: the Linux kernel's `printk_ratelimited`, glog's `LOG_EVERY_T`.

/// Runs a block at most once per threshold at this call site, and says how many calls it
/// skipped in between.
///
/// Each expansion declares its own `static` [`Throttle`](crate::Throttle) in
/// [leading-only](crate::Mode::LeadingOnly) mode on the [`DefaultClock`](crate::DefaultClock):
/// no allocation, no lazy initialization, and one atomic load when the call is skipped. The
/// block runs on the calling thread when the threshold has passed since its last run; the
/// macro's value is `Some(block's value)` then, `None` otherwise. The threshold must be a
/// constant expression.
///
/// **No trailing run.** A call skipped inside the window is not run later: like the kernel's
/// `printk_ratelimited`, the macro suppresses. For a trailing run that catches the last call,
/// use a [`Throttle`](crate::Throttle) or a [`Detached`](crate::Detached) instead.
///
/// With `|skipped|`, the block gets the number of calls skipped at this site since its last
/// run (a `u64`), for a "N calls suppressed" message. Counting costs a shared write per
/// skipped call (one counter per call site); without `|skipped|` a skipped call writes
/// nothing.
///
/// # Examples
///
/// Rate-limited logging with the `log` crate:
///
/// ```
/// use atomic_throttle::throttled;
/// use std::time::Duration;
///
/// fn on_packet_dropped(reason: &str) {
///     throttled!(Duration::from_secs(1), |skipped| {
///         log::warn!("packet dropped: {reason} ({skipped} more suppressed)");
///     });
/// }
///
/// for _ in 0..1000 {
///     on_packet_dropped("queue full"); // logs once, then once a second at most
/// }
/// ```
///
/// With `tracing`, and using the value:
///
/// ```
/// use atomic_throttle::throttled;
/// use std::time::Duration;
///
/// let mut logged = 0;
/// for attempt in 0..100 {
///     if throttled!(Duration::from_secs(60), {
///         tracing::error!(attempt, "connection refused");
///     })
///     .is_some()
///     {
///         logged += 1;
///     }
/// }
/// assert_eq!(logged, 1);
/// ```
#[macro_export]
macro_rules! throttled {
    ($threshold:expr, |$skipped:ident| $body:block) => {{
        $crate::__call_site_throttle!(THROTTLE, $threshold);
        static SKIPPED: $crate::__private::AtomicU64 = $crate::__private::AtomicU64::new(0);
        if THROTTLE.admit().is_now() {
            // Relaxed: a count, ordered with nothing; every skipped call is counted once.
            let $skipped: u64 = SKIPPED.swap(0, $crate::__private::Relaxed);
            ::core::option::Option::Some($body)
        } else {
            SKIPPED.fetch_add(1, $crate::__private::Relaxed);
            ::core::option::Option::None
        }
    }};
    ($threshold:expr, $body:block) => {{
        $crate::__call_site_throttle!(THROTTLE, $threshold);
        if THROTTLE.admit().is_now() {
            ::core::option::Option::Some($body)
        } else {
            ::core::option::Option::None
        }
    }};
}

/// Declares a call site's static leading-only throttle: a `const` static normally, a
/// per-execution lazy static under loom (whose atomics cannot be built in a `const`, and whose
/// models must not share state between executions).
#[doc(hidden)]
#[cfg(not(loom))]
#[macro_export]
macro_rules! __call_site_throttle {
    ($name:ident, $threshold:expr) => {
        static $name: $crate::Throttle =
            $crate::Throttle::with_mode($threshold, $crate::Mode::LeadingOnly);
    };
}

/// Declares a call site's static leading-only throttle: a `const` static normally, a
/// per-execution lazy static under loom (whose atomics cannot be built in a `const`, and whose
/// models must not share state between executions).
#[doc(hidden)]
#[cfg(loom)]
#[macro_export]
macro_rules! __call_site_throttle {
    ($name:ident, $threshold:expr) => {
        $crate::__private::lazy_static! {
            static ref $name: $crate::Throttle =
                $crate::Throttle::with_mode($threshold, $crate::Mode::LeadingOnly);
        }
    };
}
