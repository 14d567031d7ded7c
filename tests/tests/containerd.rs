//! tether under a real containerd (Debian's 1.6.20; 2.4.2 with TETHER_CONTAINERD_BIN),
//! driven by `ctr`: each test starts a private containerd (own root, state, sockets;
//! CRI off; tests/src/ctr_env.rs) whose runtime is containerd-shim-tether-v2 given by
//! absolute path. What ctr 1.6 cannot do (Update) is spoken to the shim's task socket
//! directly, as containerd does.
//! Faults and bad input: containerd_faults.rs.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tether_tests::containerd::*;
use tether_tests::ctr_env::*;
use tether_tests::ttrpc::*;
use tether_tests::{fault_runtime, wait_until, TempDir};

#[test]
fn run_rm_gives_output_exit_code_and_stdin() {
    let e = Env::start();
    let out = e
        .run(
            &["--rm"],
            "c1",
            &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("err\n"));
    e.assert_clean("c1", None);

    // stdin reaches the process, and its end (ctr's CloseIO) ends `cat`. ctr asks
    // for CloseIO only once its task exists: the input ends after cat echoed it.
    let mut child = e
        .run(&["--rm"], "c2", &["/bin/sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"hello\nworld\n").unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut echoed = String::new();
    for _ in 0..2 {
        stdout.read_line(&mut echoed).unwrap();
    }
    assert_eq!(echoed, "hello\nworld\n");
    drop(stdin);
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "done\n");
    assert!(child.wait().unwrap().success());
    e.assert_clean("c2", None);
}

/// Reads `master` until `want` appears (or 20 s); all that was read.
fn read_until(master: &mut fs::File, seen: &mut String, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while !seen.contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} on the terminal; got {seen:?}"
        );
        let mut p = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd of ours.
        if unsafe { libc::poll(&mut p, 1, 200) } <= 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(n) if n > 0 => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// The shell script a terminal test runs: prints the size once it is set, then
/// again once it changed. (stty fails now and then while the terminal is being
/// set up: only sizes count.)
const RESIZE_SCRIPT: &str = "s() { stty size 2>/dev/null; }; \
    until [ -n \"$(s)\" ] && [ \"$(s)\" != '0 0' ]; do sleep 0.05; done; echo size=$(s); \
    while [ \"$(s)\" = '30 100' ] || [ -z \"$(s)\" ]; do sleep 0.05; done; echo size=$(s)";

/// Runs `cmd` (a `ctr ... -t ... RESIZE_SCRIPT`) on a 30x100 terminal, resizes the
/// terminal to 40x120 once the process saw the first size, and expects it to see
/// the second (ctr forwards SIGWINCH as ResizePty).
fn drive_resize(mut cmd: Command) {
    let (master, slave) = openpty(30, 100);
    on_terminal(&mut cmd, slave);
    let mut child = cmd.spawn().unwrap();
    let mut master = fs::File::from(master);
    let mut seen = String::new();
    read_until(&mut master, &mut seen, "size=30 100");
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize of ours; the SIGWINCH goes to our child.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
        libc::kill(child.id() as i32, libc::SIGWINCH);
    }
    read_until(&mut master, &mut seen, "size=40 120");
    let status = child.wait().unwrap();
    assert!(status.success(), "ctr -t: {status:?}; terminal: {seen:?}");
}

#[test]
fn tty_run_and_tty_exec_with_a_resize() {
    let e = Env::start();
    drive_resize(e.run(&["--rm", "-t"], "tty1", &["/bin/sh", "-c", RESIZE_SCRIPT]));
    e.assert_clean("tty1", None);
    e.run_sleeper("tty2");
    let mut exec = e.ctd.ctr();
    exec.args([
        "task",
        "exec",
        "-t",
        "--exec-id",
        "x1",
        "tty2",
        "/bin/sh",
        "-c",
        RESIZE_SCRIPT,
    ]);
    drive_resize(exec);
    e.ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "tty2"]);
    wait_until(Duration::from_secs(10), "tty2 to stop", || {
        task_status(&e.ctd, "tty2").as_deref() == Some("STOPPED")
    });
    e.ctd.ctr_ok(&["task", "rm", "tty2"]);
    e.ctd.ctr_ok(&["container", "rm", "tty2"]);
    e.assert_clean("tty2", None);
}

