//! `containerd-shim-tether-v2`: the shim command line containerd runs (1.6, 1.7
//! and 2.x). Go-style flags (`-namespace NS -address ADDR -publish-binary BIN -id ID
//! [-bundle DIR] [-debug]`, `-flag=value` too; unknown flags are tolerated), then an
//! action:
//! - `start` (working directory: the bundle): forks the shim, which serves the task
//!   API on `SOCKET_DIR/sha256(ADDR/NS/ID)` and JSON-RPC on `STATE/shim.sock`; prints
//!   `unix://SOCKET` once it listens and writes it to the bundle's `address` file.
//! - `delete`: after a shim died, kills what is left, deletes the runtime's state,
//!   unmounts the rootfs and prints a protobuf DeleteResponse. Idempotent.
//!
//! containerd's runtime options (`BinaryName`, `Root`, `SystemdCgroup`; on stdin, see
//! `options.rs`) come first; then the environment: TTRPC_ADDRESS (containerd's, for
//! events), TETHER_RUNTIME (default runc), TETHER_RUNTIME_ROOT (default
//! /run/containerd/runc/NS, as containerd's runc shim), TETHER_STATE_ROOT (default
//! /run/tether/containerd), TETHER_SOCKET_DIR (default /run/containerd/s; containerd
//! 2.3+'s socket_dir comes first).

use crate::cleanup::{self, Remains};
use crate::fronts::containerd::options::{self, RuntimeOptions, StartInput};
use crate::fronts::containerd::proto::{self, BootstrapResult, DeleteResponse};
use crate::fronts::containerd::{events, mounts, sha256, Config, Containerd};
use crate::launch;
use crate::reaper::pid_alive;
use crate::runtime::Runtime;
use crate::state_dir::{self, LaunchOptions, StateDir};
use prost::Message;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const NAME: &str = "containerd-shim-tether-v2";
/// Flags that take a value; every other flag is a boolean unless written `-f=v`.
const VALUE_FLAGS: [&str; 7] = [
    "namespace",
    "address",
    "publish-binary",
    "id",
    "bundle",
    "socket",
    "debug-socket",
];
/// Unix socket paths are limited to 108 bytes, the terminating NUL included.
const SOCKET_PATH_MAX: usize = 107;
/// What `start` reads of its stdin (containerd's runtime options or bootstrap params).
const STDIN_LIMIT: u64 = 10 << 20;
/// The shim version of this shim's BootstrapResult: 2, task API v2, one shim per
/// container. Not 3 (task API v3, which the shim also serves): containerd 2.x takes a
/// version 3 pod sandbox's shim for one that groups the pod's containers and sends
/// them all to it instead of starting a shim per container (containerd PR 11793,
/// core/runtime/v2/shim_manager.go). A version 2 shim gets `start` and `delete` for
/// every container.
const BOOTSTRAP_VERSION: i32 = 2;
/// In the bundle: how the shim called the runtime, for `delete` once the state is gone.
const BUNDLE_RUNTIME_FILE: &str = "tether-runtime.json";

#[derive(Default, Debug)]
struct Flags {
    namespace: String,
    address: String,
    id: String,
    bundle: Option<PathBuf>,
    version: bool,
    info: bool,
    action: Option<String>,
}

fn parse(args: &[String]) -> Flags {
    let mut f = Flags::default();
    let mut it = args.iter().peekable();
    while let Some(arg) = it.next() {
        let Some(flag) = arg
            .strip_prefix("--")
            .or_else(|| arg.strip_prefix('-'))
            .filter(|s| !s.is_empty())
        else {
            // Go's flag package stops at the first argument that is not a flag.
            f.action = Some(arg.clone());
            break;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag, None),
        };
        let takes_value = VALUE_FLAGS.contains(&name);
        let value = match inline {
            Some(v) => v,
            None if takes_value => it.next().cloned().unwrap_or_default(),
            None => "true".to_string(),
        };
        match name {
            "namespace" => f.namespace = value,
            "address" => f.address = value,
            "id" => f.id = value,
            "bundle" => f.bundle = Some(PathBuf::from(value)),
            "v" | "version" => f.version = value != "false",
            "info" => f.info = value != "false",
            _ => {} // -debug, -publish-binary, -socket and flags of later versions
        }
    }
    f
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Upgrade in place (the JSON-RPC `upgrade`), not containerd's actions.
    match args.first().map(String::as_str) {
        Some("handover-versions") => {
            println!("{}", crate::handover::versions_line(NAME));
            return 0;
        }
        Some("take-over") => return crate::launch::take_over_main(&args[1..], NAME),
        _ => {}
    }
    let f = parse(&args);
    if f.version {
        println!(
            "{NAME}:\n  Version:  {}\n  (tether, protocol {})",
            crate::handover::version(),
            tether_protocol::PROTOCOL_VERSION
        );
        return 0;
    }
    if f.info {
        return info();
    }
    let result = match f.action.as_deref() {
        Some("start") => start(&f),
        Some("delete") => delete(&f),
        Some(other) => Err(format!(
            "unknown action {other:?}: containerd runs `start` and `delete`"
        )),
        None => Err("no action: containerd runs this shim with `start` and `delete`".to_string()),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            1
        }
    }
}

