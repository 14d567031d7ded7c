//! The shim core against real runc: launch, create/start, stdio, exits, events,
//! errors, delete.

use serde_json::{json, Value};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use tether_protocol::*;
use tether_tests::*;

const T: Duration = Duration::from_secs(20);

fn is_exit(e: &Event, process: &str) -> bool {
    matches!(&e.body, EventBody::Exit(r) if r.process == process)
}

/// Creates and starts the container with shim-made FIFOs; returns (stdout, stderr)
/// read to EOF by background threads.
fn run_to_exit(shim: &Shim) -> (Vec<Event>, ExitRecord, String, String) {
    let mut c = shim.client();
    c.subscribe(Some(0)).unwrap();
    let created = c.create(&CreateParams::default()).expect("create");
    let out = created.stdio.stdout.clone().unwrap();
    let err = created.stdio.stderr.clone().unwrap();
    let out_t = std::thread::spawn(move || read_fifo_to_end(Path::new(&out), T));
    let err_t = std::thread::spawn(move || read_fifo_to_end(Path::new(&err), T));
    c.start().expect("start");
    let events = events_until(&mut c, |e| is_exit(e, "init"));
    let record = c.wait(None).expect("wait after exit");
    let out = String::from_utf8(out_t.join().unwrap()).unwrap();
    let err = String::from_utf8(err_t.join().unwrap()).unwrap();
    (events, record, out, err)
}

#[test]
fn echo_hello_reaches_the_stdout_fifo_and_exits_zero() {
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "echo hello; echo oops >&2"]));
    let (events, record, out, err) = run_to_exit(&shim);
    assert_eq!(out, "hello\n");
    assert_eq!(err, "oops\n");
    assert_eq!(record.status, Some(0));
    assert_eq!(record.signal, None);
    let names: Vec<&str> = events.iter().map(|e| e.body.name()).collect();
    assert_eq!(names, ["created", "started", "exit"]);
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    // The exit record was on disk before the event went out.
    let on_disk: ExitRecord =
        serde_json::from_slice(&fs::read(shim.state_dir.join("exits/init.json")).unwrap()).unwrap();
    assert_eq!(on_disk, record);
}

#[test]
fn exit_code_is_reported() {
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "exit 7"]));
    let (_, record, _, _) = run_to_exit(&shim);
    assert_eq!(record.status, Some(7));
}

#[test]
fn sigkill_gives_137_and_wait_works_before_and_after_exit() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    // A second client waits before the exit.
    let mut waiter = shim.client();
    let before = std::thread::spawn(move || waiter.wait(None));
    std::thread::sleep(Duration::from_millis(100));
    let st = c.state().unwrap();
    assert_eq!(st.status, ContainerStatus::Running);
    c.kill(None, 9, false).unwrap();
    let before = before.join().unwrap().expect("wait before exit");
    assert_eq!(before.status, Some(137));
    assert_eq!(before.signal, Some(9));
    assert_eq!(before.signal_name.as_deref(), Some("SIGKILL"));
    let after = c.wait(None).unwrap();
    assert_eq!(after, before);
    assert_eq!(c.state().unwrap().status, ContainerStatus::Stopped);
    // Killing an exited process is refused, not silently accepted.
    let e = c.kill(None, 9, false).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState));
}

#[test]
fn instant_exit_still_gets_started_before_exit() {
    for _ in 0..3 {
        let shim = Shim::launch(&BundleSpec::new(&["true"]));
        let (events, record, _, _) = run_to_exit(&shim);
        assert_eq!(record.status, Some(0));
        let started = events
            .iter()
            .find(|e| e.body.name() == "started")
            .expect("started event");
        let exit = events.iter().find(|e| is_exit(e, "init")).unwrap();
        assert!(
            started.seq < exit.seq,
            "started {} must precede exit {}",
            started.seq,
            exit.seq
        );
    }
}

#[test]
fn missing_rootfs_is_an_error_naming_it_and_the_shim_still_answers() {
    let spec = BundleSpec::new(&["true"]).rootfs("/nonexistent-rootfs-xyz".into());
    let shim = Shim::launch(&spec);
    let mut c = shim.client();
    let e = c.create(&CreateParams::default()).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::InvalidBundle));
    assert!(e.to_string().contains("/nonexistent-rootfs-xyz"), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert_eq!(c.hello().unwrap().status, ContainerStatus::New);
}

