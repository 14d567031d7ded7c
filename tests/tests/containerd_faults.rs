//! tether under a real containerd when things go wrong or get unusual, each test
//! with a private containerd of its own (tests/src/ctr_env.rs): containerd killed
//! and restarted, the shim killed, bad ttrpc input, Waits piling up on one
//! connection, and the shim command line driven by hand as containerd drives it.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tether_tests::containerd::*;
use tether_tests::ctr_env::*;
use tether_tests::ttrpc::*;
use tether_tests::{binary, pid_gone, unique_id, wait_until, TempDir};

#[test]
fn concurrent_waits_on_one_connection_and_calls_between() {
    let e = Env::start();
    e.run_sleeper("w1");
    let address = e.address("w1");
    let mut c = TtrpcClient::connect(&address);
    let wait = ttrpc_request(TASK, "Wait", &pb_bytes(1, b"w1"));
    let mut waits: Vec<u32> = (0..3)
        .map(|_| c.send_frame(wait.len() as u32, 1, &wait))
        .collect();
    // Blocked Waits hold nothing up: State is answered at once, RUNNING (2).
    let state = ttrpc_request(TASK, "State", &pb_bytes(1, b"w1"));
    let s = c.send_frame(state.len() as u32, 1, &state);
    let a = c.read_answer();
    assert_eq!((a.stream, a.code), (s, 0), "{}", a.message);
    assert!(
        pb_fields(&a.payload).contains(&(4, Ok(2))),
        "{:?}",
        pb_fields(&a.payload)
    );
    e.ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "w1"]);
    let mut answered: Vec<u32> = (0..3)
        .map(|_| {
            let a = c.read_answer();
            assert_eq!(a.code, 0, "{}", a.message);
            assert!(pb_fields(&a.payload).contains(&(1, Ok(137))));
            a.stream
        })
        .collect();
    answered.sort();
    waits.sort();
    assert_eq!(answered, waits);
    drop(c);
    e.ctd.ctr_ok(&["task", "rm", "w1"]);
    e.ctd.ctr_ok(&["container", "rm", "w1"]);
    e.assert_clean("w1", Some(&address));
}

#[test]
fn containerd_killed_and_restarted_finds_its_task_and_the_exit_it_missed() {
    let mut e = Env::start();
    let pid = e.run_sleeper("r1");
    let address = e.address("r1");
    let shim = shim_of(&e.ctd.namespace, "r1").expect("shim");
    e.ctd.kill9();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !pid_gone(shim) && !pid_gone(pid),
        "the shim and the task outlive containerd"
    );
    e.ctd.restart();
    assert_eq!(task_status(&e.ctd, "r1").as_deref(), Some("RUNNING"));

    // The task exits while containerd is down: its exit reaches the next containerd
    // (1.6; 2.x cleans the shim up instead, below).
    e.ctd.kill9();
    // SAFETY: signalling the task's init, a process of this test's container.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(Duration::from_secs(10), "the task to die", || pid_gone(pid));
    std::thread::sleep(Duration::from_millis(300));
    let before = e.ctd.log().len();
    e.ctd.restart();
    if containerd_version().0 >= 2 {
        // containerd 2.x, reloading its shims before it serves, cleans up one whose
        // task has no process left (containerd#6860): Delete, Shutdown, the shim's
        // `delete`. No exit is published (its ttrpc socket is not up yet, and the
        // shim is no longer its task's): the same with containerd-shim-runc-v2.
        wait_until(Duration::from_secs(15), "containerd to clean up the shim", || {
            e.ctd.log()[before..].contains("cleaning leaked shim process\" id=r1")
        });
        assert_eq!(task_status(&e.ctd, "r1"), None);
    } else {
        let forwarded = |log: &str| {
            log[before..].lines().any(|l| {
                l.contains("event forwarded")
                    && l.contains("topic=/tasks/exit")
                    && l.contains(&e.ctd.namespace)
            })
        };
        wait_until(Duration::from_secs(15), "the missed exit to be forwarded", || {
            forwarded(&e.ctd.log())
        });
        assert_eq!(task_status(&e.ctd, "r1").as_deref(), Some("STOPPED"));
        e.ctd.ctr_ok(&["task", "rm", "r1"]);
    }
    e.ctd.ctr_ok(&["container", "rm", "r1"]);
    e.assert_clean("r1", Some(&address));
}

