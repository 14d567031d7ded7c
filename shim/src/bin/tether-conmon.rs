//! `tether-conmon`: tether behind conmon's command line, for Podman and CRI-O
//! (containers.conf `[engine] conmon_path`). See docs/CONMON.md.

fn main() {
    std::process::exit(tether_shim::conmon_cli::main());
}
