//! tether-conmon under the real podman (Debian's 4.3.1), each scenario run twice in
//! the same test: through tether-conmon and through the stock conmon (2.1.6) as the
//! reference, each with a private podman root, runroot, tmpdir and containers.conf
//! (`conmon_path`, so podman's cleanup process uses the same monitor), and a busybox
//! image imported from a local rootfs (no network). docs/CONMON.md.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tether_tests::{binary, pid_gone, shared_rootfs, unique_id, wait_until};

const STOCK_CONMON: &str = "/usr/bin/conmon";
/// The VM lacks CAP_SYS_RESOURCE: podman's default rlimits cannot be set.
const ULIMITS: [&str; 4] = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"];
const IMAGE: &str = "localhost/busybox";

fn require_podman() {
    assert!(
        nix_is_root(),
        "the podman tests need root (podman with cgroupfs, runc)"
    );
    for bin in ["/usr/bin/podman", STOCK_CONMON] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: run scripts/setup (it installs podman and conmon)"
        );
    }
    runc();
}

/// runc's path (podman is given `--runtime runc` and finds it in PATH the same way).
fn runc() -> String {
    let found = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join("runc"))
                .find(|p| p.exists())
        })
        .unwrap_or_default();
    found
        .expect("runc is not in PATH: run scripts/setup")
        .display()
        .to_string()
}

fn nix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// One private podman (its own storage, run dir, tmpdir, containers.conf) using the
/// monitor at `conmon`.
struct Podman {
    dir: PathBuf,
    conmon: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Podman {
    fn new(label: &str, conmon: &Path) -> Podman {
        Podman::with_conf(label, conmon, "", "")
    }

    /// With more lines in containers.conf's `[engine]` and `[containers]` tables.
    fn with_conf(label: &str, conmon: &Path, engine: &str, containers: &str) -> Podman {
        let dir = std::env::temp_dir().join(unique_id(&format!("tp-{label}")));
        fs::create_dir_all(&dir).unwrap();
        let conf = format!(
            "[engine]\nconmon_path = [\"{}\"]\nevents_logger = \"file\"\ncgroup_manager = \"cgroupfs\"\nruntime = \"runc\"\n{engine}\n[containers]\n{containers}\n",
            conmon.display()
        );
        fs::write(dir.join("containers.conf"), conf).unwrap();
        let p = Podman {
            dir,
            conmon: conmon.to_path_buf(),
        };
        // The image, from the shared busybox rootfs.
        let mut tar = Command::new("tar")
            .args(["-C"])
            .arg(shared_rootfs())
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = p
            .command(&["import", "-", IMAGE])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(tar.wait().unwrap().success());
        assert!(
            out.status.success(),
            "podman import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        p
    }

    fn command(&self, args: &[&str]) -> Command {
        let d = &self.dir;
        let mut c = Command::new("podman");
        // podman's cwd is conmon's (its `oom` lands there): the private dir.
        c.current_dir(d)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args([
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "file",
                "--runtime",
                "runc",
            ])
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Ran {
        ran(self.command(args).output().unwrap())
    }

    fn run_input(&self, args: &[&str], input: &[u8]) -> Ran {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        ran(child.wait_with_output().unwrap())
    }

    /// `podman run ULIMITS ARGS...` (ARGS: options, the image, the command).
    fn run_ctr(&self, opts: &[&str], cmd: &[&str]) -> Ran {
        let mut args = vec!["run"];
        args.extend(ULIMITS);
        args.extend(opts);
        args.push(IMAGE);
        args.extend(cmd);
        self.run(&args)
    }

    fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, 0, "podman {args:?} ({}): {r:?}", self.conmon.display());
        r.stdout
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", name, "--format", format]).trim().to_string()
    }

    /// `inspect` for a poll: None while podman cannot answer. podman 4.3.1's inspect
    /// reads the container's /proc/PID/cgroup and fails ("no such process") when it
    /// runs just as the process ends.
    fn inspect_now(&self, name: &str, format: &str) -> Option<String> {
        let r = self.run(&["inspect", name, "--format", format]);
        (r.code == 0).then(|| r.stdout.trim().to_string())
    }

    fn bundle(&self, name: &str) -> PathBuf {
        let id = self.inspect(name, "{{.Id}}");
        self.dir.join("root/overlay-containers").join(id).join("userdata")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "-af", "-t", "0"]).output();
        // containers/storage mounts its overlay home privately on itself.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.join("root/overlay"))
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn ran(out: Output) -> Ran {
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn tether_conmon() -> PathBuf {
    binary("tether-conmon")
}

/// The pair every scenario runs on: (tether-conmon, stock conmon).
fn pair(label: &str) -> (Podman, Podman) {
    require_podman();
    (
        Podman::new(&format!("{label}-t"), &tether_conmon()),
        Podman::new(&format!("{label}-c"), Path::new(STOCK_CONMON)),
    )
}

/// The messages of a k8s-file log, records joined (P records without a newline).
fn log_text(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_ts, stream, tag, msg) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next().unwrap_or(""),
        );
        assert!(
            matches!(stream, Some("stdout") | Some("stderr")),
            "bad record {line:?}"
        );
        out.push_str(msg);
        if tag == Some("F") {
            out.push('\n');
        }
    }
    out
}

#[test]
fn podman_info_names_tether_conmon() {
    let (t, c) = pair("info");
    let path = t.ok(&["info", "--format", "{{.Host.Conmon.Path}}"]);
    assert_eq!(
        path.trim(),
        tether_conmon().display().to_string(),
        "podman fell back to another conmon"
    );
    let version = t.ok(&["info", "--format", "{{.Host.Conmon.Version}}"]);
    assert!(
        version.starts_with("conmon version 2.1.6, commit: tether-conmon"),
        "{version}"
    );
    assert_eq!(
        c.ok(&["info", "--format", "{{.Host.Conmon.Path}}"]).trim(),
        STOCK_CONMON
    );
}