#[test]
fn runtime_failure_carries_runcs_own_message() {
    let shim = Shim::launch(&BundleSpec::new(&["/no/such/program"]));
    let mut c = shim.client();
    let e = c.create(&null_stdio()).and_then(|_| c.start().map(|_| ()));
    let e = e.expect_err("the runtime must refuse a missing program");
    assert_eq!(e.rpc_kind(), Some(ErrorKind::RuntimeFailed));
    let msg = e.to_string();
    assert!(msg.starts_with(&format!("{} ", test_runtime_name())), "{msg}");
    assert!(msg.contains("/no/such/program"), "{msg}");
    assert!(!msg.contains("exit status 1"), "{msg}");
    assert!(c.hello().is_ok());
}

#[test]
fn a_runtime_that_does_not_exist_is_named() {
    let shim = Shim::launch_with(&BundleSpec::new(&["true"]), &["--runtime", "/no/such/runc"]);
    let mut c = shim.client();
    let e = c.create(&CreateParams::default()).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::RuntimeFailed));
    assert!(e.to_string().contains("/no/such/runc"), "{e}");
}

fn raw_line(s: &mut BufReader<UnixStream>) -> Value {
    let mut line = String::new();
    s.read_line(&mut line).expect("read");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"))
}

#[test]
fn garbage_gets_errors_and_breaks_nothing() {
    let shim = Shim::launch(&BundleSpec::new(&["true"]));
    let mut other = shim.client();
    let stream = UnixStream::connect(&shim.socket).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    let cases: &[(&[u8], &str)] = &[
        (b"this is not json\n", "parse_error"),
        (b"{\"id\":1,\"method\":\"hel\n", "parse_error"),
        (b"[1,2,3]\n", "invalid_request"),
        (b"{\"id\":2,\"method\":\"frobnicate\"}\n", "method_not_found"),
        (
            b"{\"id\":3,\"method\":\"kill\",\"params\":{\"signal\":\"SIGNOPE\"}}\n",
            "invalid_params",
        ),
        (
            b"{\"id\":4,\"method\":\"kill\",\"params\":{\"sginal\":9}}\n",
            "invalid_params",
        ),
        (b"{\"id\":5,\"method\":\"start\"}\n", "wrong_state"),
        (
            b"{\"id\":6,\"method\":\"wait\",\"params\":{\"process\":\"nope\"}}\n",
            "not_found",
        ),
        (b"{\"id\":{\"x\":1},\"method\":\"hello\"}\n", "invalid_request"),
    ];
    for (line, kind) in cases {
        w.write_all(line).unwrap();
        let v = raw_line(&mut r);
        assert_eq!(
            v["error"]["data"]["kind"],
            *kind,
            "for {:?}: {v}",
            String::from_utf8_lossy(line)
        );
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Same connection still serves, and without "jsonrpc" (a person typing).
    w.write_all(b"{\"id\":\"x\",\"method\":\"hello\"}\n").unwrap();
    let v = raw_line(&mut r);
    assert_eq!(v["id"], "x");
    assert_eq!(v["result"]["id"], shim.id.as_str());

    // A 2 MiB line closes that connection only.
    let mut big = vec![b'x'; 2 << 20];
    big.push(b'\n');
    let _ = w.write_all(&big);
    let mut rest = String::new();
    let _ = r.read_line(&mut rest); // the "closing" notice, if it got through
    let mut after = String::new();
    let n = r.read_line(&mut after).unwrap_or(0);
    assert_eq!(
        n, 0,
        "connection should be closed after an oversize line, got {after:?}"
    );

    // The other client and the shim are unaffected.
    assert_eq!(other.hello().unwrap().status, ContainerStatus::New);
    let mut fresh = shim.client();
    assert!(fresh.hello().is_ok());
}

#[test]
fn two_subscribers_see_the_same_events_and_since_replays_exactly() {
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "echo x"]));
    let mut a = shim.client();
    let mut b = shim.client();
    a.subscribe(None).unwrap();
    b.subscribe(None).unwrap();
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let ea = events_until(&mut a, |e| is_exit(e, "init"));
    let eb = events_until(&mut b, |e| is_exit(e, "init"));
    assert_eq!(ea, eb);
    assert_eq!(ea.len(), 3);
    for since in 0..=3u64 {
        let mut r = shim.client();
        let res = r.subscribe(Some(since)).unwrap();
        assert_eq!(res.replay_to, 3);
        assert_eq!(res.replayed, 3 - since);
        let replayed: Vec<Event> = (0..res.replayed).map(|_| r.next_event().unwrap()).collect();
        assert_eq!(replayed, ea[since as usize..].to_vec());
    }
}

