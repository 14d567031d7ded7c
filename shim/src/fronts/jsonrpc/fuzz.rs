//! Property-based fuzzing of the line decoder and dispatcher, on the stable
//! toolchain: requests for every method with random and mutated params, mutated
//! and random bytes, interleaved with random runtime outcomes (a fake runtime's calls
//! ending well or badly, processes exiting), all through the real JSON-RPC front and
//! core. Properties: no panic; every per-connection bound holds; the shim keeps
//! answering. `TETHER_FUZZ_INPUTS` sets the number of inputs (scripts/test runs a
//! short round, scripts/fuzz a million), `TETHER_FUZZ_SEED` the seed.

use super::*;
use crate::core::testing::{fake_core, Recorded};
use crate::registry::Routes;
use mio::Poll;
use serde_json::{json, Map, Value};
use std::io::Read;
use std::os::unix::net::UnixStream as StdStream;
use std::path::PathBuf;

/// xorshift64*: small, fast, reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "stdin",
    "stdout",
    "stderr",
    "terminal",
    "checkpoint",
    "image_path",
    "work_path",
    "exec_id",
    "process",
    "args",
    "env",
    "cwd",
    "user",
    "uid",
    "gid",
    "signal",
    "all",
    "force",
    "since",
    "rows",
    "cols",
    "resources",
    "memory",
    "limit",
    "pids",
    "cpu",
    "shares",
    "leave_running",
    "tcp_established",
    "bogus",
];

struct Gen<'a> {
    rng: &'a mut Rng,
    /// Paths the fuzz may open: its own directory, /dev/null, relative junk.
    safe_paths: Vec<String>,
}

