//! A private containerd for tests and the benchmark (its own root, state, sockets
//! and config; CRI off), and a busybox OCI image built here for `ctr images import`.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// containerd's `tool` (containerd, ctr, containerd-shim-runc-v2): from the
/// directory TETHER_CONTAINERD_BIN when set (containerd 2.x, built by `scripts/setup
/// --cri`), else from PATH (Debian's containerd 1.6).
pub fn containerd_tool(tool: &str) -> PathBuf {
    match std::env::var_os("TETHER_CONTAINERD_BIN").filter(|d| !d.is_empty()) {
        Some(dir) => Path::new(&dir).join(tool),
        None => PathBuf::from(tool),
    }
}

/// Fails (never skips) when containerd or ctr is missing.
pub fn require_containerd() {
    crate::require_root_and_runc();
    for tool in ["containerd", "ctr"] {
        let path = containerd_tool(tool);
        let ok = Command::new(&path)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{} is not installed: run scripts/test (it runs `scripts/setup containerd`, \
             and `scripts/setup --cri` for TETHER_CONTAINERD_BIN)",
            path.display()
        );
    }
}

/// containerd's version (`1.6.20`, `2.4.2`), from `containerd --version`.
pub fn containerd_version() -> (u32, u32) {
    let out = Command::new(containerd_tool("containerd"))
        .arg("--version")
        .output()
        .expect("containerd --version");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("containerd --version: {text}"));
    let mut parts = v.trim_start_matches('v').split(['.', '~', '-', '+']);
    let mut num = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (num(), num())
}

/// A containerd of its own under `dir`, speaking on `dir/containerd.sock`.
pub struct Containerd {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub namespace: String,
    env: Vec<(String, String)>,
    /// `--log-level debug`: containerd logs every event it is forwarded.
    debug: bool,
    child: Option<Child>,
}

impl Containerd {
    pub fn start(dir: &Path, namespace: &str) -> Containerd {
        Self::start_with(dir, namespace, &[], false)
    }

