//! The soak: a daemon SIGKILLed at random points, again and again, while execs run and
//! their output streams; each new daemon resubscribes from the last seq its
//! predecessors recorded and picks the output up where it was. In the end: no gap and
//! no duplicate among the events, and every exec's output byte for byte.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tether_protocol::*;
use tether_tests::*;

/// How long daemons are killed for (scripts/test keeps it near a minute in all).
fn soak_time() -> Duration {
    let secs = std::env::var("TETHER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(40);
    Duration::from_secs(secs)
}

fn daemon(socket: &Path, state_dir: &Path, journal: &Path) -> Child {
    Command::new(binary("soak-daemon"))
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--journal")
        .arg(journal)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x100_0000_01b3)
    })
}

#[test]
fn daemons_killed_at_random_lose_no_event_and_no_byte() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "100000"]));
    let mut c = shim.client();
    c.create(&null_stdio()).unwrap();
    c.start().unwrap();
    let journal = TempDir::new("tether-soak");
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let started = Instant::now();
    let mut kills = 0;
    while started.elapsed() < soak_time() {
        let mut d = daemon(&shim.socket, &shim.state_dir, journal.path());
        std::thread::sleep(Duration::from_millis(20 + next() % 600));
        d.kill().unwrap();
        d.wait().unwrap();
        kills += 1;
    }
    // A last daemon finishes the exec in progress, then is stopped too.
    let done =
        fs::read_to_string(journal.path().join("current")).map_or(0, |s| s.trim().parse::<u64>().unwrap());
    let mut d = daemon(&shim.socket, &shim.state_dir, journal.path());
    wait_until(
        Duration::from_secs(60),
        "the last daemon to finish an exec",
        || {
            fs::read_to_string(journal.path().join("current"))
                .is_ok_and(|s| s.trim().parse::<u64>().unwrap() > done)
        },
    );
    d.kill().unwrap();
    d.wait().unwrap();
    let finished = fs::read_to_string(journal.path().join("current"))
        .unwrap()
        .trim()
        .parse::<u64>()
        .unwrap();
    // The rest of the events, from the last seq the daemons recorded.
    let text = fs::read_to_string(journal.path().join("events")).unwrap();
    let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut seqs: Vec<u64> = whole
        .lines()
        .map(|l| serde_json::from_str::<Event>(l).unwrap().seq)
        .collect();
    let last = c.hello().unwrap().last_seq;
    c.subscribe(Some(seqs.last().copied().unwrap_or(0))).unwrap();
    while seqs.last().copied().unwrap_or(0) < last {
        seqs.push(c.next_event().unwrap().seq);
    }
    assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "a gap or a duplicate");
    let mut bytes = 0;
    for k in 0..finished {
        let id = format!("e{k}");
        let got = fs::read(journal.path().join(format!("out-{id}"))).unwrap();
        let want: String = (1..=soak_lines_of(k)).map(|i| format!("{i}\n")).collect();
        assert_eq!(got.len(), want.len(), "{id}: bytes lost or doubled");
        assert_eq!(checksum(&got), checksum(want.as_bytes()), "{id}");
        let status = fs::read_to_string(journal.path().join(format!("status-{id}"))).unwrap();
        assert_eq!(status, "0", "{id}");
        bytes += got.len();
    }
    eprintln!(
        "soak: {kills} daemons killed in {:.0} s; {finished} execs, {bytes} bytes, {last} events compared: 0 gaps, 0 duplicates, every checksum equal",
        started.elapsed().as_secs_f64()
    );
    assert!(finished >= 10, "only {finished} execs finished");
}
