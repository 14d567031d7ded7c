//! The edges of I/O through the JSON-RPC front, where bytes were lost before: output
//! behind a slow reader when the client deletes at the exit, the end of stdin behind
//! a process that reads slowly, a terminal's tail, output a full disk refused (counted
//! to the byte), a paused container killed, a failed create or exec whose runtime's
//! words must reach the client once. The slow cases run with two CPU hogs beside them.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_tests::tether_protocol::*;
use tether_tests::*;

fn is_exit(e: &Event, process: &str) -> bool {
    matches!(&e.body, EventBody::Exit(r) if r.process == process)
}

fn mkfifo(path: &Path) {
    let made = std::process::Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// What `seq 1 n` prints.
fn seq_output(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        writeln!(out, "{i}").unwrap();
    }
    out
}

/// Creates and starts `shim` with stdout on a FIFO of the test's that a thread reads
/// at `bytes_per_sec`, deletes the container the moment its exit event comes, and
/// returns that exit and everything the reader got.
fn delete_at_exit_behind_a_slow_reader(
    shim: &Shim,
    stderr: Option<&str>,
    bytes_per_sec: usize,
) -> (ExitRecord, Vec<u8>) {
    let out = shim.work.path().join("out");
    mkfifo(&out);
    let mut c = shim.client();
    c.subscribe(None).unwrap();
    c.create(&CreateParams {
        stdin: Some("/dev/null".into()),
        stdout: Some(out.display().to_string()),
        stderr: stderr.map(String::from),
        ..Default::default()
    })
    .unwrap();
    let reader = std::thread::spawn(move || read_fifo_slowly(&out, bytes_per_sec));
    c.start().unwrap();
    let events = events_until(&mut c, |e| is_exit(e, "init"));
    let EventBody::Exit(record) = &events.last().unwrap().body else {
        unreachable!()
    };
    c.delete(None, false).expect("delete at the exit");
    (record.clone(), reader.join().unwrap())
}

// A reader at 0.4 MB/s behind 2.9 MB of output; the client deletes the moment the
// exit comes. The exit waits until the process's pipe is empty (its last bytes are in
// the FIFO, which the reader holds), so the reader gets every byte.
#[test]
fn a_slow_reader_gets_every_byte_though_the_client_deletes_at_the_exit() {
    let _load = Hogs::start(2);
    let shim = Shim::launch(&BundleSpec::new(&["seq", "1", "400000"]));
    let (record, got) = delete_at_exit_behind_a_slow_reader(&shim, Some("/dev/null"), 400_000);
    assert_eq!(record.status, Some(0));
    let want = seq_output(400_000);
    assert_eq!(got.len(), want.len(), "bytes the slow reader got");
    assert!(got == want, "the output arrived changed");
}

/// `sh -c 'sleep 1; wc -c'`: a process that starts reading stdin late.
fn late_reader() -> Shim {
    Shim::launch(&BundleSpec::new(&["sh", "-c", "sleep 1; wc -c"]))
}

/// Creates and starts `shim` with a stdin FIFO of its own making; (stdin, stdout)
/// FIFO paths.
fn start_with_fifos(shim: &Shim, c: &mut Client) -> (PathBuf, PathBuf) {
    let created = c
        .create(&CreateParams {
            stderr: Some("/dev/null".into()),
            ..Default::default()
        })
        .unwrap();
    c.start().unwrap();
    let stdin = PathBuf::from(created.stdio.stdin.expect("a stdin FIFO"));
    let stdout = PathBuf::from(created.stdio.stdout.expect("a stdout FIFO"));
    let _ = shim;
    (stdin, stdout)
}

// close_stdin while 1.5 MB wait in the FIFO and the pipe (the process sleeps): every
// byte reaches it, then EOF.
#[test]
fn close_stdin_hands_over_what_waits_in_a_full_fifo() {
    let shim = late_reader();
    let mut c = shim.client();
    let (stdin, stdout) = start_with_fifos(&shim, &mut c);
    let mut w = fs::OpenOptions::new().write(true).open(&stdin).unwrap();
    w.write_all(&vec![b'x'; 1_500_000]).unwrap();
    drop(w);
    c.call_value("close_stdin", serde_json::json!({})).unwrap();
    let out = read_fifo_to_end(&stdout, Duration::from_secs(60));
    assert_eq!(String::from_utf8_lossy(&out).trim(), "1500000");
    assert_eq!(c.wait(None).unwrap().status, Some(0));
}