#[test]
fn delete_leaves_nothing_behind() {
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "exit 3"]));
    let shim_pid = shim.pid();
    let stat = fs::read_to_string(format!("/proc/{shim_pid}/stat")).unwrap();
    let ppid: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_ne!(
        ppid,
        std::process::id() as i32,
        "the shim must not be a child of its launcher's caller"
    );
    // The shim calls setsid itself once it runs, which under load can be a moment
    // after its launcher has answered.
    let sid = || {
        let stat = fs::read_to_string(format!("/proc/{shim_pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(3)?.parse::<i32>().ok())
    };
    let led = poll_until(Duration::from_secs(30), || sid() == Some(shim_pid));
    assert!(
        led,
        "the shim leads its own session: sid {:?}, pid {shim_pid}",
        sid()
    );

    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    let init_pid = c.state().unwrap().pid.unwrap();
    // A running container is not deleted without force.
    c.start().unwrap();
    let record = c.wait(None).unwrap();
    let deleted = c.delete(None, false).unwrap();
    let deleted: ExitRecord = serde_json::from_value(deleted).unwrap();
    assert_eq!(deleted, record);
    assert_eq!(deleted.status, Some(3));
    wait_until(T, "shim exit", || pid_gone(shim_pid));
    assert!(pid_gone(init_pid));
    assert!(!shim.state_dir.exists(), "state dir left behind");
    let rt_state = runtime_command().args(["state", &shim.id]).output().unwrap();
    assert!(
        !rt_state.status.success(),
        "{} still knows the container",
        test_runtime_name()
    );
}

#[test]
fn running_container_needs_force_to_delete() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.subscribe(None).unwrap();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let e = c.delete(None, false).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState));
    let e = c.start().unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState), "start twice");
    let deleted: ExitRecord = serde_json::from_value(c.delete(None, true).unwrap()).unwrap();
    assert_eq!(deleted.status, Some(137));
    let events = events_until(&mut c, |e| e.body.name() == "deleted");
    let names: Vec<&str> = events.iter().map(|e| e.body.name()).collect();
    assert_eq!(names, ["created", "started", "exit", "deleted"]);
    wait_until(T, "state dir removal", || !shim.state_dir.exists());
}

#[test]
fn stdio_to_client_fifos_and_files() {
    let work = TempDir::new("tether-stdio");
    let stdin_fifo = work.path().join("in");
    let stdout_file = work.path().join("out.log");
    let stderr_fifo = work.path().join("err");
    for f in [&stdin_fifo, &stderr_fifo] {
        assert!(Command::new("mkfifo").arg(f).status().unwrap().success());
    }
    fs::write(&stdout_file, "before\n").unwrap();
    let shim = Shim::launch(&BundleSpec::new(&[
        "sh",
        "-c",
        "read line; echo got:$line; echo bad >&2",
    ]));
    let mut c = shim.client();
    let created = c
        .create(&CreateParams {
            stdin: Some(stdin_fifo.display().to_string()),
            stdout: Some(stdout_file.display().to_string()),
            stderr: Some(stderr_fifo.display().to_string()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        created.stdio.stdout.as_deref(),
        Some(stdout_file.to_str().unwrap())
    );
    let err_path = stderr_fifo.clone();
    let err_t = std::thread::spawn(move || read_fifo_to_end(&err_path, T));
    c.start().unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&stdin_fifo)
        .unwrap()
        .write_all(b"ping\n")
        .unwrap();
    let exit = c.wait(None).unwrap();
    assert_eq!(exit.status, Some(0));
    assert_eq!(fs::read_to_string(&stdout_file).unwrap(), "before\ngot:ping\n");
    assert_eq!(err_t.join().unwrap(), b"bad\n");
}

#[test]
fn output_written_while_nobody_reads_is_kept() {
    // Nobody has the FIFO open while the container writes and exits.
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "seq 1 20000"]));
    let mut c = shim.client();
    let created = c.create(&CreateParams::default()).unwrap();
    c.start().unwrap();
    let exit = c.wait(None).unwrap();
    assert_eq!(exit.status, Some(0));
    let out = read_fifo_to_end(Path::new(created.stdio.stdout.as_deref().unwrap()), T);
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(out.len(), expected.len());
    assert!(out == expected.as_bytes());
}

