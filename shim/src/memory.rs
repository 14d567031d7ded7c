//! Giving memory back after a burst of work. A shim idles for almost all of its life,
//! and a node runs hundreds of them, so what a request or a runtime call touched
//! once should not stay resident: glibc keeps freed heap, and the stack keeps the
//! pages its deepest call dirtied.

use std::fs;
use std::os::unix::process::CommandExt;

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

/// glibc's per-thread cache keeps freed chunks "in use", so malloc_trim cannot give
/// them back: off for the shim, whose idle memory is what a node pays per container.
const MALLOC_TUNABLES: &str = "glibc.malloc.tcache_count=0";
/// The caller's own GLIBC_TUNABLES, restored for the runtime the shim runs.
const SAVED_TUNABLES: &str = "TETHER_SAVED_GLIBC_TUNABLES";

/// glibc reads its tunables when a process starts, and the shim is a fork of the
/// launcher: so the launcher execs itself once more with them set. (Forking rather
/// than exec'ing the shim keeps it lean: a forked child maps only the file pages it
/// touches.) Returns only if the tunables are already set or the exec failed.
pub fn reexec_with_malloc_tunables() {
    let current = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if current.split(':').any(|t| t == MALLOC_TUNABLES) {
        return;
    }
    let Ok(exe) = std::env::current_exe() else { return };
    let tunables = if current.is_empty() {
        MALLOC_TUNABLES.to_string()
    } else {
        format!("{current}:{MALLOC_TUNABLES}")
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", tunables)
        .env(SAVED_TUNABLES, current)
        .exec();
    // Not fatal: the shim runs, with a little more idle memory.
    eprintln!("tether-shim: re-exec for malloc tunables failed ({err}); going on without");
}

/// The runtime and everything else the shim runs get the caller's tunables back.
pub fn restore_caller_tunables() {
    match std::env::var(SAVED_TUNABLES) {
        Ok(saved) if !saved.is_empty() => std::env::set_var("GLIBC_TUNABLES", saved),
        _ => std::env::remove_var("GLIBC_TUNABLES"),
    }
    std::env::remove_var(SAVED_TUNABLES);
}

/// The shim is about to exec a new binary of itself (upgrade in place): it starts
/// with the shim's malloc tunables, and the caller's saved for
/// [`restore_caller_tunables`]. Returns what to put back if the exec fails.
pub fn tunables_for_exec() -> Option<String> {
    let current = std::env::var("GLIBC_TUNABLES").ok();
    std::env::set_var(SAVED_TUNABLES, current.clone().unwrap_or_default());
    std::env::set_var("GLIBC_TUNABLES", MALLOC_TUNABLES);
    current
}

/// The exec failed: the environment as it was.
pub fn tunables_after_failed_exec(saved: Option<String>) {
    match saved {
        Some(v) => std::env::set_var("GLIBC_TUNABLES", v),
        None => std::env::remove_var("GLIBC_TUNABLES"),
    }
    std::env::remove_var(SAVED_TUNABLES);
}
