//! Container logs and attach: the CRI log under both rotations, lines split only
//! where they must be, a full disk under the log, three attach clients (one stuck),
//! exec with captured output and a deadline, and clear errors for bad input.

use serde_json::json;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tether_protocol::*;
use tether_tests::*;

const T: Duration = Duration::from_secs(120);
const GIB: u64 = 1 << 30;

fn log_params(path: &Path, max_size: Option<u64>) -> LogParams {
    LogParams {
        path: path.display().to_string(),
        max_line: None,
        max_size,
        max_files: max_size.map(|_| 1000),
    }
}

/// Create with only a log (no FIFOs), start, wait for the exit.
fn run_logged(shim: &Shim, log: LogParams, attach: bool) -> ExitRecord {
    let mut c = shim.client();
    c.set_timeout(Some(T)).unwrap();
    c.create(&CreateParams {
        stdin: Some("/dev/null".into()),
        log: Some(log),
        attach,
        ..Default::default()
    })
    .unwrap();
    c.start().unwrap();
    c.wait(None).unwrap()
}

/// `log`'s rotated files, oldest first, then `log`: log.N ... log.1, log.
fn rotated_in_order(log: &Path, newest_last: bool) -> Vec<PathBuf> {
    let mut numbered: Vec<(u64, PathBuf)> = fs::read_dir(log.parent().unwrap())
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let n = p
                .file_name()?
                .to_str()?
                .strip_prefix(log.file_name()?.to_str()?)?
                .strip_prefix('.')?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .collect();
    numbered.sort();
    if !newest_last {
        numbered.reverse();
    }
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    files.push(log.to_path_buf());
    files
}

#[test]
fn a_gib_through_built_in_rotation_rejoins_exactly() {
    let disk = Tmpfs::mount("tether-rot", "2g");
    let log = disk.path().join("ctr.log");
    let shim = Shim::launch(&BundleSpec::new(&[]).args(mixed_output_args(GIB)));
    let exit = run_logged(&shim, log_params(&log, Some(10 << 20)), false);
    assert_eq!(exit.status, Some(0));
    let files = rotated_in_order(&log, false);
    assert!(files.len() > 100, "{} files", files.len());
    for f in &files {
        assert!(
            fs::metadata(f).unwrap().len() <= 10 << 20,
            "{} is over the limit",
            f.display()
        );
    }
    let (out, err, records) = rejoin_cri_logs(&files);
    let (want_out, want_err) = mixed_output_sums(GIB);
    assert_eq!(out, want_out, "stdout rejoined from {} records", records);
    assert_eq!(err, want_err, "stderr rejoined");
}

#[test]
fn a_gib_through_kubelet_style_rotation_rejoins_exactly() {
    let disk = Tmpfs::mount("tether-kub", "2g");
    let log = disk.path().join("ctr.log");
    let shim = Shim::launch(&BundleSpec::new(&[]).args(mixed_output_args(GIB)));
    let mut c = shim.client();
    c.set_timeout(Some(T)).unwrap();
    c.create(&CreateParams {
        stdin: Some("/dev/null".into()),
        log: Some(log_params(&log, None)),
        ..Default::default()
    })
    .unwrap();
    c.start().unwrap();
    // kubelet's way: rename the file away, then reopen_log, every 0.5 s.
    let mut rotations = 0;
    let mut rotator = shim.client();
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let aside = PathBuf::from(format!("{}.{}", log.display(), rotations + 1));
        fs::rename(&log, &aside).unwrap();
        rotations += 1;
        match rotator.call_value("reopen_log", json!({})) {
            Ok(_) => assert!(log.exists(), "reopen_log answered before the file existed"),
            Err(e) => {
                assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState), "{e}");
                // Stopped: what it wrote last went to the file renamed away.
                fs::write(&log, b"").unwrap();
                break;
            }
        }
    }
    assert_eq!(c.wait(None).unwrap().status, Some(0));
    assert!(
        rotations >= 3,
        "only {rotations} rotations: the output ran too fast to show anything"
    );
    let (out, err, _) = rejoin_cri_logs(&rotated_in_order(&log, true));
    let (want_out, want_err) = mixed_output_sums(GIB);
    assert_eq!(out, want_out, "stdout rejoined over {rotations} rotations");
    assert_eq!(err, want_err, "stderr rejoined");
}

