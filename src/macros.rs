//! A throttle per call site: the Linux kernel's `printk_ratelimited`, glog's `LOG_EVERY_T`.

/// Runs a block at most once per threshold at this call site, and says how many calls it
/// skipped in between.
///
/// ```text
/// throttled!(threshold, { body })
/// throttled!(threshold, |skipped| { body })
/// ```
///
/// Each expansion declares its own `static` [`Throttle`](crate::Throttle) in
/// [leading-only](crate::Mode::LeadingOnly) mode on the [`DefaultClock`](crate::DefaultClock):
/// no allocation and no lazy initialization. The block runs on the calling thread when the
/// threshold has passed since its last run; the macro's value is `Some(block's value)` then,
/// `None` otherwise.
///
/// - **`threshold`** is a [`Duration`](core::time::Duration) given by a *constant
///   expression*, since it initializes a `static`: `Duration::from_millis(500)`, a `const`, a
///   `const fn` call. A value known only at run time (a local variable, a configuration field)
///   does not compile: the compiler reports `error[E0435]: attempt to use a non-constant value
///   in a constant`, or `error[E0015]` for a call to a function that is not `const`. For such a
///   threshold, keep a [`Throttle`](crate::Throttle) built with
///   [`Mode::LeadingOnly`](crate::Mode::LeadingOnly) yourself. A constant over
///   [`Throttle::MAX_THRESHOLD`](crate::Throttle::MAX_THRESHOLD) is a compile error too.
/// - **`body`** is a block, in braces: `throttled!(t, log_it())` matches no rule of the macro.
///   It is evaluated outside the scope of the statics the macro declares, so its names (and
///   the threshold's) mean what they mean around the macro, a `THROTTLE` or `SKIPPED` of your
///   own included. `return`, `?` and `break` in it act on the enclosing function or loop.
///
/// **No trailing run.** A call skipped inside the window is not run later: like the kernel's
/// `printk_ratelimited`, the macro suppresses. For a trailing run that catches the last call,
/// use a [`Throttle`](crate::Throttle) or a [`Detached`](crate::Detached) instead.
///
/// With `|skipped|`, the block gets the number of calls skipped at this site since its last
/// run (a `u64`), for a "N calls suppressed" message.
///
/// **What a skipped call costs.** A leading-only throttle cannot tell that its window has
/// ended without the time, so every call reads the clock, skipped calls included: on the
/// default clock, a TSC reading and the clock's own relaxed loads (it moves a process-wide
/// high-water mark at most about once a millisecond). Then the call loads the throttle's
/// state word and threshold, and writes nothing to the throttle. With `|skipped|`, a skipped
/// call also adds one to the site's counter with a relaxed `fetch_add`: a shared write, to
/// one counter per call site that every thread skipping there writes. Without `|skipped|`, a
/// skipped call writes nothing.
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
///
/// A threshold known only at run time does not compile:
///
/// ```compile_fail,E0435
/// # use atomic_throttle::throttled;
/// # use std::time::Duration;
/// let secs = 5;
/// throttled!(Duration::from_secs(secs), { println!("hello") });
/// ```
///
/// Nor does a body without braces:
///
/// ```compile_fail
/// # use atomic_throttle::throttled;
/// # use std::time::Duration;
/// throttled!(Duration::from_secs(5), println!("hello"));
/// ```
#[macro_export]
macro_rules! throttled {
    ($threshold:expr, |$skipped:ident| $body:block) => {{
        // The admission is decided in a block of its own, so that neither the threshold nor
        // the body is in the scope of the macro's statics: a user's own `THROTTLE` or
        // `SKIPPED` keeps its meaning in both.
        let admitted: ::core::option::Option<u64> = {
            const __ATOMIC_THROTTLE_THRESHOLD: ::core::time::Duration = $threshold;
            {
                $crate::__call_site_throttle!(THROTTLE, __ATOMIC_THROTTLE_THRESHOLD);
                static SKIPPED: $crate::__private::AtomicU64 = $crate::__private::AtomicU64::new(0);
                if THROTTLE.admit().is_now() {
                    // Relaxed: a count, ordered with nothing; every skipped call is counted
                    // once.
                    ::core::option::Option::Some(SKIPPED.swap(0, $crate::__private::Relaxed))
                } else {
                    SKIPPED.fetch_add(1, $crate::__private::Relaxed);
                    ::core::option::Option::None
                }
            }
        };
        match admitted {
            ::core::option::Option::Some(skipped) => {
                let $skipped: u64 = skipped;
                ::core::option::Option::Some($body)
            }
            ::core::option::Option::None => ::core::option::Option::None,
        }
    }};
    ($threshold:expr, $body:block) => {{
        // As above: the body is not in the scope of the macro's static.
        let admitted: bool = {
            const __ATOMIC_THROTTLE_THRESHOLD: ::core::time::Duration = $threshold;
            {
                $crate::__call_site_throttle!(THROTTLE, __ATOMIC_THROTTLE_THRESHOLD);
                THROTTLE.admit().is_now()
            }
        };
        if admitted {
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
