//! `bench --scale` (included by src/bin/bench.rs): how the cost grows with the number
//! of containers, tether beside conmon and containerd-shim-runc-v2 (under ctr), and
//! bare runc where there is no monitor to compare:
//! - idle containers at 1, 10, 100 and 500: per-container private dirty, PSS and
//!   descriptors of the monitors, their wakeups, and the host's used memory (MemTotal
//!   - MemAvailable, other work on the machine included) over the run's baseline;
//! - start storms: 50 and 200 containers launched at once, launch -> running;
//! - an exit storm: 200 running containers SIGKILLed at once, time until the daemon
//!   side holds each exit status, and how many it missed;
//! - event fan-out: one shim, 100 subscribed clients, pause/resume events.
//!
//! Writes DIR/scale.json and DIR/scale.svg.

use super::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};

const SCALE_SYSTEMS: [&str; 3] = ["tether", "conmon", "containerd"];

/// What a scale run does; `--quick` is a smoke run of the harness.
struct Plan {
    idle_steps: Vec<usize>,
    storms: Vec<usize>,
    exit_storm: usize,
    clients: usize,
    /// pause + resume pairs: two events each.
    event_pairs: usize,
    wake_window: Duration,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                idle_steps: vec![1, 5],
                storms: vec![5],
                exit_storm: 5,
                clients: 5,
                event_pairs: 10,
                wake_window: QUICK_WAKE_WINDOW,
            }
        } else {
            Plan {
                idle_steps: vec![1, 10, 100, 500],
                storms: vec![50, 200],
                exit_storm: 200,
                clients: 100,
                event_pairs: 5_000,
                wake_window: WAKE_WINDOW,
            }
        }
    }
}

/// One running container of some system, enough to measure and remove it.
enum Running {
    Tether {
        client: Client,
        state: PathBuf,
        pid: i32,
    },
    Conmon {
        mon: Conmon,
        pid: i32,
    },
    Containerd {
        id: String,
    },
    Runc {
        id: String,
    },
}

/// Host memory in use, kB (MemTotal - MemAvailable).
fn host_used_kb() -> f64 {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    field("MemTotal:") - field("MemAvailable:")
}

/// p50, p99, max of `v`.
fn percentiles(v: &[f64]) -> (f64, f64, f64) {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let at = |q: f64| s[((s.len() as f64 * q).ceil() as usize).clamp(1, s.len()) - 1];
    (at(0.5), at(0.99), s[s.len() - 1])
}

impl Bench {
    /// The whole scale run; prints its tables and returns scale.json's content.
    pub fn scale(&mut self) -> Value {
        let plan = Plan::new(self.quick);
        let started = Instant::now();
        let idle = self.idle_curves(&plan);
        let storms = self.start_storms(&plan);
        let exits = self.exit_storm(&plan);
        let fanout = self.fan_out(&plan);
        json!({
            "quick": self.quick,
            "state_fs": state_fs(&self.work),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "took_s": started.elapsed().as_secs_f64(),
            "idle": idle,
            "start_storms": storms,
            "exit_storm": exits,
            "fan_out": fanout,
        })
    }

