//! `bench`: tether side by side with bare runc, conmon and containerd-shim-runc-v2, on
//! the same busybox workloads in the same run, runs interleaved. Prints one table of
//! medians (min–max) and ratios, and writes results.json and ratios.svg.
//!
//! `bench [--quick] [--memory | --scale | --upgrade] [--out DIR] [--baseline TETHER_SHIM] [--youki YOUKI]`
//! (scripts/bench installs the peers and builds first). `--memory` measures idle
//! memory, descriptors and wakeups alone; `--scale` how the costs grow with the number
//! of containers (src/bench_scale.rs); `--upgrade` upgrade in place alone
//! (src/bench_upgrade.rs, also part of a full run). `--baseline` adds another tether-shim binary
//! (an earlier build) as system `base`, measured in the same run, with tether/base
//! ratios. `--youki` adds the start latency of bare youki and of tether over youki,
//! interleaved with the others, as a row of its own.

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tether_protocol::{Client, CreateParams, ExecParams, UpgradeResult};
use tether_tests::{binary, make_rootfs, null_stdio, patched_shim, BundleSpec};

const SYSTEMS: [&str; 4] = ["runc", "tether", "conmon", "containerd"];

struct Bench {
    work: PathBuf,
    /// `--baseline`: another tether-shim build, measured as system "base".
    baseline: Option<PathBuf>,
    runc_root: PathBuf,
    rootfs: PathBuf,
    quick: bool,
    ctd: Containerd,
    seq: u32,
    /// figure -> system -> samples
    samples: BTreeMap<String, BTreeMap<String, Vec<f64>>>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let out = args
        .iter()
        .position(|a| a == "--out")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("bench-results"));
    let baseline = args
        .iter()
        .position(|a| a == "--baseline")
        .and_then(|i| args.get(i + 1))
        .map(|p| fs::canonicalize(p).expect("--baseline: no such tether-shim"));
    let youki = args
        .iter()
        .position(|a| a == "--youki")
        .and_then(|i| args.get(i + 1))
        .map(|p| fs::canonicalize(p).expect("--youki: no such youki"));
    tether_tests::require_root_and_runc();
    for tool in ["conmon", "containerd", "ctr", "containerd-shim-runc-v2"] {
        assert!(
            which(tool).is_some(),
            "{tool} is not installed: run scripts/bench (it installs the peers)"
        );
    }
    // A directory of this run's own: a bench (or a test suite's bench smoke) running
    // beside it cannot clean this one's containers away.
    let work = PathBuf::from(format!("/tmp/tether-bench-{}", std::process::id()));
    cleanup_leftovers(&work);
    fs::create_dir_all(&work).unwrap();
    // The bench is built with panic=abort: a failed run must still take its
    // containerd, shims and containers (all started under `work`) with it.
    let on_panic = work.clone();
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        cleanup_leftovers(&on_panic);
    }));
    // Everything (runc's root, every monitor's state and logs) on a tmpfs, as /run is
    // on a production host: file-system journal noise out of the figures.
    let tmpfs = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4g", "tmpfs"])
        .arg(&work)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !tmpfs {
        eprintln!(
            "bench: could not mount a tmpfs on {}; state stays on disk",
            work.display()
        );
    }
    let rootfs = work.join("rootfs");
    make_rootfs(&rootfs).expect("rootfs");
    let ctd = start_containerd(&work, &namespace());
    let mut b = Bench {
        baseline,
        runc_root: work.join("runc"),
        rootfs,
        quick,
        ctd,
        seq: 0,
        samples: BTreeMap::new(),
        work: work.clone(),
    };
    let started = Instant::now();
    if args.iter().any(|a| a == "--scale") {
        let scale = b.scale();
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("scale.json"), serde_json::to_vec_pretty(&scale).unwrap()).unwrap();
        fs::write(out.join("scale.svg"), bench_scale::scale_svg(&scale)).unwrap();
        eprintln!("bench: wrote {}/scale.json and scale.svg", out.display());
        drop(b);
        cleanup_leftovers(&work);
        return;
    }
    if args.iter().any(|a| a == "--upgrade") {
        let report = json!({ "upgrade": b.upgrade_figures() });
        fs::create_dir_all(&out).unwrap();
        fs::write(
            out.join("upgrade.json"),
            serde_json::to_vec_pretty(&report).unwrap(),
        )
        .unwrap();
        eprintln!("bench: wrote {}/upgrade.json", out.display());
        drop(b);
        cleanup_leftovers(&work);
        return;
    }
    if args.iter().any(|a| a == "--memory") {
        // Idle memory, descriptors and wakeups alone (a few minutes).
        let n = if quick { 5 } else { 50 };
        b.idle_memory(n);
        b.ctd_idle_memory(bench_containerd::TETHER_CTD, n);
        let mut report = b.report(started.elapsed());
        report["tether_under_containerd"] = b.containerd_front_report();
        write_report(&out, &report);
        drop(b);
        cleanup_leftovers(&work);
        return;
    }
    let mut second = youki.map(|y| SecondRuntime::new(y, &work));
    // runc create is bimodal here (about 32 or 65 ms): enough runs for stable medians.
    let runs = if quick { 3 } else { 25 };
    eprintln!("bench: start latency ({runs} runs each, interleaved)");
    for _ in 0..runs {
        for sys in b.with_base(&SYSTEMS) {
            let ms = b.start_latency(sys);
            b.record("start_ms", sys, ms);
        }
        if let Some(rt) = second.as_mut() {
            rt.start_latency(&mut b);
        }
    }
    eprintln!("bench: exit latency");
    for _ in 0..runs {
        for sys in b.with_base(&["tether", "conmon", "containerd"]) {
            let ms = b.exit_latency(sys);
            b.record("exit_ms", sys, ms);
        }
    }
    eprintln!("bench: exec latency");
    b.exec_latency(runs);
    eprintln!("bench: output throughput");
    let mb = if quick { 128 } else { 1024 };
    for _ in 0..(if quick { 1 } else { 2 }) {
        for sys in b.with_base(&[
            "floor",
            "log-floor",
            "tether",
            "tether-log",
            "conmon",
            "containerd",
        ]) {
            let (mbps, cpu) = b.throughput(sys, mb);
            if sys == "log-floor" {
                // Rows of their own, in the floor's column.
                b.record("log_floor_mbps", "floor", mbps);
                b.record("log_floor_cpu_s_per_gb", "floor", cpu);
            } else {
                b.record("throughput_mbps", sys, mbps);
                b.record("cpu_s_per_gb", sys, cpu);
            }
        }
    }
    eprintln!("bench: idle memory");
    b.idle_memory(if quick { 5 } else { 50 });
    b.tether_under_containerd(runs, mb, if quick { 5 } else { 50 });
    let upgrade = b.upgrade_figures();
    let mut report = b.report(started.elapsed());
    report["upgrade"] = upgrade;
    report["tether_under_containerd"] = b.containerd_front_report();
    if let Some(rt) = second.take() {
        report["second_runtime"] = rt.report();
    }
    write_report(&out, &report);
    drop(b);
    cleanup_leftovers(&work);
}

