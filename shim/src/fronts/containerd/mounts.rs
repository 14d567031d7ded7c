//! The container's rootfs as containerd hands it over: a list of mounts (a bind
//! mount from the native snapshotter, an overlay from overlayfs; empty for
//! `ctr run --rootfs`, whose config.json names the directory itself), mounted on
//! BUNDLE/rootfs at Create and unmounted after Delete, and by `delete` after a
//! shim died. Option words follow mount(8), as containerd's own mount package reads them.

use super::proto::Mount;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use std::path::Path;

/// Option words that are mount flags: (word, set these, clear these).
const FLAGS: &[(&str, MsFlags, MsFlags)] = &[
    ("async", MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
    ("atime", MsFlags::empty(), MsFlags::MS_NOATIME),
    ("bind", MsFlags::MS_BIND, MsFlags::empty()),
    ("defaults", MsFlags::empty(), MsFlags::empty()),
    ("dev", MsFlags::empty(), MsFlags::MS_NODEV),
    ("diratime", MsFlags::empty(), MsFlags::MS_NODIRATIME),
    ("dirsync", MsFlags::MS_DIRSYNC, MsFlags::empty()),
    ("exec", MsFlags::empty(), MsFlags::MS_NOEXEC),
    ("noatime", MsFlags::MS_NOATIME, MsFlags::empty()),
    ("nodev", MsFlags::MS_NODEV, MsFlags::empty()),
    ("nodiratime", MsFlags::MS_NODIRATIME, MsFlags::empty()),
    ("noexec", MsFlags::MS_NOEXEC, MsFlags::empty()),
    ("norelatime", MsFlags::empty(), MsFlags::MS_RELATIME),
    ("nostrictatime", MsFlags::empty(), MsFlags::MS_STRICTATIME),
    ("nosuid", MsFlags::MS_NOSUID, MsFlags::empty()),
    ("rbind", MsFlags::MS_BIND.union(MsFlags::MS_REC), MsFlags::empty()),
    ("relatime", MsFlags::MS_RELATIME, MsFlags::empty()),
    ("ro", MsFlags::MS_RDONLY, MsFlags::empty()),
    ("rw", MsFlags::empty(), MsFlags::MS_RDONLY),
    ("strictatime", MsFlags::MS_STRICTATIME, MsFlags::empty()),
    ("suid", MsFlags::empty(), MsFlags::MS_NOSUID),
    ("sync", MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
];

/// Propagation words: applied by a mount call of their own, after the mount.
const PROPAGATION: &[(&str, MsFlags)] = &[
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

/// The kernel takes at most a page of mount data.
const MAX_DATA: usize = 4095;

struct Parsed {
    flags: MsFlags,
    propagation: MsFlags,
    data: String,
}

fn parse(options: &[String]) -> Parsed {
    let mut p = Parsed {
        flags: MsFlags::empty(),
        propagation: MsFlags::empty(),
        data: String::new(),
    };
    for o in options {
        if let Some((_, set, clear)) = FLAGS.iter().find(|(w, ..)| w == o) {
            p.flags = (p.flags - *clear) | *set;
        } else if let Some((_, prop)) = PROPAGATION.iter().find(|(w, _)| w == o) {
            p.propagation |= *prop;
        } else {
            if !p.data.is_empty() {
                p.data.push(',');
            }
            p.data.push_str(o);
        }
    }
    p
}

/// Mounts `mounts` on `rootfs`, in order. On failure, what was mounted is undone.
pub fn mount_all(mounts: &[Mount], rootfs: &Path) -> Result<(), String> {
    for (i, m) in mounts.iter().enumerate() {
        if let Err(e) = mount_one(m, rootfs) {
            if i > 0 {
                let _ = unmount_all(rootfs);
            }
            return Err(e);
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, rootfs: &Path) -> Result<(), String> {
    let target = match m.target.trim_start_matches('/') {
        "" => rootfs.to_path_buf(),
        t => rootfs.join(t),
    };
    let p = parse(&m.options);
    let what = || format!("mount {} {} on {}", m.r#type, m.source, target.display());
    if p.data.len() > MAX_DATA {
        return Err(format!(
            "{}: its options are {} bytes, over the kernel's {MAX_DATA}",
            what(),
            p.data.len()
        ));
    }
    let bind = p.flags.contains(MsFlags::MS_BIND);
    let fstype = (!bind).then_some(m.r#type.as_str());
    let data = (!p.data.is_empty()).then_some(p.data.as_str());
    nix::mount::mount(Some(m.source.as_str()), &target, fstype, p.flags, data)
        .map_err(|e| format!("{}: {e}", what()))?;
    // A bind mount ignores every flag but MS_REC the first time: remount to apply them.
    let extra = p.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
    if bind && !extra.is_empty() {
        let flags = extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
        if let Err(e) = nix::mount::mount(None::<&str>, &target, None::<&str>, flags, None::<&str>) {
            let _ = nix::mount::umount2(&target, MntFlags::MNT_DETACH);
            return Err(format!("{} (remount with {extra:?}): {e}", what()));
        }
    }
    if !p.propagation.is_empty() {
        nix::mount::mount(None::<&str>, &target, None::<&str>, p.propagation, None::<&str>)
            .map_err(|e| format!("{} (propagation): {e}", what()))?;
    }
    Ok(())
}

/// Unmounts everything mounted on `rootfs` (nothing mounted is fine). A busy mount
/// is detached rather than left behind.
pub fn unmount_all(rootfs: &Path) -> Result<(), String> {
    for _ in 0..16 {
        match nix::mount::umount2(rootfs, MntFlags::empty()) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) => {
                nix::mount::umount2(rootfs, MntFlags::MNT_DETACH)
                    .map_err(|e| format!("unmount {}: {e}", rootfs.display()))?;
            }
            Err(e) => return Err(format!("unmount {}: {e}", rootfs.display())),
        }
    }
    Err(format!(
        "unmount {}: still mounted after 16 unmounts",
        rootfs.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let p = parse(&words(&["rbind", "ro", "rprivate"]));
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY);
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(p.data.is_empty());
        let p = parse(&words(&[
            "index=off",
            "workdir=/w",
            "upperdir=/u",
            "lowerdir=/l",
            "ro",
            "rw",
        ]));
        assert_eq!(p.flags, MsFlags::empty());
        assert_eq!(p.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/l");
    }
}
