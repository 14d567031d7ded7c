//! The few raw system calls nix has no safe wrapper for. Every `unsafe` block of the
//! shim is here, each with the reason it is sound; the rest of the crate denies
//! `unsafe_code`.
#![allow(unsafe_code)]

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, Signal};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `fork(2)`. Sound only while the process has one thread (the launcher, before
/// anything spawns threads): the child then may run any Rust code.
pub fn fork_single_threaded() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: callers fork before any thread exists (see above).
    unsafe { nix::unistd::fork() }
}

/// Sets `signal` to SIG_IGN.
pub fn ignore_signal(signal: Signal) -> nix::Result<()> {
    // SAFETY: SIG_IGN installs no handler code, so nothing can run in signal context.
    unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) }.map(|_| ())
}

/// Takes ownership of a descriptor the kernel just made for us (received by
/// SCM_RIGHTS, or returned by fcntl F_DUPFD).
pub fn own_received_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: the descriptor was just created by that call and nothing else holds it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Takes ownership of a descriptor this process inherited open (conmon's sync and
/// start pipes, the fds an engine hands its monitor), or None if `fd` is not open.
/// Callers take each inherited number once, at start-up, before anything else in the
/// process could have opened or owned it.
pub fn own_inherited_fd(fd: RawFd) -> Option<OwnedFd> {
    if fd < 0 || nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        return None;
    }
    // SAFETY: the descriptor is open, was inherited, and (see above) nothing else in
    // this process owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Close-on-exec on `fd` (it cannot fail on an open fd).
pub fn set_cloexec(fd: &impl std::os::fd::AsRawFd) {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

/// TIOCSWINSZ: sets a terminal's size.
pub fn set_window_size(tty: RawFd, rows: u16, cols: u16) -> Result<(), Errno> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct, which lives on our stack.
    let r = unsafe { libc::ioctl(tty, libc::TIOCSWINSZ, &size) };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Gives the heap's free memory back to the kernel.
pub fn malloc_trim() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
}

/// MADV_DONTNEED on `[low, high)` of the current thread's stack.
///
/// The caller guarantees the range lies wholly below every live frame (see
/// `memory::trim_stack`): those pages hold nothing live and come back as zero pages.
pub fn discard_dead_stack(low: usize, high: usize) {
    // SAFETY: per the caller's guarantee, the range holds no live data.
    unsafe { libc::madvise(low as *mut libc::c_void, high - low, libc::MADV_DONTNEED) };
}

/// FIONREAD: bytes waiting to be read in a pipe or FIFO.
pub fn bytes_queued(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, which lives on our stack.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (r == 0).then_some(n.max(0) as usize)
}

/// accept4(2), non-blocking and close-on-exec, owning the new descriptor.
pub fn accept_owned(listener: RawFd) -> nix::Result<OwnedFd> {
    use nix::sys::socket::{accept4, SockFlag};
    let fd = accept4(listener, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC)?;
    // SAFETY: accept4 just made this descriptor and nothing else holds it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The umask the shim was started with (its caller's), kept when the shim takes 077
/// for its own files.
static CALLER_UMASK: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0o022);

/// The shim's own umask from here on: 077. The caller's is kept for what the shim
/// runs (`with_caller_umask`).
pub fn take_private_umask() {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    CALLER_UMASK.store(old.bits(), std::sync::atomic::Ordering::Relaxed);
}

/// Makes `cmd` start with the caller's umask, not the shim's 077: the OCI runtime
/// makes the container's mount points (`/mnt` for a volume at /mnt/x) with it, and
/// they must be as a runtime run by containerd or podman makes them (0755 under 022).
pub fn with_caller_umask(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let mask = CALLER_UMASK.load(std::sync::atomic::Ordering::Relaxed) as libc::mode_t;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // umask(2), which is async-signal-safe and cannot fail; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        })
    };
}

/// Makes `cmd` start with each `(fd, target)` of `fds` at descriptor number `target`
/// (a logging binary takes its pipes as fds 3, 4 and 5). The caller keeps every
/// `fd` open until the spawn returns, and no `fd` is itself one of the targets.
pub fn map_fds_on_spawn(cmd: &mut std::process::Command, fds: Vec<(RawFd, RawFd)>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before exec and calls only
    // dup2(2), which is async-signal-safe; it allocates nothing. dup2 clears
    // close-on-exec on the target, so exactly the targets survive the exec.
    unsafe {
        cmd.pre_exec(move || {
            for &(fd, target) in &fds {
                if libc::dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        })
    };
}