#[test]
fn a_long_line_is_max_line_partials_and_one_full() {
    let work = TempDir::new("tether-line");
    let log = work.path().join("ctr.log");
    let shim = Shim::launch(&BundleSpec::new(&[
        "sh",
        "-c",
        "head -c 102400 /dev/zero | tr '\\0' a; echo; printf 'no newline at the end'",
    ]));
    run_logged(&shim, log_params(&log, None), false);
    let text = fs::read_to_string(&log).unwrap();
    let records: Vec<(&str, usize)> = text
        .lines()
        .map(|l| {
            let mut p = l.splitn(4, ' ');
            let (_, _, tag) = (p.next(), p.next(), p.next().unwrap());
            (tag, p.next().unwrap_or("").len())
        })
        .collect();
    let mut want = vec![("P", 16384); 6];
    want.push(("F", 102400 - 6 * 16384));
    want.push(("P", "no newline at the end".len()));
    assert_eq!(records, want);
    let (out, _, _) = rejoin_cri_logs(&[log]);
    let mut expected = StreamSum::default();
    expected.feed(&[b'a'; 102400]);
    expected.feed(b"\nno newline at the end");
    assert_eq!(out, expected, "rejoins exactly");
}

#[test]
fn a_full_disk_under_the_log_costs_records_not_the_container() {
    let disk = Tmpfs::mount("tether-logfull", "4m");
    let log = disk.path().join("ctr.log");
    let work = TempDir::new("tether-logfull-w");
    let shim = Shim::launch_at(
        &BundleSpec::new(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); usleep 1000; done; exit 0",
        ]),
        work,
        disk.path().join("state"),
        &unique_id("lf"),
        &[],
    );
    let mut c = shim.client();
    c.subscribe(None).unwrap();
    c.create(&CreateParams {
        stdin: Some("/dev/null".into()),
        log: Some(log_params(&log, None)),
        ..Default::default()
    })
    .unwrap();
    c.start().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    disk.fill();
    let events = events_until(&mut c, |e| matches!(&e.body, EventBody::Exit(_)));
    let EventBody::Exit(exit) = &events.last().unwrap().body else {
        unreachable!()
    };
    assert_eq!(exit.status, Some(0), "the container ran to its end");
    let dropped: u64 = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::OutputDropped { sink, bytes, .. } if sink == "log" => Some(*bytes),
            _ => None,
        })
        .sum();
    assert!(dropped > 0, "no drop reported: {events:?}");
    let state = c.state().unwrap();
    assert_eq!(state.processes[0].output_dropped_bytes, dropped);
    c.hello().expect("the shim stays up");
}

#[test]
fn three_attach_clients_one_stuck() {
    let work = TempDir::new("tether-attach");
    let log = work.path().join("ctr.log");
    // 64 MiB at the pace of a busy program (a process per 32 KiB line), not of awk
    // flat out: readers that read get all of it; the one that never reads does not.
    let shim = Shim::launch(&BundleSpec::new(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 2048 ]; do head -c 32768 /dev/zero | tr '\\0' x; echo; i=$((i+1)); done; echo oops >&2",
    ]));
    let mut c = shim.client();
    c.set_timeout(Some(T)).unwrap();
    let created = c
        .create(&CreateParams {
            stdin: Some("/dev/null".into()),
            log: Some(log_params(&log, None)),
            attach: true,
            ..Default::default()
        })
        .unwrap();
    let path = created.stdio.attach.clone().expect("an attach socket");
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let fd = connect_seqpacket(&path);
            std::thread::spawn(move || read_attach(&fd))
        })
        .collect();
    let stuck = connect_seqpacket(&path);
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    c.start().unwrap();
    let exit = c.wait(None).unwrap();
    assert_eq!(exit.status, Some(0));
    eprintln!(
        "attach: 64 MiB out with a stuck client in {:?}",
        started.elapsed()
    );
    let (mut want_out, mut want_err) = (StreamSum::default(), StreamSum::default());
    let line = format!("{}\n", "x".repeat(32768));
    for _ in 0..2048 {
        want_out.feed(line.as_bytes());
    }
    want_err.feed(b"oops\n");
    for r in readers {
        let (out, err, reason) = r.join().unwrap();
        assert_eq!(reason, None);
        assert_eq!(
            (out, err),
            (want_out, want_err),
            "an attached reader missed output"
        );
    }
    let (out, err, _) = rejoin_cri_logs(&[log]);
    assert_eq!((out, err), (want_out, want_err), "the log missed output");
    let (_, _, reason) = read_attach(&stuck);
    let reason = reason.expect("the stuck client is told why it was cut off");
    assert!(reason.contains("too slow"), "{reason}");
}

