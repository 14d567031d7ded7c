//! `tether-conmon`: conmon's process model. The first process (the engine waits for
//! it) parses conmon's flags, waits for the start byte (the engine moves it into the
//! container's cgroup meanwhile: nothing is forked before), forks the monitor
//! (the shim: its own session, child subreaper, stdio on /dev/null, the inherited fds
//! held), writes the monitor's pid to `--conmon-pidfile` and exits 0. The monitor
//! creates the container and reports its pid on the sync pipe; when the container
//! has exited it runs `--exit-command` (after `--exit-delay`), waits for it, exits.
//!
//! The shim's state dir (JSON-RPC socket, event log, its log) is `tether/` beside
//! the container pid file (`-p`): `$RUNROOT/overlay-containers/ID/userdata/tether`
//! under Podman.

use crate::fronts::conmon::args::{self, Args, LogTarget};
use crate::fronts::conmon::{files, Conmon, ExecSession, Settings};
use crate::launch::{self, ShimHooks};
use crate::runtime::Runtime;
use crate::state_dir::LaunchOptions;
use crate::state_dir::{self, StateDir};
use std::cell::Cell;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;

/// The conmon version podman and CRI-O are told (podman wants at least 2.0.1, CRI-O
/// switches features on at 2.0.19 and 2.1.2).
pub const CONMON_VERSION: &str = "2.1.6";

/// In the runtime call of an exec session: the start pipe to wait on, and the
/// runtime to exec then (see [`gate`]).
const GATE_FD: &str = "TETHER_CONMON_GATE_FD";
const GATE_RUNTIME: &str = "TETHER_CONMON_GATE_RUNTIME";

pub fn main() -> i32 {
    if std::env::var_os(GATE_FD).is_some() {
        return gate();
    }
    let a = match args::parse(&std::env::args().skip(1).collect::<Vec<_>>()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tether-conmon: option parsing failed: {e}");
            return 1;
        }
    };
    if a.version {
        print!(
            "conmon version {CONMON_VERSION}\ncommit: tether-conmon {}\n",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    if a.help {
        println!("{}", args::USAGE);
        return 0;
    }
    // Before anything is taken from the environment: the fds survive the exec.
    crate::memory::reexec_with_malloc_tunables();
    let sync = inherited_pipe("_OCI_SYNCPIPE");
    let key = files::sync_key(a.api_version, a.exec);
    match run(a, sync.as_ref()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether-conmon: {e}");
            if let Some(fd) = &sync {
                let _ = files::sync_message(fd, key, -1, Some(&e));
            }
            1
        }
    }
}

/// An exec session's runtime call: conmon's runtime child waits for podman's second
/// start byte (podman is attached by then) before it runs `runtime exec`, so no
/// output is missed. Here the core's runtime call is this binary with the gate in
/// its environment: it waits for the byte, then becomes the runtime.
fn gate() -> i32 {
    use std::os::unix::process::CommandExt;
    let fd: Option<RawFd> = std::env::var(GATE_FD).ok().and_then(|v| v.parse().ok());
    let runtime = std::env::var_os(GATE_RUNTIME).unwrap_or_default();
    if let Some(start) = fd.and_then(crate::sys::own_inherited_fd) {
        let mut byte = [0u8; 1];
        let _ = nix::unistd::read(start.as_raw_fd(), &mut byte);
    }
    let err = Command::new(&runtime)
        .args(std::env::args_os().skip(1))
        .env_remove(GATE_FD)
        .env_remove(GATE_RUNTIME)
        .exec();
    eprintln!(
        "tether-conmon: cannot run the runtime {}: {err}",
        runtime.to_string_lossy()
    );
    127
}

/// The start pipe: close-on-exec, except for an exec session, whose runtime call
/// reads the second byte from it.
fn inherited_start_pipe() -> Option<OwnedFd> {
    let fd: RawFd = std::env::var("_OCI_STARTPIPE").ok()?.trim().parse().ok()?;
    crate::sys::own_inherited_fd(fd)
}