#[test]
fn shim_killed_leaves_nothing_and_containerd_gets_exit_137() {
    let e = Env::start();
    let image = import_image(&e);
    let mut events = e.events();
    let out = e
        .ctd
        .ctr()
        .args([
            "run",
            "-d",
            "--fifo-dir",
            &e.fifo_dir(),
            "--runtime",
            &e.runtime,
            image,
            "k1",
            "/bin/sleep",
            "1000",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pid = e.task_pid("k1");
    let address = e.address("k1");
    assert!(e.runc_state("k1").exists());
    assert_eq!(
        mounts_under(&e.ctd.bundle("k1")).len(),
        1,
        "the overlay rootfs is mounted"
    );
    let shim = e.shim_pid("k1");
    // SAFETY: signalling the shim this test's containerd started.
    unsafe { libc::kill(shim, libc::SIGKILL) };
    let lines = events.until(|l| has_topic(l, "k1", "/tasks/exit"));
    let exit = lines.iter().find(|l| l.contains("/tasks/exit")).unwrap();
    assert!(exit.contains("\"exit_status\":137"), "{exit}");
    wait_until(Duration::from_secs(10), "the task to be gone", || pid_gone(pid));
    e.assert_clean("k1", Some(&address));
    e.ctd.ctr_ok(&["container", "rm", "k1"]);
}

#[test]
fn bad_ttrpc_input_gets_error_statuses_and_the_shim_serves_on() {
    let e = Env::start();
    e.run_sleeper("b1");
    let address = e.address("b1");
    let shim = e.shim_pid("b1");
    let mut c = TtrpcClient::connect(&address);

    // A frame over ttrpc's 4 MiB: refused, skipped, the connection goes on.
    let big = vec![0u8; (4 << 20) + 1];
    let stream = c.send_frame(big.len() as u32, 1, &big);
    let a = c.read_answer();
    assert_eq!((a.stream, a.code), (stream, 8), "{}", a.message);

    let unknown_service = ttrpc_request("no.such.Service", "Frob", &[]);
    c.send_frame(unknown_service.len() as u32, 1, &unknown_service);
    let a = c.read_answer();
    assert_eq!(a.code, 12, "unknown service: {}", a.message);

    let a = c.call("Frobnicate", &[]);
    assert_eq!(a.code, 12, "unknown method: {}", a.message);

    // Not a protobuf Request at all, then a request whose payload is not protobuf.
    c.send_frame(3, 1, &[0xff, 0xff, 0xff]);
    assert_eq!(c.read_answer().code, 3);
    let a = c.call("Kill", &[0x0a, 0xff, 0x01]);
    assert_eq!(a.code, 3, "bad payload: {}", a.message);
    // Data on a stream nobody opened is ignored.
    c.send_frame(2, 3, b"zz");

    let a = c.call("Connect", &pb_bytes(1, b"b1"));
    assert_eq!(a.code, 0, "{}", a.message);
    let fields = pb_fields(&a.payload);
    assert!(fields.contains(&(1, Ok(shim as u64))), "{fields:?}");
    assert!(!pid_gone(shim));
    assert_eq!(task_status(&e.ctd, "b1").as_deref(), Some("RUNNING"));
    e.ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "b1"]);
    wait_until(Duration::from_secs(10), "b1 to stop", || {
        task_status(&e.ctd, "b1").as_deref() == Some("STOPPED")
    });
    e.ctd.ctr_ok(&["task", "rm", "b1"]);
    e.ctd.ctr_ok(&["container", "rm", "b1"]);
    e.assert_clean("b1", Some(&address));
}