#[test]
fn launch_errors_are_clear() {
    let shim_bin = binary("tether-shim");
    let out = Command::new(&shim_bin)
        .args(["start", "--id", "../evil", "--bundle", "/tmp"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&shim_bin)
        .args([
            "start",
            "--id",
            "x1",
            "--bundle",
            "/no/such/bundle",
            "--state-root",
            "/tmp/tether-never",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/bundle"));
    // A second shim for the same state dir is refused.
    let shim = Shim::launch(&BundleSpec::new(&["true"]));
    let out = Command::new(&shim_bin)
        .args(["start", "--id", &shim.id, "--bundle"])
        .arg(&shim.bundle)
        .arg("--state-dir")
        .arg(&shim.state_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    let _ = json!(null);
}

#[test]
fn a_client_that_stops_sending_still_gets_its_late_answers() {
    // What `echo ... | socat - UNIX-CONNECT:...` does: send, shut down writing, read.
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "sleep 0.3; exit 5"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let mut stream = UnixStream::connect(&shim.socket).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    stream.write_all(b"{\"id\":1,\"method\":\"wait\"}\n").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let v = raw_line(&mut BufReader::new(stream));
    assert_eq!(v["result"]["status"], 5, "{v}");
}

#[test]
fn stdout_and_stderr_into_one_file_interleave_without_overwriting() {
    let work = TempDir::new("tether-onefile");
    let log = work.path().join("both.log");
    fs::write(&log, "existing line\n").unwrap();
    let script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done";
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", script]));
    let mut c = shim.client();
    let path = log.display().to_string();
    c.create(&CreateParams {
        stdin: Some("/dev/null".into()),
        stdout: Some(path.clone()),
        stderr: Some(path),
        ..Default::default()
    })
    .unwrap();
    c.start().unwrap();
    assert_eq!(c.wait(None).unwrap().status, Some(0));
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("existing line\n"), "{text:?}");
    let mut lines: Vec<&str> = text.lines().skip(1).collect();
    lines.sort();
    let mut want: Vec<String> = (1..=5)
        .flat_map(|i| [format!("err{i}"), format!("out{i}")])
        .collect();
    want.sort();
    assert_eq!(lines, want, "{text:?}");
}

#[test]
fn every_tetherctl_command_answers_help_with_its_usage() {
    let commands = [
        "launch",
        "list",
        "hello",
        "state",
        "pids",
        "create",
        "start",
        "exec",
        "kill",
        "wait",
        "resize",
        "close-stdin",
        "events",
        "logs",
        "attach",
        "reopen-log",
        "delete",
        "pause",
        "resume",
        "stats",
        "update",
        "checkpoint",
        "shutdown",
        "call",
        "run",
    ];
    for command in commands {
        for flag in ["--help", "-h"] {
            // No shim is named: help must not need one.
            let out = Command::new(binary("tetherctl"))
                .args([command, flag])
                .env_remove("TETHER_SOCKET")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "tetherctl {command} {flag}: {out:?}");
            assert!(
                text.starts_with("usage: tetherctl ") && text.split_whitespace().any(|w| w == command),
                "tetherctl {command} {flag} printed {text:?}"
            );
        }
    }
    // After `--` the words are the process's own.
    let out = Command::new(binary("tetherctl"))
        .args([
            "-s",
            "/nonexistent/tether.sock",
            "exec",
            "e1",
            "--",
            "sh",
            "--help",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let out = Command::new(binary("tetherctl"))
        .args(["bogus", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}
