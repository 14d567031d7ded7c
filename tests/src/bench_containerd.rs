//! The benchmark's containerd part (included by src/bin/bench.rs): containerd's
//! own helpers for the bench's private containerd, and "tether under containerd"
//! (containerd-shim-tether-v2) measured beside containerd-shim-runc-v2 in the same
//! run, runs interleaved: `ctr run -d` latency, exit → TaskExit latency, output
//! through containerd's FIFOs, and shim memory per container at 50 idle.

use super::*;
use tether_tests::containerd::Containerd;

/// The system name of tether under containerd in the bench's samples.
pub const TETHER_CTD: &str = "tether-ctd";
/// containerd-shim-runc-v2's system name (the bench's "containerd").
const RUNC_SHIM: &str = "containerd";

/// The bench's private containerd, serving `namespace`; tether's shims keep their
/// state and runc's on the bench's tmpfs.
pub fn start_containerd(work: &Path, namespace: &str) -> Containerd {
    let state = work.join("tstate").display().to_string();
    let runc = work.join("runc").display().to_string();
    Containerd::start_with(
        &work.join("containerd"),
        namespace,
        &[("TETHER_STATE_ROOT", &state), ("TETHER_RUNTIME_ROOT", &runc)],
        false,
    )
}

/// The bench's uses of its containerd.
pub trait CtdBench {
    /// An idle `sleep`, no stdio, with containerd-shim-runc-v2 (`runtime` None) or
    /// the shim at `runtime`.
    fn run_sleep_on(&self, runtime: Option<&Path>, rootfs: &Path, id: &str);
    fn run_sleep(&self, rootfs: &Path, id: &str) {
        self.run_sleep_on(None, rootfs, id)
    }
    fn remove(&self, id: &str);
    /// containerd-shim-runc-v2's pid for task `id`.
    fn shim_pid(&self, id: &str) -> i32;
}

impl CtdBench for Containerd {
    fn run_sleep_on(&self, runtime: Option<&Path>, rootfs: &Path, id: &str) {
        self.run_detached_sleep(runtime, &["--null-io"], rootfs, id);
    }

    fn remove(&self, id: &str) {
        let _ = self.ctr().args(["task", "kill", "-s", "KILL", id]).output();
        for _ in 0..200 {
            if self
                .ctr()
                .args(["task", "rm", "-f", id])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.ctr().args(["container", "rm", id]).output();
    }

    fn shim_pid(&self, id: &str) -> i32 {
        let pat = format!("containerd-shim-runc-v2 -namespace {} -id {id} ", self.namespace);
        let mut found = 0;
        wait_for("containerd shim pid", Duration::from_secs(10), || {
            found = pgrep(&pat);
            found > 0
        });
        found
    }
}

impl Bench {
    /// The runtime containerd is given for `sys`: None for its own runc shim.
    fn ctd_runtime(sys: &str) -> Option<PathBuf> {
        (sys == TETHER_CTD).then(|| binary("containerd-shim-tether-v2"))
    }

    /// The shim serving task `id` under containerd.
    fn ctd_shim_pid(&self, sys: &str, id: &str) -> i32 {
        if sys != TETHER_CTD {
            return self.ctd.shim_pid(id);
        }
        let file = self
            .work
            .join("tstate")
            .join(&self.ctd.namespace)
            .join(id)
            .join("shim.pid");
        let mut pid = 0;
        wait_for("tether shim pid", Duration::from_secs(10), || {
            pid = fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        });
        pid
    }

    /// Every figure of tether under containerd, each run interleaved with one of
    /// containerd-shim-runc-v2 (whose samples join the "containerd" column).
    pub fn tether_under_containerd(&mut self, runs: usize, mb: usize, n_idle: usize) {
        eprintln!("bench: tether under containerd: start and exit ({runs} runs each, interleaved)");
        for _ in 0..runs {
            for sys in [RUNC_SHIM, TETHER_CTD] {
                let id = self.id("cs");
                let runtime = Self::ctd_runtime(sys);
                let t = Instant::now();
                self.ctd.run_sleep_on(runtime.as_deref(), &self.rootfs, &id);
                let d = ms(t.elapsed());
                self.ctd.remove(&id);
                self.record("start_ms", sys, d);
            }
            for sys in [RUNC_SHIM, TETHER_CTD] {
                let d = self.ctd_exit_latency(sys);
                self.record("exit_ms", sys, d);
            }
        }
        eprintln!("bench: tether under containerd: output through containerd's FIFOs");
        for _ in 0..(if self.quick { 1 } else { 2 }) {
            for sys in [RUNC_SHIM, TETHER_CTD] {
                let (mbps, cpu) = self.ctd_throughput(sys, mb);
                self.record("throughput_mbps", sys, mbps);
                self.record("cpu_s_per_gb", sys, cpu);
            }
        }
        eprintln!("bench: tether under containerd: idle memory");
        self.ctd_idle_memory(TETHER_CTD, n_idle);
        let kb = fs::metadata(binary("containerd-shim-tether-v2")).unwrap().len() as f64 / 1024.0;
        self.record("binary_kb", TETHER_CTD, kb);
    }

    /// Kill the task's process; time from its pidfd becoming readable to the
    /// TaskExit event reaching `ctr events`.
    pub fn ctd_exit_latency(&mut self, sys: &str) -> f64 {
        let id = self.id("x");
        let runtime = Self::ctd_runtime(sys);
        self.ctd.run_sleep_on(runtime.as_deref(), &self.rootfs, &id);
        let pid = self.ctd.task_pid(&id);
        let mut events = self.ctd.ctr_events(Duration::from_millis(150));
        let stdout = events.stdout.take().unwrap();
        let fd = stdout.as_raw_fd();
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let want = format!("\"container_id\":\"{id}\"");
        let d = time_exit(pid, fd, || {
            line.clear();
            r.read_line(&mut line).unwrap();
            line.contains("/tasks/exit") && line.contains(&want)
        });
        let _ = events.kill();
        let _ = events.wait();
        self.ctd.remove(&id);
        d
    }

