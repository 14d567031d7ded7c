//! A private containerd for tests and the benchmark (its own root, state, sockets
//! and config; CRI off), a busybox OCI image built here for `ctr images import`, and
//! a raw ttrpc client that speaks to a shim's task socket as containerd does.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Fails (never skips) when containerd or ctr is missing.
pub fn require_containerd() {
    crate::require_root_and_runc();
    for tool in ["containerd", "ctr"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            ok,
            "{tool} is not installed: run scripts/test (it runs `scripts/setup containerd`)"
        );
    }
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
             disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.snapshotter.v1.btrfs\", \"io.containerd.snapshotter.v1.zfs\", \"io.containerd.snapshotter.v1.devmapper\", \"io.containerd.snapshotter.v1.aufs\", \"io.containerd.tracing.processor.v1.otlp\", \"io.containerd.internal.v1.tracing\"]\n\
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
        let level = if self.debug { "debug" } else { "info" };
        let child = Command::new("containerd")
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
        let mut c = Command::new("ctr");
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

// ---- a raw ttrpc client, written from the protocol, for what ctr cannot do ----

/// Protobuf field `n` as a length-delimited value.
pub fn pb_bytes(n: u32, v: &[u8]) -> Vec<u8> {
    let mut out = pb_varint((n << 3 | 2) as u64);
    out.extend(pb_varint(v.len() as u64));
    out.extend_from_slice(v);
    out
}

/// Protobuf field `n` as a varint.
pub fn pb_uint(n: u32, v: u64) -> Vec<u8> {
    let mut out = pb_varint((n << 3) as u64);
    out.extend(pb_varint(v));
    out
}

fn pb_varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// The fields of a protobuf message: (field number, varint value or bytes).
pub fn pb_fields(mut b: &[u8]) -> Vec<(u32, Result<u64, Vec<u8>>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some((&x, rest)) = b.split_first() else {
                return v;
            };
            *b = rest;
            v |= ((x & 0x7f) as u64) << shift;
            if x & 0x80 == 0 {
                break;
            }
        }
        v
    }
    let mut fields = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let (n, wire) = ((key >> 3) as u32, key & 7);
        match wire {
            0 => fields.push((n, Ok(varint(&mut b)))),
            2 => {
                let len = (varint(&mut b) as usize).min(b.len());
                fields.push((n, Err(b[..len].to_vec())));
                b = &b[len..];
            }
            _ => panic!("unexpected wire type {wire}"),
        }
    }
    fields
}

/// A ttrpc Request message.
pub fn ttrpc_request(service: &str, method: &str, payload: &[u8]) -> Vec<u8> {
    let mut m = pb_bytes(1, service.as_bytes());
    m.extend(pb_bytes(2, method.as_bytes()));
    m.extend(pb_bytes(3, payload));
    m
}

/// One ttrpc connection, used strictly one call at a time.
pub struct TtrpcClient {
    stream: UnixStream,
    next: u32,
}

/// A ttrpc answer: the status code (0 = OK) and message, and the payload.
#[derive(Debug)]
pub struct TtrpcAnswer {
    pub stream: u32,
    pub code: u64,
    pub message: String,
    pub payload: Vec<u8>,
}

impl TtrpcClient {
    /// Connects to `unix:///path` or a plain path.
    pub fn connect(address: &str) -> TtrpcClient {
        let path = address.trim().trim_start_matches("unix://");
        let stream = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {path}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        TtrpcClient { stream, next: 1 }
    }

    /// Sends a frame of `kind` with `data` (or just a header claiming `len`).
    pub fn send_frame(&mut self, len: u32, kind: u8, data: &[u8]) -> u32 {
        let stream = self.next;
        self.next += 2;
        let mut f = len.to_be_bytes().to_vec();
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(&[kind, 0]);
        self.stream.write_all(&f).expect("write header");
        self.stream.write_all(data).expect("write data");
        stream
    }

    pub fn read_answer(&mut self) -> TtrpcAnswer {
        let mut h = [0u8; 10];
        self.stream.read_exact(&mut h).expect("read answer header");
        let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
        let stream = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
        assert_eq!(h[8], 2, "not a response frame");
        let mut data = vec![0u8; len];
        self.stream.read_exact(&mut data).expect("read answer");
        let mut a = TtrpcAnswer {
            stream,
            code: 0,
            message: String::new(),
            payload: Vec::new(),
        };
        for (n, v) in pb_fields(&data) {
            match (n, v) {
                (1, Err(status)) => {
                    for (sn, sv) in pb_fields(&status) {
                        match (sn, sv) {
                            (1, Ok(c)) => a.code = c,
                            (2, Err(m)) => a.message = String::from_utf8_lossy(&m).into_owned(),
                            _ => {}
                        }
                    }
                }
                (2, Err(p)) => a.payload = p,
                _ => {}
            }
        }
        a
    }

    /// One call of the task service (containerd.task.v2.Task).
    pub fn call(&mut self, method: &str, payload: &[u8]) -> TtrpcAnswer {
        let req = ttrpc_request("containerd.task.v2.Task", method, payload);
        let stream = self.send_frame(req.len() as u32, 1, &req);
        let a = self.read_answer();
        assert_eq!(a.stream, stream);
        a
    }
}