/// `-info` (containerd 2.x asks it of every runtime handler, the runtime's options on
/// stdin): name, version, and the OCI runtime's `features` as containerd's runc shim
/// reports them. containerd's CRI reads recursive read-only mounts and user namespace
/// support from them; without them it takes the handler to have neither.
fn info() -> i32 {
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().lock().take(STDIN_LIMIT).read_to_end(&mut bytes) {
        eprintln!("{NAME}: cannot read the runtime options on stdin: {e}");
        return 1;
    }
    let options = match proto::Any::decode(bytes.as_slice()) {
        Ok(any) if !bytes.is_empty() => match options::from_any(&any) {
            Ok(o) => o.unwrap_or_default(),
            Err(e) => {
                eprintln!("{NAME}: {e}");
                return 1;
            }
        },
        _ => RuntimeOptions::default(),
    };
    let binary = options
        .binary_name
        .unwrap_or_else(|| env_or("TETHER_RUNTIME", "runc"));
    // A runtime without `features` (youki 0.7) leaves them out, as the runc shim does.
    let features = std::process::Command::new(&binary)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success() && o.stdout.first() == Some(&b'{'))
        .map(|o| proto::Any {
            type_url: proto::OCI_FEATURES_TYPE.to_string(),
            value: o.stdout,
        });
    let info = proto::RuntimeInfo {
        name: "io.containerd.tether.v2".to_string(),
        version: Some(proto::RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: String::new(),
        }),
        features,
    };
    write_out(&info.encode_to_vec())
}

fn write_out(bytes: &[u8]) -> i32 {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{NAME}: cannot write to stdout: {e}");
            1
        }
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// The task API's socket: SOCKET_DIR/sha256(ADDRESS/NS/ID), as containerd's shims
/// name theirs (unique per containerd, namespace and task; always short enough).
/// SOCKET_DIR: containerd's (2.3+ says it), else TETHER_SOCKET_DIR, else /run/containerd/s.
fn socket_path(f: &Flags, socket_dir: Option<&str>) -> PathBuf {
    let dir = match socket_dir {
        Some(d) => d.to_string(),
        None => env_or("TETHER_SOCKET_DIR", "/run/containerd/s"),
    };
    let key = format!("{}/{}/{}", f.address.trim_end_matches('/'), f.namespace, f.id);
    Path::new(&dir).join(sha256::hex(key.as_bytes()))
}

/// The shim's state dir: STATE_ROOT/NS/ID, or STATE_ROOT/h/HASH when the JSON-RPC
/// socket's path would not fit (the bundle's `tether-state` link names it either way).
pub fn state_dir_for(namespace: &str, id: &str) -> PathBuf {
    let root = PathBuf::from(env_or("TETHER_STATE_ROOT", "/run/tether/containerd"));
    let plain = root.join(namespace).join(id);
    if plain.join("shim.sock").as_os_str().len() <= SOCKET_PATH_MAX {
        return plain;
    }
    root.join("h")
        .join(&sha256::hex(format!("{namespace}/{id}").as_bytes())[..32])
}

/// The OCI runtime, and its root as containerd's runc shim keeps it: containerd's
/// runtime options first (`Root` joined with the namespace, as the runc shim does),
/// then the environment, then runc's defaults.
fn runtime(f: &Flags, o: &RuntimeOptions) -> Runtime {
    let root = match &o.root {
        Some(r) => Path::new(r).join(&f.namespace).display().to_string(),
        None => env_or(
            "TETHER_RUNTIME_ROOT",
            &format!("/run/containerd/runc/{}", f.namespace),
        ),
    };
    Runtime {
        path: o
            .binary_name
            .clone()
            .unwrap_or_else(|| env_or("TETHER_RUNTIME", "runc")),
        root: Some(root),
        systemd_cgroup: o.systemd_cgroup,
        ..Default::default()
    }
}

fn checked(f: &Flags) -> Result<(), String> {
    if f.namespace.is_empty() || f.id.is_empty() {
        return Err("-namespace and -id are required".to_string());
    }
    state_dir::validate_id("namespace", &f.namespace)?;
    state_dir::validate_id("task id", &f.id)
}