    /// `mb` MiB from the task's stdout through containerd's FIFOs to ctr's stdout:
    /// (MB/s, shim CPU seconds per GB).
    pub fn ctd_throughput(&mut self, sys: &str, mb: usize) -> (f64, f64) {
        let id = self.id("t");
        let bytes = (mb as u64) << 20;
        let mut c = self.ctd.ctr();
        c.arg("run");
        if let Some(r) = Self::ctd_runtime(sys) {
            c.arg("--runtime").arg(r);
        }
        let t = Instant::now();
        let mut child = c
            .arg("--rootfs")
            .arg(&self.rootfs)
            .args([
                id.as_str(),
                "/bin/dd",
                "if=/dev/zero",
                "bs=1M",
                &format!("count={mb}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let shim = self.ctd_shim_pid(sys, &id);
        let sampler = std::thread::spawn(move || {
            let mut last = 0.0;
            while let Some(s) = cpu_seconds(shim) {
                last = s;
                std::thread::sleep(Duration::from_millis(5));
            }
            last
        });
        let got = drain_blocking(stdout);
        let d = t.elapsed();
        let _ = child.wait();
        self.ctd.remove(&id);
        let cpu = sampler.join().unwrap();
        assert_eq!(got, bytes);
        let per_gb = cpu * (1u64 << 30) as f64 / bytes as f64;
        (bytes as f64 / 1e6 / d.as_secs_f64(), per_gb)
    }

    /// One idle task alone, then `n` idle together: the shims' memory.
    pub fn ctd_idle_memory(&mut self, sys: &str, n: usize) {
        let runtime = Self::ctd_runtime(sys);
        let mut ids = Vec::new();
        for _ in 0..n {
            let id = self.id("m");
            self.ctd.run_sleep_on(runtime.as_deref(), &self.rootfs, &id);
            if ids.is_empty() {
                let pid = self.ctd_shim_pid(sys, &id);
                self.single_figures(sys, pid);
            }
            ids.push(id);
        }
        let pids: Vec<i32> = ids.iter().map(|id| self.ctd_shim_pid(sys, id)).collect();
        self.memory_figures(sys, &pids);
        for id in &ids {
            self.ctd.remove(id);
        }
    }

    /// The table of tether under containerd beside containerd-shim-runc-v2, and
    /// the ratios against the targets.
    pub fn containerd_front_report(&self) -> Value {
        let rows = [
            "start_ms",
            "exit_ms",
            "throughput_mbps",
            "cpu_s_per_gb",
            "private_dirty_per_container_kb",
            "pss_per_container_kb",
            "idle_private_dirty_kb",
            "idle_pss_kb",
            "idle_wakeups_per_s",
            "fds_per_container",
            "binary_kb",
        ];
        println!(
            "\n{:<34} {:>24} {:>24}   (tether under containerd)",
            "figure (median, min-max)", "containerd-shim-runc-v2", "containerd-shim-tether-v2"
        );
        let mut figures = serde_json::Map::new();
        for figure in rows {
            let mut row = serde_json::Map::new();
            let mut cells = Vec::new();
            for sys in [RUNC_SHIM, TETHER_CTD] {
                let v = self.samples.get(figure).and_then(|m| m.get(sys));
                let cell = match v {
                    Some(v) => {
                        let (med, lo, hi) = stats(v);
                        row.insert(
                            sys.into(),
                            json!({"median": med, "min": lo, "max": hi, "samples": v}),
                        );
                        format!("{med:.2} ({lo:.2}-{hi:.2})")
                    }
                    None => "-".into(),
                };
                cells.push(cell);
            }
            println!("{figure:<34} {:>24} {:>24}", cells[0], cells[1]);
            figures.insert(figure.into(), Value::Object(row));
        }
        let m = |f: &str, s: &str| self.median(f, s);
        let ratios = [
            (
                "private dirty per container: tether-ctd/runc shim",
                m("private_dirty_per_container_kb", TETHER_CTD)
                    / m("private_dirty_per_container_kb", RUNC_SHIM),
                0.1,
                true,
            ),
            (
                "private dirty per container: tether-ctd / 110 kB",
                m("private_dirty_per_container_kb", TETHER_CTD) / 110.0,
                1.0,
                true,
            ),
            (
                "idle wakeups per second: tether-ctd",
                m("idle_wakeups_per_s", TETHER_CTD),
                0.0,
                true,
            ),
            (
                "PSS per container: tether-ctd/runc shim",
                m("pss_per_container_kb", TETHER_CTD) / m("pss_per_container_kb", RUNC_SHIM),
                0.1,
                true,
            ),
            (
                "ctr run -d: tether-ctd/runc shim",
                m("start_ms", TETHER_CTD) / m("start_ms", RUNC_SHIM),
                1.0,
                true,
            ),
            (
                "exit -> TaskExit: tether-ctd/runc shim",
                m("exit_ms", TETHER_CTD) / m("exit_ms", RUNC_SHIM),
                0.5,
                true,
            ),
            (
                "throughput: tether-ctd/runc shim",
                m("throughput_mbps", TETHER_CTD) / m("throughput_mbps", RUNC_SHIM),
                1.0,
                false,
            ),
        ];
        let rs = report_ratios("ratio (tether under containerd)", &ratios);
        json!({"figures": figures, "ratios": rs})
    }
}
