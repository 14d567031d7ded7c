//! Helpers shared by the integration tests, the demo and the benchmark: busybox
//! bundles, launching real shims, and cleaning up after them.
//!
//! These tests need root and an OCI runtime: runc, or the one `TETHER_TEST_RUNTIME`
//! names. They never skip: without them they fail, saying what is missing
//! (scripts/test installs what is needed).

use serde_json::{json, Value};
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tether_protocol::{Client, CreateParams, Event};

pub use tether_protocol;

pub mod containerd;
pub mod ctr_env;
pub mod ttrpc;

/// The OCI runtime the integration tests run under: `TETHER_TEST_RUNTIME` (a binary
/// name looked up in PATH, or a path), runc when unset. Every test's shim is started
/// with `--runtime` set to it, and the helpers' cleanup calls it.
pub fn test_runtime() -> String {
    match std::env::var("TETHER_TEST_RUNTIME") {
        Ok(rt) if rt.contains('/') => std::path::absolute(&rt)
            .map(|p| p.display().to_string())
            .unwrap_or(rt),
        Ok(rt) if !rt.is_empty() => rt,
        _ => "runc".to_string(),
    }
}

/// The test runtime's file name (`runc`, `youki`): what the shim's messages call it.
pub fn test_runtime_name() -> String {
    let rt = test_runtime();
    rt.rsplit('/').next().unwrap_or(&rt).to_string()
}

/// A command line of the test runtime (`runc state ID`, `youki delete --force ID`).
pub fn runtime_command() -> Command {
    Command::new(test_runtime())
}

/// Fails the test (never skips) when root or the test runtime is missing.
pub fn require_root_and_runtime() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these integration tests need root (CI runs as root); run scripts/test as root"
    );
    let rt = test_runtime();
    let version = runtime_command().arg("--version").output();
    assert!(
        version.as_ref().map(|o| o.status.success()).unwrap_or(false),
        "the OCI runtime {rt} (TETHER_TEST_RUNTIME, runc when unset) does not run ({}): \
         run scripts/test (scripts/setup installs runc, youki with --youki, crun with --crun)",
        match &version {
            Ok(o) => format!("--version {}", o.status),
            Err(e) => e.to_string(),
        }
    );
}

