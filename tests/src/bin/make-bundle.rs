//! `make-bundle DIR [--terminal] [-- ARGS...]`: writes a busybox OCI bundle (its own
//! rootfs under DIR/rootfs) for the demo and for people trying tether by hand.

use std::path::PathBuf;
use tether_tests::{make_rootfs, BundleSpec};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: make-bundle DIR [--terminal] [-- ARGS...]");
        std::process::exit(2);
    };
    let mut terminal = false;
    let mut cmd: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--terminal" => terminal = true,
            "--" => cmd.extend(args.by_ref()),
            other => cmd.push(other.to_string()),
        }
    }
    if cmd.is_empty() {
        cmd.push("sh".into());
    }
    let rootfs = dir.join("rootfs");
    if !rootfs.join("bin/sh").exists() {
        if let Err(e) = make_rootfs(&rootfs) {
            eprintln!("make-bundle: cannot make {}: {e}", rootfs.display());
            std::process::exit(1);
        }
    }
    let argv: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let spec = BundleSpec::new(&argv)
        .terminal(terminal)
        .rootfs(PathBuf::from("rootfs"));
    spec.write(&dir);
    println!("{}", dir.display());
}
