//! The loop's side of upgrade in place (the mechanism is `handover`): an `upgrade`
//! a front took is checked, waits while the core has a runtime call in flight (new
//! requests wait with it, unread), then the shim's record is written and the new
//! binary exec'd. The new binary starts in [`take_over_main`], rebuilds the loop from
//! the record, answers the `upgrade` and publishes `upgraded`.

use crate::core::{Core, CoreRecord};
use crate::fronts::{Front, FrontRecord, UpgradeRequest};
use crate::handover::{self, Adopting, Passing};
use serde::{Deserialize, Serialize};
use std::ffi::CString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary kind a tether-shim upgrades to (`BINARY handover-versions` says it);
/// containerd's shim is `containerd-shim-tether-v2`.
pub const KIND: &str = "tether-shim";
/// How long an upgrade waits for runtime calls in flight before it is refused.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// An upgrade the loop is carrying out.
pub struct Upgrade {
    /// The front whose client asked.
    pub front: usize,
    pub binary: PathBuf,
    /// The new binary's version.
    pub to: String,
    pub asked_at: Instant,
}

/// Everything the new binary needs.
#[derive(Serialize, Deserialize)]
pub struct ShimRecord {
    pub version: u32,
    pub from: String,
    pub to: String,
    /// When the old shim exec'd, in ns since the epoch (for the pause figure).
    pub handed_at_ns: u64,
    /// Every fd the record names: the new binary closes any that nothing takes.
    pub fds: Vec<RawFd>,
    pub asked_by: usize,
    pub core: CoreRecord,
    pub fronts: Vec<FrontRecord>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Checks what an upgrade needs before it waits for anything: every front and the
/// core can be handed over, and the binary takes over from this one.
pub fn begin(
    front: usize,
    req: UpgradeRequest,
    kind: &str,
    core: &Core,
    fronts: &[Box<dyn Front>],
) -> Result<Upgrade, String> {
    if !fronts.iter().all(|f| f.can_hand_over()) {
        return Err("this shim serves a front that cannot hand over yet (conmon's)".into());
    }
    if core.engine_owns_lifecycle() {
        return Err("tether-conmon cannot hand over yet".into());
    }
    let binary = match req.binary {
        Some(b) => b,
        None => handover::own_binary()?,
    };
    let to = handover::check_binary(&binary, kind)?;
    Ok(Upgrade {
        front,
        binary,
        to,
        asked_at: Instant::now(),
    })
}

/// Hands the shim over to the new binary. Returns only if that did not happen, with
/// why; every fd closes on exec again then, and the shim runs on as it was.
pub fn hand_over(up: &Upgrade, core: &Core, fronts: &[Box<dyn Front>]) -> String {
    let mut fds = Passing::default();
    let why = match exec_new_binary(up, core, fronts, &mut fds) {
        Ok(never) => match never {},
        Err(why) => why,
    };
    fds.undo();
    why
}

fn exec_new_binary(
    up: &Upgrade,
    core: &Core,
    fronts: &[Box<dyn Front>],
    fds: &mut Passing,
) -> Result<std::convert::Infallible, String> {
    let core_record = core.hand_over(fds)?;
    let front_records = fronts
        .iter()
        .map(|f| f.hand_over(fds))
        .collect::<Result<Vec<_>, _>>()?;
    let record = ShimRecord {
        version: handover::HANDOVER_VERSION,
        from: handover::version(),
        to: up.to.clone(),
        handed_at_ns: now_ns(),
        fds: fds.fds(),
        asked_by: up.front,
        core: core_record,
        fronts: front_records,
    };
    let memfd = handover::write_record(&record)?;
    let record_fd = fds.pass(&memfd)?;
    let cstr = |s: &str| CString::new(s).map_err(|_| format!("{s:?} holds a NUL byte"));
    let path = cstr(&up.binary.display().to_string())?;
    let argv = [
        path.clone(),
        cstr("take-over")?,
        cstr("--record-fd")?,
        cstr(&record_fd.to_string())?,
    ];
    crate::log!(
        "upgrading: exec {} ({} -> {}), {} fds handed over",
        up.binary.display(),
        record.from,
        record.to,
        record.fds.len()
    );
    let saved = crate::launch::tunables_for_exec();
    let e = nix::unistd::execv(&path, &argv).err();
    crate::launch::tunables_after_failed_exec(saved);
    drop(memfd);
    Err(format!(
        "cannot exec {}: {}",
        up.binary.display(),
        e.map_or("unknown error".to_string(), |e| e.to_string())
    ))
}

/// `tether-shim take-over --record-fd N`: the new binary's start. Returns the exit
/// code when its loop ends (or at once, if the record cannot be taken over: the
/// containers run on, and `cleanup` reads the state dir as after any shim's death).
pub fn take_over_main(args: &[String], kind: &'static str) -> i32 {
    let fd = match args {
        [flag, n] if flag == "--record-fd" => n.parse::<RawFd>().ok(),
        _ => None,
    };
    let Some(fd) = fd else {
        eprintln!("{kind} take-over: usage: {kind} take-over --record-fd N (run by a shim's `upgrade`, not by hand)");
        return 2;
    };
    let record: ShimRecord = match handover::read_record(fd) {
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

fn take_over(record: ShimRecord, kind: &'static str) -> Result<i32, String> {
    use std::fs::OpenOptions;
    let dir = crate::state_dir::StateDir::new(record.core_dir());
    if let Ok(log) = OpenOptions::new().create(true).append(true).open(dir.log()) {
        crate::log::to_file(log);
    }
    crate::launch::restore_caller_tunables();
    if !handover::accepted_versions().contains(&record.version) {
        return Err(format!(
            "the record is hand-over version {}, this binary takes {:?}",
            record.version,
            handover::accepted_versions()
        ));
    }
    // Kept across exec, but cheap to be sure of: orphans of the container come here.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        crate::log!("PR_SET_CHILD_SUBREAPER: {e}");
    }
    let mut fds = Adopting::new(&record.fds);
    let paused_us = now_ns().saturating_sub(record.handed_at_ns) / 1000;
    let server = crate::reactor::Reactor::take_over(record, &mut fds, paused_us, kind)
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

impl ShimRecord {
    fn core_dir(&self) -> PathBuf {
        self.core.dir()
    }
}