fn bundle(f: &Flags) -> Result<PathBuf, String> {
    let dir = match &f.bundle {
        Some(b) => b.clone(),
        None => std::env::current_dir().map_err(|e| format!("working directory: {e}"))?,
    };
    dir.canonicalize()
        .map_err(|e| format!("bundle {}: {e}", dir.display()))
}

fn start(f: &Flags) -> Result<(), String> {
    checked(f)?;
    crate::memory::reexec_with_malloc_tunables();
    let input = read_stdin(f)?;
    let bundle = bundle(f)?;
    let socket = socket_path(f, input.socket_dir.as_deref());
    let address = format!("unix://{}", socket.display());
    if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
        // This task's shim is already serving (a repeated start): the same answer.
        return announce(&bundle, &address, None, input.bootstrap);
    }
    let _ = std::fs::remove_file(&socket);
    let state_dir = state_dir_for(&f.namespace, &f.id);
    let runtime = runtime(f, &input.options);
    save_runtime(&bundle, &runtime)?;
    let events = std::env::var("TTRPC_ADDRESS")
        .ok()
        .filter(|a| !a.is_empty())
        .map(|a| PathBuf::from(a.strip_prefix("unix://").unwrap_or(&a)));
    let config = Config {
        namespace: f.namespace.clone(),
        bundle: bundle.clone(),
        socket: socket.clone(),
        events_address: events,
    };
    let id = f.id.clone();
    let opts = LaunchOptions {
        id: id.clone(),
        bundle: bundle.clone(),
        state_dir,
        runtime,
    };
    let extra: launch::ExtraFront = Box::new(move |server| {
        server.set_kind(NAME);
        let listener = bind(&config.socket)?;
        server
            .add_front(|owner, io| Containerd::new(listener, config, id, owner, io))
            .map_err(|e| format!("cannot serve the task API: {e}"))
    });
    raise_oom_score();
    let dir = launch::spawn(opts, Some(extra))?;
    announce(&bundle, &address, Some(&dir), input.bootstrap)
}

/// containerd writes runtime options (1.6 to 2.2) or bootstrap params (2.3+) to the
/// shim's stdin (options.rs). Read whole, so the writer never blocks. Not inlined:
/// its buffers must not sit in the frame the shim forks from, whose pages it would
/// keep for life.
#[inline(never)]
fn read_stdin(f: &Flags) -> Result<StartInput, String> {
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(STDIN_LIMIT)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read containerd's options on stdin: {e}"))?;
    options::parse_start_input(&bytes, &f.namespace, &f.id)
}

