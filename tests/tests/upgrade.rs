//! Upgrade in place: a shim flipped between two builds of tether 100 times while
//! its container streams output into a FIFO, a rotating CRI log and two attach
//! clients, execs run and exit, waits are pending and a daemon is subscribed; the
//! refusals that leave it running unchanged; and a shim killed while it upgrades.
//!
//! The "other build" is a copy of tether-shim with its build tag patched (the tag is
//! a static the binary reads at run time: see shim/src/handover.rs).

use serde_json::{json, Value};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tether_protocol::*;
use tether_tests::*;

const T: Duration = Duration::from_secs(120);

fn kill9(pid: i32) {
    // SAFETY: signalling a pid this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
}

fn upgrade(c: &mut Client, binary: &Path) -> Result<UpgradeResult, ClientError> {
    c.call("upgrade", &json!({"binary": binary}))
}

/// Reads an attach socket's stdout packets until EOF.
fn read_attach_bytes(fd: OwnedFd) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: recv into our own buffer on a socket we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 0, "recv: {}", std::io::Error::last_os_error());
        let n = n as usize;
        if n == 0 {
            return out;
        }
        match buf[0] {
            2 => out.extend_from_slice(&buf[1..n]),
            3 => {}
            other => panic!(
                "attach: stream byte {other}: {}",
                String::from_utf8_lossy(&buf[1..n])
            ),
        }
    }
}

/// The counter's output: "0\n1\n2\n..." up to a line cut short at most.
fn assert_counts(what: &str, bytes: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(bytes);
    let mut lines: Vec<&str> = text.split('\n').collect();
    let tail = lines.pop().unwrap_or("");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(*line, i.to_string(), "{what}: line {i} is {line:?}");
    }
    let next = lines.len().to_string();
    assert!(
        next.starts_with(tail),
        "{what}: the last piece {tail:?} is not the start of {next}"
    );
    lines.len() as u64
}

