//! `tether-shim`: one per container. See docs/PROTOCOL.md for the wire contract.
//!
//! ```text
//! tether-shim start --id ID --bundle DIR [--runtime PATH] [--state-dir DIR | --state-root DIR]
//!                   [--runtime-root DIR] [--systemd-cgroup] [--runtime-arg ARG]...
//! tether-shim cleanup --id ID [--state-dir DIR | --state-root DIR]
//! tether-shim --version
//! tether-shim handover-versions        (what `upgrade` asks a new binary)
//! tether-shim take-over --record-fd N  (run by a shim's `upgrade`, not by hand)
//! ```

use std::path::PathBuf;
use tether_shim::cleanup;
use tether_shim::launch;
use tether_shim::runtime::Runtime;
use tether_shim::state_dir::{self, LaunchOptions, StateDir};

const USAGE: &str = "usage:
  tether-shim start --id ID --bundle DIR [--runtime PATH] [--state-dir DIR | --state-root DIR]
                    [--runtime-root DIR] [--systemd-cgroup] [--runtime-arg ARG]...
  tether-shim cleanup --id ID [--state-dir DIR | --state-root DIR]
  tether-shim --version";

#[derive(Default)]
struct Args {
    id: Option<String>,
    bundle: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    state_root: Option<PathBuf>,
    runtime: Runtime,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        runtime: Runtime {
            path: "runc".into(),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--id" => a.id = Some(value()?),
            "--bundle" => a.bundle = Some(PathBuf::from(value()?)),
            "--state-dir" => a.state_dir = Some(PathBuf::from(value()?)),
            "--state-root" => a.state_root = Some(PathBuf::from(value()?)),
            "--runtime" => a.runtime.path = value()?,
            "--runtime-root" => a.runtime.root = Some(value()?),
            "--systemd-cgroup" => a.runtime.systemd_cgroup = true,
            "--runtime-arg" => a.runtime.extra_args.push(value()?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(a)
}

fn state_dir(a: &Args, id: &str) -> StateDir {
    let dir = match (&a.state_dir, &a.state_root) {
        (Some(d), _) => d.clone(),
        (None, Some(root)) => root.join(id),
        (None, None) => PathBuf::from(state_dir::DEFAULT_ROOT).join(id),
    };
    StateDir::new(std::path::absolute(&dir).unwrap_or(dir))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("--version") | Some("version") => {
            println!(
                "tether-shim {} (protocol {})",
                tether_shim::handover::version(),
                tether_protocol::PROTOCOL_VERSION
            );
            0
        }
        Some("handover-versions") => {
            println!(
                "{}",
                tether_shim::handover::versions_line(tether_shim::upgrade::KIND)
            );
            0
        }
        Some("take-over") => tether_shim::launch::take_over_main(&args[1..], tether_shim::upgrade::KIND),
        Some("start") => start_main(&args[1..]),
        Some("cleanup") => cleanup_main(&args[1..]),
        _ => fail("a command is required"),
    };
    std::process::exit(code);
}

/// The subcommands run in frames of their own: `main`'s frame stays under a launched
/// shim's loop for its whole life, and every page of it is resident.
#[inline(never)]
fn start_main(args: &[String]) -> i32 {
    match start_options(args) {
        Ok(opts) => {
            tether_shim::memory::reexec_with_malloc_tunables();
            launch::start(opts)
        }
        Err(e) => fail(&e),
    }
}

#[inline(never)]
fn cleanup_main(args: &[String]) -> i32 {
    match parse(args).and_then(|a| {
        let id = a.id.clone().ok_or("--id is required")?;
        state_dir::validate_id("container id", &id)?;
        cleanup::cleanup(state_dir(&a, &id))
    }) {
        Ok(record) => {
            println!("{}", serde_json::to_string(&record).unwrap_or_default());
            0
        }
        Err(e) => {
            eprintln!("tether-shim cleanup: {e}");
            1
        }
    }
}

fn fail(msg: &str) -> i32 {
    eprintln!("tether-shim: {msg}\n{USAGE}");
    2
}

fn start_options(args: &[String]) -> Result<LaunchOptions, String> {
    let a = parse(args)?;
    let id = a.id.clone().ok_or("--id is required")?;
    state_dir::validate_id("container id", &id)?;
    let bundle = a.bundle.clone().ok_or("--bundle is required")?;
    let bundle = bundle
        .canonicalize()
        .map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    if !bundle.is_dir() {
        return Err(format!("bundle {} is not a directory", bundle.display()));
    }
    let dir = state_dir(&a, &id);
    Ok(LaunchOptions {
        id,
        bundle,
        state_dir: dir.root,
        runtime: a.runtime,
    })
}