#[test]
fn foreground_runs_match_conmon() {
    let (t, c) = pair("fg");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--rm"], vec!["echo", "hi"]),
        (
            vec!["--rm"],
            vec!["sh", "-c", "echo out; sleep 0.3; echo err >&2; exit 3"],
        ),
        // The runtime fails: its message reaches podman as conmon's does (rc 127).
        (vec!["--rm"], vec!["/nonexistent"]),
        (
            vec!["--rm", "--log-driver", "none"],
            vec!["sh", "-c", "echo unlogged"],
        ),
        (vec![], vec!["sh", "-c", "echo kept; exit 5"]),
    ];
    for (opts, cmd) in &cases {
        let a = t.run_ctr(opts, cmd);
        let b = c.run_ctr(opts, cmd);
        assert_eq!(
            a, b,
            "podman run {opts:?} {cmd:?}: tether-conmon (left) vs conmon (right)"
        );
    }
    assert_eq!(t.run_ctr(&["--rm"], &["echo", "hi"]).stdout, "hi\n");
    // stdin through attach (-i): EOF on podman's side closes the container's stdin.
    let input = b"line one\nline two\n";
    let a = t.run_input(
        &[
            "run", "-i", "--rm", ULIMITS[0], ULIMITS[1], ULIMITS[2], ULIMITS[3], IMAGE, "cat",
        ],
        input,
    );
    let b = c.run_input(
        &[
            "run", "-i", "--rm", ULIMITS[0], ULIMITS[1], ULIMITS[2], ULIMITS[3], IMAGE, "cat",
        ],
        input,
    );
    assert_eq!(a, b);
    assert_eq!(a.stdout.as_bytes(), input);
    // The kept container: same state, same log.
    for p in [&t, &c] {
        let ids = p.ok(&["ps", "-aq"]);
        assert_eq!(
            ids.lines().count(),
            1,
            "only the container run without --rm is left"
        );
    }
    let state = |p: &Podman| {
        let id = p.ok(&["ps", "-aq"]).trim().to_string();
        (
            p.inspect(&id, "{{.State.Status}} {{.State.ExitCode}} {{.State.OOMKilled}}"),
            p.ok(&["logs", &id]),
        )
    };
    assert_eq!(state(&t), state(&c));
    assert_eq!(state(&t).0, "exited 5 false");
    t.ok(&["rm", "-a"]);
    assert_no_monitor_left(&t);
}

#[test]
fn detached_lifecycle_matches_conmon() {
    let (t, c) = pair("life");
    let script =
        "echo started; echo to-stderr >&2; trap 'echo got-term; exit 7' TERM; while :; do sleep 0.1; done";
    let steps = |p: &Podman| -> Vec<String> {
        let mut seen = Vec::new();
        let r = p.run_ctr(&["-d", "--name", "c1"], &["sh", "-c", script]);
        assert_eq!(r.code, 0, "{r:?}");
        wait_until(Duration::from_secs(30), "the first log line", || {
            p.ok(&["logs", "c1"]).contains("started")
        });
        seen.push(p.inspect("c1", "{{.State.Status}}"));
        p.ok(&["pause", "c1"]);
        seen.push(p.inspect("c1", "{{.State.Status}}"));
        p.ok(&["unpause", "c1"]);
        seen.push(p.inspect("c1", "{{.State.Status}}"));
        p.ok(&["stop", "-t", "10", "c1"]);
        seen.push(p.inspect("c1", "{{.State.Status}} {{.State.ExitCode}}"));
        p.ok(&["start", "c1"]);
        seen.push(p.inspect("c1", "{{.State.Status}}"));
        // podman restart SIGKILLs the old monitor once the container has stopped.
        let monitor = p.inspect("c1", "{{.State.ConmonPid}}");
        p.ok(&["restart", "-t", "10", "c1"]);
        let again = p.inspect("c1", "{{.State.ConmonPid}}");
        seen.push(format!("new monitor {}", monitor != again));
        seen.push(p.inspect("c1", "{{.State.Status}}"));
        p.ok(&["kill", "c1"]);
        seen.push(p.ok(&["wait", "c1"]).trim().to_string());
        seen.push(p.inspect("c1", "{{.State.Status}} {{.State.ExitCode}}"));
        // The monitor is gone once the container is.
        let pid: i32 = again.parse().unwrap();
        wait_until(Duration::from_secs(30), "the monitor to exit", || pid_gone(pid));
        let id = p.inspect("c1", "{{.Id}}");
        let logs = p.run(&["logs", "c1"]);
        seen.push(format!("stdout {:?} stderr {:?}", logs.stdout, logs.stderr));
        p.ok(&["rm", "c1"]);
        seen.push(p.ok(&["ps", "-aq"]));
        assert_nothing_left(&id);
        seen
    };
    let a = steps(&t);
    let b = steps(&c);
    assert_eq!(a, b, "tether-conmon (left) vs conmon (right)");
    assert_eq!(a[0..4], ["running", "paused", "running", "exited 7"]);
}

#[test]
fn attach_to_a_detached_container_matches_conmon() {
    let (t, c) = pair("attach");
    let go = |p: &Podman| {
        let r = p.run_ctr(
            &["-d", "--name", "a1"],
            &["sh", "-c", "sleep 2; echo late; echo late-err >&2; exit 3"],
        );
        assert_eq!(r.code, 0, "{r:?}");
        let monitor: i32 = p.inspect("a1", "{{.State.ConmonPid}}").parse().unwrap();
        let a = p.run(&["attach", "--no-stdin", "a1"]);
        // The monitor ends once the exit command (podman's cleanup) is done.
        wait_until(Duration::from_secs(60), "the monitor to exit", || {
            pid_gone(monitor)
        });
        let state = p.inspect("a1", "{{.State.Status}} {{.State.ExitCode}}");
        (a, state)
    };
    let a = go(&t);
    assert_eq!(a, go(&c));
    assert_eq!(a.0.stdout.trim_end(), "late");
    assert_eq!(a.1, "exited 3");
}

#[test]
fn oom_kill_is_reported() {
    let (t, c) = pair("oom");
    let hog = ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done"];
    let opts = ["--name", "o1", "--memory", "20m", "--memory-swap", "20m"];
    let a = t.run_ctr(&opts, &hog);
    let b = c.run_ctr(&opts, &hog);
    assert_eq!((a.code, b.code), (137, 137));
    // conmon 2.1.6 under podman 4.3.1 writes `oom` into the caller's cwd, where podman
    // does not look (OOMKilled false); tether-conmon writes it into the bundle.
    assert_eq!(t.inspect("o1", "{{.State.OOMKilled}}"), "true");
    assert_eq!(c.inspect("o1", "{{.State.ExitCode}}"), "137");
    assert!(
        c.dir.join("oom").exists(),
        "conmon's oom is in podman's cwd, as recorded"
    );
}