#[test]
fn attach_input_reaches_stdin_and_a_late_attach_sees_output() {
    let shim = Shim::launch(&BundleSpec::new(&[
        "sh",
        "-c",
        "read line; echo got $line; sleep 0.2; echo bye",
    ]));
    let mut c = shim.client();
    c.create(&CreateParams {
        stderr: Some("/dev/null".into()),
        ..Default::default()
    })
    .unwrap();
    // Attach made on demand, after create.
    let path = c.call_value("attach", json!({})).unwrap()["path"]
        .as_str()
        .unwrap()
        .to_string();
    let fd = connect_seqpacket(&path);
    c.start().unwrap();
    // SAFETY: send on a socket we own.
    let sent = unsafe { libc::send(fd.as_raw_fd(), b"hi\n".as_ptr().cast(), 3, 0) };
    assert_eq!(sent, 3);
    let (out, _, _) = read_attach(&fd);
    let mut want = StreamSum::default();
    want.feed(b"got hi\nbye\n");
    assert_eq!(out, want);
    assert_eq!(c.wait(None).unwrap().status, Some(0));
}

#[test]
fn exec_with_capture_answers_with_output_and_kills_at_its_deadline() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let r: CaptureResult = c
        .call(
            "exec",
            &ExecParams {
                exec_id: "probe".into(),
                process: json!({"args": ["sh", "-c", "echo out; echo err >&2; exit 3"]}),
                capture: Some(CaptureParams {
                    timeout_ms: Some(10_000),
                    limit: None,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((r.exit.status, r.timed_out), (Some(3), false));
    assert_eq!(
        (r.stdout.as_deref(), r.stderr.as_deref()),
        (Some("out\n"), Some("err\n"))
    );
    let t = Instant::now();
    let r: CaptureResult = c
        .call(
            "exec",
            &ExecParams {
                exec_id: "slow".into(),
                process: json!({"args": ["sleep", "100"]}),
                capture: Some(CaptureParams {
                    timeout_ms: Some(300),
                    limit: None,
                }),
                ..Default::default()
            },
        )
        .unwrap();
    assert!(r.timed_out, "{r:?}");
    assert_eq!(r.exit.status, Some(137));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "killed only after {:?}",
        t.elapsed()
    );
    let r: CaptureResult = c
        .call(
            "exec",
            &ExecParams {
                exec_id: "chatty".into(),
                // No SIGPIPE in it: youki starts processes with SIGPIPE ignored.
                process: json!({"args": ["sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' y; printf '\\377' >&2"]}),
                capture: Some(CaptureParams {
                    timeout_ms: None,
                    limit: Some(1000),
                }),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.exit.status, Some(0), "drained past the limit, never blocked");
    assert_eq!(r.stdout.as_deref(), Some("y".repeat(1000).as_str()));
    assert!(r.stdout_truncated);
    assert_eq!(
        (r.stderr.as_deref(), r.stderr_base64.as_deref()),
        (None, Some("/w=="))
    );
}

#[test]
fn bad_log_and_attach_input_get_clear_errors() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    let e = c
        .create(&CreateParams {
            log: Some(log_params(Path::new("/no/such/dir/ctr.log"), None)),
            ..null_stdio()
        })
        .unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::StdioFailed), "{e}");
    assert!(e.to_string().contains("/no/such/dir/ctr.log"), "{e}");
    let e = c.call_value("reopen_log", json!({})).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState), "{e}");
    let work = TempDir::new("tether-badlog");
    c.create(&CreateParams {
        log: Some(log_params(&work.path().join("l"), None)),
        ..null_stdio()
    })
    .unwrap();
    c.start().unwrap();
    let e = c.call_value("attach", json!({"process": "nope"})).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::NotFound), "{e}");
    let e = c
        .call_value("reopen_log", json!({"process": "nope"}))
        .unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::NotFound), "{e}");
    c.kill(None, 9, false).unwrap();
    c.wait(None).unwrap();
    let e = c.call_value("reopen_log", json!({})).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState), "{e}");
    assert!(e.to_string().contains("not running"), "{e}");
    let e = c.call_value("attach", json!({})).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState), "{e}");
}

