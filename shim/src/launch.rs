//! `tether-shim start`: the launch contract. The launcher sets the shim up (log in
//! the state dir, socket bound, options written, core and loop made), forks it, and
//! writes its pid file; only then does it print the socket path and exit 0 (or print
//! the error and exit 1, leaving nothing behind). The forked shim detaches (setsid,
//! child subreaper, stdio on /dev/null) and serves. The shim never dies with its
//! launcher: no pdeathsig, its own session.

use crate::core::Core;
use crate::fronts::jsonrpc::JsonRpc;
use crate::reactor::Reactor;
use crate::state_dir::{self, LaunchOptions, StateDir};
use std::fs::{self, OpenOptions};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

/// A front added beside the JSON-RPC one, made in the launcher once the shim's loop
/// exists (before the fork): the containerd front binds its socket here.
pub type ExtraFront = Box<dyn FnOnce(&mut Reactor) -> Result<(), String>>;

/// Runs the launcher; returns the process exit code.
pub fn start(opts: LaunchOptions) -> i32 {
    match spawn(opts, None) {
        Ok(dir) => {
            println!("{}", dir.socket().display());
            0
        }
        Err(e) => {
            eprintln!("tether-shim: {e}");
            1
        }
    }
}

/// What a front's launcher changes in how the shim starts and ends (tether-conmon).
#[derive(Default)]
pub struct ShimHooks {
    /// Keep the fds the launcher inherited (conmon holds them: published ports'
    /// sockets, rootless networking's pipes) instead of closing them.
    pub keep_inherited_fds: bool,
    /// Runs in the shim once its loop has ended, with the loop's exit code; returns
    /// the shim's exit code (tether-conmon runs the engine's exit command here).
    pub after_loop: Option<Box<dyn FnOnce(i32) -> i32>>,
}

/// Sets the shim up and forks it; returns once it serves (its socket listens, its
/// pid file is written), with its state dir; or why it could not (nothing is left
/// behind then). Everything that can fail happens here, in the launcher, before the
/// fork: the launcher answers without waiting for the shim to be scheduled.
pub fn spawn(opts: LaunchOptions, extra: Option<ExtraFront>) -> Result<StateDir, String> {
    spawn_with(opts, extra, ShimHooks::default())
}

/// [`spawn`], with a front's [`ShimHooks`].
pub fn spawn_with(
    opts: LaunchOptions,
    extra: Option<ExtraFront>,
    hooks: ShimHooks,
) -> Result<StateDir, String> {
    let dir = StateDir::new(opts.state_dir.clone());
    prepare_state_dir(&dir, &opts.id)?;
    let set_up = become_shim(&opts, &dir, extra, hooks.keep_inherited_fds);
    let (server, null) = set_up.inspect_err(|_| {
        let _ = fs::remove_dir_all(&dir.root);
    })?;
    // The launcher is single-threaded here, so the child may run Rust code.
    match crate::sys::fork_single_threaded() {
        Err(e) => {
            let _ = fs::remove_dir_all(&dir.root);
            Err(format!("fork: {e}"))
        }
        Ok(nix::unistd::ForkResult::Child) => {
            let code = run_shim(server, null, &opts, &dir);
            std::process::exit(hooks.after_loop.map_or(code, |after| after(code)))
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // The launcher's copies of the shim's descriptors close with it.
            drop(server);
            if let Err(e) = state_dir::write_atomic(&dir.shim_pid(), child.to_string().as_bytes()) {
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
                let _ = fs::remove_dir_all(&dir.root);
                return Err(format!("cannot write pid file: {e}"));
            }
            Ok(dir)
        }
    }
}

fn prepare_state_dir(dir: &StateDir, id: &str) -> Result<(), String> {
    if dir.root.exists() {
        return Err(match dir.live_shim() {
            Some(pid) => format!("a shim for {id} is already running (pid {pid}, {})", dir.root.display()),
            None => format!(
                "state dir {} already exists (left by a shim that died?): run `tether-shim cleanup --id {id}` first",
                dir.root.display()
            ),
        });
    }
    dir.create()
        .map_err(|e| format!("cannot create state dir {}: {e}", dir.root.display()))
}

/// The shim itself, in the forked child: it leaves the launcher's session and stdio
/// (the caller reads the launcher's stdout to its end) and serves. Returns its exit
/// code.
fn run_shim(server: Box<Reactor>, null: OwnedFd, opts: &LaunchOptions, dir: &StateDir) -> i32 {
    for fd in 0..3 {
        if let Err(e) = nix::unistd::dup2(null.as_raw_fd(), fd) {
            crate::log!("cannot put fd {fd} on /dev/null: {e}");
        }
    }
    drop(null);
    // Neither can fail in a fresh child (it leads no process group; the option
    // exists since Linux 3.4), but say so if one did.
    if let Err(e) = nix::unistd::setsid() {
        crate::log!("setsid: {e}");
    }
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        crate::log!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    let _ = std::env::set_current_dir(&dir.root);
    crate::log!(
        "shim {} serving {} (bundle {})",
        std::process::id(),
        dir.socket().display(),
        opts.bundle.display()
    );
    match server.run() {
        Ok(()) => 0,
        Err(e) => {
            crate::log!("event loop failed: {e}");
            1
        }
    }
}