#[test]
fn log_size_max_rotates_without_loss() {
    let (t, c) = pair("logs");
    // about 35 kB of log records at max-size=10k: tether rotates (ctr.log, .1 ... .4: 5 files
    // of 10 kB hold it all); conmon truncates and keeps only the last part.
    let script = "i=0; while [ $i -lt 700 ]; do echo line-$i; i=$((i+1)); done";
    let expected: String = (0..700).map(|i| format!("line-{i}\n")).collect();
    for p in [&t, &c] {
        let r = p.run_ctr(
            &["--name", "l1", "--log-opt", "max-size=10k"],
            &["sh", "-c", script],
        );
        assert_eq!(r.code, 0);
        assert_eq!(r.stdout, expected, "attach output is whole either way");
    }
    let bundle = t.bundle("l1");
    let mut all = String::new();
    for n in (1..5).rev() {
        all.push_str(&log_text(&bundle.join(format!("ctr.log.{n}"))));
    }
    all.push_str(&log_text(&bundle.join("ctr.log")));
    assert_eq!(all.len(), expected.len());
    assert!(
        all == expected,
        "the rotated logs do not hold every line in order"
    );
    let theirs = log_text(&c.bundle("l1").join("ctr.log"));
    assert!(
        theirs.len() < expected.len() / 2,
        "conmon kept {} bytes",
        theirs.len()
    );
    // podman logs reads the live file in both cases: the last lines are there.
    assert!(t.ok(&["logs", "l1"]).ends_with("line-699\n"));
}

#[test]
fn exit_while_podman_is_not_running_is_cleaned_up() {
    let (t, c) = pair("bg");
    for p in [&t, &c] {
        let r = p.run_ctr(&["-d", "--rm", "--name", "b1"], &["sh", "-c", "sleep 1; exit 4"]);
        assert_eq!(r.code, 0);
        // No podman runs meanwhile: the monitor's exit command removes it.
        wait_until(
            Duration::from_secs(60),
            "the exit command to remove the container",
            || p.ok(&["ps", "-aq"]).trim().is_empty(),
        );
    }
}

#[test]
fn tetherctl_serves_a_podman_container() {
    let (t, _c) = pair("ctl");
    let r = t.run_ctr(&["-d", "--name", "s1"], &["sleep", "100"]);
    assert_eq!(r.code, 0, "{r:?}");
    let id = t.inspect("s1", "{{.Id}}");
    let socket = t
        .dir
        .join("runroot/overlay-containers")
        .join(&id)
        .join("userdata/tether/shim.sock");
    let out = Command::new(binary("tetherctl"))
        .arg("-s")
        .arg(&socket)
        .arg("state")
        .output()
        .unwrap();
    let state = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tetherctl state: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state.contains("\"status\": \"running\""), "{state}");
    // The engine owns the lifecycle: tether refuses to delete behind its back.
    let out = Command::new(binary("tetherctl"))
        .arg("-s")
        .arg(&socket)
        .arg("delete")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the engine owns the lifecycle"));
    t.ok(&["rm", "-f", "-t", "0", "s1"]);
}

/// Every monitor this podman started has ended (a failed create's too), once its
/// containers are gone.
fn assert_no_monitor_left(p: &Podman) {
    let root = p.dir.display().to_string();
    wait_until(Duration::from_secs(30), "the monitors to exit", || {
        fs::read_dir("/proc").unwrap().flatten().all(|entry| {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let pid: i32 = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            !(cmdline.contains("conmon") && cmdline.contains(&root)) || pid_gone(pid)
        })
    });
}

/// After `podman rm`: no process, mount or runc state of container `id` is left.
fn assert_nothing_left(id: &str) {
    let runc = Command::new("runc").arg("list").output().unwrap();
    assert!(
        !String::from_utf8_lossy(&runc.stdout).contains(id),
        "runc still has {id}"
    );
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(id), "a mount of {id} is left");
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let pid: i32 = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if String::from_utf8_lossy(&cmdline).contains(id) && !pid_gone(pid) {
            panic!(
                "process {pid} of {id} is left: {:?}",
                String::from_utf8_lossy(&cmdline)
            );
        }
    }
}

/// conmon's command line run directly, with the sync and start pipes a test makes:
/// its exit code and what it wrote on the sync pipe.
fn direct(conmon: &Path, args: &[&str]) -> (i32, String) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    let (mut sync, sync_child) = UnixStream::pair().unwrap();
    let (mut start, start_child) = UnixStream::pair().unwrap();
    for fd in [&sync_child, &start_child] {
        // The child must inherit them (std makes them close-on-exec).
        assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) }, 0);
    }
    let mut child = Command::new(conmon)
        .args(args)
        .env("_OCI_SYNCPIPE", sync_child.as_raw_fd().to_string())
        .env("_OCI_STARTPIPE", start_child.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop((sync_child, start_child));
    let _ = start.write_all(&[0]);
    let code = child.wait().unwrap().code().unwrap_or(-1);
    sync.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut message = String::new();
    let _ = sync.read_to_string(&mut message);
    (code, message)
}

