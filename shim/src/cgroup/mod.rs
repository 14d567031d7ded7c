//! The container's cgroup, found from init's /proc/PID/cgroup: stats read straight
//! from the cgroup files (`stats`), and the OOM watch (`oom`). Both cgroup v1
//! (per-controller hierarchies, as on this hybrid machine) and v2 (one unified
//! hierarchy) are handled; a controller found on v1 is read there, else on v2.

mod oom;
mod stats;

pub use oom::{read_oom_kills, OomNotifier};

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Where the container's cgroup lives, found from init's /proc/PID/cgroup at create.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Cgroup {
    /// v1: controller name -> the container's directory in that hierarchy.
    v1: HashMap<String, PathBuf>,
    /// v2: the container's directory in the unified hierarchy.
    v2: Option<PathBuf>,
}

pub(crate) fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events...).
pub(crate) fn keyed(path: &Path, key: &str) -> Option<u64> {
    read(path)?
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl Cgroup {
    /// The cgroup of `pid`, resolved against the mounted hierarchies.
    pub fn of_pid(pid: i32) -> Result<Cgroup, String> {
        let membership = read(Path::new(&format!("/proc/{pid}/cgroup")))
            .ok_or_else(|| format!("cannot read /proc/{pid}/cgroup"))?;
        let mounts = read(Path::new("/proc/self/mountinfo")).unwrap_or_default();
        Ok(Self::resolve(&membership, &mounts))
    }

    fn resolve(membership: &str, mountinfo: &str) -> Cgroup {
        // (mount root, mount point, fstype, super options)
        let mounts: Vec<(&str, &str, &str, &str)> = mountinfo
            .lines()
            .filter_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let pre: Vec<&str> = pre.split_whitespace().collect();
                let post: Vec<&str> = post.split_whitespace().collect();
                Some((
                    *pre.get(3)?,
                    *pre.get(4)?,
                    *post.first()?,
                    *post.get(2).unwrap_or(&""),
                ))
            })
            .filter(|m| m.2 == "cgroup" || m.2 == "cgroup2")
            .collect();
        let join = |root: &str, point: &str, path: &str| {
            let rel = path.strip_prefix(root).unwrap_or(path).trim_start_matches('/');
            Path::new(point).join(rel)
        };
        let mut cg = Cgroup::default();
        for line in membership.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if controllers.is_empty() {
                if let Some(m) = mounts.iter().find(|m| m.2 == "cgroup2") {
                    cg.v2 = Some(join(m.0, m.1, path));
                }
                continue;
            }
            for controller in controllers.split(',') {
                let mounted = mounts
                    .iter()
                    .find(|m| m.2 == "cgroup" && m.3.split(',').any(|o| o == controller));
                if let Some(m) = mounted {
                    cg.v1.insert(controller.to_string(), join(m.0, m.1, path));
                }
            }
        }
        cg
    }

    /// The pids in the cgroup (`cgroup.procs`: pids on v1, else any v1 hierarchy,
    /// else v2); none once the cgroup is gone.
    pub fn procs(&self) -> Vec<i32> {
        let dir = self
            .v1("pids")
            .or_else(|| self.v1.values().next().map(PathBuf::as_path))
            .or(self.v2.as_deref());
        dir.and_then(|d| read(&d.join("cgroup.procs")))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Thaws a frozen cgroup (`freezer.state` on v1, `cgroup.freeze` on v2), as
    /// runc does after a SIGKILL to a paused container: a frozen process cannot die.
    pub fn thaw(&self) -> Result<(), String> {
        let (file, value) = match (self.v1("freezer"), self.v2_for("freezer")) {
            (Some(dir), _) => (dir.join("freezer.state"), "THAWED"),
            (None, Some(dir)) => (dir.join("cgroup.freeze"), "0"),
            (None, None) => return Err("no freezer cgroup found".to_string()),
        };
        fs::write(&file, value).map_err(|e| format!("cannot thaw {}: {e}", file.display()))
    }

    pub(crate) fn v1(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// The v2 directory, when `controller` is not on a v1 hierarchy.
    pub(crate) fn v2_for(&self, controller: &str) -> Option<&Path> {
        if self.v1.contains_key(controller) {
            None
        } else {
            self.v2.as_deref()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";

    #[test]
    fn hybrid_resolves_v1_controllers_and_v2() {
        let cg = Cgroup::resolve("8:pids:/c1\n4:memory:/a/c1\n1:cpu:/c1\n0::/u/c1\n", MOUNTS);
        assert_eq!(cg.v1("memory"), Some(Path::new("/sys/fs/cgroup/memory/a/c1")));
        assert_eq!(cg.v1("pids"), Some(Path::new("/sys/fs/cgroup/pids/c1")));
        assert_eq!(cg.v2.as_deref(), Some(Path::new("/sys/fs/cgroup/unified/u/c1")));
        assert_eq!(cg.v2_for("memory"), None);
        assert_eq!(cg.v2_for("io"), Some(Path::new("/sys/fs/cgroup/unified/u/c1")));
    }

    #[test]
    fn pure_v2() {
        let mounts = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw";
        let cg = Cgroup::resolve("0::/system.slice/c1\n", mounts);
        assert!(cg.v1.is_empty());
        assert_eq!(
            cg.v2_for("memory"),
            Some(Path::new("/sys/fs/cgroup/system.slice/c1"))
        );
    }

    #[test]
    fn mount_roots_are_stripped() {
        let mounts = "35 31 0:32 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory";
        let cg = Cgroup::resolve("4:memory:/outer/c1\n", mounts);
        assert_eq!(cg.v1("memory"), Some(Path::new("/sys/fs/cgroup/memory/c1")));
    }

    #[test]
    fn keyed_files() {
        let dir = std::env::temp_dir().join(format!("tether-cg-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("memory.oom_control");
        fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        assert_eq!(keyed(&f, "oom_kill"), Some(3));
        assert_eq!(keyed(&f, "under_oom"), Some(0));
        assert_eq!(keyed(&f, "oom"), None);
        fs::remove_dir_all(dir).unwrap();
    }
}
