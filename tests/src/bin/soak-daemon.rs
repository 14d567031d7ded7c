//! A daemon for the soak test, meant to be SIGKILLed at any moment and started again.
//! It drives a running shim through execs that stream output, and keeps a journal
//! that a successor picks up from: every event seen (one per line), each exec's
//! output (moved by splice, so the kernel has every byte either in the FIFO or in the
//! file, whenever the daemon dies), each exec's exit status.
//!
//! `soak-daemon --socket S --state-dir D --journal DIR`: runs execs e0, e1, ... until
//! killed. Exec eK prints `seq 1 N(K)` (see `lines_of`).

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use tether_protocol::{Client, ErrorKind, ExecParams, ProcessParams};
use tether_tests::soak_lines_of as lines_of;

fn arg(args: &[String], flag: &str) -> String {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} is required"));
    args[i + 1].clone()
}

/// The journal's events file cut back to its last whole line; the last seq in it.
fn last_seq(events: &Path) -> u64 {
    let text = fs::read_to_string(events).unwrap_or_default();
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    fs::write(events, &text[..whole]).unwrap();
    text[..whole]
        .lines()
        .last()
        .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["seq"].as_u64())
        .unwrap_or(0)
}

fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(tmp, path).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let socket = PathBuf::from(arg(&args, "--socket"));
    let state_dir = PathBuf::from(arg(&args, "--state-dir"));
    let journal = PathBuf::from(arg(&args, "--journal"));
    let events_path = journal.join("events");
    let since = last_seq(&events_path);
    let mut ev = Client::connect(&socket).expect("connect");
    ev.subscribe(Some(since)).expect("subscribe");
    std::thread::spawn(move || {
        let mut out = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&events_path)
            .unwrap();
        loop {
            let e = ev.next_event().expect("event");
            writeln!(out, "{}", serde_json::to_string(&e).unwrap()).unwrap();
        }
    });
    let mut c = Client::connect(&socket).expect("connect");
    let current = journal.join("current");
    let mut k: u64 = fs::read_to_string(&current)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    loop {
        run_exec(&mut c, &state_dir, &journal, k);
        k += 1;
        write_atomic(&current, &k.to_string());
    }
}

/// Exec K from wherever a predecessor left it: started or not, output read in part
/// or whole, exited, deleted.
fn run_exec(c: &mut Client, state_dir: &Path, journal: &Path, k: u64) {
    let id = format!("e{k}");
    let status_file = journal.join(format!("status-{id}"));
    if !status_file.exists() {
        let known = c.call::<_, serde_json::Value>(
            "state",
            &ProcessParams {
                process: Some(id.clone()),
            },
        );
        match known {
            Ok(_) => {}
            Err(e) if e.rpc_kind() == Some(ErrorKind::NotFound) => {
                let p = ExecParams {
                    exec_id: id.clone(),
                    process: serde_json::json!({"args": ["seq", "1", lines_of(k).to_string()]}),
                    stdin: Some("/dev/null".into()),
                    stdout: None,
                    stderr: Some("/dev/null".into()),
                    ..Default::default()
                };
                match c.exec(&p) {
                    Ok(_) => {}
                    Err(e) if e.rpc_kind() == Some(ErrorKind::AlreadyExists) => {}
                    Err(e) => panic!("exec {id}: {e}"),
                }
            }
            Err(e) => panic!("state {id}: {e}"),
        }
        copy_fifo(
            &state_dir.join(format!("exec-{id}-stdout")),
            &journal.join(format!("out-{id}")),
        );
        let exit = c.wait(Some(&id)).expect("wait");
        write_atomic(&status_file, &exit.status.unwrap_or(-1).to_string());
    }
    match c.delete(Some(&id), false) {
        Ok(_) => {}
        Err(e) if e.rpc_kind() == Some(ErrorKind::NotFound) => {}
        Err(e) => panic!("delete {id}: {e}"),
    }
}

/// Moves the FIFO's bytes to the end of `out` with splice until EOF: the kernel moves
/// them, so a SIGKILL leaves each byte in one place or the other.
fn copy_fifo(fifo: &Path, out: &Path) {
    let src = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
        .unwrap_or_else(|e| panic!("open {}: {e}", fifo.display()));
    // Blocking reads from here: EOF comes when the shim closes its end.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(src.as_raw_fd(), libc::F_SETFL, 0) };
    let mut dst = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(out)
        .unwrap();
    dst.seek(SeekFrom::End(0)).unwrap();
    loop {
        // SAFETY: splice between two descriptors we own, no offsets.
        let n = unsafe {
            libc::splice(
                src.as_raw_fd(),
                std::ptr::null_mut(),
                dst.as_raw_fd(),
                std::ptr::null_mut(),
                1 << 20,
                0,
            )
        };
        match n {
            0 => return,
            n if n > 0 => {}
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    panic!("splice {}: {e}", fifo.display());
                }
            }
        }
    }
}
