//! The container's cgroup: stats read straight from the cgroup files (no runtime call,
//! nothing resident), and the OOM watch. Both cgroup v1 (per-controller hierarchies,
//! as on this hybrid machine) and v2 (one unified hierarchy) are handled; a
//! controller found on v1 is read there, else on v2.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use tether_protocol::Stats;

/// Where the container's cgroup lives, found from init's /proc/PID/cgroup at create.
#[derive(Debug, Clone, Default)]
pub struct Cgroup {
    /// v1: controller name -> the container's directory in that hierarchy.
    v1: HashMap<String, PathBuf>,
    /// v2: the container's directory in the unified hierarchy.
    v2: Option<PathBuf>,
}

/// v1 limits above this mean "unlimited" (the kernel reports PAGE_COUNTER_MAX pages).
const V1_UNLIMITED: u64 = 1 << 62;
/// USER_HZ: the unit of cpuacct.stat.
const USER_HZ_NS: u64 = 10_000_000;

fn read(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok()
}

fn read_u64(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// `key value` lines (memory.stat, cpu.stat, memory.events...).
fn keyed(path: &Path, key: &str) -> Option<u64> {
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

    fn v1(&self, controller: &str) -> Option<&Path> {
        self.v1.get(controller).map(PathBuf::as_path)
    }

    /// The v2 directory, when `controller` is not on a v1 hierarchy.
    fn v2_for(&self, controller: &str) -> Option<&Path> {
        if self.v1.contains_key(controller) {
            None
        } else {
            self.v2.as_deref()
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats {
            cgroup_version: if self.v1.contains_key("memory") { 1 } else { 2 },
            ..Default::default()
        };
        if let Some(d) = self.v1("cpuacct") {
            s.cpu.usage_ns = read_u64(&d.join("cpuacct.usage"));
            s.cpu.user_ns = keyed(&d.join("cpuacct.stat"), "user").map(|t| t * USER_HZ_NS);
            s.cpu.system_ns = keyed(&d.join("cpuacct.stat"), "system").map(|t| t * USER_HZ_NS);
        } else if let Some(d) = self.v2_for("cpuacct") {
            let f = d.join("cpu.stat");
            s.cpu.usage_ns = keyed(&f, "usage_usec").map(|u| u * 1000);
            s.cpu.user_ns = keyed(&f, "user_usec").map(|u| u * 1000);
            s.cpu.system_ns = keyed(&f, "system_usec").map(|u| u * 1000);
        }
        if let Some(d) = self.v1("cpu") {
            s.cpu.nr_throttled = keyed(&d.join("cpu.stat"), "nr_throttled");
            s.cpu.throttled_ns = keyed(&d.join("cpu.stat"), "throttled_time");
        } else if let Some(d) = self.v2_for("cpu") {
            s.cpu.nr_throttled = keyed(&d.join("cpu.stat"), "nr_throttled");
            s.cpu.throttled_ns = keyed(&d.join("cpu.stat"), "throttled_usec").map(|u| u * 1000);
        }
        if let Some(d) = self.v1("memory") {
            s.memory.usage = read_u64(&d.join("memory.usage_in_bytes"));
            s.memory.limit = read_u64(&d.join("memory.limit_in_bytes")).filter(|l| *l < V1_UNLIMITED);
            s.memory.max_usage = read_u64(&d.join("memory.max_usage_in_bytes"));
            s.memory.failcnt = read_u64(&d.join("memory.failcnt"));
        } else if let Some(d) = self.v2_for("memory") {
            s.memory.usage = read_u64(&d.join("memory.current"));
            s.memory.limit = read_u64(&d.join("memory.max"));
            s.memory.max_usage = read_u64(&d.join("memory.peak"));
            s.memory.failcnt = keyed(&d.join("memory.events"), "max");
        }
        s.memory.oom_kills = self.oom_kills();
        let pids = self.v1("pids").or_else(|| self.v2_for("pids"));
        if let Some(d) = pids {
            s.pids.current = read_u64(&d.join("pids.current"));
            s.pids.limit = read_u64(&d.join("pids.max"));
        }
        if let Some(d) = self.v1("blkio") {
            let f = d.join("blkio.throttle.io_service_bytes");
            let total = |op: &str| {
                read(&f).map(|t| {
                    t.lines()
                        .filter_map(|l| {
                            let w: Vec<&str> = l.split_whitespace().collect();
                            (w.len() == 3 && w[1] == op)
                                .then(|| w[2].parse::<u64>().ok())
                                .flatten()
                        })
                        .sum()
                })
            };
            s.blkio.read_bytes = total("Read");
            s.blkio.write_bytes = total("Write");
        } else if let Some(d) = self.v2_for("io") {
            let sum = |key: &str| {
                read(&d.join("io.stat")).map(|t| {
                    t.split_whitespace()
                        .filter_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
                        .sum()
                })
            };
            s.blkio.read_bytes = sum("rbytes");
            s.blkio.write_bytes = sum("wbytes");
        }
        s
    }

    /// The file that holds the OOM kill count, opened once (see [`read_oom_kills`]).
    pub fn oom_counter_file(&self) -> Option<fs::File> {
        let path = match self.v1("memory") {
            Some(d) => d.join("memory.oom_control"),
            None => self.v2_for("memory")?.join("memory.events"),
        };
        fs::File::open(path).ok()
    }

    /// How many processes the OOM killer has killed in this cgroup.
    pub fn oom_kills(&self) -> Option<u64> {
        if let Some(d) = self.v1("memory") {
            keyed(&d.join("memory.oom_control"), "oom_kill")
        } else {
            keyed(&self.v2_for("memory")?.join("memory.events"), "oom_kill")
        }
    }

    /// An fd that becomes readable when an OOM happens: v1, an eventfd registered on
    /// memory.oom_control; v2, an inotify watch on memory.events.
    pub fn oom_notifier(&self) -> Result<OomNotifier, String> {
        if let Some(d) = self.v1("memory") {
            let control = fs::File::open(d.join("memory.oom_control"))
                .map_err(|e| format!("memory.oom_control: {e}"))?;
            // SAFETY: eventfd returns a new descriptor or -1.
            let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if efd < 0 {
                return Err(format!("eventfd: {}", std::io::Error::last_os_error()));
            }
            // SAFETY: efd is a fresh descriptor we own.
            let efd = unsafe { OwnedFd::from_raw_fd(efd) };
            let line = format!("{} {}", efd.as_raw_fd(), control.as_raw_fd());
            fs::write(d.join("cgroup.event_control"), line)
                .map_err(|e| format!("cgroup.event_control: {e}"))?;
            return Ok(OomNotifier {
                fd: efd,
                _control: Some(control),
            });
        }
        let dir = self.v2_for("memory").ok_or("no memory cgroup")?;
        // SAFETY: inotify_init1 returns a new descriptor or -1.
        let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if ifd < 0 {
            return Err(format!("inotify: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: ifd is a fresh descriptor we own.
        let ifd = unsafe { OwnedFd::from_raw_fd(ifd) };
        let path = std::ffi::CString::new(dir.join("memory.events").as_os_str().as_encoded_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: valid descriptor and NUL-terminated path.
        if unsafe { libc::inotify_add_watch(ifd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) } < 0 {
            return Err(format!(
                "inotify on memory.events: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(OomNotifier {
            fd: ifd,
            _control: None,
        })
    }
}

/// The `oom_kill` count from an open memory.oom_control (v1) or memory.events (v2):
/// cgroup files are generated afresh by each read from offset 0.
pub fn read_oom_kills(file: &fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 512];
    let n = file.read_at(&mut buf, 0).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
}

/// The OOM watch's fd; drain it after each readiness.
pub struct OomNotifier {
    fd: OwnedFd,
    /// v1: memory.oom_control must stay open for the eventfd registration to live.
    _control: Option<fs::File>,
}

impl OomNotifier {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn drain(&self) {
        let mut buf = [0u8; 4096];
        // SAFETY: reads into our own buffer until the non-blocking fd is empty.
        while unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
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
