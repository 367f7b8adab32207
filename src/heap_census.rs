//! A diagnostic build's heap census: which allocation sizes are live, and how many.
//!
//! Only compiled with `--features heap-census` (see `benches/heap-census`). It wraps the system
//! allocator to count live bytes and live allocations per 8-byte size class, and serves the
//! counts at `GET /debug/heap`, so the benchmarks can say where per-connection memory goes
//! without a profiler. Counting costs a few atomic adds per allocation: never ship it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

/// Size classes are 8 bytes wide; everything from `LARGE` bytes up shares the last one.
const CLASS_WIDTH: usize = 8;
const LARGE: usize = 16 * 1024;
const CLASSES: usize = LARGE / CLASS_WIDTH + 1;

struct Counters {
    live_bytes: AtomicI64,
    live_allocs: AtomicI64,
    allocs_by_class: [AtomicI64; CLASSES],
    bytes_by_class: [AtomicI64; CLASSES],
}

static COUNTERS: Counters = Counters {
    live_bytes: AtomicI64::new(0),
    live_allocs: AtomicI64::new(0),
    allocs_by_class: [const { AtomicI64::new(0) }; CLASSES],
    bytes_by_class: [const { AtomicI64::new(0) }; CLASSES],
};

fn class(size: usize) -> usize {
    size.min(LARGE) / CLASS_WIDTH
}

fn count(size: usize, sign: i64) {
    let bytes = sign * size as i64;
    COUNTERS.live_bytes.fetch_add(bytes, Relaxed);
    COUNTERS.live_allocs.fetch_add(sign, Relaxed);
    COUNTERS.allocs_by_class[class(size)].fetch_add(sign, Relaxed);
    COUNTERS.bytes_by_class[class(size)].fetch_add(bytes, Relaxed);
}

/// The system allocator, counted.
pub struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), 1);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout.size(), -1);
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout.size(), -1);
        count(new_size, 1);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The live heap now: totals, and `[class floor in bytes, live allocations, live bytes]` for
/// every size class that has any (the last class holds everything of 16 KiB and more).
pub fn snapshot() -> serde_json::Value {
    let classes: Vec<[i64; 3]> = (0..CLASSES)
        .filter_map(|c| {
            let allocs = COUNTERS.allocs_by_class[c].load(Relaxed);
            (allocs > 0).then(|| {
                [
                    (c * CLASS_WIDTH) as i64,
                    allocs,
                    COUNTERS.bytes_by_class[c].load(Relaxed),
                ]
            })
        })
        .collect();
    serde_json::json!({
        "liveBytes": COUNTERS.live_bytes.load(Relaxed),
        "liveAllocs": COUNTERS.live_allocs.load(Relaxed),
        "classes": classes,
    })
}