#[test]
fn exec_ps_pause_resume_metrics_update_kill_and_event_order() {
    let e = Env::start();
    let mut events = e.events();
    let pid = e.run_sleeper("l1");
    let address = e.address("l1");
    assert!(address.starts_with("unix:///run/containerd/s/"), "{address}");
    // The JSON-RPC socket serves beside the task API (a person's socat).
    let state = fs::read_link(e.ctd.bundle("l1").join("tether-state")).unwrap();
    assert_eq!(state, e.state_dir("l1"));
    let mut jsonrpc = tether_tests::tether_protocol::Client::connect(state.join("shim.sock")).unwrap();
    let st = jsonrpc.state().unwrap();
    assert_eq!((st.id.as_str(), st.pid), ("l1", Some(pid)));
    assert_eq!(st.status, tether_tests::tether_protocol::ContainerStatus::Running);
    drop(jsonrpc);

    let out = e.ctd.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "l1",
        "/bin/sh",
        "-c",
        "echo from-exec; exit 5",
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "from-exec\n");
    let ps = e.ctd.ctr_ok(&["task", "ps", "l1"]);
    assert!(ps.contains(&pid.to_string()), "{ps}");

    e.ctd.ctr_ok(&["task", "pause", "l1"]);
    assert_eq!(task_status(&e.ctd, "l1").as_deref(), Some("PAUSED"));
    e.ctd.ctr_ok(&["task", "resume", "l1"]);
    assert_eq!(task_status(&e.ctd, "l1").as_deref(), Some("RUNNING"));

    let metrics = e.ctd.ctr_ok(&["task", "metrics", "l1"]);
    for row in ["memory.usage_in_bytes", "cpuacct.usage", "pids.current"] {
        assert!(metrics.contains(row), "{row} missing in:\n{metrics}");
    }

    // Update (ctr 1.6 has no command for it): as containerd sends it.
    let resources = br#"{"memory":{"limit":67108864}}"#;
    let any = [
        pb_bytes(
            1,
            b"types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
        ),
        pb_bytes(2, resources),
    ]
    .concat();
    let req = [pb_bytes(1, b"l1"), pb_bytes(2, &any)].concat();
    let answer = TtrpcClient::connect(&address).call("Update", &req);
    assert_eq!(answer.code, 0, "Update: {}", answer.message);
    let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let memory = cgroup
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.splitn(3, ':').collect();
            (f.len() == 3 && f[1].split(',').any(|c| c == "memory")).then(|| f[2].to_string())
        })
        .expect("memory cgroup");
    let limit = fs::read_to_string(format!("/sys/fs/cgroup/memory{memory}/memory.limit_in_bytes")).unwrap();
    assert_eq!(limit.trim(), "67108864");

    // --all: through the runtime, every process of the container.
    e.ctd.ctr_ok(&["task", "kill", "-a", "-s", "SIGKILL", "l1"]);
    wait_until(Duration::from_secs(10), "l1 to stop", || {
        task_status(&e.ctd, "l1").as_deref() == Some("STOPPED")
    });
    e.ctd.ctr_ok(&["task", "rm", "l1"]);
    e.ctd.ctr_ok(&["container", "rm", "l1"]);
    let lines = events.until(|l| has_topic(l, "l1", "/tasks/delete"));
    assert_eq!(
        task_topics(&lines, "l1"),
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/paused",
            "/tasks/resumed",
            "/tasks/exit",
            "/tasks/delete"
        ],
        "{}",
        lines.join("\n")
    );
    let exits: Vec<&String> = lines.iter().filter(|l| l.contains("/tasks/exit")).collect();
    assert!(
        exits[0].contains("\"id\":\"e1\"") && exits[0].contains("\"exit_status\":5"),
        "{}",
        exits[0]
    );
    assert!(
        exits[1].contains("\"id\":\"l1\"") && exits[1].contains("\"exit_status\":137"),
        "{}",
        exits[1]
    );
    e.assert_clean("l1", Some(&address));
}

#[test]
fn oom_kill_shows_task_oom_before_task_exit() {
    let e = Env::start();
    let mut events = e.events();
    let out = e
        .run(
            &["--rm", "--null-io", "--memory-limit", "33554432"],
            "oom1",
            &["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=128M", "count=1"],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(137),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = events.until(|l| has_topic(l, "oom1", "/tasks/delete"));
    let topics = task_topics(&lines, "oom1");
    let oom = topics.iter().position(|t| t == "/tasks/oom");
    let exit = topics.iter().position(|t| t == "/tasks/exit");
    assert!(oom.is_some() && oom < exit, "{topics:?}");
    e.assert_clean("oom1", None);
}

#[test]
fn images_run_through_overlayfs_and_native_snapshotters() {
    let e = Env::start();
    let image = import_image(&e);
    for (snapshotter, id) in [("overlayfs", "img1"), ("native", "img2")] {
        let out = e
            .ctd
            .ctr()
            .args([
                "run",
                "--rm",
                "--snapshotter",
                snapshotter,
                "--runtime",
                &e.runtime,
                image,
                id,
            ])
            .args([
                "/bin/sh",
                "-c",
                "echo hello from $(head -1 /proc/self/mountinfo | cut -d' ' -f9)",
            ])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{snapshotter}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.starts_with("hello from "), "{said}");
        if snapshotter == "overlayfs" {
            assert_eq!(said.trim(), "hello from overlay");
        }
        e.assert_clean(id, None);
    }
}