/// `containerd-shim-tether-v2 ... ACTION` in `bundle`, as containerd runs it (no
/// TTRPC_ADDRESS: no events), bounded by `timeout` so a held pipe fails the test.
fn shim_cli(bundle: &Path, ns: &str, state_root: &Path, action: &str) -> std::process::Output {
    Command::new("timeout")
        .arg("20")
        .arg(binary("containerd-shim-tether-v2"))
        .args(["-namespace", ns, "-address", "/tmp/tether-no-containerd.sock"])
        .args(["-publish-binary", "/bin/true", "-id", "s1", action])
        .current_dir(bundle)
        .env("TETHER_STATE_ROOT", state_root)
        .env_remove("TTRPC_ADDRESS")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn shim_command_line_start_delete_and_delete_then_shutdown() {
    tether_tests::require_root_and_runc();
    let work = TempDir::new("tether-ctd-cli");
    let bundle = tether_tests::BundleSpec::new(&["sleep", "1000"]).write(&work.path().join("bundle"));
    let state_root = work.path().join("tstate");
    let ns = unique_id("tns");
    // start: only the address, once listening; the serving shim holds none of our
    // pipes (or `output()` would wait for it).
    let out = shim_cli(&bundle, &ns, &state_root, "start");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let address = String::from_utf8(out.stdout).unwrap();
    assert!(
        address.starts_with("unix:///run/containerd/s/") && address.len() == 25 + 64,
        "{address:?}"
    );
    assert_eq!(fs::read_to_string(bundle.join("address")).unwrap(), address);
    let again = shim_cli(&bundle, &ns, &state_root, "start");
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        address,
        "a repeated start"
    );
    let shim = shim_of(&ns, "s1").expect("serving shim");

    // The lifecycle containerd drives, ending with Delete then Shutdown.
    let mut c = TtrpcClient::connect(&address);
    let bundle_path = bundle.canonicalize().unwrap();
    let create = [
        pb_bytes(1, b"s1"),
        pb_bytes(2, bundle_path.to_str().unwrap().as_bytes()),
    ]
    .concat();
    let a = c.call("Create", &create);
    assert_eq!(a.code, 0, "Create: {}", a.message);
    let a = c.call("Start", &pb_bytes(1, b"s1"));
    assert_eq!(a.code, 0, "Start: {}", a.message);
    let wait = ttrpc_request(TASK, "Wait", &pb_bytes(1, b"s1"));
    let w = c.send_frame(wait.len() as u32, 1, &wait);
    let a = c.call("Kill", &[pb_bytes(1, b"s1"), pb_uint(3, 9)].concat());
    assert_eq!(a.code, 0, "Kill: {}", a.message);
    let a = c.read_answer();
    assert_eq!((a.stream, a.code), (w, 0), "Wait: {}", a.message);
    assert!(pb_fields(&a.payload).contains(&(1, Ok(137))));
    // Killing what has exited is NotFound (5), as containerd's CRI expects.
    assert_eq!(
        c.call("Kill", &[pb_bytes(1, b"s1"), pb_uint(3, 9)].concat()).code,
        5
    );
    let a = c.call("Delete", &pb_bytes(1, b"s1"));
    assert_eq!(a.code, 0, "Delete: {}", a.message);
    assert!(pb_fields(&a.payload).contains(&(2, Ok(137))));
    let a = c.call("Shutdown", &pb_bytes(1, b"s1"));
    assert_eq!(a.code, 0, "Shutdown after Delete: {}", a.message);
    wait_until(Duration::from_secs(5), "the shim to exit", || pid_gone(shim));
    assert!(!Path::new(address.trim_start_matches("unix://")).exists());
    assert!(!state_root.join(&ns).join("s1").exists());

    // delete, with nothing left: still a DeleteResponse (status 255: unknown), twice.
    for _ in 0..2 {
        let out = shim_cli(&bundle, &ns, &state_root, "delete");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(pb_fields(&out.stdout).contains(&(2, Ok(255))), "{:?}", out.stdout);
    }
    let _ = fs::remove_dir(Path::new("/run/containerd/runc").join(&ns));
}