impl Gen<'_> {
    fn scalar(&mut self) -> Value {
        match self.rng.below(12) {
            0 => Value::Null,
            1 => json!(self.rng.chance(50)),
            2 => json!(self.rng.next() as i64),
            3 => json!(self.rng.below(70) as i64 - 3),
            4 => json!(u64::MAX),
            5 => json!(-1.5e300),
            6 => json!(self
                .rng
                .pick(&[
                    "KILL",
                    "SIGTERM",
                    "9",
                    "SIGBOGUS",
                    "",
                    "init",
                    "e1",
                    "x".repeat(200).as_str()
                ])
                .to_string()),
            7 => json!(self.rng.pick(&self.safe_paths.clone()).clone()),
            8 => json!("relative/path"),
            9 => json!("\u{0}\u{ffff}é\n"),
            10 => json!(self
                .rng
                .pick(&["e1", "e2", "init", "../x", "a b", "-x"])
                .to_string()),
            _ => json!(self.rng.below(70000)),
        }
    }

    fn value(&mut self, depth: u32) -> Value {
        if depth > 3 || self.rng.chance(60) {
            return self.scalar();
        }
        if self.rng.chance(50) {
            Value::Array((0..self.rng.below(4)).map(|_| self.value(depth + 1)).collect())
        } else {
            self.object(depth + 1)
        }
    }

    fn object(&mut self, depth: u32) -> Value {
        let mut m = Map::new();
        for _ in 0..self.rng.below(5) {
            let key = self.rng.pick(KEYS).to_string();
            let v = self.value(depth);
            m.insert(key, v);
        }
        Value::Object(m)
    }

    /// A plausible request for `method`: mostly well-formed, often not.
    fn request(&mut self, method: &str) -> Value {
        let mut params = match method {
            "exec" => json!({
                "exec_id": self.rng.pick(&["e1", "e2", "e3", "init", "bad id"]).to_string(),
                "process": {"args": ["true"], "terminal": self.rng.chance(20)},
            }),
            "kill" => json!({"signal": self.scalar(), "all": self.rng.chance(20)}),
            "subscribe" => json!({"since": self.rng.below(10)}),
            "update" => json!({"resources": {"pids": {"limit": self.scalar()}}}),
            "checkpoint" => json!({"image_path": self.rng.pick(&self.safe_paths.clone()).clone()}),
            "resize" => json!({"rows": self.scalar(), "cols": 80}),
            "delete" => json!({"force": self.rng.chance(50)}),
            _ => json!({}),
        };
        if self.rng.chance(40) {
            if let (Value::Object(p), Value::Object(extra)) = (&mut params, self.object(1)) {
                p.extend(extra);
            }
        }
        let mut req = json!({"method": method, "params": params});
        match self.rng.below(6) {
            0 => {}
            1 => req["id"] = Value::Null,
            2 => req["id"] = json!("s"),
            3 => req["id"] = json!(self.rng.next()),
            _ => req["id"] = json!(self.rng.below(1000)),
        }
        if self.rng.chance(10) {
            req["jsonrpc"] = self.scalar();
        }
        req
    }

    fn mutate(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        for _ in 0..=self.rng.below(4) {
            if bytes.is_empty() {
                break;
            }
            let i = self.rng.below(bytes.len());
            match self.rng.below(5) {
                0 => bytes[i] = self.rng.next() as u8,
                1 => {
                    bytes.remove(i);
                }
                2 => bytes.insert(i, *self.rng.pick(b"{}[]\",:\\0\n")),
                3 => bytes.truncate(i),
                _ => {
                    let chunk = bytes[i..].to_vec();
                    bytes.extend_from_slice(&chunk);
                }
            }
        }
        bytes
    }

    fn line(&mut self) -> Vec<u8> {
        let methods: Vec<&str> = request::METHODS.iter().copied().chain(["bogus", ""]).collect();
        let mut method = self.rng.pick(&methods).to_string();
        // Fewer of the calls that end the shim: deeper states get their turn.
        if (method == "delete" || method == "shutdown") && self.rng.chance(80) {
            method = "state".to_string();
        }
        match self.rng.below(10) {
            0..=5 => self.request(&method).to_string().into_bytes(),
            // Mutations of requests that name no host path (a mutated path could
            // name one the fuzz has no business creating).
            6..=8 => {
                let mut seed = self.request(&method);
                if let Some(p) = seed.get_mut("params").and_then(Value::as_object_mut) {
                    for k in [
                        "stdin",
                        "stdout",
                        "stderr",
                        "image_path",
                        "work_path",
                        "checkpoint",
                    ] {
                        p.remove(k);
                    }
                }
                let bytes = seed.to_string().into_bytes();
                self.mutate(bytes)
            }
            _ => (0..self.rng.below(64)).map(|_| self.rng.next() as u8).collect(),
        }
    }
}

/// A front and a core with a fake runtime, and the client end of one connection.
struct Rig {
    dir: PathBuf,
    core: Core,
    calls: Recorded,
    poll: Poll,
    routes: Routes,
    front: JsonRpc,
    token: Token,
    client: StdStream,
    reaped: usize,
    next_pid: i32,
}