    /// `env` is added to containerd's environment (and so to its shims').
    pub fn start_with(dir: &Path, namespace: &str, env: &[(&str, &str)], debug: bool) -> Containerd {
        require_containerd();
        fs::create_dir_all(dir).expect("containerd dir");
        let sock = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.nri.v1.nri\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.tracing.processor.v1.otlp\", \"io.containerd.internal.v1.tracing\"]\n\
             [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n",
            d = dir.display(),
            s = sock.display()
        );
        fs::write(dir.join("config.toml"), config).expect("config.toml");
        let mut c = Containerd {
            dir: dir.to_path_buf(),
            sock,
            namespace: namespace.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            debug,
            child: None,
        };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .expect("containerd.log");
        // containerd 2.x logs forwarded events at trace level (1.6 at debug).
        let level = match (self.debug, containerd_version().0) {
            (false, _) => "info",
            (true, 0 | 1) => "debug",
            (true, _) => "trace",
        };
        let mut cmd = Command::new(containerd_tool("containerd"));
        // Its own containerd-shim-runc-v2 first on its PATH.
        if let Some(dir) = std::env::var_os("TETHER_CONTAINERD_BIN").filter(|d| !d.is_empty()) {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut dirs = vec![PathBuf::from(dir)];
            dirs.extend(std::env::split_paths(&path));
            cmd.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        }
        let child = cmd
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .args(["--log-level", level])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&self.sock).is_err() {
            assert!(
                Instant::now() < deadline,
                "containerd did not listen on {} within 30 s; see {}",
                self.sock.display(),
                self.dir.join("containerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `ctr -a SOCK -n NAMESPACE`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(containerd_tool("ctr"));
        c.arg("-a").arg(&self.sock).args(["-n", &self.namespace]);
        c
    }

    /// Runs `ctr ARGS` with stdin on /dev/null; its output, whatever the status.
    pub fn ctr_out(&self, args: &[&str]) -> Output {
        self.ctr()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs `ctr ARGS`; its stdout, asserting success.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr_out(args);
        assert!(
            out.status.success(),
            "ctr {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr run --detach` of an idle `sleep` over `rootfs`, with containerd's own
    /// runc shim (`runtime` None) or the shim at `runtime`; `extra` options go
    /// before the rootfs (`--null-io`, `--fifo-dir DIR`).
    pub fn run_detached_sleep(&self, runtime: Option<&Path>, extra: &[&str], rootfs: &Path, id: &str) {
        let mut c = self.ctr();
        c.args(["run", "--detach"]).args(extra);
        if let Some(r) = runtime {
            c.arg("--runtime").arg(r);
        }
        let out = c
            .arg("--rootfs")
            .arg(rootfs)
            .args([id, "/bin/sleep", "1000"])
            .stdin(Stdio::null())
            .output()
            .expect("run ctr");
        assert!(
            out.status.success(),
            "ctr run -d: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `ctr events`, its stdout piped, given `settle` to subscribe before returning.
    pub fn ctr_events(&self, settle: Duration) -> Child {
        let child = self
            .ctr()
            .arg("events")
            .stdout(Stdio::piped())
            .spawn()
            .expect("ctr events");
        std::thread::sleep(settle);
        child
    }

    /// The pid of task `id`'s init, from `ctr task ls`.
    pub fn task_pid(&self, id: &str) -> i32 {
        let ls = self.ctr_ok(&["task", "ls"]);
        ls.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|w| w.first() == Some(&id))
            .and_then(|w| w.get(1)?.parse().ok())
            .unwrap_or_else(|| panic!("no task {id} in {ls}"))
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new containerd on the same root, state and sockets.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// The directory containerd gives task `id` (the shim's bundle).
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.dir
            .join("state/io.containerd.runtime.v2.task")
            .join(&self.namespace)
            .join(id)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The state of task `id` in `ctr task ls` (RUNNING, STOPPED...), if listed.
pub fn task_status(ctd: &Containerd, id: &str) -> Option<String> {
    let out = ctd.ctr_ok(&["task", "ls"]);
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|w| w.first() == Some(&id))
        .and_then(|w| w.get(2).map(|s| s.to_string()))
}

/// Mount points (from /proc/self/mountinfo) under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

/// Moves `file` into `blobs/sha256/DIGEST`; returns (digest, size).
fn blob(dir: &Path, file: &Path) -> (String, u64) {
    let digest = sha256sum(file);
    let size = fs::metadata(file).expect("blob").len();
    fs::rename(file, dir.join("blobs/sha256").join(&digest)).expect("blob rename");
    (format!("sha256:{digest}"), size)
}

/// An OCI image archive of the busybox rootfs, named `name`: one uncompressed
/// layer, the layout `ctr images import` reads. Returns the tar's path.
pub fn busybox_image_tar(dir: &Path, name: &str) -> PathBuf {
    let layout = dir.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).expect("layout");
    let layer = layout.join("layer.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(crate::shared_rootfs())
        .arg("-cf")
        .arg(&layer)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success(), "tar of the rootfs failed");
    let (layer_digest, layer_size) = blob(&layout, &layer);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let config = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]}
    });
    let write = |n: &str, v: &serde_json::Value| {
        let p = layout.join(n);
        fs::write(&p, v.to_string()).expect("write");
        p
    };
    let (config_digest, config_size) = blob(&layout, &write("config", &config));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}]
    });
    let (manifest_digest, manifest_size) = blob(&layout, &write("manifest", &manifest));
    write(
        "index.json",
        &serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "latest"}
            }]
        }),
    );
    write("oci-layout", &serde_json::json!({"imageLayoutVersion": "1.0.0"}));
    let tar = dir.join("image.tar");
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tar)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .expect("tar");
    assert!(ok.success(), "tar of the image layout failed");
    tar
}
