//! Admission allocates nothing (guarantee 4), counted by a global allocator.

use atomic_throttle::{Admission, ManualClock, Throttle};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_allocations() {
    // The check below could not fail if the counter missed allocations.
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8; 16]))) >= 1);
}

#[test]
fn admission_allocates_nothing_on_any_path() {
    let clock = ManualClock::new();
    let throttle = Throttle::with_clock(Duration::from_millis(1), clock.clone()).unwrap();
    let default = Throttle::new(Duration::from_millis(1));
    let _ = default.admit(); // the default clock's first use is calibrated at construction
    let allocations = allocations_in(|| {
        for _ in 0..1000 {
            assert!(throttle.admit().is_now());
            let Admission::Deferred(deferral) = throttle.admit() else {
                panic!("expected Deferred")
            };
            assert!(throttle.admit().is_coalesced());
            let deferral = deferral.try_run(|| ()).unwrap_err().not_due().unwrap();
            drop(deferral);
            assert!(throttle.admit_publishing().is_deferred());
            clock.advance(Duration::from_millis(2));
            let _ = default.admit();
        }
    });
    assert_eq!(allocations, 0);
}
