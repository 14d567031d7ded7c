//! The caller's terminal: raw mode while attached, its size forwarded as `resize`.

use super::*;

/// The terminal in raw mode while a `-t` exec runs; restored on drop.
pub(crate) struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    pub(crate) fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}

/// TIOCGWINSZ, the one call nix has no safe wrapper for.
mod ioctl {
    #![allow(unsafe_code)]
    pub fn window_size() -> Option<(u16, u16)> {
        let mut w = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills one winsize struct, which lives on our stack.
        (unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut w) } == 0).then_some((w.ws_row, w.ws_col))
    }
}
pub(crate) use ioctl::window_size;

/// Forwards SIGWINCH as `resize` calls.
pub(crate) fn watch_window_size(socket: PathBuf, process: String) {
    let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGWINCH, changed.clone());
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if changed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            if let (Some((rows, cols)), Ok(mut c)) = (window_size(), Client::connect(&socket)) {
                let _ = c.call_value("resize", json!({"process": process, "rows": rows, "cols": cols}));
            }
        }
    });
}
