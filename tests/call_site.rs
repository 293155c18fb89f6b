//! A throttle per call site: `throttled!`, and `const` statics on the default clock.

use atomic_throttle::throttled;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_millis(200);

fn site_a(hits: &mut Vec<u64>) {
    throttled!(T, |skipped| {
        hits.push(skipped);
    });
}

fn site_b() -> Option<&'static str> {
    throttled!(T, { "b ran" })
}

#[test]
fn each_call_site_runs_once_per_threshold_and_counts_what_it_skipped() {
    let mut hits = Vec::new();
    let start = Instant::now();
    for _ in 0..1000 {
        site_a(&mut hits);
    }
    // Another call site has its own throttle.
    assert_eq!(site_b(), Some("b ran"));
    assert_eq!(site_b(), None);
    if start.elapsed() < T {
        assert_eq!(hits, [0], "one run, nothing skipped before it");
    }
    std::thread::sleep(T);
    site_a(&mut hits);
    assert_eq!(hits.len(), 2, "{hits:?}");
    // Every call between the two runs was skipped and counted (fewer if the window ended
    // during the loop on a very slow machine).
    assert!(
        hits[1] <= 999 && hits.iter().sum::<u64>() == 999,
        "{hits:?}"
    );
}

#[test]
fn the_value_is_the_blocks_when_it_runs() {
    let ran: Vec<Option<u32>> = (0..3)
        .map(|i| throttled!(Duration::from_secs(60), { i }))
        .collect();
    assert_eq!(ran, [Some(0), None, None]);
}

/// The user's own items, named like the macro's statics, with other types.
mod users_names {
    use atomic_throttle::throttled;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    use std::time::Duration;

    static THROTTLE: &str = "the user's THROTTLE";
    static SKIPPED: AtomicU32 = AtomicU32::new(7);
    const THRESHOLD: Duration = Duration::from_secs(60);

    fn site(seen: &mut Vec<(&'static str, u32, u64)>) -> Option<usize> {
        throttled!(THRESHOLD, |skipped| {
            seen.push((THROTTLE, SKIPPED.fetch_add(1, Relaxed), skipped));
            THROTTLE.len()
        })
    }

    fn site_without_count() -> Option<u32> {
        throttled!(THRESHOLD, { SKIPPED.load(Relaxed) + THROTTLE.len() as u32 })
    }

    #[test]
    fn the_body_sees_the_users_items_named_throttle_and_skipped() {
        let mut seen = Vec::new();
        assert_eq!(site(&mut seen), Some(19));
        assert_eq!(site(&mut seen), None);
        assert_eq!(seen, [("the user's THROTTLE", 7, 0)]);
        assert_eq!(site_without_count(), Some(8 + 19));
        assert_eq!(site_without_count(), None);
    }
}

#[test]
fn the_body_sees_the_users_local_bindings_named_throttle_and_skipped() {
    #[allow(non_snake_case)]
    let (THROTTLE, SKIPPED) = ("a local", 3u8);
    let ran = throttled!(Duration::from_secs(60), |skipped| {
        (THROTTLE, SKIPPED, skipped)
    });
    assert_eq!(ran, Some(("a local", 3, 0)));
    let ran = throttled!(Duration::from_secs(60), { (THROTTLE, SKIPPED) });
    assert_eq!(ran, Some(("a local", 3)));
}

// Under loom the constructors are not `const` (loom's atomics are not).
#[cfg(not(loom))]
mod statics {
    use atomic_throttle::{Mode, Throttle};
    use std::time::Duration;

    static LEADING: Throttle = Throttle::with_mode(Duration::from_secs(60), Mode::LeadingOnly);
    static DEFAULT: Throttle = Throttle::new(Duration::from_secs(60));

    #[test]
    fn statics_need_no_lazy_initialization() {
        assert_eq!(LEADING.mode(), Mode::LeadingOnly);
        assert!(LEADING.admit().is_now());
        let skipped = LEADING.admit();
        assert!(skipped.is_suppressed(), "{skipped:?}");
        assert!(DEFAULT.admit().is_now());
        assert!(DEFAULT.admit().is_deferred());
    }
}