impl Rig {
    fn new(dir: PathBuf) -> Rig {
        let (core, calls) = fake_core(&dir);
        let poll = Poll::new().unwrap();
        let mut routes = Routes::default();
        let sock = dir.join("fuzz.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let client = StdStream::connect(&sock).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut io = Io::new(poll.registry(), &mut routes);
        let mut front = JsonRpc::new(listener, Owner::Front(0), &mut io).unwrap();
        front.accept(&mut io);
        let token = *front.conns.keys().next().unwrap();
        Rig {
            dir,
            core,
            calls,
            poll,
            routes,
            front,
            token,
            client,
            reaped: 0,
            next_pid: 95_000_000,
        }
    }

    /// One input, then the runtime's random turn; true if the shim asked to exit.
    fn step(&mut self, line: &[u8], rng: &mut Rng) -> bool {
        let mut io = Io::new(self.poll.registry(), &mut self.routes);
        self.front.serve_line(self.token, line, &mut self.core, &mut io);
        if rng.chance(30) {
            runtime_turn(
                &mut self.core,
                &self.calls,
                &mut self.reaped,
                &mut self.next_pid,
                rng,
                &mut io,
            );
        }
        self.core.on_tick(&mut io);
        self.front.on_tick(&mut self.core, &mut io);
        let outputs = self.core.take_outputs();
        let exiting = outputs.iter().any(|o| matches!(o, Output::Exit { .. }));
        self.front.deliver(&outputs, &mut self.core, &mut io);
        let mut sink = [0u8; 65536];
        while matches!(self.client.read(&mut sink), Ok(n) if n > 0) {}
        exiting
    }

    fn check_bounds(&self) {
        assert!(
            self.front.pending.len() <= MAX_PENDING,
            "{} calls pending",
            self.front.pending.len()
        );
        for conn in self.front.conns.values() {
            assert!(conn.queued() <= MAX_QUEUED);
            assert!(conn.pending <= MAX_PENDING);
        }
    }
}

/// A runtime call in flight ends (its pid file written or not), or a process of the
/// container exits.
fn runtime_turn(
    core: &mut Core,
    calls: &Recorded,
    reaped: &mut usize,
    next_pid: &mut i32,
    rng: &mut Rng,
    io: &mut Io<'_>,
) {
    let calls = calls.0.borrow().clone();
    if let Some((pid, argv)) = calls.get(*reaped) {
        if let Some(i) = argv.iter().position(|a| a == "--pid-file") {
            if rng.chance(80) {
                *next_pid += 1;
                let _ = std::fs::write(&argv[i + 1], next_pid.to_string());
            }
        }
        let status = *rng.pick(&[0, 0, 0, 1, 137]);
        let signal = (status == 137).then_some(9);
        core.on_child_exits(
            vec![crate::reaper::ChildExit {
                pid: *pid,
                status,
                signal,
            }],
            io,
        );
        *reaped += 1;
    }
    if rng.chance(30) && *next_pid > 95_000_000 {
        let pid = 95_000_001 + rng.below((*next_pid - 95_000_000) as usize) as i32;
        let status = *rng.pick(&[0, 1, 137]);
        let signal = (status == 137).then_some(9);
        core.on_child_exits(vec![crate::reaper::ChildExit { pid, status, signal }], io);
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn fuzz_the_decoder_and_dispatcher() {
    let inputs: usize = std::env::var("TETHER_FUZZ_INPUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("TETHER_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("fuzz: {inputs} inputs, TETHER_FUZZ_SEED={seed}");
    // The shim's diagnostics of a million bad inputs are not worth reading.
    if let Ok(null) = std::fs::File::create("/dev/null") {
        crate::log::to_file(null);
    }
    let base = std::env::temp_dir().join(format!("tether-fuzz-{}", std::process::id()));
    let mut rng = Rng(seed);
    let mut rigs = 0;
    let mut rig = Rig::new(base.join("0"));
    let safe_paths = vec![
        "/dev/null".to_string(),
        base.join("out.log").display().to_string(),
        base.join("no/such/dir/x").display().to_string(),
    ];
    let started = std::time::Instant::now();
    for i in 0..inputs {
        let line = {
            let mut g = Gen {
                rng: &mut rng,
                safe_paths: safe_paths.clone(),
            };
            g.line()
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rig.step(&line, &mut rng)));
        let exiting = match outcome {
            Ok(exiting) => exiting,
            Err(_) => panic!(
                "input {i} (seed {seed}) panicked the shim: {:?}",
                String::from_utf8_lossy(&line)
            ),
        };
        rig.check_bounds();
        if exiting {
            rigs += 1;
            rig = Rig::new(base.join(rigs.to_string()));
        }
    }
    // Still answering after all that.
    let mut io = Io::new(rig.poll.registry(), &mut rig.routes);
    assert!(matches!(rig.core.call(Call::Hello, &mut io), Reply::Now(Ok(_))));
    drop(rig);
    let _ = std::fs::remove_dir_all(&base);
    eprintln!(
        "fuzz: {inputs} inputs in {:.1} s, {} shims deleted and remade, no panic, bounds held",
        started.elapsed().as_secs_f64(),
        rigs
    );
}