/// The fd an `_OCI_*` variable names, owned (close-on-exec: the runtime must not
/// hold it).
fn inherited_pipe(var: &str) -> Option<OwnedFd> {
    let fd: RawFd = std::env::var(var).ok()?.trim().parse().ok()?;
    let owned = crate::sys::own_inherited_fd(fd)?;
    crate::sys::set_cloexec(&owned);
    Some(owned)
}

/// Takes the command line by value: what the monitor needs is moved out of it, and
/// the rest is freed before the fork (an idle monitor's heap is what it holds then).
/// The first process's exit code: 0 once the monitor is forked; with `--sync`, the
/// monitor's, once it has ended.
fn run(mut a: Args, sync: Option<&OwnedFd>) -> Result<i32, String> {
    let cid = a.cid.clone().ok_or("Container ID not provided. Use --cid")?;
    state_dir::validate_id("container id", &cid)?;
    // Required but for a legacy exec (CRI-O's exec sync), which is named here then.
    let cuuid = match (&a.cuuid, a.exec && !a.api_version) {
        (Some(u), _) => u.clone(),
        (None, true) => format!("exec-sync-{}", std::process::id()),
        (None, false) => return Err("Container UUID not provided. Use --cuuid".to_string()),
    };
    let runtime = a
        .runtime
        .clone()
        .ok_or("Runtime path not provided. Use --runtime")?;
    nix::unistd::access(runtime.as_str(), nix::unistd::AccessFlags::X_OK)
        .map_err(|e| format!("Runtime path {runtime} is not valid: {e}"))?;
    unsupported(&a)?;
    let cwd = std::env::current_dir().map_err(|e| format!("Failed to get working directory: {e}"))?;
    let bundle = a.bundle.as_ref().map_or_else(|| cwd.clone(), PathBuf::from);
    let bundle = bundle
        .canonicalize()
        .map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    if !a.exec && !bundle.join("config.json").is_file() {
        return Err(format!("bundle {}: no config.json in it", bundle.display()));
    }
    let exec_spec = match (a.exec, &a.exec_process_spec) {
        (false, _) => None,
        (true, None) => return Err("Exec process spec path not provided. Use --exec-process-spec".into()),
        (true, Some(spec)) => Some(absolute(&cwd, spec)),
    };
    if a.exec_attach && !a.api_version {
        return Err("Attach can only be specified for a non-legacy exec session".into());
    }
    // conmon makes the attach socket and the FIFOs only in a bundle it was given
    // (an exec's has no default: CRI-O's exec sync passes none).
    let control_files = a.bundle.is_some() || !a.exec;
    let log_path = match a.log()? {
        LogTarget::K8sFile(p) => absolute(&cwd, &p),
        LogTarget::None => PathBuf::from("/dev/null"),
        LogTarget::Unsupported(d) => return Err(format!("log driver {d} is not supported")),
    };
    let container_pidfile = a
        .container_pidfile
        .as_ref()
        .map_or_else(|| cwd.join(format!("pidfile-{cid}")), |p| absolute(&cwd, p));
    let state = container_pidfile
        .parent()
        .unwrap_or(Path::new("/"))
        .join("tether");

    // The engine moves this process into the container's cgroup, then writes one
    // byte: nothing may be forked before it.
    let start = inherited_start_pipe();
    if let Some(start) = &start {
        let mut byte = [0u8; 1];
        let _ = nix::unistd::read(start.as_raw_fd(), &mut byte);
    }
    // Only an attached exec session's runtime call reads from it again.
    let attached_exec = exec_spec.is_some() && a.exec_attach;
    let start = start.filter(|_| attached_exec);
    let attach_pipe = if attached_exec {
        inherited_pipe("_OCI_ATTACHPIPE")
    } else {
        None
    };
    // (The sync pipe's dup is made after: it must not be taken for an inherited fd.)
    let pipes = [&start, &attach_pipe].map(|p| p.as_ref().map(|fd| fd.as_raw_fd()));
    let preserved = preserved_fds(&a.runtime_opts)?;
    let held = hold_inherited_fds(&[sync.map(|s| s.as_raw_fd()), pipes[0], pipes[1]], preserved);
    let sync_dup = match sync {
        Some(fd) => Some(fd.try_clone().map_err(|e| format!("dup of the sync pipe: {e}"))?),
        None => None,
    };

    if let (Some(dir), false, true) = (&a.socket_dir_path, a.full_attach, control_files) {
        link_socket_dir(&absolute(&cwd, dir), &cuuid, &bundle)?;
    }
    // A monitor of this container ran before (podman restart): its state goes.
    if state.exists() {
        let _ = std::fs::remove_dir_all(&state);
    }
    let dir = StateDir::new(state.clone());
    let mut runtime_path = runtime;
    let exec = match exec_spec {
        Some(spec) => {
            let id = cuuid.clone();
            state_dir::validate_id("exec session id (--cuuid)", &id)?;
            // The runtime call waits for the second start byte (see `gate`).
            let me = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
            if let Some(fd) = &start {
                std::env::set_var(GATE_FD, fd.as_raw_fd().to_string());
                std::env::set_var(GATE_RUNTIME, &runtime_path);
                runtime_path = me.display().to_string();
            }
            Some(ExecSession {
                id,
                spec,
                attach_pipe,
                start_pipe: start,
            })
        }
        None => None,
    };
    let process_name = exec
        .as_ref()
        .map_or(tether_protocol::INIT_PROCESS.to_string(), |e| e.id.clone());
    let settings = Settings {
        cid: cid.clone(),
        bundle: bundle.clone(),
        container_pidfile,
        exit_dir: a.exit_dir.as_ref().map(|d| absolute(&cwd, d)),
        persist_dir: a.persist_dir.as_ref().map(|d| absolute(&cwd, d)),
        log: tether_protocol::LogParams {
            path: log_path.display().to_string(),
            max_line: None,
            max_size: a.log_size_max.filter(|n| *n > 0).map(|n| n as u64),
            max_files: None,
        },
        stdin: a.stdin,
        eof_closes_stdin: a.stdin && !a.leave_stdin_open,
        terminal: a.terminal,
        api_version: a.api_version,
        attach_link: control_files.then(|| bundle.join("attach")),
        attach_socket: dir.attach_socket(&process_name),
        exec,
        timeout: a
            .timeout
            .filter(|t| *t > 0)
            .map(|t| std::time::Duration::from_secs(t as u64)),
        restore: a.restore.as_ref().map(|p| absolute(&cwd, p)),
    };
    let opts = LaunchOptions {
        id: cid,
        bundle,
        state_dir: state,
        runtime: Runtime {
            path: runtime_path,
            root: None,
            systemd_cgroup: a.systemd_cgroup,
            extra_args: std::mem::take(&mut a.runtime_args),
            create_args: create_flags(&a),
            exec_args: a.runtime_opts.clone(),
        },
    };
    let exec_session = settings.exec.is_some();
    let outcome = Rc::new(Cell::new(0));
    let front_outcome = outcome.clone();
    let extra: launch::ExtraFront = Box::new(move |reactor| {
        if exec_session {
            reactor.core_mut().set_engine_exec_session();
        } else {
            reactor.core_mut().set_engine_owns_lifecycle();
        }
        for signal in crate::fronts::conmon::FORWARDED {
            reactor
                .catch_signal(signal)
                .map_err(|e| format!("cannot catch signal {signal}: {e}"))?;
        }
        reactor
            .add_front(|owner, io| Conmon::new(settings, sync_dup, held, front_outcome, owner, io))
            .map_err(|e| format!("cannot make the ctl and winsz FIFOs: {e}"))
    });
    let exit_command = a.exit_command.take();
    let exit_args = std::mem::take(&mut a.exit_command_args);
    let delay = a.exit_delay.unwrap_or(0).max(0) as u64;
    let conmon_pidfile = a.conmon_pidfile.take();
    let sync_mode = a.sync;
    drop(a);
    let hooks = ShimHooks {
        keep_inherited_fds: true,
        after_loop: Some(Box::new(move |code| {
            // The loop's own failure, else what the front decided.
            let code = if code != 0 { code } else { outcome.get() };
            match exit_command {
                // conmon: the exit command's status if it failed.
                Some(cmd) => run_exit_command(&cmd, &exit_args, delay).unwrap_or(code),
                None => code,
            }
        })),
    };
    let dir = launch::spawn_with(opts, Some(extra), hooks)?;
    if let Some(path) = &conmon_pidfile {
        let pid = std::fs::read_to_string(dir.shim_pid())
            .map_err(|e| format!("the monitor's pid file {}: {e}", dir.shim_pid().display()))?;
        state_dir::write_atomic(&absolute(&cwd, path), pid.trim().as_bytes())
            .map_err(|e| format!("cannot write the conmon pid file {path}: {e}"))?;
    }
    if sync_mode {
        return Ok(wait_for_monitor(&dir));
    }
    Ok(0)
}