/// The shim's set-up, in the launcher: its log, socket, options, core and loop, and
/// /dev/null for its stdio. Boxed, and not inlined: the idle loop runs below the
/// frame the shim forks from for its whole life, so nothing of the set-up may stay
/// in it (every stack page is resident).
#[inline(never)]
fn become_shim(
    opts: &LaunchOptions,
    dir: &StateDir,
    extra: Option<ExtraFront>,
    keep_inherited_fds: bool,
) -> Result<(Box<Reactor>, OwnedFd), String> {
    if !keep_inherited_fds {
        close_inherited_fds();
    }
    crate::sys::take_private_umask();
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())
        .map_err(|e| format!("cannot open log {}: {e}", dir.log().display()))?;
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    crate::log::to_file(log);
    for signal in [nix::sys::signal::SIGPIPE, nix::sys::signal::SIGHUP] {
        crate::sys::ignore_signal(signal).map_err(|e| format!("ignoring {signal}: {e}"))?;
    }
    crate::memory::restore_caller_tunables();
    let socket = dir.socket();
    if socket != dir.socket_link() {
        // The state dir's path is too long for a socket: it lives in the short dir,
        // and STATE_DIR/shim.sock points at it.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(state_dir::SHORT_SOCKET_DIR)
            .map_err(|e| format!("cannot make {}: {e}", state_dir::SHORT_SOCKET_DIR))?;
        let _ = fs::remove_file(&socket);
        std::os::unix::fs::symlink(&socket, dir.socket_link())
            .map_err(|e| format!("cannot link {}: {e}", dir.socket_link().display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(&socket)
        .map_err(|e| format!("cannot bind {}: {e}", socket.display()))?;
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("chmod socket: {e}"))?;
    let options = serde_json::to_vec_pretty(opts).map_err(|e| e.to_string())?;
    state_dir::write_atomic(&dir.options(), &options).map_err(|e| format!("cannot write options: {e}"))?;
    let core = Core::new(
        opts.id.clone(),
        opts.bundle.clone(),
        opts.runtime.clone(),
        dir.clone(),
    )
    .map_err(|e| format!("cannot set up {}: {e}", dir.root.display()))?;
    let mut server = Reactor::new(core, dir.clone()).map_err(|e| format!("event loop: {e}"))?;
    server
        .add_front(|owner, io| JsonRpc::new(listener, owner, io))
        .map_err(|e| format!("cannot serve {}: {e}", socket.display()))?;
    if let Some(add) = extra {
        add(&mut server)?;
    }
    Ok((Box::new(server), null.into()))
}

/// Closes every fd above stderr the launcher inherited: the shim must hold nothing of
/// the daemon's, or the daemon's pipes and sockets would never see EOF.
fn close_inherited_fds() {
    let fds: Vec<i32> = match fs::read_dir("/proc/self/fd") {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect(),
        Err(_) => return,
    };
    for fd in fds {
        // Nothing in the launcher owns these descriptors yet (the read_dir handle
        // above is already closed; closing it twice would only fail).
        let _ = nix::unistd::close(fd);
    }
}

/// `tether-shim take-over --record-fd N`: the new binary's start. Returns the exit
/// code when its loop ends (or at once, if the record cannot be taken over: the
/// containers run on, and `cleanup` reads the state dir as after any shim's death).
/// Never inlined into `main`, whose frame a launched shim keeps for its whole life.
#[inline(never)]
pub fn take_over_main(args: &[String], kind: &'static str) -> i32 {
    let fd = match args {
        [flag, n] if flag == "--record-fd" => n.parse::<RawFd>().ok(),
        _ => None,
    };
    let Some(fd) = fd else {
        eprintln!("{kind} take-over: usage: {kind} take-over --record-fd N (run by a shim's `upgrade`, not by hand)");
        return 2;
    };
    let record: crate::upgrade::ShimRecord = match crate::handover::read_record(fd) {
        Ok(r) => r,
        Err(e) => {
            crate::log!("take-over failed: {e}");
            eprintln!("{kind} take-over: {e}");
            return 1;
        }
    };
    match take_over(record, kind) {
        Ok(code) => code,
        Err(e) => {
            crate::log!(
                "take-over failed: {e}; the containers run on, `tether-shim cleanup` reads the state dir"
            );
            1
        }
    }
}

fn take_over(record: crate::upgrade::ShimRecord, kind: &'static str) -> Result<i32, String> {
    use std::fs::OpenOptions;
    let dir = crate::state_dir::StateDir::new(record.core.dir());
    if let Ok(log) = OpenOptions::new().create(true).append(true).open(dir.log()) {
        crate::log::to_file(log);
    }
    crate::memory::restore_caller_tunables();
    if !crate::handover::accepted_versions().contains(&record.version) {
        return Err(format!(
            "the record is hand-over version {}, this binary takes {:?}",
            record.version,
            crate::handover::accepted_versions()
        ));
    }
    // Kept across exec, but cheap to be sure of: orphans of the container come here.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        crate::log!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    let mut fds = crate::handover::Adopting::new(&record.fds);
    let paused_us = crate::upgrade::now_ns().saturating_sub(record.handed_at_ns) / 1000;
    let server = Reactor::take_over(record, &mut fds, paused_us, kind)
        .map_err(|e| format!("rebuilding the loop: {e}"))?;
    fds.finish();
    match server.run() {
        Ok(()) => Ok(0),
        Err(e) => {
            crate::log!("event loop failed: {e}");
            Ok(1)
        }
    }
}
