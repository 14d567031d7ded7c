//! Daemon restart and reattach: the daemon dies, the shim and container carry on, and
//! a new daemon misses nothing. Real runc; the "daemon" is a process we SIGKILL.

use serde_json::json;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tether_protocol::*;
use tether_tests::*;

const T: Duration = Duration::from_secs(60);

fn kill9(pid: u32) {
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn output_survives_a_daemon_killed_mid_stream() {
    require_root_and_runtime();
    const LINES: u32 = 1_500_000; // about 10.9 MB of counter lines
    let work = TempDir::new("tether-reattach");
    let bundle = BundleSpec::new(&["seq", "1", &LINES.to_string()]).write(&work.path().join("bundle"));
    let state_dir = work.path().join("state");
    let record = work.path().join("record");
    let id = unique_id("ra");
    let mut daemon = Command::new(binary("daemon-to-kill"))
        .args([
            "--id",
            &id,
            "--bundle",
            bundle.to_str().unwrap(),
            "--state-dir",
            state_dir.to_str().unwrap(),
        ])
        .args(["--record", record.to_str().unwrap(), "--read", "1000000"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(daemon.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    kill9(daemon.id());
    daemon.wait().unwrap();
    // The container keeps writing into the FIFO until it is full, then blocks.
    std::thread::sleep(Duration::from_millis(300));
    let socket = state_dir.join("shim.sock");
    let mut c = Client::connect(&socket).expect("the shim outlives its daemon");
    c.set_timeout(Some(T)).unwrap();
    assert_eq!(
        c.hello().unwrap().status,
        ContainerStatus::Running,
        "blocked on the full FIFO, not dead"
    );

    // Resume events from the last one the dead daemon saw.
    let seen: Vec<Event> = fs::read_to_string(format!("{}.events", record.display()))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = seen.last().map(|e| e.seq).unwrap_or(0);
    c.subscribe(Some(last)).unwrap();
    let out = read_fifo_to_end(&state_dir.join("init-stdout"), T);
    let mut all = fs::read(&record).unwrap();
    all.extend_from_slice(&out);
    let mut events = seen.clone();
    loop {
        let e = c.next_event().unwrap();
        let done = matches!(&e.body, EventBody::Exit(_));
        events.push(e);
        if done {
            break;
        }
    }
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    let expected: String = (1..=LINES).map(|i| format!("{i}\n")).collect();
    assert!(all.len() >= 10_000_000);
    assert_eq!(all.len(), expected.len(), "bytes lost or duplicated");
    assert_eq!(checksum(&all), checksum(expected.as_bytes()));
    assert!(all == expected.as_bytes());
    assert_eq!(c.wait(None).unwrap().status, Some(0));
    c.delete(None, false).unwrap();
}

/// FNV-1a, enough to tell two streams apart in a failure message.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, x| {
        (h ^ *x as u64).wrapping_mul(0x100000001b3)
    })
}

#[test]
fn exit_while_no_daemon_listens_is_found_three_ways() {
    let shim = Shim::launch(&BundleSpec::new(&["sh", "-c", "sleep 0.3; exit 42"]));
    {
        let mut c = shim.client();
        c.create(&null_stdio()).unwrap();
        c.start().unwrap();
    } // the daemon goes away
    let record_path = shim.state_dir.join("exits/init.json");
    wait_until(T, "the exit record on disk", || record_path.exists());
    let on_disk: ExitRecord = serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    assert_eq!(on_disk.status, Some(42));
    let mut c = shim.client();
    let replay = c.subscribe(Some(0)).unwrap();
    let replayed: Vec<Event> = (0..replay.replayed).map(|_| c.next_event().unwrap()).collect();
    let exit = replayed.iter().find_map(|e| match &e.body {
        EventBody::Exit(r) => Some(r.clone()),
        _ => None,
    });
    assert_eq!(exit.as_ref(), Some(&on_disk));
    assert_eq!(c.wait(None).unwrap(), on_disk);
    assert_eq!(c.hello().unwrap().status, ContainerStatus::Stopped);
}

#[test]
fn a_client_dropped_mid_replay_loses_nothing_on_resume() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    for i in 0..100 {
        let id = format!("e{i}");
        c.exec(&ExecParams {
            exec_id: id.clone(),
            process: json!({"args": ["true"]}),
            ..Default::default()
        })
        .unwrap();
        c.wait(Some(&id)).unwrap();
        c.delete(Some(&id), false).unwrap();
    }
    let total = c.hello().unwrap().last_seq;
    assert!(total >= 300);
    // A daemon starts a full replay and dies after reading a part of it.
    let mut seen = Vec::new();
    {
        let mut dying = shim.client();
        dying.subscribe(Some(0)).unwrap();
        for _ in 0..57 {
            seen.push(dying.next_event().unwrap());
        }
    } // its socket closes with most of the replay unread
    let mut c2 = shim.client();
    let r = c2.subscribe(Some(seen.last().unwrap().seq)).unwrap();
    assert_eq!(r.replayed, total - 57);
    for _ in 0..r.replayed {
        seen.push(c2.next_event().unwrap());
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    assert!(c.hello().is_ok(), "the shim survived the dropped client");
}

#[test]
fn ten_thousand_events_later_the_log_is_bounded_and_replay_works() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let mut i = 0;
    while c.hello().unwrap().last_seq < 10_000 {
        // Ten at a time: each exec is three events (added, started, exit).
        let ids: Vec<String> = (0..10).map(|k| format!("x{i}-{k}")).collect();
        for id in &ids {
            let p = ExecParams {
                exec_id: id.clone(),
                process: json!({"args": ["true"]}),
                stdout: Some("/dev/null".into()),
                stderr: Some("/dev/null".into()),
                stdin: Some("/dev/null".into()),
                ..Default::default()
            };
            c.exec(&p).unwrap();
        }
        for id in &ids {
            c.wait(Some(id)).unwrap();
            c.delete(Some(id), false).unwrap();
        }
        i += 1;
    }
    let hello = c.hello().unwrap();
    let log_lines = fs::read_to_string(shim.state_dir.join("events.jsonl"))
        .unwrap()
        .lines()
        .count() as u64;
    assert!(log_lines < 5000, "event log holds {log_lines} lines: not bounded");
    assert!(hello.first_seq > 1, "nothing was compacted");
    assert_eq!(log_lines, hello.last_seq - hello.first_seq + 1);
    for since in [
        hello.first_seq - 1,
        hello.first_seq + 500,
        hello.last_seq - 1,
        hello.last_seq,
    ] {
        let mut r = shim.client();
        let res = r.subscribe(Some(since)).unwrap();
        assert_eq!(res.replayed, hello.last_seq - since);
        let seqs: Vec<u64> = (0..res.replayed).map(|_| r.next_event().unwrap().seq).collect();
        assert_eq!(seqs, ((since + 1)..=hello.last_seq).collect::<Vec<_>>());
    }
    let e = shim.client().subscribe(Some(0)).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::EventsCompacted), "{e}");
}