#[test]
fn a_busy_shim_flipped_100_times_loses_nothing() {
    let work = TempDir::new("tether-upgrade");
    let a = binary("tether-shim");
    let b = patched_shim(work.path(), "next", "1");
    // A counter, as fast as busybox sh goes, until killed.
    let spec = BundleSpec::new(&["sh", "-c", "i=0; while :; do echo $i; i=$((i+1)); done"]);
    let shim = Shim::launch(&spec);
    let shim_pid = shim.pid();
    let log = work.path().join("ctr.log");
    let fifo = work.path().join("out.fifo");
    let status = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let mut c = shim.client();
    c.set_timeout(Some(T)).unwrap();
    let created = c
        .create(&CreateParams {
            stdin: Some("/dev/null".into()),
            stdout: Some(fifo.display().to_string()),
            stderr: Some("/dev/null".into()),
            log: Some(LogParams {
                path: log.display().to_string(),
                max_line: None,
                max_size: Some(256 << 10),
                max_files: Some(10_000),
            }),
            attach: true,
            ..Default::default()
        })
        .expect("create");
    let attach_path = created.stdio.attach.clone().expect("an attach socket");
    let fifo_reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || read_fifo_to_end(&fifo, Duration::from_secs(600)))
    };
    let attach_readers: Vec<_> = (0..2)
        .map(|_| {
            let fd = connect_seqpacket(&attach_path);
            std::thread::spawn(move || read_attach_bytes(fd))
        })
        .collect();
    let mut daemon = shim.client();
    daemon.subscribe(Some(0)).expect("subscribe");
    c.start().expect("start");
    // A wait pending on its own connection across every flip.
    let init_waiter = {
        let mut w = shim.client();
        w.set_timeout(Some(Duration::from_secs(600))).unwrap();
        std::thread::spawn(move || w.wait(None).expect("init's wait"))
    };

    let mut fds_at_10 = 0;
    let mut rss_at_10 = 0;
    let mut exec_waiters = Vec::new();
    for i in 1..=100u32 {
        let (to, tag) = if i % 2 == 1 { (&b, "next") } else { (&a, "dev") };
        let r = upgrade(&mut c, to).unwrap_or_else(|e| panic!("upgrade {i}: {e}"));
        assert_eq!(r.shim_pid as i32, shim_pid, "upgrade {i} changed the pid");
        assert!(r.to.ends_with(&format!("+{tag}")), "upgrade {i}: {r:?}");
        assert!(c.hello().unwrap().version.ends_with(&format!("+{tag}")));
        if matches!(i, 20 | 45 | 70) {
            // An exec that runs across the next flips, its wait pending meanwhile.
            let id = format!("e{i}");
            let code = i as i32 % 7;
            c.exec(&ExecParams {
                exec_id: id.clone(),
                process: json!({"args": ["sh", "-c", format!("sleep 0.5; exit {code}")]}),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("exec {id}: {e}"));
            let mut w = shim.client();
            exec_waiters.push(std::thread::spawn(move || {
                let exit = w.wait(Some(&id)).expect("exec wait");
                (id, code, exit)
            }));
        }
        if i == 10 {
            fds_at_10 = fd_count(shim_pid);
            rss_at_10 = proc_status_kb(shim_pid, "VmRSS");
        }
    }
    for w in exec_waiters {
        let (id, code, exit) = w.join().unwrap();
        assert_eq!(exit.status, Some(code), "{id}");
        c.delete(Some(&id), false).unwrap();
    }
    // Same clients as at flip 10 (the exec waiters' connections close as the shim
    // sees them go), no exec left: the same fds. Memory cannot pile up across execs
    // of the binary; what could is output held in queues, bounded (attach's 1 MiB a
    // client, the fan-out's chunk), hence the margin.
    let settled = poll_until(T, || fd_count(shim_pid) == fds_at_10);
    assert!(
        settled,
        "fds grew across 90 upgrades: {fds_at_10} -> {}",
        fd_count(shim_pid)
    );
    let rss_at_100 = proc_status_kb(shim_pid, "VmRSS");
    assert!(
        rss_at_100 <= rss_at_10 + 4096,
        "RSS grew across 90 upgrades: {rss_at_10} -> {rss_at_100} kB"
    );

    c.kill(None, 9, false).unwrap();
    let exit = init_waiter.join().unwrap();
    assert_eq!(exit.signal, Some(9));
    // The daemon saw every event once, in order: 100 upgrades, each exec's exit and
    // init's, seq contiguous.
    let events = events_until(
        &mut daemon,
        |e| matches!(&e.body, EventBody::Exit(r) if r.process == INIT_PROCESS),
    );
    // The shim holds the FIFO's write end until the container is deleted.
    c.delete(None, false).unwrap();
    let from_fifo = fifo_reader.join().unwrap();
    let lines = assert_counts("the FIFO", &from_fifo);
    assert!(lines > 1000, "the counter wrote only {lines} lines");
    for r in attach_readers {
        let got = r.join().unwrap();
        assert_counts("an attach client", &got);
        assert_eq!(got.len(), from_fifo.len(), "an attach client and the FIFO differ");
    }
    let mut files: Vec<PathBuf> = fs::read_dir(work.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("ctr.log"))
        .collect();
    let rotations = |p: &PathBuf| -> u64 {
        p.extension()
            .and_then(|e| e.to_str())
            .and_then(|e| e.parse().ok())
            .unwrap_or(0)
    };
    files.sort_by_key(|p| std::cmp::Reverse(rotations(p)));
    assert!(files.len() > 2, "the log never rotated: {files:?}");
    let (out, _, _) = rejoin_cri_logs(&files);
    let mut fifo_sum = StreamSum::default();
    fifo_sum.feed(&from_fifo);
    // The log ends the last, cut-short line with a newline of its own (a `P` record
    // at the end rejoins without one): compare the whole lines.
    let whole = &from_fifo[..from_fifo.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)];
    let mut whole_sum = StreamSum::default();
    whole_sum.feed(whole);
    assert!(
        out == fifo_sum || out == whole_sum,
        "the CRI log ({} bytes) and the FIFO ({} bytes) differ",
        out.len,
        from_fifo.len()
    );

    for (k, e) in events.iter().enumerate() {
        assert_eq!(e.seq, k as u64 + 1, "events out of order: {events:?}");
    }
    let count = |f: &dyn Fn(&EventBody) -> bool| events.iter().filter(|e| f(&e.body)).count();
    assert_eq!(count(&|b| matches!(b, EventBody::Upgraded { .. })), 100);
    for id in ["e20", "e45", "e70", INIT_PROCESS] {
        assert_eq!(
            count(&|b| matches!(b, EventBody::Exit(r) if r.process == id)),
            1,
            "{id}'s exit"
        );
    }
}

