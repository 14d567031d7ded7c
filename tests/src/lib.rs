//! Helpers shared by the integration tests, the demo and the benchmark: busybox
//! bundles, launching real shims, and cleaning up after them.
//!
//! These tests need root and runc. They never skip: without them they fail, saying
//! what is missing (scripts/test installs what is needed).

use serde_json::{json, Value};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tether_protocol::{Client, CreateParams, Event};

pub use tether_protocol;

pub mod containerd;
pub mod ctr_env;
pub mod ttrpc;

/// Fails the test (never skips) when root or runc is missing.
pub fn require_root_and_runc() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these integration tests need root (CI runs as root); run scripts/test as root"
    );
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        runc.map(|o| o.status.success()).unwrap_or(false),
        "runc is not installed: run scripts/test (it installs runc, busybox-static and socat)"
    );
}

/// The workspace's target dir, found from the running test binary.
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/test-hash -> target/debug
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A binary of the workspace (`tether-shim`, `tetherctl`), built by `cargo build`.
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build` first (scripts/test does)",
        path.display()
    );
    path
}

/// Where busybox lives on Debian (busybox-static).
fn busybox() -> PathBuf {
    for p in ["/bin/busybox", "/usr/bin/busybox"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("busybox is not installed: run scripts/test (it installs busybox-static)");
}

/// Makes a busybox rootfs at `dir` (bin/busybox and a link per applet).
pub fn make_rootfs(dir: &Path) -> std::io::Result<()> {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let bb = busybox();
    fs::copy(&bb, dir.join("bin/busybox"))?;
    let list = Command::new(&bb).arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dir.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(dir.join("etc/group"), "root:x:0:\n")?;
    Ok(())
}

/// One busybox rootfs shared (read-only) by every bundle of a test run.
pub fn shared_rootfs() -> PathBuf {
    let dir = std::env::temp_dir().join("tether-test-rootfs");
    if dir.join("bin/sh").exists() {
        return dir;
    }
    // Build it aside and rename: concurrent test binaries race here.
    let tmp = std::env::temp_dir().join(format!("tether-test-rootfs.{}.{}", std::process::id(), unique()));
    make_rootfs(&tmp).expect("make busybox rootfs");
    if fs::rename(&tmp, &dir).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    dir
}

fn unique() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A unique name for this test process: `prefix-PID-N`.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), unique())
}

/// An OCI bundle around the shared busybox rootfs.
pub struct BundleSpec {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub terminal: bool,
    /// No pid namespace of its own: exec'd processes can outlive init.
    pub shared_pid_ns: bool,
    pub memory_limit: Option<i64>,
    pub rootfs: Option<PathBuf>,
}

impl BundleSpec {
    pub fn new(args: &[&str]) -> BundleSpec {
        BundleSpec {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                "TERM=xterm".into(),
            ],
            terminal: false,
            shared_pid_ns: false,
            memory_limit: None,
            rootfs: None,
        }
    }

    pub fn terminal(mut self, on: bool) -> Self {
        self.terminal = on;
        self
    }

    pub fn shared_pid_ns(mut self) -> Self {
        self.shared_pid_ns = true;
        self
    }

    pub fn memory_limit(mut self, bytes: i64) -> Self {
        self.memory_limit = Some(bytes);
        self
    }

    pub fn rootfs(mut self, dir: PathBuf) -> Self {
        self.rootfs = Some(dir);
        self
    }

    /// config.json, modeled on `runc spec` with a read-only rootfs.
    pub fn config(&self) -> Value {
        let rootfs = self.rootfs.clone().unwrap_or_else(shared_rootfs);
        let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
        let mut namespaces = vec![
            json!({"type":"ipc"}),
            json!({"type":"uts"}),
            json!({"type":"mount"}),
            json!({"type":"network"}),
        ];
        if !self.shared_pid_ns {
            namespaces.push(json!({"type":"pid"}));
        }
        let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
        if let Some(limit) = self.memory_limit {
            resources["memory"] = json!({"limit": limit, "swap": limit});
        }
        json!({
            "ociVersion": "1.0.2-dev",
            "process": {
                "terminal": self.terminal,
                "user": {"uid": 0, "gid": 0},
                "args": self.args,
                "env": self.env,
                "cwd": "/",
                "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": rootfs, "readonly": true},
            "hostname": "tether",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
            ],
            "linux": {
                "resources": resources,
                "namespaces": namespaces,
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        })
    }

    /// Writes the bundle at `dir`.
    pub fn write(&self, dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).expect("bundle dir");
        fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&self.config()).expect("json"),
        )
        .expect("config.json");
        dir.to_path_buf()
    }
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let dir = std::env::temp_dir().join(unique_id(prefix));
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A shim launched with `tether-shim start`, cleaned up on drop (container deleted,
/// shim gone, runc state gone) whatever the test did.
pub struct Shim {
    pub id: String,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub bundle: PathBuf,
    pub work: TempDir,
}

impl Shim {
    /// A bundle from `spec` and a shim for it.
    pub fn launch(spec: &BundleSpec) -> Shim {
        Self::launch_with(spec, &[])
    }

    pub fn launch_with(spec: &BundleSpec, extra: &[&str]) -> Shim {
        require_root_and_runc();
        let work = TempDir::new("tether-it");
        let id = unique_id("t");
        let bundle = spec.write(&work.path().join("bundle"));
        let state_dir = work.path().join("state");
        let out = Command::new(binary("tether-shim"))
            .args(["start", "--id", &id, "--bundle"])
            .arg(&bundle)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(extra)
            .output()
            .expect("run tether-shim start");
        assert!(
            out.status.success(),
            "tether-shim start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert_eq!(socket, state_dir.join("shim.sock"));
        Shim {
            id,
            socket,
            state_dir,
            bundle,
            work,
        }
    }

    pub fn client(&self) -> Client {
        let c = Client::connect(&self.socket).expect("connect to shim");
        c.set_timeout(Some(Duration::from_secs(30))).expect("timeout");
        c
    }

    pub fn pid(&self) -> i32 {
        fs::read_to_string(self.state_dir.join("shim.pid"))
            .expect("shim.pid")
            .trim()
            .parse()
            .expect("pid")
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.socket) {
            let _ = c.set_timeout(Some(Duration::from_secs(10)));
            let _ = c.delete(None, true);
        }
        if let Ok(pid) = fs::read_to_string(self.state_dir.join("shim.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: signalling a pid we started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .output();
    }
}

/// Reads a FIFO until EOF (opened non-blocking, then blocking reads).
pub fn read_fifo_to_end(path: &Path, timeout: Duration) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .expect("open fifo");
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut f = f;
    let mut buf = [0u8; 65536];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "no EOF on {} within {timeout:?}; got {:?}",
                    path.display(),
                    String::from_utf8_lossy(&out)
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("read {}: {e}", path.display()),
        }
    }
}

/// True if `pid` is gone or a zombie (this machine's PID 1 reaps slowly).
pub fn pid_gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
                == Some('Z')
        }
    }
}

/// Polls `cond` until true or `timeout`; panics with `what` on timeout.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Create params with all three streams on /dev/null.
pub fn null_stdio() -> CreateParams {
    CreateParams {
        stdin: Some("/dev/null".into()),
        stdout: Some("/dev/null".into()),
        stderr: Some("/dev/null".into()),
        ..Default::default()
    }
}

/// Events from `c` until one satisfies `stop` (that one included).
pub fn events_until(c: &mut Client, mut stop: impl FnMut(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = c.next_event().expect("event");
        let done = stop(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

/// A fault-injection runtime from tests/fault-runtimes, copied into `work` (its
/// side files, `NAME.pid` or `NAME.argv`, land beside the copy).
pub fn fault_runtime(name: &str, work: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fault-runtimes")
        .join(name);
    let dst = work.join(name);
    fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    dst
}