/// DIR/results.json and DIR/ratios.svg.
fn write_report(out: &Path, report: &Value) {
    fs::create_dir_all(out).unwrap();
    fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(report).unwrap(),
    )
    .unwrap();
    fs::write(out.join("ratios.svg"), svg(report)).unwrap();
    eprintln!("bench: wrote {}/results.json and ratios.svg", out.display());
}

/// The file system the bench's state lives on (tmpfs unless the mount failed).
fn state_fs(work: &Path) -> String {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let dir = work.display().to_string();
    mounts
        .lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == dir).then(|| f[2].to_string())
        })
        .unwrap_or_else(|| "disk".into())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// Removes what an earlier, interrupted run left: containers, shims, containerd.
/// This run's containerd namespace.
fn namespace() -> String {
    format!("tbench{}", std::process::id())
}

fn cleanup_leftovers(work: &Path) {
    kill_leftovers(work);
    let _ = Command::new("umount")
        .arg("-l")
        .arg(work)
        .stderr(Stdio::null())
        .status();
    let _ = fs::remove_dir_all(work);
    // Directories of runs that died without cleaning up.
    for e in fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("tether-bench-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            kill_leftovers(&e.path());
            let _ = Command::new("umount")
                .arg("-l")
                .arg(e.path())
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// Containers and monitors of the run in `work` (and its containerd namespace).
fn kill_leftovers(work: &Path) {
    let root = work.join("runc");
    if let Ok(out) = Command::new("runc")
        .args(["--root", root.to_str().unwrap(), "list", "-q"])
        .output()
    {
        for id in String::from_utf8_lossy(&out.stdout).lines() {
            let _ = Command::new("runc")
                .args(["--root", root.to_str().unwrap(), "delete", "--force", id])
                .output();
        }
    }
    let _ = Command::new("pkill")
        .args(["-9", "-f", &format!("{}/", work.display())])
        .status();
    let _ = Command::new("pkill")
        .args([
            "-9",
            "-f",
            &format!("containerd-shim-runc-v2 -namespace {} ", namespace()),
        ])
        .status();
    std::thread::sleep(Duration::from_millis(100));
}

/// Median, min, max.
fn stats(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = if s.is_empty() {
        f64::NAN
    } else if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    };
    (
        median,
        *s.first().unwrap_or(&f64::NAN),
        *s.last().unwrap_or(&f64::NAN),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs a runtime command with null stdio (`create` hands its stdio to the container,
/// so a captured pipe would never see EOF); a failure panics with the last line of
/// the runtime's `log`.
fn runtime_ok(mut cmd: Command, args: &[&str], log: &Path) {
    let status = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        panic!(
            "{} {args:?} failed: {}",
            cmd.get_program().to_string_lossy(),
            text.lines().last().unwrap_or("")
        );
    }
}

/// Bare `create` + `start` of a runtime (`rt` makes its command with global options),
/// null stdio, pid file in `work`: the floor for start latency.
fn bare_create_start(rt: &dyn Fn() -> Command, log: &Path, work: &Path, id: &str, bundle: &Path) {
    let pidfile = work.join(format!("{id}.pid"));
    let (bundle, pidfile) = (bundle.to_str().unwrap(), pidfile.to_str().unwrap());
    runtime_ok(
        rt(),
        &["create", "--bundle", bundle, "--pid-file", pidfile, id],
        log,
    );
    runtime_ok(rt(), &["start", id], log);
}

/// (PSS, private dirty, RSS) in kB from /proc/PID/smaps_rollup.
fn smaps(pid: i32) -> (f64, f64, f64) {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (field("Pss:"), field("Private_Dirty:"), field("Rss:"))
}

/// How long idle monitors are watched for wakeups (quick: the CI smoke run).
const WAKE_WINDOW: Duration = Duration::from_secs(10);
const QUICK_WAKE_WINDOW: Duration = Duration::from_secs(2);

/// Times any thread of `pid` was switched onto a CPU (schedstat's third field, summed
/// over its threads): each is a wakeup.
fn switches(pid: i32) -> u64 {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

/// Wakeups of all `pids` together over `window`, left idle meanwhile.
fn wakeups_over(pids: &[i32], window: Duration) -> u64 {
    let before: Vec<u64> = pids.iter().map(|p| switches(*p)).collect();
    std::thread::sleep(window);
    pids.iter()
        .zip(&before)
        .map(|(p, b)| switches(*p).saturating_sub(*b))
        .sum()
}

/// Descriptors `pid` holds.
fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// utime+stime of a process in seconds.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn pidfd_open(pid: i32) -> OwnedFd {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as RawFd;
    assert!(fd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn readable(fds: &[RawFd], timeout_ms: i32) -> Vec<bool> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: poll over our own array.
    unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, timeout_ms) };
    p.iter().map(|x| x.revents != 0).collect()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: signalling a container process of ours.
    unsafe { libc::kill(pid, sig) };
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "bench: timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

// The private containerd and tether under containerd: src/bench_containerd.rs.
#[path = "../bench_containerd.rs"]
mod bench_containerd;
// `--scale`: src/bench_scale.rs.
#[path = "../bench_scale.rs"]
mod bench_scale;
// `--upgrade`: src/bench_upgrade.rs.
#[path = "../bench_upgrade.rs"]
mod bench_upgrade;
use bench_containerd::{start_containerd, CtdBench};
use tether_tests::containerd::Containerd;

/// The pid whose cmdline (spaces for NULs) contains `pat`.
fn pgrep(pat: &str) -> i32 {
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd: String = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(pat) {
            return pid;
        }
    }
    0
}

/// A container under conmon, launched the way Podman does.
struct Conmon {
    id: String,
    conmon_pid: i32,
    exit_dir: PathBuf,
    log: PathBuf,
}

impl Bench {
    /// `systems`, with "base" after "tether" when a baseline is given.
    fn with_base(&self, systems: &[&'static str]) -> Vec<&'static str> {
        let mut v = Vec::new();
        for s in systems {
            v.push(*s);
            if *s == "tether" && self.baseline.is_some() {
                v.push("base");
            }
        }
        v
    }

    /// The tether-shim binary of "tether" or "base".
    fn shim_bin(&self, sys: &str) -> PathBuf {
        match (sys, &self.baseline) {
            ("base", Some(b)) => b.clone(),
            _ => binary("tether-shim"),
        }
    }

    fn id(&mut self, prefix: &str) -> String {
        self.seq += 1;
        format!("{prefix}{}", self.seq)
    }

    fn record(&mut self, figure: &str, system: &str, v: f64) {
        self.samples
            .entry(figure.into())
            .or_default()
            .entry(system.into())
            .or_default()
            .push(v);
    }

    fn bundle(&self, name: &str, args: &[&str]) -> PathBuf {
        let dir = self.work.join("bundles").join(name);
        if !dir.join("config.json").exists() {
            BundleSpec::new(args).rootfs(self.rootfs.clone()).write(&dir);
        }
        dir
    }

    fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root")
            .arg(&self.runc_root)
            .arg("--log")
            .arg(self.work.join("runc.log"));
        c
    }

    fn runc_ok(&self, args: &[&str]) {
        runtime_ok(self.runc(), args, &self.work.join("runc.log"));
    }

    /// Bare `runc create` + `runc start` with null stdio: the floor for start latency.
    fn runc_run(&self, id: &str, bundle: &Path) {
        bare_create_start(
            &|| self.runc(),
            &self.work.join("runc.log"),
            &self.work,
            id,
            bundle,
        );
    }

    /// Bare `runc create` whose container writes its stdout to `stdout` (the floors:
    /// no monitor in the path).
    fn runc_create_with_stdout(&self, id: &str, bundle: &Path, stdout: Stdio) {
        let pidfile = self.work.join(format!("{id}.pid"));
        let created = self
            .runc()
            .args([
                "create",
                "--bundle",
                bundle.to_str().unwrap(),
                "--pid-file",
                pidfile.to_str().unwrap(),
                id,
            ])
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(created.success(), "runc create {id}");
    }

    fn runc_delete(&self, id: &str) {
        let _ = self.runc().args(["delete", "--force", id]).output();
    }

    /// `tether-shim start` of system `sys` ("tether" or "base") + connect.
    fn launch_shim(&self, sys: &str, id: &str, bundle: &Path) -> (Client, PathBuf) {
        self.launch_shim_with(sys, id, bundle, &[])
    }

    /// `launch_shim` with more `tether-shim start` flags, after the bench's own (a
    /// later `--runtime-root` wins).
    fn launch_shim_with(
        &self,
        sys: &str,
        id: &str,
        bundle: &Path,
        extra: &[&std::ffi::OsStr],
    ) -> (Client, PathBuf) {
        let state = self.work.join("tether").join(id);
        let out = Command::new(self.shim_bin(sys))
            .args(["start", "--id", id, "--bundle"])
            .arg(bundle)
            .arg("--state-dir")
            .arg(&state)
            .arg("--runtime-root")
            .arg(&self.runc_root)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tether-shim start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sock = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (Client::connect(sock).unwrap(), state)
    }

    fn tether_pid(state: &Path) -> i32 {
        fs::read_to_string(state.join("shim.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn tether_remove(c: &mut Client, state: &Path) {
        let pid = Self::tether_pid(state);
        let _ = c.delete(None, true);
        wait_for("tether shim exit", Duration::from_secs(10), || {
            tether_tests::pid_gone(pid)
        });
    }

    /// Starts conmon (api version 1, k8s-file log, exit dir), waits on its sync pipe
    /// until the container is created.
    fn conmon_create(&self, id: &str, bundle: &Path) -> Conmon {
        let dir = self.work.join("conmon").join(id);
        let exit_dir = dir.join("exits");
        fs::create_dir_all(&exit_dir).unwrap();
        fs::create_dir_all(dir.join("sock")).unwrap();
        let log = dir.join("ctr.log");
        let mut fds = [0; 2];
        // Close-on-exec, so that monitors started at the same time by other threads
        // never hold this pipe (dup2 below clears the flag on conmon's fd 3).
        // SAFETY: pipe2 fills our array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        let (r, w) = (fds[0], fds[1]);
        let mut cmd = Command::new("conmon");
        cmd.args([
            "--api-version",
            "1",
            "-c",
            id,
            "-u",
            id,
            "-n",
            id,
            "-r",
            "/usr/bin/runc",
            "-b",
        ])
        .arg(bundle)
        .arg("-p")
        .arg(dir.join("pidfile"))
        .arg("--exit-dir")
        .arg(&exit_dir)
        .arg("--socket-dir-path")
        .arg(dir.join("sock"))
        .arg("-l")
        .arg(format!("k8s-file:{}", log.display()))
        .args(["--log-level", "error", "--runtime-arg", "--root", "--runtime-arg"])
        .arg(&self.runc_root)
        .arg("--conmon-pidfile")
        .arg(dir.join("conmon.pid"))
        .env("_OCI_SYNCPIPE", "3")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        // SAFETY: dup2 and fcntl in the child before exec, async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself would keep close-on-exec: clear it then.
                let ok = if w == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(w, 3)
                };
                if ok < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("conmon");
        // SAFETY: closing our copy of the write end; the read end becomes a File.
        unsafe { libc::close(w) };
        let mut sync = unsafe { fs::File::from_raw_fd(r) };
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        while !got.contains("\"data\"") {
            let n = sync.read(&mut buf).unwrap();
            assert!(
                n > 0,
                "conmon sync pipe closed before the container was created: {got:?}"
            );
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        let v: Value = serde_json::from_str(got.lines().next().unwrap()).unwrap_or(Value::Null);
        assert!(
            v["data"].as_i64().unwrap_or(-1) > 0,
            "conmon create failed: {got}"
        );
        let _ = child.wait();
        let conmon_pid = fs::read_to_string(dir.join("conmon.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Conmon {
            id: id.to_string(),
            conmon_pid,
            exit_dir,
            log,
        }
    }

    fn conmon_remove(&self, c: &Conmon) {
        self.runc_delete(&c.id);
        wait_for("conmon exit", Duration::from_secs(10), || {
            tether_tests::pid_gone(c.conmon_pid)
        });
    }

    /// From launching the monitor to the container's process running.
    fn start_latency(&mut self, sys: &str) -> f64 {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        let id = self.id("s");
        match sys {
            "runc" => {
                let t = Instant::now();
                self.runc_run(&id, &bundle);
                let d = ms(t.elapsed());
                self.runc_delete(&id);
                d
            }
            "tether" | "base" => {
                // The exec floor: the same binary exec'd to print its version and exit,
                // timed the same way; the launch is this plus the shim's own work.
                let t = Instant::now();
                let v = Command::new(self.shim_bin(sys))
                    .arg("--version")
                    .output()
                    .unwrap();
                assert!(v.status.success(), "tether-shim --version: {v:?}");
                self.record("exec_floor_ms", sys, ms(t.elapsed()));
                let t = Instant::now();
                let (mut c, state) = self.launch_shim(sys, &id, &bundle);
                // The shim's own share: `tether-shim start` until its socket answers.
                self.record("launch_ms", sys, ms(t.elapsed()));
                c.create(&null_stdio()).unwrap();
                c.start().unwrap();
                let d = ms(t.elapsed());
                Self::tether_remove(&mut c, &state);
                d
            }
            "conmon" => {
                let t = Instant::now();
                let c = self.conmon_create(&id, &bundle);
                self.runc_ok(&["start", &id]);
                let d = ms(t.elapsed());
                self.conmon_remove(&c);
                d
            }
            _ => {
                let t = Instant::now();
                self.ctd.run_sleep(&self.rootfs, &id);
                let d = ms(t.elapsed());
                self.ctd.remove(&id);
                d
            }
        }
    }

    /// Kill the container's process; time from its pidfd becoming readable to the
    /// daemon side holding the exit status.
    fn exit_latency(&mut self, sys: &str) -> f64 {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        let id = self.id("x");
        match sys {
            "tether" | "base" => {
                let (mut c, state) = self.launch_shim(sys, &id, &bundle);
                c.create(&null_stdio()).unwrap();
                let pid = c.start().unwrap().pid;
                let mut s = UnixStream::connect(state.join("shim.sock")).unwrap();
                s.write_all(b"{\"id\":1,\"method\":\"subscribe\"}\n").unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap(); // the subscribe answer
                let d = time_exit(pid, s.as_raw_fd(), || {
                    line.clear();
                    r.read_line(&mut line).unwrap();
                    line.contains("\"type\":\"exit\"")
                });
                Self::tether_remove(&mut c, &state);
                d
            }
            "conmon" => {
                let c = self.conmon_create(&id, &bundle);
                self.runc_ok(&["start", &id]);
                let pid: i32 = fs::read_to_string(self.work.join("conmon").join(&id).join("pidfile"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                let ino = Inotify::watch(&c.exit_dir);
                let exit_file = c.exit_dir.join(&id);
                let d = time_exit(pid, ino.fd.as_raw_fd(), || {
                    ino.drain();
                    fs::read_to_string(&exit_file)
                        .map(|s| !s.trim().is_empty())
                        .unwrap_or(false)
                });
                self.conmon_remove(&c);
                d
            }
            _ => self.ctd_exit_latency(sys),
        }
    }

    fn exec_latency(&mut self, runs: usize) {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        let mut shims = Vec::new();
        for sys in self.with_base(&["tether"]) {
            let tid = self.id("e");
            let (mut c, state) = self.launch_shim(sys, &tid, &bundle);
            c.create(&null_stdio()).unwrap();
            c.start().unwrap();
            shims.push((sys, c, state));
        }
        let rid = self.id("e");
        self.runc_run(&rid, &bundle);
        let cid = self.id("e");
        self.ctd.run_sleep(&self.rootfs, &cid);
        for i in 0..runs {
            let t = Instant::now();
            let ok = self
                .runc()
                .args(["exec", &rid, "/bin/true"])
                .stdin(Stdio::null())
                .status()
                .unwrap();
            let d = ms(t.elapsed());
            assert!(ok.success());
            self.record("exec_ms", "runc", d);

            let eid = format!("t{i}");
            let p = ExecParams {
                exec_id: eid.clone(),
                process: json!({"args": ["/bin/true"]}),
                stdin: Some("/dev/null".into()),
                stdout: Some("/dev/null".into()),
                stderr: Some("/dev/null".into()),
                ..Default::default()
            };
            for (sys, c, _) in &mut shims {
                let t = Instant::now();
                c.exec(&p).unwrap();
                let status = c.wait(Some(&eid)).unwrap().status;
                let d = ms(t.elapsed());
                assert_eq!(status, Some(0));
                self.samples
                    .entry("exec_ms".into())
                    .or_default()
                    .entry(sys.to_string())
                    .or_default()
                    .push(d);
                let _ = c.delete(Some(&eid), false);
            }

            let t = Instant::now();
            let ok = self
                .ctd
                .ctr()
                .args(["task", "exec", "--exec-id", &format!("c{i}"), &cid, "/bin/true"])
                .stdin(Stdio::null())
                .status()
                .unwrap();
            let d = ms(t.elapsed());
            assert!(ok.success());
            self.record("exec_ms", "containerd", d);
        }
        for (_, mut c, state) in shims {
            Self::tether_remove(&mut c, &state);
        }
        self.runc_delete(&rid);
        self.ctd.remove(&cid);
    }

    /// `mb` MiB from the container's stdout to the daemon side: (MB/s, monitor CPU
    /// seconds per GB).
    fn throughput(&mut self, sys: &str, mb: usize) -> (f64, f64) {
        let count = mb.to_string();
        let args = ["dd", "if=/dev/zero", "bs=1M", &format!("count={count}")];
        let bundle = self.bundle(&format!("dd{mb}"), &args);
        let id = self.id("t");
        let bytes = (mb as u64) << 20;
        let per_gb = |cpu: f64| cpu * (1u64 << 30) as f64 / bytes as f64;
        let rate = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
        match sys {
            "floor" => {
                // The FIFO handed straight to the container: no monitor in the path.
                let fifo = self.work.join(format!("{id}.fifo"));
                assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
                let reader = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&fifo)
                    .unwrap();
                let writer = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
                // The same FIFO size tether asks for, so the floor is a fair one.
                // SAFETY: fcntl on our own descriptor.
                unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
                self.runc_create_with_stdout(&id, &bundle, Stdio::from(writer));
                let t = Instant::now();
                self.runc_ok(&["start", &id]);
                let got = drain(reader);
                let d = t.elapsed();
                assert_eq!(got, bytes);
                self.runc_delete(&id);
                (rate(d), 0.0)
            }
            "log-floor" => {
                // The CRI log's floor: the container's stdout piped into a bare `dd`
                // that copies it into a file beside the logs (the same two kernel
                // copies, no format, no newline search); its CPU from wait4.
                let file = self.work.join(format!("{id}.floor"));
                let mut fds = [0; 2];
                // SAFETY: pipe2 fills our array with two new descriptors.
                assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                // SAFETY: both were just made and are owned here from now on.
                let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
                // The pipe size tether asks for.
                // SAFETY: fcntl on our own descriptor.
                unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
                // Reaped by wait4 below, for its rusage.
                #[allow(clippy::zombie_processes)]
                let dd = Command::new("dd")
                    .arg(format!("of={}", file.display()))
                    .args(["bs=256K", "iflag=fullblock", "status=none"])
                    .stdin(Stdio::from(r))
                    .spawn()
                    .expect("spawn dd");
                self.runc_create_with_stdout(&id, &bundle, Stdio::from(w));
                let t = Instant::now();
                self.runc_ok(&["start", &id]);
                let mut status = 0;
                // SAFETY: wait4 on our own child into zeroed locals.
                let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
                let waited = unsafe { libc::wait4(dd.id() as i32, &mut status, 0, &mut usage) };
                let d = t.elapsed();
                assert_eq!(waited, dd.id() as i32, "wait4 dd");
                let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
                let cpu = secs(usage.ru_utime) + secs(usage.ru_stime);
                let copied = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                assert_eq!(copied, bytes, "dd copied {copied} of {bytes} bytes");
                let _ = fs::remove_file(&file);
                self.runc_delete(&id);
                (rate(d), per_gb(cpu))
            }
            "tether-log" => {
                // Beside conmon's k8s-file: the output to a CRI log only, no FIFO.
                let (mut c, state) = self.launch_shim("tether", &id, &bundle);
                let log = state.with_extension("ctr.log");
                c.create(&CreateParams {
                    stdin: Some("/dev/null".into()),
                    log: Some(tether_protocol::LogParams {
                        path: log.display().to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .unwrap();
                let shim = Self::tether_pid(&state);
                let cpu0 = cpu_seconds(shim).unwrap();
                let t = Instant::now();
                c.start().unwrap();
                c.wait(None).unwrap();
                let d = t.elapsed();
                let cpu = cpu_seconds(shim).unwrap() - cpu0;
                let logged = fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                assert!(logged >= bytes, "tether logged {logged} of {bytes} bytes");
                Self::tether_remove(&mut c, &state);
                let _ = fs::remove_file(&log);
                (rate(d), per_gb(cpu))
            }
            "tether" | "base" => {
                let (mut c, state) = self.launch_shim(sys, &id, &bundle);
                let created = c
                    .create(&CreateParams {
                        stdin: Some("/dev/null".into()),
                        stderr: Some("/dev/null".into()),
                        ..Default::default()
                    })
                    .unwrap();
                let reader = fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(created.stdio.stdout.unwrap())
                    .unwrap();
                let shim = Self::tether_pid(&state);
                let cpu0 = cpu_seconds(shim).unwrap();
                let t = Instant::now();
                c.start().unwrap();
                let got = drain(reader);
                let d = t.elapsed();
                let cpu = cpu_seconds(shim).unwrap() - cpu0;
                assert_eq!(got, bytes);
                Self::tether_remove(&mut c, &state);
                (rate(d), per_gb(cpu))
            }
            "conmon" => {
                let c = self.conmon_create(&id, &bundle);
                let t = Instant::now();
                self.runc_ok(&["start", &id]);
                let exit_file = c.exit_dir.join(&id);
                let mut cpu = 0.0;
                while !exit_file.exists() {
                    if let Some(s) = cpu_seconds(c.conmon_pid) {
                        cpu = s;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                let d = t.elapsed();
                if let Some(s) = cpu_seconds(c.conmon_pid) {
                    cpu = s;
                }
                let logged = fs::metadata(&c.log).map(|m| m.len()).unwrap_or(0);
                assert!(logged >= bytes, "conmon logged {logged} of {bytes} bytes");
                self.conmon_remove(&c);
                let _ = fs::remove_file(&c.log);
                (rate(d), per_gb(cpu))
            }
            _ => self.ctd_throughput(sys, mb),
        }
    }

    /// PSS of one idle monitor, then private dirty and PSS summed over `n` idle ones.
    fn idle_memory(&mut self, n: usize) {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        for sys in self.with_base(&["tether", "tether-log"]) {
            self.tether_idle_memory(sys, n, &bundle);
        }
        self.peers_idle_memory(n, &bundle);
        let mut binaries = vec![
            ("tether", binary("tether-shim")),
            ("conmon", which("conmon").unwrap()),
            ("containerd", which("containerd-shim-runc-v2").unwrap()),
        ];
        if let Some(b) = &self.baseline {
            binaries.push(("base", b.clone()));
        }
        for (sys, path) in binaries {
            let kb = fs::metadata(path).unwrap().len() as f64 / 1024.0;
            self.record("binary_kb", sys, kb);
        }
    }

    fn tether_idle_memory(&mut self, sys: &str, n: usize, bundle: &Path) {
        let mut shims = Vec::new();
        for i in 0..n {
            let id = self.id("m");
            let shim = if sys == "tether-log" { "tether" } else { sys };
            let (mut c, state) = self.launch_shim(shim, &id, bundle);
            let log = state.with_extension("log");
            let params = if sys == "tether-log" {
                // As conmon is run here: a CRI log, no FIFO.
                CreateParams {
                    stdin: Some("/dev/null".into()),
                    log: Some(tether_protocol::LogParams {
                        path: log.display().to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            } else {
                CreateParams {
                    stdin: Some("/dev/null".into()),
                    stdout: Some(log.display().to_string()),
                    stderr: Some(log.display().to_string()),
                    ..Default::default()
                }
            };
            c.create(&params).unwrap();
            c.start().unwrap();
            if sys == "tether-log" {
                // As CRI-O and Podman run it: the attach socket open as well.
                c.call_value("attach", json!({})).unwrap();
            }
            if i == 0 {
                self.single_figures(sys, Self::tether_pid(&state));
            }
            shims.push((c, state));
        }
        let pids: Vec<i32> = shims.iter().map(|(_, s)| Self::tether_pid(s)).collect();
        self.memory_figures(sys, &pids);
        for (mut c, state) in shims {
            Self::tether_remove(&mut c, &state);
        }
    }

    fn peers_idle_memory(&mut self, n: usize, bundle: &Path) {
        // conmon
        let mut mons = Vec::new();
        for i in 0..n {
            let id = self.id("m");
            let c = self.conmon_create(&id, bundle);
            self.runc_ok(&["start", &id]);
            if i == 0 {
                self.single_figures("conmon", c.conmon_pid);
            }
            mons.push(c);
        }
        let pids: Vec<i32> = mons.iter().map(|c| c.conmon_pid).collect();
        self.memory_figures("conmon", &pids);
        for c in &mons {
            self.conmon_remove(c);
        }
        // containerd-shim-runc-v2
        self.ctd_idle_memory("containerd", n);
    }

    /// The first monitor alone: what one container costs when it is the only one.
    fn single_figures(&mut self, sys: &str, pid: i32) {
        std::thread::sleep(Duration::from_millis(500)); // idle
        let (pss, dirty, rss) = smaps(pid);
        self.record("idle_pss_kb", sys, pss);
        self.record("idle_private_dirty_kb", sys, dirty);
        self.record("idle_rss_kb", sys, rss);
    }

    /// All `pids` idle together: per-container cost at scale, and how often an idle
    /// monitor wakes up (every thread's switches onto a CPU, over WAKE_WINDOW).
    fn memory_figures(&mut self, sys: &str, pids: &[i32]) {
        // Idle: past tether's one-shot timers after a stream's last bytes (its read
        // buffers go back 1 s after it goes quiet), so the last monitors started
        // have nothing in flight either.
        std::thread::sleep(Duration::from_millis(2500));
        let window = if self.quick {
            QUICK_WAKE_WINDOW
        } else {
            WAKE_WINDOW
        };
        let woken = wakeups_over(pids, window);
        let all: Vec<(f64, f64, f64)> = pids.iter().map(|p| smaps(*p)).collect();
        let n = pids.len() as f64;
        self.record("idle_wakeups_per_s", sys, woken as f64 / n / window.as_secs_f64());
        let fds: usize = pids.iter().map(|p| open_fds(*p)).sum();
        self.record("fds_per_container", sys, fds as f64 / n);
        self.record(
            "pss_per_container_kb",
            sys,
            all.iter().map(|m| m.0).sum::<f64>() / n,
        );
        self.record(
            "private_dirty_per_container_kb",
            sys,
            all.iter().map(|m| m.1).sum::<f64>() / n,
        );
        self.record("pss_sum_kb", sys, all.iter().map(|m| m.0).sum::<f64>());
    }

    fn median(&self, figure: &str, sys: &str) -> f64 {
        self.samples
            .get(figure)
            .and_then(|m| m.get(sys))
            .map(|v| stats(v).0)
            .unwrap_or(f64::NAN)
    }

    fn report(&self, took: Duration) -> Value {
        let n_idle = if self.quick { 5 } else { 50 };
        let mut figures = serde_json::Map::new();
        println!(
            "\n{:<34} {:>24} {:>24} {:>24} {:>24} {:>24}{}",
            "figure (median, min-max)",
            "runc / floor",
            "tether",
            "tether + CRI log",
            "conmon (k8s-file)",
            "containerd-shim",
            if self.baseline.is_some() {
                format!(" {:>24}", "base")
            } else {
                String::new()
            }
        );
        for (figure, systems) in &self.samples {
            let mut row = serde_json::Map::new();
            let mut cells = Vec::new();
            for sys in [
                "runc",
                "floor",
                "tether",
                "tether-log",
                "conmon",
                "containerd",
                "base",
            ] {
                if let Some(v) = systems.get(sys) {
                    let (med, lo, hi) = stats(v);
                    row.insert(
                        sys.into(),
                        json!({"median": med, "min": lo, "max": hi, "samples": v}),
                    );
                    cells.push((sys, format!("{med:.2} ({lo:.2}-{hi:.2})")));
                }
            }
            let cell = |names: &[&str]| {
                cells
                    .iter()
                    .find(|(s, _)| names.contains(s))
                    .map(|(_, c)| c.clone())
                    .unwrap_or_else(|| "-".into())
            };
            println!(
                "{:<34} {:>24} {:>24} {:>24} {:>24} {:>24}{}",
                figure,
                cell(&["runc", "floor"]),
                cell(&["tether"]),
                cell(&["tether-log"]),
                cell(&["conmon"]),
                cell(&["containerd"]),
                if self.baseline.is_some() {
                    format!(" {:>24}", cell(&["base"]))
                } else {
                    String::new()
                }
            );
            figures.insert(figure.clone(), Value::Object(row));
        }
        let m = |f: &str, s: &str| self.median(f, s);
        // (name, ratio, target, lower is better)
        let ratios = [
            (
                "idle PSS, 1 container: tether/conmon",
                m("idle_pss_kb", "tether") / m("idle_pss_kb", "conmon"),
                0.5,
                true,
            ),
            (
                "idle PSS, 1 container: tether/containerd",
                m("idle_pss_kb", "tether") / m("idle_pss_kb", "containerd"),
                0.1,
                true,
            ),
            (
                "idle private dirty, 1 container: tether/conmon",
                m("idle_private_dirty_kb", "tether") / m("idle_private_dirty_kb", "conmon"),
                0.5,
                true,
            ),
            (
                "private dirty per container: tether/conmon",
                m("private_dirty_per_container_kb", "tether") / m("private_dirty_per_container_kb", "conmon"),
                0.5,
                true,
            ),
            (
                "private dirty per container: tether/containerd",
                m("private_dirty_per_container_kb", "tether")
                    / m("private_dirty_per_container_kb", "containerd"),
                0.1,
                true,
            ),
            (
                "private dirty per container: tether / 100 kB",
                m("private_dirty_per_container_kb", "tether") / 100.0,
                1.0,
                true,
            ),
            (
                "same, CRI log + attach socket: tether / 110 kB",
                m("private_dirty_per_container_kb", "tether-log") / 110.0,
                1.0,
                true,
            ),
            (
                "idle wakeups per second: tether",
                m("idle_wakeups_per_s", "tether"),
                0.0,
                true,
            ),
            (
                "same, CRI log + attach socket: tether",
                m("idle_wakeups_per_s", "tether-log"),
                0.0,
                true,
            ),
            (
                "launch, exec -> socket ready: tether / 1 ms",
                m("launch_ms", "tether"),
                1.0,
                true,
            ),
            (
                "launch beyond the exec floor: tether / 1 ms",
                m("launch_ms", "tether") - m("exec_floor_ms", "tether"),
                1.0,
                true,
            ),
            (
                "start: tether/bare runc",
                m("start_ms", "tether") / m("start_ms", "runc"),
                1.02,
                true,
            ),
            (
                "start: tether/conmon",
                m("start_ms", "tether") / m("start_ms", "conmon"),
                1.0,
                true,
            ),
            (
                "start: tether/containerd",
                m("start_ms", "tether") / m("start_ms", "containerd"),
                1.0,
                true,
            ),
            (
                "exit: tether/conmon",
                m("exit_ms", "tether") / m("exit_ms", "conmon"),
                0.5,
                true,
            ),
            (
                "exit: tether/containerd",
                m("exit_ms", "tether") / m("exit_ms", "containerd"),
                1.0,
                true,
            ),
            (
                "exit: tether median / 0.25 ms",
                m("exit_ms", "tether") / 0.25,
                1.0,
                true,
            ),
            (
                "exec: tether/bare runc",
                m("exec_ms", "tether") / m("exec_ms", "runc"),
                1.0,
                true,
            ),
            (
                "throughput: tether/floor",
                m("throughput_mbps", "tether") / m("throughput_mbps", "floor"),
                0.9,
                false,
            ),
            (
                "CPU per GB: tether/conmon",
                m("cpu_s_per_gb", "tether") / m("cpu_s_per_gb", "conmon"),
                0.25,
                true,
            ),
            (
                "CRI log CPU per GB: tether/two-copy floor",
                m("cpu_s_per_gb", "tether-log") / m("log_floor_cpu_s_per_gb", "floor"),
                1.25,
                true,
            ),
            (
                "CRI log throughput: tether/conmon",
                m("throughput_mbps", "tether-log") / m("throughput_mbps", "conmon"),
                1.0,
                false,
            ),
            (
                "CRI log CPU per GB: tether/conmon",
                m("cpu_s_per_gb", "tether-log") / m("cpu_s_per_gb", "conmon"),
                0.25,
                true,
            ),
            (
                "private dirty per container, with a log: tether/conmon",
                m("private_dirty_per_container_kb", "tether-log")
                    / m("private_dirty_per_container_kb", "conmon"),
                0.5,
                true,
            ),
        ];
        if self.baseline.is_some() {
            println!("\n{:<48} {:>8}", "tether / base (same run)", "ratio");
            for f in [
                "idle_private_dirty_kb",
                "private_dirty_per_container_kb",
                "idle_pss_kb",
                "binary_kb",
                "start_ms",
                "exit_ms",
                "exec_ms",
                "throughput_mbps",
                "cpu_s_per_gb",
            ] {
                println!("{f:<48} {:>8.3}", m(f, "tether") / m(f, "base"));
            }
        }
        let rs = report_ratios("ratio", &ratios);
        let uname = Command::new("uname")
            .arg("-r")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        println!(
            "\n{} idle containers per system for the per-container figures; state on {}; took {:.0} s",
            n_idle,
            state_fs(&self.work),
            took.as_secs_f64()
        );
        json!({
            "quick": self.quick,
            "state_fs": state_fs(&self.work),
            "idle_containers": n_idle,
            "kernel": uname,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "took_s": took.as_secs_f64(),
            "figures": figures,
            "ratios": rs,
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        kill_leftovers(&self.work); // containers and shims only
    }
}

/// Prints (name, value, target, lower is better) rows under `title`, each marked met
/// or not; returns them for results.json.
fn report_ratios(title: &str, ratios: &[(&str, f64, f64, bool)]) -> Vec<Value> {
    println!("\n{title:<48} {:>8} {:>8}  met", "value", "target");
    let mut rs = Vec::new();
    for &(name, value, target, lower) in ratios {
        let met = if lower { value <= target } else { value >= target };
        println!(
            "{name:<48} {value:>8.3} {}{target:>7.2}  {}",
            if lower { "<=" } else { ">=" },
            if met { "yes" } else { "NO" }
        );
        rs.push(
            json!({"name": name, "value": value, "target": target, "lower_is_better": lower, "met": met}),
        );
    }
    rs
}

/// Kills `pid` and waits until `done()` says the daemon side holds the status, polling
/// `fd` (the daemon side's channel). Returns ms from the pidfd's readiness to done.
fn time_exit(pid: i32, fd: RawFd, mut done: impl FnMut() -> bool) -> f64 {
    let pidfd = pidfd_open(pid);
    kill(pid, libc::SIGKILL);
    let mut died: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no exit seen for pid {pid}");
        let fds: Vec<RawFd> = if died.is_none() {
            vec![pidfd.as_raw_fd(), fd]
        } else {
            vec![fd]
        };
        let r = readable(&fds, 1000);
        let now = Instant::now();
        if died.is_none() && r[0] {
            died = Some(now);
        }
        let chan_ready = if fds.len() == 2 { r[1] } else { r[0] };
        if chan_ready && done() {
            let t = Instant::now();
            return ms(t.duration_since(died.unwrap_or(t)));
        }
    }
}

/// Reads a non-blocking FIFO to EOF, counting bytes.
fn drain(f: fs::File) -> u64 {
    let fd = f.as_raw_fd();
    // SAFETY: clearing O_NONBLOCK on our own descriptor.
    unsafe {
        libc::fcntl(
            fd,
            libc::F_SETFL,
            libc::fcntl(fd, libc::F_GETFL) & !libc::O_NONBLOCK,
        )
    };
    drain_blocking(f)
}

fn drain_blocking(mut r: impl Read) -> u64 {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("read: {e}"),
        }
    }
}

struct Inotify {
    fd: OwnedFd,
}

impl Inotify {
    fn watch(dir: &Path) -> Inotify {
        // SAFETY: inotify_init1 returns a new descriptor.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(fd >= 0);
        let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid fd and NUL-terminated path.
        let w = unsafe {
            libc::inotify_add_watch(
                fd,
                path.as_ptr(),
                libc::IN_CLOSE_WRITE | libc::IN_MOVED_TO | libc::IN_CREATE,
            )
        };
        assert!(w >= 0);
        // SAFETY: fresh descriptor.
        Inotify {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }
    }

    fn drain(&self) {
        let mut buf = [0u8; 4096];
        // SAFETY: reading into our buffer from a non-blocking fd.
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    }
}

/// A bar per ratio, with its target marked.
fn svg(report: &Value) -> String {
    let ratios = report["ratios"].as_array().cloned().unwrap_or_default();
    let (w, row, left) = (760.0, 26.0, 330.0);
    let h = 40.0 + row * ratios.len() as f64;
    let max = ratios
        .iter()
        .flat_map(|r| {
            [
                r["value"].as_f64().unwrap_or(0.0),
                r["target"].as_f64().unwrap_or(0.0),
            ]
        })
        .filter(|v| v.is_finite())
        .fold(1.0f64, f64::max)
        .min(4.0);
    let x = |v: f64| left + (v.min(max) / max) * (w - left - 60.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"18\" font-weight=\"bold\">tether ratios (bar) vs targets (line); green: target met</text>\n"
    );
    for (i, r) in ratios.iter().enumerate() {
        let y = 30.0 + row * i as f64;
        let v = r["value"].as_f64().unwrap_or(f64::NAN);
        let t = r["target"].as_f64().unwrap_or(1.0);
        let color = if r["met"].as_bool().unwrap_or(false) {
            "#3a3"
        } else {
            "#c33"
        };
        let name = r["name"]
            .as_str()
            .unwrap_or("")
            .replace('&', "&amp;")
            .replace('<', "&lt;");
        let bar = if v.is_finite() { x(v) - left } else { 0.0 };
        s += &format!(
            "<text x=\"10\" y=\"{ty}\">{name}</text><rect x=\"{left}\" y=\"{y}\" width=\"{bar:.1}\" height=\"16\" fill=\"{color}\"/>\
             <line x1=\"{tx:.1}\" y1=\"{y0}\" x2=\"{tx:.1}\" y2=\"{y1}\" stroke=\"#000\" stroke-width=\"2\"/>\
             <text x=\"{vx:.1}\" y=\"{ty}\">{v:.3}</text>\n",
            ty = y + 12.0,
            tx = x(t),
            y0 = y - 2.0,
            y1 = y + 18.0,
            vx = x(v.max(t)) + 6.0,
        );
    }
    s + "</svg>\n"
}

/// Start latency on a second runtime (`--youki PATH`): bare youki `create` + `start`
/// beside tether over youki, each run interleaved with the other systems' start runs.
/// A section of its own so that the main table keeps its columns.
struct SecondRuntime {
    /// The runtime's file name, for the table (`youki`).
    name: String,
    bin: PathBuf,
    /// Its `--root`, on the bench's tmpfs.
    root: PathBuf,
    log: PathBuf,
    /// "bare" / "tether" -> start latency samples, ms.
    samples: BTreeMap<&'static str, Vec<f64>>,
}

impl SecondRuntime {
    fn new(bin: PathBuf, work: &Path) -> SecondRuntime {
        let name = bin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let ok = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{} does not run: scripts/setup --youki builds it",
            bin.display()
        );
        let root = work.join(&name);
        fs::create_dir_all(&root).unwrap();
        let log = work.join(format!("{name}.log"));
        SecondRuntime {
            name,
            bin,
            root,
            log,
            samples: BTreeMap::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root").arg(&self.root).arg("--log").arg(&self.log);
        c
    }

    /// One bare run and one through tether, each container removed after.
    fn start_latency(&mut self, b: &mut Bench) {
        let bundle = b.bundle("sleep", &["sleep", "1000"]);
        let id = b.id("y");
        let t = Instant::now();
        bare_create_start(&|| self.cmd(), &self.log, &b.work, &id, &bundle);
        self.samples.entry("bare").or_default().push(ms(t.elapsed()));
        let _ = self.cmd().args(["delete", "--force", &id]).output();

        let id = b.id("y");
        let t = Instant::now();
        let flags = [
            "--runtime".as_ref(),
            self.bin.as_os_str(),
            "--runtime-root".as_ref(),
            self.root.as_os_str(),
        ];
        let (mut c, state) = b.launch_shim_with("tether", &id, &bundle, &flags);
        c.create(&null_stdio()).unwrap();
        c.start().unwrap();
        self.samples.entry("tether").or_default().push(ms(t.elapsed()));
        Bench::tether_remove(&mut c, &state);
    }

    /// Prints the row and returns it for results.json.
    fn report(&self) -> Value {
        let cell = |sys: &str| {
            let (med, lo, hi) = stats(self.samples.get(sys).map(Vec::as_slice).unwrap_or(&[]));
            (
                med,
                format!("{med:.2} ({lo:.2}-{hi:.2})"),
                json!({"median": med, "min": lo, "max": hi}),
            )
        };
        let (bare, bare_text, bare_json) = cell("bare");
        let (tether, tether_text, tether_json) = cell("tether");
        let head = format!("start over {} (same run)", self.name);
        println!(
            "\n{head:<34} {:>24} {:>24} {:>14}\n{:<34} {bare_text:>24} {tether_text:>24} {:>14.3}",
            format!("bare {}", self.name),
            "tether",
            "tether/bare",
            "start_ms",
            tether / bare
        );
        json!({"runtime": self.name, "start_ms": {"bare": bare_json, "tether": tether_json}, "tether_over_bare": tether / bare})
    }

    /// Removes every container left under its root (an interrupted run's).
    fn remove_all(&self) {
        for e in fs::read_dir(&self.root).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let _ = self.cmd().args(["delete", "--force", &id]).output();
        }
    }
}

impl Drop for SecondRuntime {
    fn drop(&mut self) {
        self.remove_all();
    }
}