// 5 MB through stdin (more than the FIFO and the pipe hold), close_stdin as soon as
// the last byte is written, under load.
#[test]
fn close_stdin_after_five_megabytes_loses_nothing_under_load() {
    let _load = Hogs::start(2);
    let shim = late_reader();
    let mut c = shim.client();
    let (stdin, stdout) = start_with_fifos(&shim, &mut c);
    let reader = std::thread::spawn(move || read_fifo_to_end(&stdout, Duration::from_secs(120)));
    let mut w = fs::OpenOptions::new().write(true).open(&stdin).unwrap();
    w.write_all(&vec![b'y'; 5_000_000]).unwrap();
    drop(w);
    c.call_value("close_stdin", serde_json::json!({})).unwrap();
    let out = reader.join().unwrap();
    assert_eq!(String::from_utf8_lossy(&out).trim(), "5000000");
}

// SIGKILL to a paused container ends it (its cgroup is thawed, as runc kill does).
#[test]
fn sigkill_ends_a_paused_container() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    c.call_value("pause", serde_json::json!({})).unwrap();
    assert_eq!(c.hello().unwrap().status, ContainerStatus::Paused);
    c.kill(None, 9, false).unwrap();
    let record = c.wait(None).unwrap();
    assert_eq!(record.status, Some(137), "{record:?}");
    assert_eq!(c.hello().unwrap().status, ContainerStatus::Stopped);
    c.delete(None, false).expect("a killed paused container deletes");
}

// A terminal's output, read slowly, with the client deleting at the exit: every line.
#[test]
fn a_terminals_tail_reaches_a_slow_reader() {
    let _load = Hogs::start(2);
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "seq 1 300000; exit 4"]).terminal(true));
    let (record, got) = delete_at_exit_behind_a_slow_reader(&shim, None, 300_000);
    assert_eq!(record.status, Some(4));
    let got = String::from_utf8(got).unwrap();
    let lines: Vec<&str> = got.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 300_000, "lines through the terminal");
    assert_eq!(lines.last(), Some(&"300000"));
}

// A create the runtime refuses: its reason is the error, and not also the
// container's stderr (the runtime's stderr is the process's pipe).
#[test]
fn a_failed_create_says_why_once() {
    let shim = Shim::launch(&BundleSpec::new(&["/nonexistent"]));
    let err_fifo = shim.work.path().join("err");
    mkfifo(&err_fifo);
    // A reader of our own keeps what the runtime might write there.
    let keep = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&err_fifo)
        .unwrap();
    let mut c = shim.client();
    let e = c
        .create(&CreateParams {
            stdin: Some("/dev/null".into()),
            stdout: Some("/dev/null".into()),
            stderr: Some(err_fifo.display().to_string()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::RuntimeFailed), "{e}");
    assert!(e.to_string().contains("/nonexistent"), "{e}");
    let mut said = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &keep, &mut said);
    assert!(
        said.is_empty(),
        "the runtime's words reached the container's stderr too: {:?}",
        String::from_utf8_lossy(&said)
    );
}

// An exec whose runtime says why only on stderr (youki's `exec --detach` before its
// log is set up): the error carries it.
#[test]
fn an_exec_failure_said_only_on_stderr_reaches_the_client() {
    let work = TempDir::new("tether-exec-stderr");
    let runtime = fault_runtime("stderr-only-exec-runtime", work.path());
    let shim = Shim::launch_with(
        &BundleSpec::new(&["sleep", "1000"]),
        &["--runtime", runtime.to_str().unwrap()],
    );
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let e = c
        .exec(&ExecParams {
            exec_id: "e1".into(),
            process: serde_json::json!({"args": ["true"]}),
            stdin: Some("/dev/null".into()),
            stdout: Some("/dev/null".into()),
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::RuntimeFailed), "{e}");
    assert!(e.to_string().contains("the reason is only on stderr"), "{e}");
}

