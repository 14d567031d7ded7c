//! `bench --upgrade` (and part of a full run): upgrade in place. No peer can do it,
//! so these are figures, not ratios:
//! - a busy shim (its container's `yes` streaming into a FIFO read at full speed)
//!   flipped between two builds: how long output stands still per upgrade (the
//!   `paused_us` each upgrade answers: from the old binary's exec to the new one's
//!   first turn of its loop);
//! - a fleet of idle shims upgraded one after another (`tetherctl upgrade --all`
//!   does the same): the time for all, and each one's pause.

use super::*;

impl Bench {
    pub(crate) fn upgrade_figures(&mut self) -> Value {
        let n = if self.quick { 5 } else { 100 };
        let a = binary("tether-shim");
        let b = patched_shim(&self.work, "bench", "1");
        let upgrade = |c: &mut Client, to: &Path| -> f64 {
            let r: UpgradeResult = c
                .call("upgrade", &json!({ "binary": to }))
                .unwrap_or_else(|e| panic!("upgrade to {}: {e}", to.display()));
            r.paused_us as f64
        };

        eprintln!("bench: upgrade a busy shim {n} times");
        let bundle = self.bundle("yes", &["yes", "tether upgrade bench"]);
        let id = self.id("upbusy");
        let (mut c, state) = self.launch_shim("tether", &id, &bundle);
        let fifo = self.work.join(format!("{id}.fifo"));
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo {}", fifo.display());
        let reader = {
            let fifo = fifo.clone();
            std::thread::spawn(move || drain(fs::File::open(&fifo).expect("open the FIFO")))
        };
        c.create(&CreateParams {
            stdin: Some("/dev/null".into()),
            stdout: Some(fifo.display().to_string()),
            stderr: Some("/dev/null".into()),
            ..Default::default()
        })
        .expect("create");
        c.start().expect("start");
        std::thread::sleep(Duration::from_millis(200));
        let mut busy = Vec::with_capacity(n);
        for i in 0..n {
            busy.push(upgrade(&mut c, if i % 2 == 0 { &b } else { &a }));
        }
        let shim_pid = Self::tether_pid(&state);
        c.kill(None, 9, false).expect("kill");
        c.wait(None).expect("wait");
        c.delete(None, false).expect("delete");
        let bytes = reader.join().unwrap();
        wait_for("the busy shim's exit", Duration::from_secs(30), || {
            !Path::new(&format!("/proc/{shim_pid}")).exists()
        });

        eprintln!("bench: upgrade {n} idle shims one after another");
        let bundle = self.bundle("sleep", &["sleep", "100000"]);
        let mut fleet = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.id("upidle");
            let (mut c, _) = self.launch_shim("tether", &id, &bundle);
            c.create(&null_stdio()).expect("create");
            c.start().expect("start");
            fleet.push(c);
        }
        let started = Instant::now();
        let idle: Vec<f64> = fleet.iter_mut().map(|c| upgrade(c, &b)).collect();
        let fleet_ms = ms(started.elapsed());
        for c in &mut fleet {
            let _ = c.delete(None, true);
        }

        let (busy_med, _, busy_max) = stats(&busy);
        let (idle_med, _, idle_max) = stats(&idle);
        println!(
            "\nupgrade in place (no peer can)     median pause   max pause\n\
             busy shim, {n} flips{:>17.0} us{:>9.0} us   ({} MB of output through it)\n\
             {n} idle shims in turn{:>15.0} us{:>9.0} us   ({fleet_ms:.0} ms for all {n})",
            busy_med,
            busy_max,
            bytes >> 20,
            idle_med,
            idle_max
        );
        json!({
            "busy_flips": n,
            "busy_pause_us": {"median": busy_med, "max": busy_max},
            "busy_output_bytes": bytes,
            "fleet": n,
            "fleet_total_ms": fleet_ms,
            "fleet_pause_us": {"median": idle_med, "max": idle_max},
        })
    }
}