/// `--sync` (CRI-O's exec sync): conmon does not fork, and its caller waits for it.
/// Here the first process waits for the monitor it forked, and exits with its code.
fn wait_for_monitor(dir: &StateDir) -> i32 {
    use nix::sys::wait::{waitpid, WaitStatus};
    let Some(pid) = std::fs::read_to_string(dir.shim_pid())
        .ok()
        .and_then(|p| p.trim().parse().ok())
    else {
        return 1;
    };
    loop {
        match waitpid(nix::unistd::Pid::from_raw(pid), None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// What conmon does and this front does not (yet): refused with a reason rather than
/// half done.
fn unsupported(a: &Args) -> Result<(), String> {
    let refused = [
        (a.sdnotify_socket.is_some(), "--sdnotify-socket"),
        (a.seccomp_notify_socket.is_some(), "--seccomp-notify-socket"),
        (a.restore.is_some() && a.exec, "--restore with --exec"),
    ];
    match refused.iter().find(|(on, _)| *on) {
        Some((_, what)) => Err(format!(
            "{what} is not supported by tether-conmon yet (docs/CONMON.md)"
        )),
        None => Ok(()),
    }
}

/// conmon's own create and restore flags, then the engine's `--runtime-opt`s, in
/// conmon's order (runtime_args.c).
fn create_flags(a: &Args) -> Vec<String> {
    let mut f = Vec::new();
    if a.no_pivot {
        f.push("--no-pivot".to_string());
    }
    if a.no_new_keyring {
        f.push("--no-new-keyring".to_string());
    }
    f.extend(a.runtime_opts.iter().cloned());
    f
}

/// `--runtime-opt --preserve-fds --runtime-opt N` (podman `--preserve-fds N`): fds 3
/// to 3+N-1 are the container's, and the runtime call must inherit them.
fn preserved_fds(opts: &[String]) -> Result<RawFd, String> {
    let mut n = 0;
    let mut it = opts.iter();
    while let Some(o) = it.next() {
        let value = match o.strip_prefix("--preserve-fds") {
            Some("") => it.next().map(String::as_str),
            Some(v) if v.starts_with('=') => Some(&v[1..]),
            _ => continue,
        };
        n = value
            .and_then(|v| v.parse::<RawFd>().ok())
            .filter(|n| (0..=65536).contains(n))
            .ok_or_else(|| format!("--runtime-opt --preserve-fds needs a count, got {value:?}"))?;
    }
    Ok(n)
}

/// conmon's attach layout without `--full-attach` (CRI-O's): `<dir>/<cuuid>` is a
/// symlink to the bundle (replaced if there), one byte shorter when it would be 107
/// bytes long (then `<link>/attach` would not fit a socket address, whose 108 bytes
/// hold a NUL). conmon leaves the link at its end (it removes the socket only).
fn link_socket_dir(dir: &Path, cuuid: &str, bundle: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStringExt;
    let mut link = dir.join(cuuid).into_os_string().into_vec();
    if link.len() == 107 {
        link.truncate(106);
    }
    let link = PathBuf::from(std::ffi::OsString::from_vec(link));
    match std::fs::remove_file(&link) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(format!(
                "Failed to remove existing symlink for socket directory {}: {e}",
                link.display()
            ))
        }
        _ => {}
    }
    std::os::unix::fs::symlink(bundle, &link)
        .map_err(|e| format!("cannot link {} to the bundle: {e}", link.display()))
}

fn absolute(cwd: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// Every fd above stderr this process inherited but the sync pipe: held until the
/// container exits (close-on-exec, so the runtime and exit command never get them).
fn hold_inherited_fds(pipes: &[Option<RawFd>], preserved: RawFd) -> Vec<OwnedFd> {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2 && !pipes.contains(&Some(*fd)))
            .collect(),
        Err(_) => return Vec::new(),
    };
    // The read_dir handle is closed by now: its number is not open and is skipped.
    fds.into_iter()
        .filter_map(crate::sys::own_inherited_fd)
        // The preserved ones reach the runtime call; the front closes them on exec
        // once the call has returned.
        .inspect(|fd| {
            if fd.as_raw_fd() >= 3 + preserved {
                crate::sys::set_cloexec(fd)
            }
        })
        .collect()
}

