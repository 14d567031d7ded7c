//! tether under a real containerd (1.6 here), driven by `ctr`: each test starts a
//! private containerd (own root, state, sockets; CRI off) whose runtime is
//! containerd-shim-tether-v2 given by absolute path. What ctr 1.6 cannot do (Update)
//! and bad input are spoken to the shim's task socket directly, as containerd does.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_tests::containerd::*;
use tether_tests::{binary, fault_runtime, pid_gone, shared_rootfs, unique_id, wait_until, TempDir};

const TASK: &str = "containerd.task.v2.Task";

struct Env {
    work: TempDir,
    ctd: Containerd,
    runtime: String,
    rootfs: String,
    state_root: PathBuf,
}

impl Env {
    fn new() -> Env {
        Self::in_dir(TempDir::new("tether-ctd"), &[])
    }

    /// A containerd in `work`; `env` is added to its environment (and its shims').
    fn in_dir(work: TempDir, env: &[(&str, &str)]) -> Env {
        require_containerd();
        let state_root = work.path().join("tstate");
        let ns = unique_id("tns");
        let mut env = env.to_vec();
        env.push(("TETHER_STATE_ROOT", state_root.to_str().unwrap()));
        let ctd = Containerd::start_with(&work.path().join("containerd"), &ns, &env, true);
        Env {
            ctd,
            runtime: binary("containerd-shim-tether-v2").display().to_string(),
            rootfs: shared_rootfs().display().to_string(),
            state_root,
            work,
        }
    }

    /// `ctr run --runtime TETHER --rootfs BUSYBOX EXTRA... ID ARGS...`.
    fn run(&self, extra: &[&str], id: &str, args: &[&str]) -> Command {
        let mut c = self.ctd.ctr();
        // `--rootfs` is a switch: the rootfs directory is the first argument.
        c.args(["run", "--runtime", &self.runtime])
            .args(extra)
            .args(["--rootfs", &self.rootfs, id])
            .args(args);
        c
    }

    /// Where detached tasks' FIFOs go (ctr removes them only at `task rm`).
    fn fifo_dir(&self) -> String {
        self.work.path().join("fifo").display().to_string()
    }

    /// A detached `sleep` container; its init pid.
    fn run_sleeper(&self, id: &str) -> i32 {
        let out = self
            .run(
                &["-d", "--fifo-dir", &self.fifo_dir()],
                id,
                &["/bin/sleep", "1000"],
            )
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctr run -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.task_pid(id)
    }

    fn task_pid(&self, id: &str) -> i32 {
        let ls = self.ctd.ctr_ok(&["task", "ls"]);
        ls.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&id))
            .and_then(|w| w.get(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no task {id} in {ls}"))
    }

    fn state_dir(&self, id: &str) -> PathBuf {
        self.state_root.join(&self.ctd.namespace).join(id)
    }

    fn shim_pid(&self, id: &str) -> i32 {
        fs::read_to_string(self.state_dir(id).join("shim.pid"))
            .expect("shim.pid")
            .trim()
            .parse()
            .expect("pid")
    }

    fn runc_state(&self, id: &str) -> PathBuf {
        Path::new("/run/containerd/runc")
            .join(&self.ctd.namespace)
            .join(id)
    }

    /// The task's shim address (`unix:///run/containerd/s/HASH`).
    fn address(&self, id: &str) -> String {
        fs::read_to_string(self.ctd.bundle(id).join("address")).expect("bundle address file")
    }

    /// `ctr events` in the background (subscribed by the time this returns).
    fn events(&self) -> Events {
        let child = self
            .ctd
            .ctr()
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        Events { child }
    }

    /// Nothing of task `id` is left: no shim, no runtime state, no shim state, no
    /// socket, nothing mounted.
    fn assert_clean(&self, id: &str, socket: Option<&str>) {
        wait_until(Duration::from_secs(10), &format!("{id}'s shim to exit"), || {
            shim_of(&self.ctd.namespace, id).is_none()
        });
        assert!(!self.runc_state(id).exists(), "runc state of {id} left");
        assert!(!self.state_dir(id).exists(), "shim state dir of {id} left");
        assert_eq!(mounts_under(&self.ctd.dir), Vec::<String>::new(), "mounts left");
        if let Some(s) = socket {
            assert!(
                !Path::new(s.trim_start_matches("unix://")).exists(),
                "socket {s} left"
            );
        }
        // containerd runs the shim's `delete` after every shim exit: it must be clean
        // (containerd 1.6's words for a failed or noisy one), and Shutdown answered.
        let log = self.ctd.log();
        for bad in [
            "failed to clean up after shim disconnected",
            "cleanup warnings",
            "failed to shutdown shim task",
        ] {
            assert!(!log.contains(bad), "containerd: {bad}:\n{log}");
        }
    }
}

