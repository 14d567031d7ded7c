// Link tether-shim as a non-PIE executable: a PIE's .data.rel.ro (vtables, static
// tables) is relocated at load, which makes it private dirty memory in every shim
// (about 150 kB); non-PIE needs no such relocations, so those pages stay shared.
fn main() {
    for bin in ["tether-shim", "containerd-shim-tether-v2"] {
        println!("cargo:rustc-link-arg-bin={bin}=-no-pie");
    }
}