/// Lines of `len` bytes, `count` of them on each stream, then an unterminated last
/// line on each ("tail", "err-tail"): (script, bytes written to stdout, to stderr).
fn lines_script(len: usize, count: usize) -> (String, u64, u64) {
    // awk, not `yes | head`: no SIGPIPE in play (youki leaves it ignored, and yes
    // would then complain on stderr).
    let lines = format!(
        "awk 'BEGIN {{ s = \"\"; while (length(s) < {len}) s = s \"x\"; for (i = 0; i < {count}; i++) print s }}'"
    );
    let script = format!("{lines}; {lines} >&2; printf tail; printf err-tail >&2");
    let bytes = (count * (len + 1)) as u64;
    (script, bytes + 4, bytes + 8)
}

/// What a CRI log holds of each stream, as the process wrote it: an `F` record's
/// content and its newline, a `P` record's content. (stdout, stderr).
fn cri_log_content(path: &Path) -> (u64, u64) {
    let text = fs::read(path).unwrap_or_default();
    let (mut out, mut err) = (0u64, 0u64);
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut parts = line.splitn(4, |b| *b == b' ');
        let (_ts, stream, tag) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        let content = parts.next().unwrap_or(b"").len() as u64 + u64::from(tag == b"F");
        match stream {
            b"stdout" => out += content,
            b"stderr" => err += content,
            other => panic!("stream {:?} in the log", String::from_utf8_lossy(other)),
        }
    }
    (out, err)
}

// On a 2 MiB disk, for lines of 0, 1, 2, 1,000 and 100,000 bytes and an unterminated
// last line, on both streams, into a CRI log and into plain files: what the process
// wrote = what reached the destination + what was reported dropped, to the byte.
#[test]
fn bytes_a_full_disk_refused_are_counted_exactly() {
    for (len, count) in [
        (0, 2_500_000),
        (1, 1_250_000),
        (2, 833_333),
        (1000, 2_500),
        (100_000, 25),
    ] {
        for sink in ["log", "file"] {
            let (script, want_out, want_err) = lines_script(len, count);
            let disk = Tmpfs::mount("tether-drops", "2m");
            let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", &script]));
            let mut c = shim.client();
            c.subscribe(None).unwrap();
            let (log, out, err) = (
                disk.path().join("log"),
                disk.path().join("out"),
                disk.path().join("err"),
            );
            let params = match sink {
                "log" => CreateParams {
                    stdin: Some("/dev/null".into()),
                    log: Some(LogParams {
                        path: log.display().to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                _ => CreateParams {
                    stdin: Some("/dev/null".into()),
                    stdout: Some(out.display().to_string()),
                    stderr: Some(err.display().to_string()),
                    ..Default::default()
                },
            };
            c.create(&params).unwrap();
            c.start().unwrap();
            let events = events_until(&mut c, |e| is_exit(e, "init"));
            let dropped = |want: &str| -> u64 {
                events
                    .iter()
                    .filter_map(|e| match &e.body {
                        EventBody::OutputDropped {
                            stream,
                            sink: s,
                            bytes,
                            ..
                        } if stream == want && s == sink => Some(*bytes),
                        _ => None,
                    })
                    .sum()
            };
            let (got_out, got_err) = match sink {
                "log" => cri_log_content(&log),
                _ => (
                    fs::metadata(&out).map_or(0, |m| m.len()),
                    fs::metadata(&err).map_or(0, |m| m.len()),
                ),
            };
            let case = format!("lines of {len} bytes into a {sink}");
            assert!(
                dropped("stdout") > 0,
                "{case}: nothing was refused, the test proves nothing"
            );
            assert_eq!(got_out + dropped("stdout"), want_out, "{case}: stdout");
            assert_eq!(got_err + dropped("stderr"), want_err, "{case}: stderr");
            let state = c.state().unwrap();
            assert_eq!(
                state.processes[0].output_dropped_bytes,
                dropped("stdout") + dropped("stderr"),
                "{case}: state's count"
            );
        }
    }
}
