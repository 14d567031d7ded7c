//! Stats as the metrics types containerd decodes: `io.containerd.cgroups.v1.Metrics`
//! and `io.containerd.cgroups.v2.Metrics` (github.com/containerd/cgroups
//! stats/v1/metrics.proto, v2/stats/metrics.proto), filled from the core's cgroup
//! figures. Only the fields the core reads are declared (the rest decode as zero).

use super::proto::Any;
use tether_protocol::Stats;

/// cgroup v1's "no limit" (PAGE_COUNTER_MAX pages), as the kernel reports it.
const V1_UNLIMITED: u64 = 0x7FFF_FFFF_FFFF_F000;

mod v1 {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "2")]
        pub pids: Option<PidsStat>,
        #[prost(message, optional, tag = "3")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
        #[prost(message, optional, tag = "5")]
        pub blkio: Option<BlkIoStat>,
        #[prost(message, optional, tag = "9")]
        pub memory_oom_control: Option<MemoryOomControl>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct PidsStat {
        #[prost(uint64, tag = "1")]
        pub current: u64,
        #[prost(uint64, tag = "2")]
        pub limit: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct CpuStat {
        #[prost(message, optional, tag = "1")]
        pub usage: Option<CpuUsage>,
        #[prost(message, optional, tag = "2")]
        pub throttling: Option<Throttle>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct CpuUsage {
        #[prost(uint64, tag = "1")]
        pub total: u64,
        #[prost(uint64, tag = "2")]
        pub kernel: u64,
        #[prost(uint64, tag = "3")]
        pub user: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct Throttle {
        #[prost(uint64, tag = "2")]
        pub throttled_periods: u64,
        #[prost(uint64, tag = "3")]
        pub throttled_time: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "18")]
        pub total_cache: u64,
        #[prost(uint64, tag = "19")]
        pub total_rss: u64,
        #[prost(uint64, tag = "21")]
        pub total_mapped_file: u64,
        #[prost(uint64, tag = "26")]
        pub total_pg_fault: u64,
        #[prost(uint64, tag = "27")]
        pub total_pg_maj_fault: u64,
        #[prost(uint64, tag = "30")]
        pub total_inactive_file: u64,
        #[prost(uint64, tag = "31")]
        pub total_active_file: u64,
        #[prost(message, optional, tag = "33")]
        pub usage: Option<MemoryEntry>,
        /// memory+swap, as containerd's cgroups library reports it.
        #[prost(message, optional, tag = "34")]
        pub swap: Option<MemoryEntry>,
        #[prost(message, optional, tag = "35")]
        pub kernel: Option<MemoryEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MemoryEntry {
        #[prost(uint64, tag = "1")]
        pub limit: u64,
        #[prost(uint64, tag = "2")]
        pub usage: u64,
        #[prost(uint64, tag = "3")]
        pub max: u64,
        #[prost(uint64, tag = "4")]
        pub failcnt: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct BlkIoStat {
        #[prost(message, repeated, tag = "1")]
        pub io_service_bytes_recursive: Vec<BlkIoEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct BlkIoEntry {
        #[prost(string, tag = "1")]
        pub op: String,
        #[prost(uint64, tag = "5")]
        pub value: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MemoryOomControl {
        #[prost(uint64, tag = "3")]
        pub oom_kill: u64,
    }
}

mod v2 {
    use prost::Message;

    #[derive(Clone, PartialEq, Message)]
    pub struct Metrics {
        #[prost(message, optional, tag = "1")]
        pub pids: Option<super::v1::PidsStat>,
        #[prost(message, optional, tag = "2")]
        pub cpu: Option<CpuStat>,
        #[prost(message, optional, tag = "4")]
        pub memory: Option<MemoryStat>,
        #[prost(message, optional, tag = "6")]
        pub io: Option<IoStat>,
        #[prost(message, optional, tag = "8")]
        pub memory_events: Option<MemoryEvents>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct CpuStat {
        #[prost(uint64, tag = "1")]
        pub usage_usec: u64,
        #[prost(uint64, tag = "2")]
        pub user_usec: u64,
        #[prost(uint64, tag = "3")]
        pub system_usec: u64,
        #[prost(uint64, tag = "5")]
        pub nr_throttled: u64,
        #[prost(uint64, tag = "6")]
        pub throttled_usec: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MemoryStat {
        #[prost(uint64, tag = "32")]
        pub usage: u64,
        #[prost(uint64, tag = "33")]
        pub usage_limit: u64,
        #[prost(uint64, tag = "36")]
        pub max_usage: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct IoStat {
        #[prost(message, repeated, tag = "1")]
        pub usage: Vec<IoEntry>,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct IoEntry {
        #[prost(uint64, tag = "3")]
        pub rbytes: u64,
        #[prost(uint64, tag = "4")]
        pub wbytes: u64,
    }

    #[derive(Clone, PartialEq, Message)]
    pub struct MemoryEvents {
        #[prost(uint64, tag = "3")]
        pub max: u64,
        #[prost(uint64, tag = "5")]
        pub oom_kill: u64,
    }
}

/// The core's stats as the Any containerd's `Stats` answer carries.
pub fn metrics(s: &Stats) -> Any {
    let n = |v: Option<u64>| v.unwrap_or(0);
    let pids = Some(v1::PidsStat {
        current: n(s.pids.current),
        limit: n(s.pids.limit),
    });
    if s.cgroup_version == 1 {
        let m = v1::Metrics {
            pids,
            cpu: Some(v1::CpuStat {
                usage: Some(v1::CpuUsage {
                    total: n(s.cpu.usage_ns),
                    kernel: n(s.cpu.system_ns),
                    user: n(s.cpu.user_ns),
                }),
                throttling: Some(v1::Throttle {
                    throttled_periods: n(s.cpu.nr_throttled),
                    throttled_time: n(s.cpu.throttled_ns),
                }),
            }),
            // Every entry present, as containerd's runc shim sends them (containerd's
            // CRI reports a metric only when its entry is there).
            memory: Some(v1::MemoryStat {
                total_cache: n(s.memory.cache),
                total_rss: n(s.memory.rss),
                total_mapped_file: n(s.memory.mapped_file),
                total_pg_fault: n(s.memory.pgfault),
                total_pg_maj_fault: n(s.memory.pgmajfault),
                total_inactive_file: n(s.memory.inactive_file),
                total_active_file: n(s.memory.active_file),
                usage: Some(v1::MemoryEntry {
                    limit: s.memory.limit.unwrap_or(V1_UNLIMITED),
                    usage: n(s.memory.usage),
                    max: n(s.memory.max_usage),
                    failcnt: n(s.memory.failcnt),
                }),
                swap: Some(v1::MemoryEntry {
                    usage: n(s.memory.usage) + n(s.memory.swap_usage),
                    ..Default::default()
                }),
                kernel: Some(v1::MemoryEntry {
                    usage: n(s.memory.kernel_usage),
                    ..Default::default()
                }),
            }),
            blkio: Some(v1::BlkIoStat {
                io_service_bytes_recursive: [("Read", s.blkio.read_bytes), ("Write", s.blkio.write_bytes)]
                    .into_iter()
                    .filter_map(|(op, v)| {
                        v.map(|value| v1::BlkIoEntry {
                            op: op.to_string(),
                            value,
                        })
                    })
                    .collect(),
            }),
            memory_oom_control: Some(v1::MemoryOomControl {
                oom_kill: n(s.memory.oom_kills),
            }),
        };
        return Any::pack("io.containerd.cgroups.v1.Metrics", &m);
    }
    let usec = |ns: Option<u64>| n(ns) / 1000;
    let m = v2::Metrics {
        pids,
        cpu: Some(v2::CpuStat {
            usage_usec: usec(s.cpu.usage_ns),
            user_usec: usec(s.cpu.user_ns),
            system_usec: usec(s.cpu.system_ns),
            nr_throttled: n(s.cpu.nr_throttled),
            throttled_usec: usec(s.cpu.throttled_ns),
        }),
        memory: Some(v2::MemoryStat {
            usage: n(s.memory.usage),
            usage_limit: s.memory.limit.unwrap_or(u64::MAX),
            max_usage: n(s.memory.max_usage),
        }),
        io: Some(v2::IoStat {
            usage: vec![v2::IoEntry {
                rbytes: n(s.blkio.read_bytes),
                wbytes: n(s.blkio.write_bytes),
            }],
        }),
        memory_events: Some(v2::MemoryEvents {
            max: n(s.memory.failcnt),
            oom_kill: n(s.memory.oom_kills),
        }),
    };
    Any::pack("io.containerd.cgroups.v2.Metrics", &m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn v1_and_v2_by_version() {
        let mut s = Stats {
            cgroup_version: 1,
            ..Default::default()
        };
        s.memory.usage = Some(4096);
        s.pids.current = Some(2);
        let a = metrics(&s);
        assert_eq!(a.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = v1::Metrics::decode(a.value.as_slice()).unwrap();
        let memory = m.memory.unwrap();
        let usage = memory.usage.unwrap();
        assert_eq!((usage.usage, usage.limit), (4096, V1_UNLIMITED));
        assert_eq!(memory.swap.map(|e| e.usage), Some(4096), "memory+swap");
        assert_eq!(memory.kernel.map(|e| e.usage), Some(0));
        assert_eq!(m.pids.unwrap().current, 2);
        s.cgroup_version = 2;
        s.cpu.usage_ns = Some(5_000);
        let a = metrics(&s);
        assert_eq!(a.type_url, "io.containerd.cgroups.v2.Metrics");
        let m = v2::Metrics::decode(a.value.as_slice()).unwrap();
        assert_eq!(m.cpu.unwrap().usage_usec, 5);
        assert_eq!(m.memory.unwrap().usage_limit, u64::MAX);
    }
}