    /// Starts one idle `sleep` under `sys`.
    fn start_one(&self, sys: &str, id: &str, bundle: &Path) -> Running {
        match sys {
            "tether" => {
                let (mut client, state) = self.launch_shim("tether", id, bundle);
                client.create(&null_stdio()).unwrap();
                let pid = client.start().unwrap().pid;
                Running::Tether { client, state, pid }
            }
            "conmon" => {
                let mon = self.conmon_create(id, bundle);
                self.runc_ok(&["start", id]);
                let pid = fs::read_to_string(self.work.join("conmon").join(id).join("pidfile"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
                Running::Conmon { mon, pid }
            }
            "containerd" => {
                self.ctd.run_sleep(&self.rootfs, id);
                Running::Containerd { id: id.to_string() }
            }
            _ => {
                self.runc_run(id, bundle);
                Running::Runc { id: id.to_string() }
            }
        }
    }

    /// The monitor's pid (none for bare runc).
    fn monitor_pid(&self, r: &Running) -> Option<i32> {
        match r {
            Running::Tether { state, .. } => Some(Self::tether_pid(state)),
            Running::Conmon { mon, .. } => Some(mon.conmon_pid),
            Running::Containerd { id } => Some(self.ctd.shim_pid(id)),
            Running::Runc { .. } => None,
        }
    }

    fn remove_one(&self, r: Running) {
        match r {
            Running::Tether {
                mut client, state, ..
            } => Self::tether_remove(&mut client, &state),
            Running::Conmon { mon, .. } => self.conmon_remove(&mon),
            Running::Containerd { id } => self.ctd.remove(&id),
            Running::Runc { id } => self.runc_delete(&id),
        }
    }

    /// Removes everything in `all`, two at a time (the machine has two cores).
    fn remove_all(&self, all: Vec<Running>) {
        let queue = Mutex::new(all);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| loop {
                    let next = queue.lock().unwrap().pop();
                    match next {
                        Some(r) => self.remove_one(r),
                        None => break,
                    }
                });
            }
        });
    }

    fn idle_curves(&mut self, plan: &Plan) -> Value {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        let mut curves = serde_json::Map::new();
        println!(
            "\n{:<12} {:>6} {:>14} {:>12} {:>8} {:>10} {:>16}",
            "idle", "n", "priv dirty/ctr", "PSS/ctr", "fds/ctr", "wakeups/s", "host used +MB"
        );
        for sys in SCALE_SYSTEMS {
            eprintln!("bench: scale: idle {sys}");
            std::thread::sleep(Duration::from_secs(1));
            let base = host_used_kb();
            let mut all = Vec::new();
            let mut points = Vec::new();
            for &n in &plan.idle_steps {
                while all.len() < n {
                    let id = self.id("i");
                    all.push(self.start_one(sys, &id, &bundle));
                }
                std::thread::sleep(Duration::from_millis(500));
                let pids: Vec<i32> = all.iter().filter_map(|r| self.monitor_pid(r)).collect();
                let woken = wakeups_over(&pids, plan.wake_window);
                let mem: Vec<(f64, f64, f64)> = pids.iter().map(|p| smaps(*p)).collect();
                let k = pids.len() as f64;
                let point = json!({
                    "containers": n,
                    "private_dirty_per_container_kb": mem.iter().map(|m| m.1).sum::<f64>() / k,
                    "pss_per_container_kb": mem.iter().map(|m| m.0).sum::<f64>() / k,
                    "pss_sum_kb": mem.iter().map(|m| m.0).sum::<f64>(),
                    "fds_per_container": pids.iter().map(|p| open_fds(*p)).sum::<usize>() as f64 / k,
                    "wakeups_per_s_per_container": woken as f64 / k / plan.wake_window.as_secs_f64(),
                    "host_used_mb": (host_used_kb() - base) / 1024.0,
                });
                println!(
                    "{:<12} {:>6} {:>14.1} {:>12.1} {:>8.1} {:>10.3} {:>16.1}",
                    sys,
                    n,
                    point["private_dirty_per_container_kb"]
                        .as_f64()
                        .unwrap_or(f64::NAN),
                    point["pss_per_container_kb"].as_f64().unwrap_or(f64::NAN),
                    point["fds_per_container"].as_f64().unwrap_or(f64::NAN),
                    point["wakeups_per_s_per_container"].as_f64().unwrap_or(f64::NAN),
                    point["host_used_mb"].as_f64().unwrap_or(f64::NAN),
                );
                points.push(point);
            }
            self.remove_all(all);
            curves.insert(sys.into(), Value::Array(points));
        }
        Value::Object(curves)
    }

    /// `n` containers launched at once per system: each one's time from the storm's
    /// start to its process running.
    fn start_storms(&mut self, plan: &Plan) -> Value {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        let mut out = serde_json::Map::new();
        println!(
            "\n{:<12} {:>6} {:>10} {:>10} {:>10} {:>10}",
            "start storm", "n", "p50 ms", "p99 ms", "max ms", "total s"
        );
        for &n in &plan.storms {
            let mut row = serde_json::Map::new();
            for sys in ["runc", "tether", "conmon", "containerd"] {
                eprintln!("bench: scale: start storm of {n}, {sys}");
                let ids: Vec<String> = (0..n).map(|_| self.id("g")).collect();
                let barrier = Barrier::new(n + 1);
                let done = Mutex::new(Vec::new());
                let times = Mutex::new(Vec::new());
                let t0 = Mutex::new(Instant::now());
                std::thread::scope(|s| {
                    for id in &ids {
                        let (barrier, done, times, t0, bundle) = (&barrier, &done, &times, &t0, &bundle);
                        let this = &*self;
                        s.spawn(move || {
                            barrier.wait();
                            let r = this.start_one(sys, id, bundle);
                            let d = ms(t0.lock().unwrap().elapsed());
                            times.lock().unwrap().push(d);
                            done.lock().unwrap().push(r);
                        });
                    }
                    *t0.lock().unwrap() = Instant::now();
                    barrier.wait();
                });
                let times = times.into_inner().unwrap();
                let (p50, p99, max) = percentiles(&times);
                println!(
                    "{:<12} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>10.2}",
                    sys,
                    n,
                    p50,
                    p99,
                    max,
                    max / 1000.0
                );
                row.insert(
                    sys.into(),
                    json!({"p50_ms": p50, "p99_ms": p99, "max_ms": max, "total_s": max / 1000.0, "started": times.len()}),
                );
                self.remove_all(done.into_inner().unwrap());
            }
            out.insert(n.to_string(), Value::Object(row));
        }
        Value::Object(out)
    }

    /// `plan.exit_storm` running containers per system, their processes SIGKILLed at
    /// once: each exit's time from the first kill until the daemon side holds it.
    fn exit_storm(&mut self, plan: &Plan) -> Value {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        let n = plan.exit_storm;
        let limit = Duration::from_secs(120);
        let mut out = serde_json::Map::new();
        println!(
            "\n{:<12} {:>6} {:>10} {:>10} {:>10} {:>8}",
            "exit storm", "n", "p50 ms", "p99 ms", "last ms", "missed"
        );
        for sys in SCALE_SYSTEMS {
            eprintln!("bench: scale: exit storm of {n}, {sys}");
            let mut all = Vec::new();
            for _ in 0..n {
                let id = self.id("k");
                all.push(self.start_one(sys, &id, &bundle));
            }
            let mut times: Vec<f64> = Vec::new();
            match sys {
                "tether" => {
                    // One subscribed connection per shim, read by a thread of its own.
                    let mut subs = Vec::new();
                    let mut pids = Vec::new();
                    for r in &all {
                        if let Running::Tether { state, pid, .. } = r {
                            let mut c = Client::connect(state.join("shim.sock")).unwrap();
                            c.subscribe(None).unwrap();
                            c.set_timeout(Some(limit)).unwrap();
                            subs.push(c);
                            pids.push(*pid);
                        }
                    }
                    let seen = Mutex::new(Vec::new());
                    let barrier = Barrier::new(subs.len() + 1);
                    std::thread::scope(|s| {
                        let t0 = Instant::now();
                        for mut c in subs {
                            let (seen, barrier) = (&seen, &barrier);
                            s.spawn(move || {
                                barrier.wait();
                                while let Ok(e) = c.next_event() {
                                    if matches!(&e.body, tether_protocol::EventBody::Exit(r) if r.process == "init") {
                                        seen.lock().unwrap().push(ms(t0.elapsed()));
                                        break;
                                    }
                                }
                            });
                        }
                        barrier.wait();
                        for pid in &pids {
                            kill(*pid, libc::SIGKILL);
                        }
                    });
                    times = seen.into_inner().unwrap();
                }
                "conmon" => {
                    let files: Vec<PathBuf> = all
                        .iter()
                        .filter_map(|r| match r {
                            Running::Conmon { mon, .. } => Some(mon.exit_dir.join(&mon.id)),
                            _ => None,
                        })
                        .collect();
                    let pids: Vec<i32> = all
                        .iter()
                        .filter_map(|r| match r {
                            Running::Conmon { pid, .. } => Some(*pid),
                            _ => None,
                        })
                        .collect();
                    let t0 = Instant::now();
                    for pid in &pids {
                        kill(*pid, libc::SIGKILL);
                    }
                    let mut pending: Vec<&PathBuf> = files.iter().collect();
                    while !pending.is_empty() && t0.elapsed() < limit {
                        pending.retain(|f| {
                            let held = fs::read_to_string(f)
                                .map(|s| !s.trim().is_empty())
                                .unwrap_or(false);
                            if held {
                                times.push(ms(t0.elapsed()));
                            }
                            !held
                        });
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
                _ => {
                    let ids: Vec<String> = all
                        .iter()
                        .filter_map(|r| match r {
                            Running::Containerd { id } => Some(id.clone()),
                            _ => None,
                        })
                        .collect();
                    let pids: Vec<i32> = ids.iter().map(|id| self.ctd.task_pid(id)).collect();
                    let mut events = self.ctd.ctr_events(Duration::from_millis(300));
                    let stdout = events.stdout.take().unwrap();
                    let remaining = AtomicUsize::new(ids.len());
                    let seen = Mutex::new(Vec::new());
                    std::thread::scope(|s| {
                        let t0 = Instant::now();
                        let (seen, remaining, ids) = (&seen, &remaining, &ids);
                        s.spawn(move || {
                            let mut left: Vec<&String> = ids.iter().collect();
                            for line in BufReader::new(stdout).lines() {
                                let Ok(line) = line else { break };
                                if !line.contains("/tasks/exit") {
                                    continue;
                                }
                                if let Some(i) = left
                                    .iter()
                                    .position(|id| line.contains(&format!("\"container_id\":\"{id}\"")))
                                {
                                    left.swap_remove(i);
                                    seen.lock().unwrap().push(ms(t0.elapsed()));
                                    remaining.fetch_sub(1, Ordering::SeqCst);
                                }
                                if left.is_empty() {
                                    break;
                                }
                            }
                        });
                        for pid in &pids {
                            kill(*pid, libc::SIGKILL);
                        }
                        while remaining.load(Ordering::SeqCst) > 0 && t0.elapsed() < limit {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        let _ = events.kill();
                    });
                    let _ = events.wait();
                    times = seen.into_inner().unwrap();
                }
            }
            let missed = n - times.len();
            let (p50, p99, last) = percentiles(&times);
            println!(
                "{:<12} {:>6} {:>10.1} {:>10.1} {:>10.1} {:>8}",
                sys, n, p50, p99, last, missed
            );
            out.insert(
                sys.into(),
                json!({"containers": n, "p50_ms": p50, "p99_ms": p99, "last_ms": last, "missed": missed}),
            );
            self.remove_all(all);
        }
        Value::Object(out)
    }

    /// One shim, `plan.clients` subscribed clients, `2 * plan.event_pairs` events
    /// (pause, resume): the time until every client has every event, how far the last
    /// client trails the calls, and the shim's memory.
    fn fan_out(&mut self, plan: &Plan) -> Value {
        let bundle = self.bundle("sleep", &["sleep", "1000"]);
        let id = self.id("f");
        let events = 2 * plan.event_pairs;
        eprintln!(
            "bench: scale: fan-out of {events} events to {} clients",
            plan.clients
        );
        let (mut control, state) = self.launch_shim("tether", &id, &bundle);
        control.create(&null_stdio()).unwrap();
        control.start().unwrap();
        let shim = Self::tether_pid(&state);
        let mut clients = Vec::new();
        for _ in 0..plan.clients {
            let mut c = Client::connect(state.join("shim.sock")).unwrap();
            c.subscribe(None).unwrap();
            c.set_timeout(Some(Duration::from_secs(120))).unwrap();
            clients.push(c);
        }
        let got = Mutex::new(Vec::new());
        let calls_done = std::thread::scope(|s| {
            let t0 = Instant::now();
            for mut c in clients {
                let got = &got;
                s.spawn(move || {
                    let mut n = 0;
                    while n < events {
                        match c.next_event() {
                            Ok(e)
                                if matches!(
                                    e.body,
                                    tether_protocol::EventBody::Paused {}
                                        | tether_protocol::EventBody::Resumed {}
                                ) =>
                            {
                                n += 1
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    got.lock().unwrap().push((n, t0.elapsed()));
                });
            }
            for _ in 0..plan.event_pairs {
                control.call_value("pause", json!({})).unwrap();
                control.call_value("resume", json!({})).unwrap();
            }
            t0.elapsed()
        });
        let got = got.into_inner().unwrap();
        let complete = got.iter().filter(|(n, _)| *n == events).count();
        let last = got.iter().map(|(_, d)| *d).max().unwrap_or_default();
        let (pss, dirty, _) = smaps(shim);
        let hwm = fs::read_to_string(format!("/proc/{shim}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(f64::NAN);
        Self::tether_remove(&mut control, &state);
        println!(
            "\nfan-out: {events} events to {} clients: every client had every event after {:.2} s (the calls took {:.2} s; the last client trailed by {:.1} ms); {complete} of {} clients complete; shim after: private dirty {dirty:.0} kB, PSS {pss:.0} kB, peak RSS {hwm:.0} kB",
            plan.clients,
            last.as_secs_f64(),
            calls_done.as_secs_f64(),
            ms(last.saturating_sub(calls_done)),
            plan.clients,
        );
        json!({
            "clients": plan.clients,
            "events": events,
            "all_delivered_s": last.as_secs_f64(),
            "calls_s": calls_done.as_secs_f64(),
            "last_client_trails_ms": ms(last.saturating_sub(calls_done)),
            "complete_clients": complete,
            "shim_private_dirty_kb": dirty,
            "shim_pss_kb": pss,
            "shim_peak_rss_kb": hwm,
        })
    }
}

/// The idle curves: private dirty per container against the number of containers
/// (log scale), one line per system.
pub fn scale_svg(scale: &Value) -> String {
    let (w, h, left, right, top, bottom) = (640.0, 360.0, 70.0, 150.0, 30.0, 50.0);
    let colors = [
        ("tether", "#1f77b4"),
        ("conmon", "#ff7f0e"),
        ("containerd", "#2ca02c"),
    ];
    let points = |sys: &str| -> Vec<(f64, f64)> {
        scale["idle"][sys]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        Some((
                            p["containers"].as_f64()?,
                            p["private_dirty_per_container_kb"].as_f64()?,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<(f64, f64)> = colors.iter().flat_map(|(s, _)| points(s)).collect();
    let xmax = all.iter().map(|p| p.0).fold(1.0, f64::max).max(10.0);
    let ymax = all.iter().map(|p| p.1).fold(1.0, f64::max);
    // log10 for both axes: the peers differ by an order of magnitude.
    let ylo = 10.0f64;
    let x = |n: f64| left + (n.max(1.0).log10() / xmax.log10()) * (w - left - right);
    let y = |kb: f64| {
        let span = (ymax * 1.5).log10() - ylo.log10();
        top + (1.0 - (kb.max(ylo).log10() - ylo.log10()) / span) * (h - top - bottom)
    };
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\">private dirty per idle container (kB, log) against containers (log)</text>\n"
    );
    svg.push_str(&format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    ));
    let mut n = 1.0;
    while n <= xmax {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{n}</text>\n",
            x(n),
            h - bottom + 16.0
        ));
        n *= 10.0;
    }
    if xmax.log10().fract() > 0.0 {
        svg.push_str(&format!(
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{xmax}</text>\n",
            x(xmax),
            h - bottom + 16.0
        ));
    }
    for kb in [10.0, 100.0, 1000.0, 10000.0] {
        if kb <= ymax * 1.5 {
            svg.push_str(&format!(
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{kb}</text>\n<line x1=\"{left}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>\n",
                left - 6.0,
                y(kb) + 4.0,
                y(kb),
                w - right,
                y(kb)
            ));
        }
    }
    for (i, (sys, color)) in colors.iter().enumerate() {
        let p = points(sys);
        let path: Vec<String> = p
            .iter()
            .map(|(n, kb)| format!("{:.1},{:.1}", x(*n), y(*kb)))
            .collect();
        svg.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        ));
        for (n, kb) in &p {
            svg.push_str(&format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"><title>{sys}: {n} containers, {kb:.0} kB each</title></circle>\n",
                x(*n),
                y(*kb)
            ));
        }
        let name = if *sys == "containerd" {
            "containerd-shim-runc-v2"
        } else {
            sys
        };
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>\n",
            w - right + 10.0,
            top + 20.0 + 18.0 * i as f64
        ));
    }
    svg.push_str("<text x=\"320\" y=\"352\" text-anchor=\"middle\">idle containers</text>\n</svg>\n");
    svg
}