#[test]
fn a_sigkilled_shim_is_listed_dead_and_cleanup_removes_everything() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let init_pid = c.state().unwrap().pid.unwrap();
    let root = shim.state_dir.parent().unwrap().to_path_buf();
    let list = |root: &Path| {
        let out = Command::new(binary("tetherctl"))
            .args(["--state-root", root.to_str().unwrap(), "list"])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    // The state dir is named "state" under the test's work dir.
    let row = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("state "))
            .map(str::to_string)
            .unwrap_or_default()
    };
    let alive = row(&list(&root));
    assert!(alive.contains("alive") && alive.contains("running"), "{alive}");
    kill9(shim.pid() as u32);
    wait_until(T, "shim death", || pid_gone(shim.pid()));
    let dead = row(&list(&root));
    assert!(dead.contains("dead"), "{dead}");
    assert!(!pid_gone(init_pid), "the container outlives its shim");

    let out = Command::new(binary("tether-shim"))
        .args([
            "cleanup",
            "--id",
            &shim.id,
            "--state-dir",
            shim.state_dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: ExitRecord = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record.status, None, "the status is unknown, not made up");
    assert!(record.reason.is_some());
    wait_until(T, "container gone", || pid_gone(init_pid));
    assert!(!shim.state_dir.exists());
    let st = runtime_command().args(["state", &shim.id]).output().unwrap();
    assert!(!st.status.success(), "{} state left behind", test_runtime_name());
}

#[test]
fn sigterm_does_not_stop_the_shim_or_the_container() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    // SAFETY: signalling the shim we launched.
    unsafe { libc::kill(shim.pid(), libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(shim.client().hello().unwrap().status, ContainerStatus::Running);
    // shutdown refuses while the container runs, unless forced.
    assert_eq!(
        c.call_value("shutdown", json!({})).unwrap_err().rpc_kind(),
        Some(ErrorKind::WrongState)
    );
    let mut log = String::new();
    fs::File::open(shim.state_dir.join("shim.log"))
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("SIGTERM"), "{log}");
}