#[test]
fn tetherctl_logs_reads_across_rotations() {
    let work = TempDir::new("tether-ctl-logs");
    let log = work.path().join("ctr.log");
    let shim = Shim::launch(&BundleSpec::new(&[]).args(mixed_output_args(8 << 20)));
    run_logged(&shim, log_params(&log, Some(1 << 20)), false);
    let out = Command::new(binary("tetherctl"))
        .args(["logs", "--path"])
        .arg(&log)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (want_out, want_err) = mixed_output_sums(8 << 20);
    let mut got_out = StreamSum::default();
    got_out.feed(&out.stdout);
    let mut got_err = StreamSum::default();
    got_err.feed(&out.stderr);
    assert_eq!((got_out, got_err), (want_out, want_err));
}

#[test]
fn tetherctl_attach_relays_both_ways() {
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "read a; echo you said $a"]));
    let mut c = shim.client();
    c.create(&CreateParams {
        stderr: Some("/dev/null".into()),
        attach: true,
        ..Default::default()
    })
    .unwrap();
    let mut ctl = Command::new(binary("tetherctl"))
        .arg("-s")
        .arg(&shim.socket)
        .arg("attach")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.start().unwrap();
    ctl.stdin.take().unwrap().write_all(b"hello\n").unwrap();
    let mut line = String::new();
    BufReader::new(ctl.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "you said hello\n");
    assert_eq!(ctl.wait().unwrap().code(), Some(0));
}

// A client that reads packet by packet at about 2 MB/s, as CRI-O and Podman read,
// on a machine kept busy: it gets every byte of 12 MiB and is never cut off (the
// process waits for it); the shim's memory stays bounded.
#[test]
fn a_slow_attach_reader_gets_every_byte() {
    let _load = Hogs::start(2);
    let shim = Shim::launch(&BundleSpec::new(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 384 ]; do head -c 32767 /dev/zero | tr '\\0' y; echo; i=$((i+1)); done",
    ]));
    let mut c = shim.client();
    c.set_timeout(Some(T)).unwrap();
    let created = c
        .create(&CreateParams {
            stdin: Some("/dev/null".into()),
            log: Some(log_params(&shim.work.path().join("log"), None)),
            attach: true,
            ..Default::default()
        })
        .unwrap();
    let path = created.stdio.attach.clone().expect("an attach socket");
    let fd = connect_seqpacket(&path);
    let reader = std::thread::spawn(move || {
        let (mut out, mut buf) = (StreamSum::default(), vec![0u8; 8193]);
        loop {
            // SAFETY: recv into our own buffer on a socket we own.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n >= 0, "recv: {}", std::io::Error::last_os_error());
            match (n, buf[0]) {
                (0, _) => return out,
                (_, 2) => out.feed(&buf[1..n as usize]),
                (_, 4) => panic!("cut off: {}", String::from_utf8_lossy(&buf[1..n as usize])),
                (_, other) => panic!("unexpected stream byte {other}"),
            }
            std::thread::sleep(Duration::from_millis(4));
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    c.start().unwrap();
    let exit = c.wait(None).unwrap();
    assert_eq!(exit.status, Some(0));
    let got = reader.join().unwrap();
    let mut want = StreamSum::default();
    let line = format!("{}\n", "y".repeat(32767));
    for _ in 0..384 {
        want.feed(line.as_bytes());
    }
    assert_eq!(got, want, "the slow reader missed output");
    let peak = proc_status_kb(shim.pid(), "VmHWM");
    assert!(peak < 24 << 10, "the shim's peak RSS was {peak} kB");
}