impl Drop for Env {
    /// Whatever a failed test left: its shims, its containers, the runtime's dir.
    fn drop(&mut self) {
        let ns = self.ctd.namespace.clone();
        while let Some(pid) = shim_of(&ns, "") {
            // SAFETY: signalling a shim of this test's own namespace.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            std::thread::sleep(Duration::from_millis(20));
        }
        let root = Path::new("/run/containerd/runc").join(&ns);
        for id in fs::read_dir(&root).into_iter().flatten().flatten() {
            let _ = Command::new("runc")
                .arg("--root")
                .arg(&root)
                .args(["delete", "--force"])
                .arg(id.file_name())
                .output();
        }
        let _ = fs::remove_dir(&root);
    }
}

/// The pid of the shim serving `id` in `ns` (its command line names both); any
/// shim of `ns` if `id` is empty.
fn shim_of(ns: &str, id: &str) -> Option<i32> {
    let id = if id.is_empty() {
        String::new()
    } else {
        format!("-id\0{id}\0")
    };
    let want = [format!("-namespace\0{ns}\0"), id];
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.contains("containerd-shim-tether-v2")
            && want.iter().all(|w| cmd.contains(w.as_str()))
            && !pid_gone(pid))
        .then_some(pid)
    })
}

struct Events {
    child: Child,
}

impl Events {
    /// Lines (`TIME NS TOPIC JSON`) read until `done` holds of them, or 20 s.
    fn until(&mut self, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
        let stdout = self.child.stdout.take().expect("events stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done(&lines) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("events did not come; got:\n{}", lines.join("\n")),
            }
        }
        lines
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The /tasks/ topics of task `id`, in order.
fn task_topics(lines: &[String], id: &str) -> Vec<String> {
    let needle = format!("\"container_id\":\"{id}\"");
    lines
        .iter()
        .filter(|l| l.contains(&needle))
        .filter_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("/tasks/"))
                .map(str::to_string)
        })
        .collect()
}

fn has_topic(lines: &[String], id: &str, topic: &str) -> bool {
    task_topics(lines, id).iter().any(|t| t == topic)
}

#[test]
fn run_rm_gives_output_exit_code_and_stdin() {
    let e = Env::new();
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

/// A PTY of the given size: (master, slave).
fn openpty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut m, mut s) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds; name and termios are null, winsize is ours.
    let r = unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: F_SETFD on the master we just got: ctr must not inherit it.
    unsafe { libc::fcntl(m, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: fresh descriptors owned by nobody else.
    unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) }
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
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; ctr gets the PTY as its
    // controlling terminal, as from a shell.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
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
    let e = Env::new();
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
fn concurrent_waits_on_one_connection_and_calls_between() {
    let e = Env::new();
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
fn exec_ps_pause_resume_metrics_update_kill_and_event_order() {
    let e = Env::new();
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
    let e = Env::new();
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
fn containerd_killed_and_restarted_finds_its_task_and_the_exit_it_missed() {
    let mut e = Env::new();
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

    // The task exits while containerd is down: its exit reaches the next containerd.
    e.ctd.kill9();
    // SAFETY: signalling the task's init, a process of this test's container.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(Duration::from_secs(10), "the task to die", || pid_gone(pid));
    std::thread::sleep(Duration::from_millis(300));
    let before = e.ctd.log().len();
    e.ctd.restart();
    let forwarded = |log: &str| {
        log[before..].lines().any(|l| {
            l.contains("event forwarded") && l.contains("topic=/tasks/exit") && l.contains(&e.ctd.namespace)
        })
    };
    wait_until(Duration::from_secs(15), "the missed exit to be forwarded", || {
        forwarded(&e.ctd.log())
    });
    assert_eq!(task_status(&e.ctd, "r1").as_deref(), Some("STOPPED"));
    e.ctd.ctr_ok(&["task", "rm", "r1"]);
    e.ctd.ctr_ok(&["container", "rm", "r1"]);
    e.assert_clean("r1", Some(&address));
}

/// Imports the busybox image; its name.
fn import_image(e: &Env) -> &'static str {
    let name = "tether.test/busybox:latest";
    let tar = busybox_image_tar(&e.work.path().join("image"), name);
    e.ctd.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
    name
}

#[test]
fn images_run_through_overlayfs_and_native_snapshotters() {
    let e = Env::new();
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
fn shim_killed_leaves_nothing_and_containerd_gets_exit_137() {
    let e = Env::new();
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
    let e = Env::new();
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

#[test]
fn log_uris_file_and_binary() {
    let e = Env::new();
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