/// The old name of [`require_root_and_runtime`], kept for tests written before the
/// runtime could be chosen.
pub fn require_root_and_runc() {
    require_root_and_runtime()
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

    pub fn args(mut self, args: Vec<String>) -> Self {
        self.args = args;
        self
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

/// A shim launched with `tether-shim start` on the test runtime, cleaned up on drop
/// (container deleted, shim gone, the runtime's state gone) whatever the test did.
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

    /// `extra` goes after `--runtime TEST_RUNTIME`: a `--runtime` in it wins.
    pub fn launch_with(spec: &BundleSpec, extra: &[&str]) -> Shim {
        let work = TempDir::new("tether-it");
        let state_dir = work.path().join("state");
        Self::launch_at(spec, work, state_dir, &unique_id("t"), extra)
    }

    /// A shim with its state dir at `state_dir` (a tmpfs of the test's, say) and id
    /// `id`; `work` holds the bundle and is removed with the shim.
    pub fn launch_at(spec: &BundleSpec, work: TempDir, state_dir: PathBuf, id: &str, extra: &[&str]) -> Shim {
        require_root_and_runtime();
        let id = id.to_string();
        let bundle = spec.write(&work.path().join("bundle"));
        let out = Command::new(binary("tether-shim"))
            .args(["start", "--id", &id, "--bundle"])
            .arg(&bundle)
            .arg("--state-dir")
            .arg(&state_dir)
            .args(["--runtime", &test_runtime()])
            .args(extra)
            // Absolute for the fault-injection runtimes, which hand it on.
            .env("TETHER_TEST_RUNTIME", test_runtime())
            .output()
            .expect("run tether-shim start");
        assert!(
            out.status.success(),
            "tether-shim start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let socket = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if state_dir.join("shim.sock").as_os_str().len() <= 107 {
            assert_eq!(socket, state_dir.join("shim.sock"));
        }
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
        let _ = runtime_command().args(["delete", "--force", &self.id]).output();
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

/// Polls `cond` until true or `timeout`; false on timeout, for a caller whose failure
/// message needs what it saw at the end.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
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

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop: a disk that
/// fills up on demand.
pub struct Tmpfs {
    pub dir: TempDir,
}

impl Tmpfs {
    pub fn mount(prefix: &str, size: &str) -> Tmpfs {
        require_root_and_runc();
        let dir = TempDir::new(prefix);
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "cannot mount a tmpfs on {}", dir.path().display());
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system until it refuses more (a file named `fill`).
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = fs::File::create(self.path().join("fill")).expect("fill file");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }

    /// Gives the space back.
    pub fn unfill(&self) {
        fs::remove_file(self.path().join("fill")).expect("remove fill file");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A `/proc/PID/status` figure in kB (VmRSS, VmHWM).
pub fn proc_status_kb(pid: i32, key: &str) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// How many fds `pid` holds.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).expect("proc fd").count()
}

/// Lines the soak test's exec K prints (`seq 1 N`): varied, up to ~300 kB.
pub fn soak_lines_of(k: u64) -> u64 {
    1000 + (k * 7919) % 50_000
}

/// busybox awk that writes about `bytes` of lines of 0 to 100 KiB (each `i:` and a
/// run of letters), every third line to stderr; [`MixedOutput`] computes the same.
pub fn mixed_output_args(bytes: u64) -> Vec<String> {
    let script = format!(
        "BEGIN{{s=\"abcdefghijklmnopqrstuvwxyz0123456789\"; while(length(s)<110000) s=s s; total=0; \
         for(i=0; total<{bytes}; i++){{len=(i*7919)%102400; line=i \":\" substr(s,1,len); \
         if(i%3==0){{print line > \"/dev/stderr\"}} else {{print line}}; total+=length(line)+1}}}}"
    );
    vec!["awk".to_string(), script]
}

/// Length and FNV-1a of one stream, fed as it comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSum {
    pub len: u64,
    pub hash: u64,
}

impl Default for StreamSum {
    fn default() -> Self {
        StreamSum {
            len: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }
}

impl StreamSum {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        for b in bytes {
            self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// What [`mixed_output_args`] writes: (stdout, stderr).
pub fn mixed_output_sums(bytes: u64) -> (StreamSum, StreamSum) {
    let mut s = String::from("abcdefghijklmnopqrstuvwxyz0123456789");
    while s.len() < 110_000 {
        s = s.clone() + &s;
    }
    let (mut out, mut err) = (StreamSum::default(), StreamSum::default());
    let mut total = 0u64;
    let mut i = 0u64;
    while total < bytes {
        let len = ((i * 7919) % 102_400) as usize;
        let line = format!("{i}:{}\n", &s[..len]);
        if i.is_multiple_of(3) {
            err.feed(line.as_bytes());
        } else {
            out.feed(line.as_bytes());
        }
        total += line.len() as u64;
        i += 1;
    }
    (out, err)
}

/// Reads CRI log files in order and rejoins each stream: a `P` record's content
/// goes on in the next record of its stream, an `F` record ends a line. Returns
/// (stdout, stderr, records seen).
pub fn rejoin_cri_logs(files: &[PathBuf]) -> (StreamSum, StreamSum, u64) {
    let (mut out, mut err) = (StreamSum::default(), StreamSum::default());
    let mut records = 0;
    for file in files {
        let bytes = fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for rec in bytes.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            records += 1;
            let mut parts = rec.splitn(4, |b| *b == b' ');
            let (Some(_ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                panic!(
                    "bad record in {}: {:?}",
                    file.display(),
                    String::from_utf8_lossy(rec)
                );
            };
            let content = parts.next().unwrap_or(b"");
            let sum = match stream {
                b"stdout" => &mut out,
                b"stderr" => &mut err,
                other => panic!(
                    "bad stream {:?} in {}",
                    String::from_utf8_lossy(other),
                    file.display()
                ),
            };
            sum.feed(content);
            match tag {
                b"F" => sum.feed(b"\n"),
                b"P" => {}
                other => panic!(
                    "bad tag {:?} in {}",
                    String::from_utf8_lossy(other),
                    file.display()
                ),
            }
        }
    }
    (out, err, records)
}

/// Busy loops that keep the machine loaded while they live (`sh -c 'while :; do :;
/// done'`), killed on drop: the "under load" half of a test.
pub struct Hogs(Vec<std::process::Child>);

impl Hogs {
    pub fn start(n: usize) -> Hogs {
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("start a CPU hog")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Reads `path` (a FIFO) to its end at about `bytes_per_sec`: a slow reader.
pub fn read_fifo_slowly(path: &Path, bytes_per_sec: usize) -> Vec<u8> {
    use std::io::Read;
    let mut f = fs::File::open(path).expect("open fifo");
    let chunk = 16 << 10;
    let pause = Duration::from_secs_f64(chunk as f64 / bytes_per_sec as f64);
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!("read {}: {e}", path.display()),
        }
        std::thread::sleep(pause);
    }
}

/// Reads SEQPACKET packets until EOF: (stdout, stderr, the shim's last word if any).
pub fn read_attach(fd: &OwnedFd) -> (StreamSum, StreamSum, Option<String>) {
    let (mut out, mut err) = (StreamSum::default(), StreamSum::default());
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: recv into our own buffer on a socket we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 0, "recv: {}", std::io::Error::last_os_error());
        if n == 0 {
            return (out, err, None);
        }
        let n = n as usize;
        assert!(n - 1 <= 8192, "a packet of {} bytes", n - 1);
        match buf[0] {
            2 => out.feed(&buf[1..n]),
            3 => err.feed(&buf[1..n]),
            4 => return (out, err, Some(String::from_utf8_lossy(&buf[1..n]).into_owned())),
            other => panic!("unexpected stream byte {other}"),
        }
    }
}

pub fn connect_seqpacket(path: &str) -> OwnedFd {
    // SAFETY: plain socket calls on a descriptor we own from here on.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let owned = OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as u16;
        for (i, b) in path.bytes().enumerate() {
            addr.sun_path[i] = b as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sockaddr_un>() as u32;
        let r = libc::connect(fd, (&addr as *const libc::sockaddr_un).cast(), len);
        assert_eq!(r, 0, "connect {path}: {}", std::io::Error::last_os_error());
        owned
    }
}

/// A copy of tether-shim whose build tag (and hand-over versions) are patched: the
/// "other version" of the upgrade tests and bench (see shim/src/handover.rs).
pub fn patched_shim(dir: &Path, tag: &str, accepts: &str) -> PathBuf {
    patched_binary("tether-shim", dir, tag, accepts)
}

/// [`patched_shim`] of another of the workspace's binaries (`containerd-shim-tether-v2`).
pub fn patched_binary(name: &str, dir: &Path, tag: &str, accepts: &str) -> PathBuf {
    let mut bytes = fs::read(binary(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    patch(&mut bytes, b"tether-build-tag:", tag.as_bytes());
    patch(&mut bytes, b"tether-handover-accepts:", accepts.as_bytes());
    let path = dir.join(format!("{name}-{tag}"));
    fs::write(&path, bytes).expect("write the patched shim");
    let mut perms = fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    fs::set_permissions(&path, perms).unwrap();
    path
}

/// Overwrites the value after `marker` (up to its NUL padding) with `value`.
fn patch(bytes: &mut [u8], marker: &[u8], value: &[u8]) {
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .unwrap_or_else(|| panic!("{} not in the binary", String::from_utf8_lossy(marker)))
        + marker.len();
    let room = bytes[at..].iter().position(|b| *b == 0).unwrap()
        + bytes[at..]
            .iter()
            .skip_while(|b| **b != 0)
            .take_while(|b| **b == 0)
            .count();
    assert!(
        value.len() < room,
        "no room for {:?}",
        String::from_utf8_lossy(value)
    );
    bytes[at..at + room].fill(0);
    bytes[at..at + value.len()].copy_from_slice(value);
}