#[test]
fn log_uris_file_and_binary() {
    let e = Env::start();
    let dir = e.work.path().join("logs");
    fs::create_dir_all(&dir).unwrap();
    let file = dir.join("f/out.log");
    let uri = format!("file://{}", file.display());
    let out = e
        .run(
            &["--rm", "--log-uri", &uri],
            "log1",
            &["/bin/sh", "-c", "echo to-out; echo to-err >&2"],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(5), "the log file", || {
        fs::read_to_string(&file).is_ok_and(|s| s.contains("to-out") && s.contains("to-err"))
    });

    // A logging binary as containerd's shims run one: fds 3 and 4, ready on fd 5.
    let logger = dir.join("logger.sh");
    fs::write(
        &logger,
        "#!/bin/sh\nexec 5>&-\n/bin/cat <&3 > \"$2/stdout\" &\n/bin/cat <&4 > \"$2/stderr\" &\n\
         echo \"$CONTAINER_ID $CONTAINER_NAMESPACE\" > \"$2/env\"\nwait\n",
    )
    .unwrap();
    assert!(Command::new("chmod")
        .arg("+x")
        .arg(&logger)
        .status()
        .unwrap()
        .success());
    let uri = format!("binary://{}?dir={}", logger.display(), dir.display());
    let out = e
        .run(
            &["--rm", "--log-uri", &uri],
            "log2",
            &["/bin/sh", "-c", "echo to-out; echo to-err >&2"],
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |n: &str| fs::read_to_string(dir.join(n)).unwrap_or_default();
    wait_until(Duration::from_secs(5), "the logger's files", || {
        read("stdout") == "to-out\n" && read("stderr") == "to-err\n"
    });
    assert_eq!(read("env").trim(), format!("log2 {}", e.ctd.namespace));
    e.assert_clean("log2", None);
}

#[test]
fn checkpoint_reaches_the_runtime_and_containerd_hears_task_checkpointed() {
    // CRIU does not run on the CI kernel: the runtime (TETHER_RUNTIME, as a node
    // would set it) is the fault-injection runtime that records its command lines,
    // fakes `checkpoint` and hands everything else to runc.
    let work = TempDir::new("tether-ctd");
    let runtime = fault_runtime("argv-recording-runtime", work.path());
    let argv_log = work.path().join("argv-recording-runtime.argv");
    let e = Env::in_dir(work, &[("TETHER_RUNTIME", runtime.to_str().unwrap())]);
    let mut events = e.events();
    e.run_sleeper("cp1");
    let images = e.work.path().join("images");
    let out = e.ctd.ctr_out(&[
        "task",
        "checkpoint",
        "--image-path",
        images.to_str().unwrap(),
        "cp1",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = events.until(|l| has_topic(l, "cp1", "/tasks/checkpointed"));
    let argv = fs::read_to_string(&argv_log).unwrap();
    let checkpoint = argv
        .lines()
        .find(|l| l.split_whitespace().any(|w| w == "checkpoint"))
        .unwrap_or_else(|| panic!("no checkpoint in {argv}"));
    assert!(checkpoint.contains("--image-path"), "{checkpoint}");
    assert!(checkpoint.ends_with(" cp1"), "{checkpoint}");
    assert!(lines.iter().any(|l| l.contains("/tasks/checkpointed")));
    e.ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "cp1"]);
    wait_until(Duration::from_secs(10), "cp1 to stop", || {
        task_status(&e.ctd, "cp1").as_deref() == Some("STOPPED")
    });
    e.ctd.ctr_ok(&["task", "rm", "cp1"]);
    e.ctd.ctr_ok(&["container", "rm", "cp1"]);
    e.assert_clean("cp1", None);
}

/// containerd's runtime options (a runtime's `options` table in containerd's config;
/// here ctr's `--runtime-config-path`, the same `runtimeoptions.v1.Options`) choose
/// the OCI runtime (`BinaryName`) and its root (`Root`, joined with the namespace as
/// containerd's runc shim does), for every runtime call, `delete` after the shim too.
#[test]
fn runtime_options_choose_the_runtime_and_its_root() {
    let e = Env::start();
    let root = e.work.path().join("runc-root");
    let calls = e.work.path().join("runtime-calls");
    let wrapper = e.work.path().join("runc-wrapper");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec runc \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = e.work.path().join("options.toml");
    fs::write(
        &config,
        format!(
            "BinaryName = '{}'\nRoot = \"{}\"\n",
            wrapper.display(),
            root.display()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let fifo_dir = e.fifo_dir();
    let out = e
        .ctd
        .ctr()
        .args([
            "run",
            "-d",
            "--runtime",
            &e.runtime,
            "--runtime-config-path",
            &config,
        ])
        .args([
            "--fifo-dir",
            &fifo_dir,
            "--rootfs",
            &e.rootfs,
            "o1",
            "/bin/sleep",
            "1000",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = root.join(&e.ctd.namespace).join("o1");
    assert!(
        state.join("state.json").exists(),
        "no runc state in {}",
        state.display()
    );
    let logged = fs::read_to_string(&calls).unwrap();
    let want = format!("--root {}", root.join(&e.ctd.namespace).display());
    assert!(
        logged
            .lines()
            .any(|l| l.contains(&want) && l.contains(" create ")),
        "{logged}"
    );
    e.ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "o1"]);
    wait_until(Duration::from_secs(10), "o1 to stop", || {
        task_status(&e.ctd, "o1").as_deref() == Some("STOPPED")
    });
    e.ctd.ctr_ok(&["task", "rm", "o1"]);
    e.ctd.ctr_ok(&["container", "rm", "o1"]);
    assert!(!state.exists(), "runc state {} left", state.display());
    e.assert_clean("o1", None);
}

/// Upgrade in place under containerd: a task streaming to `ctr run` keeps every line
/// across ten upgrades of its shim (through the shim's JSON-RPC socket) and exits once;
/// a detached task's shim upgraded, then containerd restarted, is found again and
/// still serves exec, kill and delete.
#[test]
fn upgrades_under_containerd_lose_nothing_and_containerd_finds_the_shim_again() {
    let mut e = Env::start();
    let next = tether_tests::patched_binary("containerd-shim-tether-v2", e.work.path(), "next", "1");
    let own = tether_tests::binary("containerd-shim-tether-v2");
    let mut events = e.events();
    let mut child = e
        .run(
            &["--rm"],
            "up1",
            &[
                "/bin/sh",
                "-c",
                "i=0; while [ $i -lt 20000 ]; do echo $i; i=$((i+1)); done; sleep 1; exit 7",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let socket = e.state_dir("up1").join("shim.sock");
    let pid_file = e.state_dir("up1").join("shim.pid");
    wait_until(Duration::from_secs(30), "up1's shim", || pid_file.exists());
    let shim_pid = e.shim_pid("up1");
    for i in 0..10 {
        let to = if i % 2 == 0 { &next } else { &own };
        let mut c = tether_tests::tether_protocol::Client::connect(&socket).unwrap();
        let r: tether_tests::tether_protocol::UpgradeResult = c
            .call("upgrade", &serde_json::json!({ "binary": to }))
            .unwrap_or_else(|err| panic!("upgrade {i}: {err}"));
        assert_eq!(r.shim_pid as i32, shim_pid);
    }
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(7));
    let expected: String = (0..20000).map(|i| format!("{i}\n")).collect();
    assert!(
        out == expected,
        "ctr's output differs after upgrades: {} bytes, want {}",
        out.len(),
        expected.len()
    );
    let lines = events.until(|l| has_topic(l, "up1", "/tasks/delete"));
    let exits = task_topics(&lines, "up1")
        .iter()
        .filter(|t| *t == "/tasks/exit")
        .count();
    assert_eq!(exits, 1, "{lines:?}");
    e.assert_clean("up1", None);

    let pid = e.run_sleeper("up2");
    let socket = e.state_dir("up2").join("shim.sock");
    let mut c = tether_tests::tether_protocol::Client::connect(&socket).unwrap();
    let r: tether_tests::tether_protocol::UpgradeResult =
        c.call("upgrade", &serde_json::json!({ "binary": next })).unwrap();
    assert!(r.to.ends_with("+next"), "{r:?}");
    drop(c);
    e.ctd.restart();
    wait_until(Duration::from_secs(30), "containerd to list up2 again", || {
        task_status(&e.ctd, "up2").as_deref() == Some("RUNNING")
    });
    assert_eq!(e.task_pid("up2"), pid);
    let out = e.ctd.ctr_out(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        "up2",
        "/bin/sh",
        "-c",
        "echo after; exit 4",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n");
    e.ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "up2"]);
    wait_until(Duration::from_secs(10), "up2 to stop", || {
        task_status(&e.ctd, "up2").as_deref() == Some("STOPPED")
    });
    e.ctd.ctr_ok(&["task", "rm", "up2"]);
    e.ctd.ctr_ok(&["container", "rm", "up2"]);
    e.assert_clean("up2", None);
}