/// Writes how the runtime is called into the bundle, for a `delete` after the
/// shim's own state is gone (it has no options then).
fn save_runtime(bundle: &Path, runtime: &Runtime) -> Result<(), String> {
    let file = bundle.join(BUNDLE_RUNTIME_FILE);
    let json = serde_json::to_vec(runtime).map_err(|e| format!("runtime options: {e}"))?;
    state_dir::write_atomic(&file, &json).map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// What `save_runtime` wrote, or the defaults (no options) if nothing was written.
fn saved_runtime(bundle: &Path, f: &Flags) -> Runtime {
    std::fs::read(bundle.join(BUNDLE_RUNTIME_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| runtime(f, &RuntimeOptions::default()))
}

/// As containerd's own shims: one point more likely than containerd to be picked by
/// the OOM killer (the shim inherits containerd's score; raising it needs no
/// privilege). Best effort.
fn raise_oom_score() {
    let path = "/proc/self/oom_score_adj";
    let score = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    if let Some(score) = score.filter(|s| *s < 1000) {
        let _ = std::fs::write(path, (score + 1).to_string());
    }
}

fn bind(socket: &Path) -> Result<std::os::unix::net::UnixListener, String> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if let Some(dir) = socket.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(socket)
        .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod {}: {e}", socket.display()))?;
    Ok(listener)
}

/// Writes the bundle's `address` (and the `tether-state` link), prints the address:
/// a BootstrapResult to a containerd that sent BootstrapParams (2.3+), else the plain
/// address (a version 2 shim to 1.6 to 2.2).
fn announce(bundle: &Path, address: &str, state: Option<&StateDir>, bootstrap: bool) -> Result<(), String> {
    let file = bundle.join("address");
    state_dir::write_atomic(&file, address.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    if let Some(state) = state {
        let link = bundle.join("tether-state");
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink(&state.root, &link) {
            eprintln!(
                "{NAME}: cannot link {} to {}: {e}",
                link.display(),
                state.root.display()
            );
        }
    }
    let out = if bootstrap {
        BootstrapResult {
            version: BOOTSTRAP_VERSION,
            address: address.to_string(),
            protocol: "ttrpc".to_string(),
        }
        .encode_to_vec()
    } else {
        address.as_bytes().to_vec()
    };
    match write_out(&out) {
        0 => Ok(()),
        _ => Err("stdout is gone".to_string()),
    }
}

fn delete(f: &Flags) -> Result<(), String> {
    checked(f)?;
    let bundle = bundle(f)?;
    let dir = StateDir::new(state_dir_for(&f.namespace, &f.id));
    stop_dead_shim(&dir);
    let remains = match dir.read_options() {
        Ok(options) => cleanup::clean_up_remains(&dir, &options).unwrap_or_else(|e| {
            eprintln!("{NAME}: {e}");
            no_remains()
        }),
        Err(_) => {
            // No state (the shim removed it at Delete): make sure of the runtime anyway.
            if let Err(e) = cleanup::runtime_delete_force(&saved_runtime(&bundle, f), &f.id) {
                eprintln!("{NAME}: {e}");
            }
            no_remains()
        }
    };
    if let Err(e) = mounts::unmount_all(&bundle.join("rootfs")) {
        eprintln!("{NAME}: {e}");
    }
    // The socket `start` announced (its dir may have been containerd's choice).
    let socket = std::fs::read_to_string(bundle.join("address"))
        .ok()
        .and_then(|a| a.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| socket_path(f, None));
    let _ = std::fs::remove_file(socket);
    let now = || proto::timestamp(&tether_protocol::time::now());
    let response = match (&remains.recorded, remains.killed) {
        (Some(r), _) => DeleteResponse {
            pid: r.pid as u32,
            exit_status: events::exit_status(r),
            exited_at: proto::timestamp(&r.exited_at),
        },
        // Killed here by SIGKILL: 128 + 9, as containerd's runc shim reports.
        (None, true) => DeleteResponse {
            pid: remains.init_pid.unwrap_or(0) as u32,
            exit_status: 137,
            exited_at: now(),
        },
        // Gone before, unrecorded: containerd's "unknown".
        (None, false) => DeleteResponse {
            pid: remains.init_pid.unwrap_or(0) as u32,
            exit_status: 255,
            exited_at: now(),
        },
    };
    match write_out(&response.encode_to_vec()) {
        0 => Ok(()),
        _ => Err("stdout is gone".to_string()),
    }
}

fn no_remains() -> Remains {
    Remains {
        recorded: None,
        init_pid: None,
        killed: false,
    }
}

/// containerd runs `delete` once it lost the shim; a shim still alive then (hung)
/// is killed, so that what follows does not race with it.
fn stop_dead_shim(dir: &StateDir) {
    let Some(pid) = dir.live_shim() else {
        return;
    };
    // containerd runs this as soon as the shim's connection closes, which may be
    // while the shim is still exiting (removing its state dir): it gets a moment to
    // finish before it is killed.
    let wait = |limit: Duration| {
        let deadline = Instant::now() + limit;
        while pid_alive(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait(Duration::from_millis(500));
    if pid_alive(pid) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        wait(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn go_style_flags() {
        let f = parse(&args(
            "-namespace k8s.io -address /run/containerd/containerd.sock -publish-binary /usr/bin/containerd -id c1 -debug start",
        ));
        assert_eq!((f.namespace.as_str(), f.id.as_str()), ("k8s.io", "c1"));
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.action.as_deref(), Some("start"));
        let f = parse(&args(
            "--namespace=ns -id=c2 -bundle /b -new-bool -new-flag=x delete",
        ));
        assert_eq!((f.namespace.as_str(), f.id.as_str()), ("ns", "c2"));
        assert_eq!(f.bundle.as_deref(), Some(Path::new("/b")));
        assert_eq!(f.action.as_deref(), Some("delete"));
        assert!(parse(&args("-v")).version);
        assert!(parse(&args("-namespace n -id i")).action.is_none());
    }

    #[test]
    fn sockets_and_state_dirs_fit() {
        let f = Flags {
            namespace: "k8s.io".into(),
            address: "/run/containerd/containerd.sock".into(),
            id: "x".repeat(76),
            ..Default::default()
        };
        let s = socket_path(&f, None);
        assert!(s.as_os_str().len() <= SOCKET_PATH_MAX, "{}", s.display());
        assert_eq!(s.file_name().map(|n| n.len()), Some(64));
        let long = state_dir_for(&"n".repeat(76), &"i".repeat(76));
        assert!(long.join("shim.sock").as_os_str().len() <= SOCKET_PATH_MAX);
        let short = state_dir_for("default", "c1");
        assert!(short.ends_with("default/c1"));
    }
}
