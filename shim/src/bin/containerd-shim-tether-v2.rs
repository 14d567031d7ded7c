//! `containerd-shim-tether-v2`: tether as containerd's runtime v2 shim
//! (`runtime_type = "io.containerd.tether.v2"`). See docs/CONTAINERD.md.

fn main() {
    std::process::exit(tether_shim::containerd_cli::main());
}