#[test]
fn refused_upgrades_leave_the_shim_running_unchanged() {
    let work = TempDir::new("tether-upgrade-refused");
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let before = c.hello().unwrap();
    let wrong_version = patched_shim(work.path(), "future", "9");
    let not_a_shim = work.path().join("not-a-shim");
    fs::write(&not_a_shim, "#!/bin/sh\necho hello\n").unwrap();
    let mut perms = fs::metadata(&not_a_shim).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&not_a_shim, perms).unwrap();
    let cases: [(PathBuf, ErrorKind, &str); 4] = [
        (
            work.path().join("missing"),
            ErrorKind::UpgradeRefused,
            "No such file",
        ),
        (not_a_shim, ErrorKind::UpgradeRefused, "is not a tether shim"),
        (wrong_version, ErrorKind::UpgradeRefused, "hand-over versions 9"),
        (
            PathBuf::from("relative/shim"),
            ErrorKind::InvalidParams,
            "not an absolute path",
        ),
    ];
    for (bin, kind, words) in cases {
        let e = upgrade(&mut c, &bin).expect_err("a refusal");
        assert_eq!(e.rpc_kind(), Some(kind), "{}: {e}", bin.display());
        assert!(e.to_string().contains(words), "{}: {e}", bin.display());
        let now = c.hello().unwrap();
        assert_eq!(
            (now.version.as_str(), now.shim_pid),
            (before.version.as_str(), before.shim_pid)
        );
        assert_eq!(now.status, ContainerStatus::Running);
    }
    // The shim still works: an exec runs and is reported.
    c.exec(&ExecParams {
        exec_id: "after".into(),
        process: json!({"args": ["true"]}),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(c.wait(Some("after")).unwrap().status, Some(0));
}

#[test]
fn an_upgrade_waits_for_a_runtime_call_in_flight() {
    let work = TempDir::new("tether-upgrade-wait");
    let hanging = fault_runtime("hanging-runtime", work.path());
    let shim = Shim::launch_with(
        &BundleSpec::new(&["sleep", "1000"]),
        &["--runtime", hanging.to_str().unwrap()],
    );
    let next = patched_shim(work.path(), "next", "1");
    let mut creator = shim.client();
    creator
        .send_raw(
            format!(
                "{}\n",
                json!({"jsonrpc": "2.0", "id": 1, "method": "create", "params": {"stdin": "/dev/null", "stdout": "/dev/null", "stderr": "/dev/null"}})
            )
            .as_bytes(),
        )
        .unwrap();
    let pid_file = PathBuf::from(format!("{}.pid", hanging.display()));
    wait_until(T, "the hanging create", || {
        fs::read_to_string(&pid_file).is_ok_and(|s| !s.trim().is_empty())
    });
    let mut asker = shim.client();
    asker
        .send_raw(
            format!(
                "{}\n",
                json!({"jsonrpc": "2.0", "id": 7, "method": "upgrade", "params": {"binary": next}})
            )
            .as_bytes(),
        )
        .unwrap();
    // Nothing comes while the create runs: the upgrade waits for it.
    asker.set_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(
        asker.read_raw_line().is_err(),
        "the upgrade did not wait for the create"
    );
    let hung: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    kill9(hung);
    creator.set_timeout(Some(T)).unwrap();
    let answer: Value = creator.read_raw_line().unwrap().expect("the create's answer");
    assert!(answer.get("error").is_some(), "{answer}");
    asker.set_timeout(Some(T)).unwrap();
    let answer: Value = asker.read_raw_line().unwrap().expect("the upgrade's answer");
    assert!(
        answer["result"]["to"]
            .as_str()
            .is_some_and(|v| v.ends_with("+next")),
        "{answer}"
    );
    assert!(shim.client().hello().unwrap().version.ends_with("+next"));
}

#[test]
fn a_shim_killed_while_it_upgrades_is_cleaned_up_like_any_dead_shim() {
    let work = TempDir::new("tether-upgrade-killed");
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let next = patched_shim(work.path(), "next", "1");
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    let init = c.start().unwrap().pid;
    let mut daemon = shim.client();
    daemon.subscribe(Some(0)).unwrap();
    c.send_raw(
        format!(
            "{}\n",
            json!({"jsonrpc": "2.0", "id": 9, "method": "upgrade", "params": {"binary": next}})
        )
        .as_bytes(),
    )
    .unwrap();
    let shim_pid = shim.pid();
    kill9(shim_pid);
    wait_until(T, "the shim gone", || pid_gone(shim_pid));
    // The daemon's connection ends (EOF), with no upgrade event after its events.
    daemon.set_timeout(Some(T)).unwrap();
    while let Ok(e) = daemon.next_event() {
        assert!(!matches!(e.body, EventBody::Exit(_)), "{e:?}");
    }
    // The container outlived its shim; cleanup kills it and says the status is unknown.
    assert!(!pid_gone(init), "the container died with its shim");
    let out = std::process::Command::new(binary("tether-shim"))
        .args(["cleanup", "--id", &shim.id, "--state-dir"])
        .arg(&shim.state_dir)
        .env("TETHER_TEST_RUNTIME", test_runtime())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let record: ExitRecord = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((record.process.as_str(), record.status), (INIT_PROCESS, None));
    wait_until(T, "init killed by cleanup", || pid_gone(init));
}

#[test]
fn tetherctl_upgrades_every_shim_under_a_state_root() {
    let work = TempDir::new("tether-upgrade-all");
    let root = work.path().join("root");
    let next = patched_shim(work.path(), "next", "1");
    let shims: Vec<Shim> = (0..3)
        .map(|k| {
            let id = unique_id(&format!("all{k}"));
            let shim = Shim::launch_at(
                &BundleSpec::new(&["sleep", "1000"]),
                TempDir::new("tether-upgrade-all-bundle"),
                root.join(&id),
                &id,
                &[],
            );
            let mut c = shim.client();
            c.create(&null_stdio()).unwrap();
            c.start().unwrap();
            shim
        })
        .collect();
    let out = std::process::Command::new(binary("tetherctl"))
        .arg("--state-root")
        .arg(&root)
        .args(["upgrade", "--all", "--binary"])
        .arg(&next)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("3 upgraded, 0 not"), "{text}");
    for shim in &shims {
        let v = env!("CARGO_PKG_VERSION");
        assert!(
            text.contains(&format!("{} {v}+dev -> {v}+next", shim.id)),
            "{text}"
        );
        let hello = shim.client().hello().unwrap();
        assert!(hello.version.ends_with("+next"), "{hello:?}");
        assert_eq!(hello.status, ContainerStatus::Running);
    }
}
