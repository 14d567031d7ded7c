//! One test's world under containerd: a private containerd whose runtime is
//! containerd-shim-tether-v2 by absolute path, with the shims' state in the test's
//! own directory, and what the tests read back (`ctr events`, shim pids, leftovers).

use crate::containerd::*;
use crate::{binary, pid_gone, shared_rootfs, unique_id, wait_until, TempDir};
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// containerd's own runc shim (containerd-shim-runc-v2), the reference.
pub const STOCK_RUNTIME: &str = "io.containerd.runc.v2";

pub struct Env {
    pub work: TempDir,
    pub ctd: Containerd,
    pub runtime: String,
    pub rootfs: String,
    pub state_root: PathBuf,
}

impl Env {
    pub fn start() -> Env {
        Self::in_dir(TempDir::new("tether-ctd"), &[])
    }

    /// A containerd in `work`; `env` is added to its environment (and its shims').
    pub fn in_dir(work: TempDir, env: &[(&str, &str)]) -> Env {
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
    pub fn run(&self, extra: &[&str], id: &str, args: &[&str]) -> Command {
        self.run_on(&self.runtime, extra, id, args)
    }

    /// [`Env::run`] on another runtime: containerd's own shim is
    /// [`STOCK_RUNTIME`].
    pub fn run_on(&self, runtime: &str, extra: &[&str], id: &str, args: &[&str]) -> Command {
        let mut c = self.ctd.ctr();
        // `--rootfs` is a switch: the rootfs directory is the first argument.
        c.args(["run", "--runtime", runtime])
            .args(extra)
            .args(["--rootfs", &self.rootfs, id])
            .args(args);
        c
    }

    /// Where detached tasks' FIFOs go (ctr removes them only at `task rm`).
    pub fn fifo_dir(&self) -> String {
        self.work.path().join("fifo").display().to_string()
    }

    /// A detached `sleep` container; its init pid.
    pub fn run_sleeper(&self, id: &str) -> i32 {
        let runtime = Path::new(&self.runtime);
        let extra = ["--fifo-dir", &self.fifo_dir()];
        self.ctd
            .run_detached_sleep(Some(runtime), &extra, Path::new(&self.rootfs), id);
        self.ctd.task_pid(id)
    }

    pub fn task_pid(&self, id: &str) -> i32 {
        self.ctd.task_pid(id)
    }

    pub fn state_dir(&self, id: &str) -> PathBuf {
        self.state_root.join(&self.ctd.namespace).join(id)
    }

    pub fn shim_pid(&self, id: &str) -> i32 {
        fs::read_to_string(self.state_dir(id).join("shim.pid"))
            .expect("shim.pid")
            .trim()
            .parse()
            .expect("pid")
    }

    pub fn runc_state(&self, id: &str) -> PathBuf {
        Path::new("/run/containerd/runc")
            .join(&self.ctd.namespace)
            .join(id)
    }

    /// The task's shim address (`unix:///run/containerd/s/HASH`).
    pub fn address(&self, id: &str) -> String {
        fs::read_to_string(self.ctd.bundle(id).join("address")).expect("bundle address file")
    }

    /// `ctr events` in the background (subscribed by the time this returns).
    pub fn events(&self) -> Events {
        Events {
            child: self.ctd.ctr_events(Duration::from_millis(500)),
        }
    }

    /// Nothing of task `id` is left: no shim, no runtime state, no shim state, no
    /// socket, nothing mounted.
    pub fn assert_clean(&self, id: &str, socket: Option<&str>) {
        wait_until(Duration::from_secs(10), &format!("{id}'s shim to exit"), || {
            shim_of(&self.ctd.namespace, id).is_none()
        });
        // containerd runs the shim's `delete` once the shim's connection is gone, in
        // the background: what that cleans may take a moment after the shim's exit.
        wait_until(
            Duration::from_secs(10),
            &format!("runc state and shim state dir of {id} to go"),
            || !self.runc_state(id).exists() && !self.state_dir(id).exists(),
        );
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
pub fn shim_of(ns: &str, id: &str) -> Option<i32> {
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

pub struct Events {
    child: Child,
}

impl Events {
    /// Lines (`TIME NS TOPIC JSON`) read until `done` holds of them, or 20 s.
    pub fn until(&mut self, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
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
pub fn task_topics(lines: &[String], id: &str) -> Vec<String> {
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

pub fn has_topic(lines: &[String], id: &str, topic: &str) -> bool {
    task_topics(lines, id).iter().any(|t| t == topic)
}

/// Imports the busybox image; its name.
pub fn import_image(e: &Env) -> &'static str {
    let name = "tether.test/busybox:latest";
    let tar = busybox_image_tar(&e.work.path().join("image"), name);
    e.ctd.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
    name
}

/// A PTY of the given size: (master, slave); the master is close-on-exec.
pub fn openpty(rows: u16, cols: u16) -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
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
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(m),
            std::os::fd::OwnedFd::from_raw_fd(s),
        )
    }
}

/// Runs `cmd` (ctr) with `slave` as its stdio and controlling terminal, as from a
/// shell.
pub fn on_terminal(cmd: &mut Command, slave: std::os::fd::OwnedFd) {
    use std::os::unix::process::CommandExt;
    cmd.stdin(std::process::Stdio::from(slave.try_clone().expect("dup slave")))
        .stdout(std::process::Stdio::from(slave.try_clone().expect("dup slave")))
        .stderr(std::process::Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
}