/// Runs the engine's exit command (podman's `container cleanup`) with stdio on
/// /dev/null and waits for it; its status if it failed.
fn run_exit_command(cmd: &str, args: &[String], delay: u64) -> Option<i32> {
    let _ = nix::sys::prctl::set_child_subreaper(false);
    if delay > 0 {
        std::thread::sleep(std::time::Duration::from_secs(delay));
    }
    crate::log!("running the exit command {cmd} {}", args.join(" "));
    match Command::new(cmd)
        .args(args)
        .env_remove(GATE_FD)
        .env_remove(GATE_RUNTIME)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(status) if status.success() => None,
        Ok(status) => {
            crate::log!("the exit command {cmd} failed: {status}");
            Some(status.code().unwrap_or(1))
        }
        Err(e) => {
            crate::log!("cannot run the exit command {cmd}: {e}");
            Some(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{link_socket_dir, preserved_fds};

    #[test]
    fn preserved_fds_are_read_from_the_runtime_options() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(preserved_fds(&opts(&[])), Ok(0));
        assert_eq!(preserved_fds(&opts(&["--preserve-fds", "2"])), Ok(2));
        assert_eq!(
            preserved_fds(&opts(&["--tcp-established", "--preserve-fds=3"])),
            Ok(3)
        );
        assert!(preserved_fds(&opts(&["--preserve-fds"])).is_err());
        assert!(preserved_fds(&opts(&["--preserve-fds", "-1"])).is_err());
        assert!(preserved_fds(&opts(&["--preserve-fds", "x"])).is_err());
    }

    #[test]
    fn socket_dir_link_is_one_byte_shorter_at_107_bytes() {
        let dir = std::env::temp_dir().join(format!("tc-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        link_socket_dir(&dir, "abc", &bundle).unwrap();
        assert_eq!(std::fs::read_link(dir.join("abc")).unwrap(), bundle);
        // Made again over the old one.
        link_socket_dir(&dir, "abc", &bundle).unwrap();
        let base = dir.display().to_string().len() + 1;
        let cuuid = "x".repeat(107 - base);
        link_socket_dir(&dir, &cuuid, &bundle).unwrap();
        let short = dir.join(&cuuid[..cuuid.len() - 1]);
        assert_eq!(short.display().to_string().len(), 106);
        assert_eq!(std::fs::read_link(&short).unwrap(), bundle);
        assert!(std::fs::symlink_metadata(dir.join(&cuuid)).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