#[test]
fn bad_input_is_refused_as_conmon_refuses_it() {
    require_podman();
    let tc = tether_conmon();
    let stock = Path::new(STOCK_CONMON);
    // An unknown flag: exit 1 before anything is done, no pid on the sync pipe.
    for bin in [tc.as_path(), stock] {
        let out = Command::new(bin).arg("--no-such-flag").output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", bin.display());
    }
    let out = Command::new(&tc).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("conmon version 2.1.6\ncommit: "));
    // A bundle that does not exist: neither reports a pid.
    let dir = std::env::temp_dir().join(unique_id("tp-bad"));
    fs::create_dir_all(&dir).unwrap();
    let pidfile = dir.join("pidfile").display().to_string();
    let runc = runc();
    let args = [
        "--api-version",
        "-c",
        "tp-bad",
        "-u",
        "tp-bad",
        "-r",
        &runc,
        "-b",
        "/nonexistent-bundle",
        "-p",
        &pidfile,
        "-l",
        "none",
    ];
    let (_, msg_t) = direct(&tc, &args);
    let (_, msg_c) = direct(stock, &args);
    assert!(
        !msg_t.contains("\"data\": ") || msg_t.contains("\"data\": -1"),
        "{msg_t}"
    );
    assert!(
        !msg_c.contains("\"data\": ") || msg_c.contains("\"data\": -1"),
        "{msg_c}"
    );
    assert!(
        msg_t.contains("/nonexistent-bundle"),
        "the sync message names the bundle: {msg_t}"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn exec_sessions_match_conmon() {
    let (t, c) = pair("exec");
    let go = |p: &Podman| -> Vec<String> {
        let mut seen = Vec::new();
        let r = p.run_ctr(&["-d", "--name", "x1"], &["sleep", "1000"]);
        assert_eq!(r.code, 0, "{r:?}");
        let r = p.run(&[
            "exec",
            "x1",
            "sh",
            "-c",
            "echo from-exec; sleep 0.2; echo exec-err >&2; exit 7",
        ]);
        seen.push(format!("{r:?}"));
        let r = p.run_input(&["exec", "-i", "x1", "cat"], b"piped in\n");
        seen.push(format!("{r:?}"));
        let r = p.run(&["exec", "-d", "x1", "sh", "-c", "echo detached > /tmp/d"]);
        seen.push(format!("exec -d {}", r.code));
        wait_until(Duration::from_secs(30), "the detached exec", || {
            p.run(&["exec", "x1", "cat", "/tmp/d"]).stdout == "detached\n"
        });
        // The container is untouched by its exec sessions.
        seen.push(p.inspect("x1", "{{.State.Status}}"));
        p.ok(&["rm", "-f", "-t", "0", "x1"]);
        let r = p.run_ctr(
            &[
                "-d",
                "--name",
                "h1",
                "--health-cmd",
                "echo ok",
                "--health-interval",
                "1h",
            ],
            &["sleep", "1000"],
        );
        assert_eq!(r.code, 0, "{r:?}");
        seen.push(format!(
            "healthcheck {}",
            p.run(&["healthcheck", "run", "h1"]).code
        ));
        let r = p.run_ctr(
            &[
                "-d",
                "--name",
                "h2",
                "--health-cmd",
                "exit 1",
                "--health-interval",
                "1h",
            ],
            &["sleep", "1000"],
        );
        assert_eq!(r.code, 0, "{r:?}");
        seen.push(format!(
            "failing healthcheck {}",
            p.run(&["healthcheck", "run", "h2"]).code
        ));
        p.ok(&["rm", "-f", "-t", "0", "h1", "h2"]);
        seen
    };
    let a = go(&t);
    assert_eq!(a, go(&c), "tether-conmon (left) vs conmon (right)");
    assert_no_monitor_left(&t);
    assert!(a[0].contains("code: 7") && a[0].contains("from-exec\\n") && a[0].contains("exec-err\\n"));
    assert!(a[1].contains("code: 0") && a[1].contains("piped in\\n"));
}

impl Podman {
    /// `podman ARGS` in a real terminal (`script`), with `input` typed into it: the
    /// exit code, and what the terminal showed (carriage returns dropped).
    fn in_terminal(&self, args: &str, input: &[u8]) -> (i32, String) {
        let d = self.dir.display();
        let typescript = self.dir.join(unique_id("typescript"));
        let line = format!(
            "CONTAINERS_CONF={d}/containers.conf podman --root {d}/root --runroot {d}/runroot --tmpdir {d}/tmp \
             --cgroup-manager cgroupfs --events-backend file --runtime runc {args}"
        );
        let mut child = Command::new("script")
            .args(["-qec", &line])
            .arg(&typescript)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Typed ahead: the terminal holds it until the container reads it. stdin
        // stays open until the command has ended (script ends with it).
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).unwrap();
        let code = child.wait().unwrap().code().unwrap_or(-1);
        drop(stdin);
        let shown = fs::read_to_string(&typescript)
            .unwrap_or_default()
            .replace('\r', "");
        let _ = fs::remove_file(&typescript);
        (code, shown)
    }
}

#[test]
fn terminals_match_conmon() {
    let (t, c) = pair("tty");
    let u = ULIMITS.join(" ");
    let go = |p: &Podman| -> Vec<String> {
        let mut seen = Vec::new();
        let (code, shown) = p.in_terminal(
            &format!("run -it --rm {u} {IMAGE} sh -c 'tty; echo hello-tty; exit 4'"),
            b"",
        );
        seen.push(format!(
            "run -it {code} {}",
            shown.contains("/dev/pts/0\nhello-tty\n")
        ));
        let (code, shown) = p.in_terminal(
            &format!("run -it --rm {u} {IMAGE} sh"),
            b"echo typed-$((6*7))\nexit 6\n",
        );
        seen.push(format!("typed {code} {}", shown.contains("typed-42\n")));
        let r = p.run_ctr(
            &["-d", "-t", "--name", "tt"],
            &["sh", "-c", "while :; do sleep 1; done"],
        );
        assert_eq!(r.code, 0, "{r:?}");
        let (code, shown) = p.in_terminal("exec -it tt sh", b"echo in-exec-$((2*3))\nexit 3\n");
        seen.push(format!("exec -it {code} {}", shown.contains("in-exec-6\n")));
        p.ok(&["rm", "-f", "-t", "0", "tt"]);
        seen
    };
    let a = go(&t);
    assert_eq!(a, go(&c), "tether-conmon (left) vs conmon (right)");
    assert_eq!(a, ["run -it 4 true", "typed 6 true", "exec -it 3 true"]);
}

#[test]
fn a_published_port_is_held_until_exit() {
    let (t, c) = pair("port");
    // This issue's ports: 16000 for tether-conmon, 16001 for conmon.
    for (p, port) in [(&t, 16000), (&c, 16001)] {
        let publish = format!("{port}:80");
        let r = p.run_ctr(&["-d", "--name", "w1", "-p", &publish], &["sleep", "1000"]);
        assert_eq!(r.code, 0, "{r:?}");
        // podman reserved the port and handed the socket to the monitor, which holds it.
        let monitor = p.inspect("w1", "{{.State.ConmonPid}}");
        assert!(
            std::net::TcpListener::bind(("0.0.0.0", port)).is_err(),
            "port {port} is free while the container runs"
        );
        let holders = fs::read_dir(format!("/proc/{monitor}/fd")).unwrap().count();
        assert!(holders > 3, "the monitor holds fds");
        p.ok(&["stop", "-t", "0", "w1"]);
        // Closed before the exit file: a restart can bind it again.
        p.ok(&["start", "w1"]);
        p.ok(&["rm", "-f", "-t", "0", "w1"]);
        wait_until(Duration::from_secs(30), "the port to be free", || {
            std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
        });
    }
}

#[test]
fn foreground_output_reaches_podman_whole() {
    let (t, c) = pair("big");
    // 16 MiB as fast as the container can write it: podman's attach reads more
    // slowly, and must still get every byte (the output waits for it).
    let cmd = [
        "sh",
        "-c",
        "yes 0123456789012345678901234567890123456789012345678901234567890123456789 | head -c 16777216",
    ];
    for p in [&t, &c] {
        let r = p.run_ctr(&["--name", "g1"], &cmd);
        assert_eq!((r.code, r.stdout.len()), (0, 16 << 20), "{}", r.stderr);
        let lines = log_text(&p.bundle("g1").join("ctr.log")).lines().count();
        assert_eq!(lines, (16 << 20) / 71 + 1, "the log holds every line");
    }
}

