//! Container stats from the cgroup files: a few reads inside the loop instead of a
//! runtime process per call, and nothing resident.

use super::{keyed, read, read_u64, Cgroup};
use tether_protocol::Stats;

/// v1 limits above this mean "unlimited" (the kernel reports PAGE_COUNTER_MAX pages).
const V1_UNLIMITED: u64 = 1 << 62;
/// USER_HZ: the unit of cpuacct.stat.
const USER_HZ_NS: u64 = 10_000_000;
/// memory.stat keys for cache, rss, mapped_file, active_file, inactive_file, pgfault,
/// pgmajfault: v1 (after `total_`) and v2.
const MEMORY_STAT_V1: [&str; 7] = [
    "cache",
    "rss",
    "mapped_file",
    "active_file",
    "inactive_file",
    "pgfault",
    "pgmajfault",
];
const MEMORY_STAT_V2: [&str; 7] = [
    "file",
    "anon",
    "file_mapped",
    "active_file",
    "inactive_file",
    "pgfault",
    "pgmajfault",
];

/// `key value` of memory.stat's text.
fn stat_value(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Fills the memory.stat figures of `s` from the file's text, keys `prefix + keys[i]`.
fn memory_stat(s: &mut Stats, text: Option<String>, prefix: &str, keys: [&str; 7]) {
    let Some(text) = text else {
        return;
    };
    let v = |i: usize| stat_value(&text, &format!("{prefix}{}", keys[i]));
    let m = &mut s.memory;
    (m.cache, m.rss, m.mapped_file) = (v(0), v(1), v(2));
    (m.active_file, m.inactive_file, m.pgfault, m.pgmajfault) = (v(3), v(4), v(5), v(6));
}

impl Cgroup {
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
            s.memory.kernel_usage = read_u64(&d.join("memory.kmem.usage_in_bytes"));
            s.memory.swap_usage = read_u64(&d.join("memory.memsw.usage_in_bytes"))
                .map(|memsw| memsw.saturating_sub(s.memory.usage.unwrap_or(0)));
            memory_stat(&mut s, read(&d.join("memory.stat")), "total_", MEMORY_STAT_V1);
        } else if let Some(d) = self.v2_for("memory") {
            s.memory.usage = read_u64(&d.join("memory.current"));
            s.memory.limit = read_u64(&d.join("memory.max"));
            s.memory.max_usage = read_u64(&d.join("memory.peak"));
            s.memory.failcnt = keyed(&d.join("memory.events"), "max");
            s.memory.swap_usage = read_u64(&d.join("memory.swap.current"));
            let stat = read(&d.join("memory.stat"));
            s.memory.kernel_usage = stat.as_deref().and_then(|t| stat_value(t, "kernel"));
            memory_stat(&mut s, stat, "", MEMORY_STAT_V2);
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
}
