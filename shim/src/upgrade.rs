//! The loop's side of upgrade in place (the mechanism is `handover`): an `upgrade`
//! a front took is checked, waits while the core has a runtime call in flight (new
//! requests wait with it, unread), then the shim's record is written and the new
//! binary exec'd. The new binary starts in [`take_over_main`], rebuilds the loop from
//! the record (`launch::take_over_main`), answers the `upgrade` and publishes
//! `upgraded`.

use crate::core::{Core, CoreRecord};
use crate::fronts::{Front, FrontRecord, UpgradeRequest};
use crate::handover::{self, Passing};
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

/// Now, in ns since the epoch: how the pause is measured across the exec.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Checks what an upgrade needs before it waits for anything: every front and the
/// core can be handed over, and the binary takes over from this one.
#[cold]
#[inline(never)]
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
#[cold]
#[inline(never)]
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
    let saved = crate::memory::tunables_for_exec();
    let e = nix::unistd::execv(&path, &argv).err();
    crate::memory::tunables_after_failed_exec(saved);
    drop(memfd);
    Err(format!(
        "cannot exec {}: {}",
        up.binary.display(),
        e.map_or("unknown error".to_string(), |e| e.to_string())
    ))
}