/// The live monitor of this podman whose command line contains `needle`.
fn monitor_with(p: &Podman, needle: &str) -> Option<i32> {
    let root = p.dir.display().to_string();
    fs::read_dir("/proc").unwrap().flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let argv0 = cmdline.split('\0').next()?;
        (argv0 == p.conmon.display().to_string()
            && cmdline.contains(&root)
            && cmdline.contains(needle)
            && !pid_gone(pid))
        .then_some(pid)
    })
}

#[test]
fn signals_to_the_monitor_reach_the_container_as_with_conmon() {
    let (t, c) = pair("sig");
    // conmon forwards SIGTERM, SIGINT and SIGQUIT to the container (to an exec
    // session's process in its monitor) and goes on to write the exit as usual.
    let script = "trap 'echo got-term; exit 7' TERM; trap 'echo got-int; exit 8' INT; \
                  trap 'echo got-quit; exit 9' QUIT; echo ready; while :; do sleep 0.1; done";
    let go = |p: &Podman| -> Vec<String> {
        let mut seen = Vec::new();
        let r = p.run_ctr(&["-d", "--name", "s1"], &["sh", "-c", script]);
        assert_eq!(r.code, 0, "{r:?}");
        let signals = [
            (libc::SIGTERM, "term"),
            (libc::SIGINT, "int"),
            (libc::SIGQUIT, "quit"),
        ];
        for (k, (signal, name)) in signals.into_iter().enumerate() {
            if k > 0 {
                p.ok(&["start", "s1"]);
            }
            // The log is appended to on every start: one "ready" each.
            wait_until(Duration::from_secs(30), "the container's traps", || {
                p.ok(&["logs", "s1"]).matches("ready").count() > k
            });
            let monitor: i32 = p.inspect("s1", "{{.State.ConmonPid}}").parse().unwrap();
            assert_eq!(unsafe { libc::kill(monitor, signal) }, 0);
            wait_until(
                Duration::from_secs(60),
                "the container to exit on the monitor's signal",
                || p.inspect_now("s1", "{{.State.Status}}").as_deref() == Some("exited"),
            );
            let code = p.ok(&["wait", "s1"]).trim().to_string();
            wait_until(Duration::from_secs(30), "the monitor to exit", || {
                pid_gone(monitor)
            });
            seen.push(format!(
                "{name}: wait {code}, {}, log has got-{name} {}",
                p.inspect("s1", "{{.State.Status}} {{.State.ExitCode}}"),
                p.ok(&["logs", "s1"]).contains(&format!("got-{name}"))
            ));
        }
        // An exec session's monitor forwards to the session's process.
        p.ok(&["start", "s1"]);
        let mut exec = p
            .command(&[
                "exec",
                "s1",
                "sh",
                "-c",
                "trap 'echo exec-got-term; exit 5' TERM; echo exec-ready; while :; do sleep 0.1; done",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(exec.stdout.take().unwrap());
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        assert_eq!(line, "exec-ready\n");
        let mut monitor = None;
        wait_until(Duration::from_secs(30), "the exec session's monitor", || {
            monitor = monitor_with(p, "--exec-attach");
            monitor.is_some()
        });
        assert_eq!(unsafe { libc::kill(monitor.unwrap(), libc::SIGTERM) }, 0);
        let mut code = None;
        wait_until(
            Duration::from_secs(60),
            "podman exec to end on the monitor's signal",
            || {
                code = exec.try_wait().unwrap().map(|s| s.code());
                code.is_some()
            },
        );
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
        let code = code.flatten();
        seen.push(format!("exec: {code:?} {rest:?}"));
        seen.push(p.inspect("s1", "{{.State.Status}}"));
        p.ok(&["rm", "-f", "-t", "0", "s1"]);
        seen
    };
    let a = go(&t);
    assert_eq!(a, go(&c), "tether-conmon (left) vs conmon (right)");
    assert_eq!(
        a,
        [
            "term: wait 7, exited 7, log has got-term true",
            "int: wait 8, exited 8, log has got-int true",
            "quit: wait 9, exited 9, log has got-quit true",
            "exec: Some(5) \"exec-got-term\\n\"",
            "running",
        ]
    );
}

/// A podman command on a terminal of its own (a PTY, its controlling terminal, as
/// from a shell): what it shows is collected, it can be typed into and resized the
/// way a terminal window is (TIOCSWINSZ on the master: the kernel sends SIGWINCH).
struct Term {
    master: fs::File,
    shown: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    child: std::process::Child,
}

impl Podman {
    fn on_pty(&self, args: &[&str], rows: u16, cols: u16) -> Term {
        let (master, slave) = tether_tests::ctr_env::openpty(rows, cols);
        let mut cmd = self.command(args);
        tether_tests::ctr_env::on_terminal(&mut cmd, slave);
        let child = cmd.spawn().unwrap();
        drop(cmd); // the slave's copies held by the Command
        let master = fs::File::from(master);
        let shown = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), shown.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the last slave fd is closed.
            while let Ok(n @ 1..) = std::io::Read::read(&mut reader, &mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Term { master, shown, child }
    }
}

impl Term {
    /// What the terminal showed, carriage returns dropped.
    fn shown(&self) -> String {
        String::from_utf8_lossy(&self.shown.lock().unwrap()).replace('\r', "")
    }

    fn type_in(&mut self, input: &[u8]) {
        self.master.write_all(input).unwrap();
    }

    fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we pass.
        assert_eq!(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
            0
        );
    }

    /// Types `stty size` until the container's terminal answers `rows cols` (the
    /// engine passes a resize on asynchronously): false if it never does.
    fn sees_size(&mut self, rows: u16, cols: u16) -> bool {
        let want = format!("\n{rows} {cols}\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::time::Instant::now() < deadline {
            let before = self.shown().matches(&want).count();
            self.type_in(b"stty size\n");
            let round = std::time::Instant::now() + Duration::from_secs(2);
            while std::time::Instant::now() < round {
                if self.shown().matches(&want).count() > before {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        false
    }

    fn exit_code(&mut self) -> i32 {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the podman on the terminal did not end; it showed {:?}",
                self.shown()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn terminal_attach_and_resize_match_conmon() {
    let (t, c) = pair("resize");
    let go = |p: &Podman| -> Vec<String> {
        let mut seen = Vec::new();
        let r = p.run_ctr(&["-d", "-i", "-t", "--name", "ta"], &["sh"]);
        assert_eq!(r.code, 0, "{r:?}");
        // podman attach tells the monitor its terminal's size (`1 H W` on ctl), and
        // again on every SIGWINCH.
        // One detach key: podman takes a key sequence only as one-byte reads.
        let mut term = p.on_pty(&["attach", "--detach-keys", "ctrl-x", "ta"], 24, 80);
        seen.push(format!("attach sees 24x80 {}", term.sees_size(24, 80)));
        term.resize(31, 101);
        seen.push(format!("after a resize 31x101 {}", term.sees_size(31, 101)));
        term.type_in(b"echo typed-$((6*7))\n");
        wait_until(Duration::from_secs(30), "the typed command's output", || {
            term.shown().contains("typed-42\n")
        });
        // Detach: podman ends, the container runs on.
        term.type_in(&[0x18]);
        seen.push(format!("detached {}", term.exit_code()));
        seen.push(p.inspect("ta", "{{.State.Status}}"));
        // `H W` written to winsz directly: conmon's own winsz reader resizes too.
        fs::OpenOptions::new()
            .write(true)
            .open(p.bundle("ta").join("winsz"))
            .unwrap()
            .write_all(b"33 77\n")
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let console = || {
            p.run(&["exec", "ta", "stty", "-F", "/dev/console", "size"])
                .stdout
        };
        while console() != "33 77\n" && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        seen.push(format!("winsz {:?}", console()));
        // exec -it: the session's own ctl.
        let mut term = p.on_pty(&["exec", "-it", "ta", "sh"], 40, 120);
        seen.push(format!("exec -it sees 40x120 {}", term.sees_size(40, 120)));
        term.resize(41, 121);
        seen.push(format!("exec after a resize {}", term.sees_size(41, 121)));
        term.type_in(b"exit 3\n");
        seen.push(format!("exec exit {}", term.exit_code()));
        // A second attach, then the shell is told to exit: attach ends with its code.
        let mut term = p.on_pty(&["attach", "ta"], 25, 90);
        seen.push(format!("second attach sees 25x90 {}", term.sees_size(25, 90)));
        term.type_in(b"exit 4\n");
        seen.push(format!("attach exit {}", term.exit_code()));
        seen.push(format!("wait {}", p.ok(&["wait", "ta"]).trim()));
        // podman's cleanup (the exit command) may still be running.
        wait_until(Duration::from_secs(60), "the container to be exited", || {
            p.inspect_now("ta", "{{.State.Status}}").as_deref() == Some("exited")
        });
        p.ok(&["rm", "-f", "-t", "0", "ta"]);
        seen
    };
    let a = go(&t);
    assert_eq!(a, go(&c), "tether-conmon (left) vs conmon (right)");
    assert_eq!(
        a,
        [
            "attach sees 24x80 true",
            "after a resize 31x101 true",
            "detached 0",
            "running",
            "winsz \"33 77\\n\"",
            "exec -it sees 40x120 true",
            "exec after a resize true",
            "exec exit 3",
            "second attach sees 25x90 true",
            "attach exit 0",
            "wait 4",
        ]
    );
}

/// A monitor started the way CRI-O starts it: cwd the bundle, the sync and start
/// pipes, the start byte written. Its exit code (the first process's), the first
/// line on the sync pipe, and the pipe (kept open for the rest).
fn crio_start(conmon: &Path, args: &[String], cwd: &Path) -> (i32, String) {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    let (mut sync, sync_child) = UnixStream::pair().unwrap();
    let (mut start, start_child) = UnixStream::pair().unwrap();
    for fd in [&sync_child, &start_child] {
        // The child must inherit them (std makes them close-on-exec).
        assert_eq!(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) }, 0);
    }
    let mut child = Command::new(conmon)
        .args(args)
        .current_dir(cwd)
        .env("_OCI_SYNCPIPE", sync_child.as_raw_fd().to_string())
        .env("_OCI_STARTPIPE", start_child.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    drop((sync_child, start_child));
    start.write_all(&[0]).unwrap();
    let code = child.wait().unwrap().code().unwrap_or(-1);
    sync.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.last() != Some(&b'\n') && sync.read(&mut byte).unwrap_or(0) == 1 {
        line.push(byte[0]);
    }
    (code, String::from_utf8_lossy(&line).into_owned())
}

#[test]
fn crio_create_command_line_matches_conmon() {
    // CRI-O is not packaged for Debian 12: its create command line (recorded from
    // its source, the contract's section 8) is run here directly, beside the stock
    // conmon, and what each writes is compared. No --api-version: the `pid` key; no
    // --full-attach: the attach socket through `<socket dir>/<cuuid>` (a symlink to
    // the bundle, left at the end); the persist dir's `exit`. (A private socket dir
    // instead of /var/run/crio.)
    require_podman();
    let runc = runc();
    let go = |conmon: &Path| -> Vec<String> {
        let mut seen = Vec::new();
        let dir = tether_tests::TempDir::new("tp-crio");
        let id = unique_id("crio");
        let bundle = tether_tests::BundleSpec::new(&[
            "sh",
            "-c",
            "echo out-line; sleep 0.2; echo err-line >&2; exit 3",
        ])
        .write(&dir.0.join("bundle"));
        let (exits, persist, sockets, root) = (
            dir.0.join("exits"),
            dir.0.join("persist"),
            dir.0.join("sockets"),
            dir.0.join("runc"),
        );
        for d in [&exits, &persist, &sockets] {
            fs::create_dir_all(d).unwrap();
        }
        let b = |p: &str| bundle.join(p).display().to_string();
        let d = |p: &Path| p.display().to_string();
        let args: Vec<String> = [
            "-b",
            &d(&bundle),
            "-c",
            &id,
            "--exit-dir",
            &d(&exits),
            "-l",
            &b("ctr.log"),
            "--log-level",
            "info",
            "-n",
            "k8s_crio_name",
            "-P",
            &b("conmon-pidfile"),
            "-p",
            &b("pidfile"),
            "--persist-dir",
            &d(&persist),
            "-r",
            &runc,
            "--runtime-arg",
            &format!("--root={}", root.display()),
            "--socket-dir-path",
            &d(&sockets),
            "--syslog",
            "-u",
            &id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (code, line) = crio_start(conmon, &args, &bundle);
        let pid: i32 = line
            .trim()
            .strip_prefix("{\"pid\": ")
            .and_then(|l| l.strip_suffix('}'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{}: sync line {line:?}", conmon.display()));
        seen.push(format!(
            "first process {code}, sync {}",
            line.replace(&pid.to_string(), "PID")
        ));
        let monitor: i32 = fs::read_to_string(bundle.join("conmon-pidfile"))
            .unwrap()
            .parse()
            .unwrap();
        seen.push(format!("monitor alive {}", !pid_gone(monitor)));
        let link = sockets.join(&id);
        seen.push(format!(
            "link to the bundle {}, attach is a socket {}",
            fs::read_link(&link).ok() == Some(bundle.clone()),
            std::os::unix::fs::FileTypeExt::is_socket(
                &fs::metadata(link.join("attach")).unwrap().file_type()
            )
        ));
        let fifos = ["ctl", "winsz"].map(|f| {
            std::os::unix::fs::FileTypeExt::is_fifo(&fs::metadata(bundle.join(f)).unwrap().file_type())
        });
        seen.push(format!("fifos {fifos:?}"));
        // CRI-O starts the container through the runtime itself.
        let started = Command::new(&runc)
            .arg(format!("--root={}", root.display()))
            .args(["start", &id])
            .status()
            .unwrap();
        assert!(started.success());
        wait_until(Duration::from_secs(60), "the monitor to exit", || {
            pid_gone(monitor)
        });
        seen.push(format!(
            "exit file {:?}, persist exit {:?}, link kept {}",
            fs::read_to_string(exits.join(&id)).unwrap_or_default(),
            fs::read_to_string(persist.join("exit")).unwrap_or_default(),
            fs::symlink_metadata(&link).is_ok()
        ));
        seen.push(format!("log {:?}", log_text(&bundle.join("ctr.log"))));
        let _ = Command::new(&runc)
            .arg(format!("--root={}", root.display()))
            .args(["delete", "--force", &id])
            .status();
        seen
    };
    let a = go(&tether_conmon());
    assert_eq!(
        a,
        go(Path::new(STOCK_CONMON)),
        "tether-conmon (left) vs conmon (right)"
    );
    assert_eq!(
        a,
        [
            "first process 0, sync {\"pid\": PID}\n",
            "monitor alive true",
            "link to the bundle true, attach is a socket true",
            "fifos [true, true]",
            "exit file \"3\", persist exit \"3\", link kept true",
            "log \"out-line\\nerr-line\\n\"",
        ]
    );
}

#[test]
fn timeout_matches_conmon() {
    let (t, c) = pair("timeout");
    // `podman run --timeout`: the monitor kills the container after N s and reports
    // -1, which podman turns into 255.
    for p in [&t, &c] {
        let r = p.run_ctr(&["--name", "to", "--timeout", "2"], &["sleep", "100"]);
        assert_eq!(r.code, 255, "{}: {r:?}", p.conmon.display());
        assert_eq!(p.inspect("to", "{{.State.Status}}"), "exited");
    }
}

/// A container of runc's own (created and started as CRI-O does, through the
/// runtime), for CRI-O's exec sync to run in.
fn runc_sleeper(runc: &str, root: &Path, bundle: &Path, id: &str) {
    for sub in [
        vec!["create", "--bundle", &bundle.display().to_string(), id],
        vec!["start", id],
    ] {
        let ok = Command::new(runc)
            .arg(format!("--root={}", root.display()))
            .args(&sub)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "runc {sub:?}");
    }
}

#[test]
fn crio_exec_sync_matches_conmon() {
    // CRI-O's ExecSync command line (the contract's section 8: no bundle, no
    // --api-version, --sync, -T), run directly beside the stock conmon against a
    // container runc runs: the first process waits, the sync pipe carries only
    // `{"exit_code": N}`, the output is in the k8s-file log; -T kills and reports
    // "command timed out".
    require_podman();
    let runc = runc();
    let dir = tether_tests::TempDir::new("tp-xsync");
    let root = dir.0.join("runc");
    let id = unique_id("xsync");
    let bundle = tether_tests::BundleSpec::new(&["sleep", "1000"]).write(&dir.0.join("bundle"));
    runc_sleeper(&runc, &root, &bundle, &id);
    let go = |conmon: &Path, cmd: &str, timeout: Option<&str>| -> String {
        let scratch = tether_tests::TempDir::new("tp-xsync-run");
        let spec = scratch.0.join("process.json");
        let process = serde_json::json!({
            "args": ["sh", "-c", cmd],
            "cwd": "/",
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
            "user": {"uid": 0, "gid": 0},
        });
        fs::write(&spec, process.to_string()).unwrap();
        let d = |p: PathBuf| p.display().to_string();
        let mut args: Vec<String> = [
            "-c",
            &id,
            "-n",
            "k8s_xsync",
            "-r",
            &runc,
            "-p",
            &d(scratch.0.join("pid")),
            "-e",
            "-l",
            &d(scratch.0.join("exec.log")),
            "--socket-dir-path",
            &d(scratch.0.clone()),
            "--log-level",
            "info",
            "--sync",
            "--log-global-size-max",
            "16777216",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(t) = timeout {
            args.extend(["-T".to_string(), t.to_string()]);
        }
        args.extend([
            "--exec-process-spec".to_string(),
            d(spec),
            "--runtime-arg".to_string(),
            format!("--root={}", root.display()),
        ]);
        let (code, line) = crio_start(conmon, &args, &scratch.0);
        let log = log_text(&scratch.0.join("exec.log"));
        format!("exit {code}, sync {line:?}, log {log:?}")
    };
    let cases = [
        ("echo out; sleep 0.2; echo err >&2; exit 5", None),
        ("echo before; sleep 100", Some("2")),
    ];
    let mut seen = Vec::new();
    for (cmd, timeout) in cases {
        let a = go(&tether_conmon(), cmd, timeout);
        assert_eq!(
            a,
            go(Path::new(STOCK_CONMON), cmd, timeout),
            "tether-conmon (left) vs conmon (right)"
        );
        seen.push(a);
    }
    let _ = Command::new(&runc)
        .arg(format!("--root={}", root.display()))
        .args(["delete", "--force", &id])
        .status();
    assert_eq!(
        seen,
        [
            "exit 5, sync \"{\\\"exit_code\\\": 5}\\n\", log \"out\\nerr\\n\"",
            "exit 255, sync \"{\\\"exit_code\\\": -1, \\\"message\\\": \\\"command timed out\\\"}\\n\", log \"before\\n\"",
        ]
    );
}

impl Podman {
    /// `podman ARGS` with `file` open on its fd 3 (`3<FILE` in a shell).
    fn run_with_fd3(&self, args: &[&str], file: &Path) -> Ran {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let f = fs::File::open(file).unwrap();
        let raw = f.as_raw_fd();
        let mut c = self.command(args);
        // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs here.
        unsafe {
            c.pre_exec(move || {
                let ok = if raw == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0) == 0
                } else {
                    libc::dup2(raw, 3) == 3
                };
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let out = ran(c.output().unwrap());
        drop(f);
        out
    }
}

#[test]
fn preserved_fds_reach_the_container_as_with_conmon() {
    // `podman run --preserve-fds 1`: podman passes the fd at 3 and
    // `--runtime-opt --preserve-fds --runtime-opt 1` (its sync and start pipes move
    // to 4 and 5); the runtime's create must inherit fd 3.
    let (t, c) = pair("pfds");
    let file = t.dir.join("fd3.txt");
    fs::write(&file, "read through fd 3\n").unwrap();
    for p in [&t, &c] {
        let mut args = vec!["run", "--rm", "--preserve-fds", "1"];
        args.extend(ULIMITS);
        args.extend([IMAGE, "sh", "-c", "cat <&3"]);
        let r = p.run_with_fd3(&args, &file);
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "read through fd 3\n"),
            "{}: {r:?}",
            p.conmon.display()
        );
        // `podman exec --preserve-fds 1`: the same through the exec session's monitor.
        p.ok(&{
            let mut a = vec!["run", "-d", "--name", "pf"];
            a.extend(ULIMITS);
            a.extend([IMAGE, "sleep", "1000"]);
            a
        });
        let r = p.run_with_fd3(
            &["exec", "--preserve-fds", "1", "pf", "sh", "-c", "cat <&3"],
            &file,
        );
        assert_eq!(
            (r.code, r.stdout.as_str()),
            (0, "read through fd 3\n"),
            "exec, {}: {r:?}",
            p.conmon.display()
        );
    }
}

#[test]
fn restore_goes_to_the_runtime_as_with_conmon() {
    // Tier E: `--restore PATH` makes the monitor run `runtime restore --detach
    // --image-path PATH --work-path BUNDLE` instead of `create`. CRIU is not
    // installed and cannot checkpoint on this kernel (its dump fails on the vdso), so
    // no image can exist here: what is shown is the restore reaching runc, whose
    // failure (it needs criu) reaches the engine on the sync pipe as conmon reports
    // it, with the monitor's first process exiting 0 both times.
    require_podman();
    let runc = runc();
    let go = |conmon: &Path| -> (i32, String) {
        let dir = tether_tests::TempDir::new("tp-restore");
        let id = unique_id("restore");
        let bundle = tether_tests::BundleSpec::new(&["sleep", "1000"]).write(&dir.0.join("bundle"));
        let image = dir.0.join("checkpoint");
        let exits = dir.0.join("exits");
        fs::create_dir_all(&image).unwrap();
        fs::create_dir_all(&exits).unwrap();
        let d = |p: &Path| p.display().to_string();
        let root = format!("--root={}", dir.0.join("runc").display());
        let (pidfile, log) = (d(&bundle.join("pidfile")), d(&bundle.join("ctr.log")));
        let args = [
            "--api-version",
            "1",
            "-c",
            &id,
            "-u",
            &id,
            "-r",
            &runc,
            "--runtime-arg",
            &root,
            "-b",
            &d(&bundle),
            "-p",
            &pidfile,
            "-l",
            &log,
            "--exit-dir",
            &d(&exits),
            "--full-attach",
            "--restore",
            &d(&image),
            "--runtime-opt",
            "--tcp-established",
        ];
        let (code, message) = direct(conmon, &args);
        let _ = Command::new(&runc)
            .args([root.as_str(), "delete", "--force", &id])
            .stderr(Stdio::null())
            .status();
        (code, message)
    };
    for conmon in [tether_conmon(), PathBuf::from(STOCK_CONMON)] {
        let (code, message) = go(&conmon);
        let shown = format!("{}: exit {code}, sync {message:?}", conmon.display());
        assert_eq!(code, 0, "{shown}");
        assert!(message.starts_with("{\"data\": -1, \"message\": \""), "{shown}");
        assert!(message.contains("criu"), "runc's restore names criu: {shown}");
    }
}

#[test]
fn no_pivot_and_no_new_keyring_reach_the_runtime_as_with_conmon() {
    // containers.conf `no_pivot_root = true` and `keyring = false`: podman passes
    // `--no-pivot` and `--no-new-keyring`, which the monitor hands to `runc create`.
    // runc keeps both in its state (/run/runc/ID/state.json as root: podman passes
    // no --root), and without a new keyring there is no `_ses.ID` session keyring
    // for the container (the host's /proc/keys lists every keyring root may view).
    require_podman();
    let detached = |p: &Podman| {
        let mut args = vec!["run", "-d"];
        args.extend(ULIMITS);
        args.extend([IMAGE, "sleep", "1000"]);
        p.ok(&args).trim().to_string()
    };
    for conmon in [tether_conmon(), PathBuf::from(STOCK_CONMON)] {
        let p = Podman::with_conf("nopivot", &conmon, "no_pivot_root = true", "keyring = false");
        let id = detached(&p);
        let state = fs::read_to_string(format!("/run/runc/{id}/state.json")).unwrap();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        let flags = (
            &state["config"]["no_pivot_root"],
            &state["config"]["no_new_keyring"],
        );
        assert_eq!(
            flags,
            (&serde_json::Value::Bool(true), &serde_json::Value::Bool(true)),
            "{}",
            conmon.display()
        );
        assert!(!session_keyring_of(&id), "{}", conmon.display());
        p.ok(&["rm", "-f", "-t", "0", &id]);
    }
    // And the default: a session keyring of the container's own.
    let p = Podman::new("keyring", &tether_conmon());
    let id = detached(&p);
    assert!(session_keyring_of(&id), "no _ses.{id} in /proc/keys");
    p.ok(&["rm", "-f", "-t", "0", &id]);
}

/// Whether /proc/keys holds `_ses.ID` (its description is the ninth field), the
/// session keyring runc makes for container ID unless told `--no-new-keyring`.
fn session_keyring_of(id: &str) -> bool {
    let want = format!("_ses.{id}:");
    fs::read_to_string("/proc/keys")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(8) == Some(want.as_str()))
}
