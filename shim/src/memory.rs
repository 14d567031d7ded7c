//! Giving memory back after a burst of work. A shim idles for almost all of its life,
//! and a node runs hundreds of them, so what a request or a runtime call touched
//! once should not stay resident: glibc keeps freed heap, and the stack keeps the
//! pages its deepest call dirtied.

use std::fs;

/// Stack kept below this function's frame: room for the calls it makes (madvise's
/// wrapper and its red zone). Anything deeper that runs later, a signal handler
/// included, simply faults in fresh zero pages.
const STACK_MARGIN: usize = 4 << 10;
const PAGE: usize = 4096;

/// Returns freed heap and unused stack pages to the kernel. Called when the loop has
/// just finished work that allocates (requests, runtime calls ending).
pub fn give_back() {
    crate::sys::malloc_trim();
    trim_stack();
}

/// MADV_DONTNEED on the stack below the current frame: those pages hold nothing live
/// (everything below the stack pointer is dead), and they come back as zero pages if
/// a deep call needs them again.
#[inline(never)]
fn trim_stack() {
    let marker = 0u8;
    let here = std::hint::black_box(&marker) as *const u8 as usize;
    let Some(low) = stack_low() else { return };
    let high = here.saturating_sub(STACK_MARGIN) & !(PAGE - 1);
    if high > low {
        // [low, high) lies in this thread's stack mapping, entirely below the live
        // frames (the margin covers this function and anything it calls).
        crate::sys::discard_dead_stack(low, high);
    }
}

/// The lowest address of the main thread's stack mapping.
fn stack_low() -> Option<usize> {
    let maps = fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[stack]"))?;
    usize::from_str_radix(line.split('-').next()?, 16).ok()
}
