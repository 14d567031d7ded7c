//! The shim's diagnostics. Before it daemonizes they go to stderr; after, to
//! `STATE_DIR/shim.log` (its stdio is /dev/null by then).

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

static SINK: Mutex<Option<File>> = Mutex::new(None);

pub fn to_file(file: File) {
    if let Ok(mut sink) = SINK.lock() {
        *sink = Some(file);
    }
}

pub fn write(args: std::fmt::Arguments<'_>) {
    let line = format!("{} {}\n", tether_protocol::time::now(), args);
    match SINK.lock() {
        Ok(mut guard) => match guard.as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            None => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
        },
        Err(_) => {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }
}

/// `log!("runc create failed: {e}")`: one timestamped line in the shim's log.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => { $crate::log::write(format_args!($($arg)*)) };
}
