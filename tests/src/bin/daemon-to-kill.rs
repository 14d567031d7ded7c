//! A real daemon-side client for the reattach tests, meant to be SIGKILLed: it starts
//! a shim and its container, records every event it sees and the first BYTES of the
//! container's stdout, prints `ready`, and then waits to be killed.
//!
//! `daemon-to-kill --id ID --bundle DIR --state-dir DIR --record FILE --read BYTES`
//! writes FILE (stdout bytes) and FILE.events (one event per line), flushed as it goes.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Command;
use tether_protocol::{Client, CreateParams};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |flag: &str| {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag} is required"));
        args[i + 1].clone()
    };
    let (id, bundle, state_dir, record) = (get("--id"), get("--bundle"), get("--state-dir"), get("--record"));
    let want: usize = get("--read").parse().expect("--read BYTES");
    let shim = std::env::current_exe().unwrap().with_file_name("tether-shim");
    let out = Command::new(shim)
        .args([
            "start",
            "--id",
            &id,
            "--bundle",
            &bundle,
            "--state-dir",
            &state_dir,
            "--runtime",
            &tether_tests::test_runtime(),
        ])
        .output()
        .expect("tether-shim start");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let socket = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mut c = Client::connect(&socket).expect("connect");
    c.subscribe(Some(0)).expect("subscribe");
    let created = c.create(&CreateParams::default()).expect("create");
    let stdout = created.stdio.stdout.expect("stdout fifo");
    c.start().expect("start");
    let record_out = record.clone();
    std::thread::spawn(move || {
        let mut fifo = OpenOptions::new()
            .read(true)
            .open(&stdout)
            .expect("open stdout fifo");
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&record_out)
            .unwrap();
        let mut buf = vec![0u8; 64 << 10];
        let mut got = 0;
        while got < want {
            let n = fifo.read(&mut buf[..(want - got).min(64 << 10)]).expect("read");
            assert!(n > 0, "EOF before {want} bytes");
            file.write_all(&buf[..n]).unwrap();
            got += n;
        }
        println!("ready");
        std::io::stdout().flush().unwrap();
        // Hold the FIFO open, reading nothing, until killed.
        std::thread::park();
    });
    let mut events = OpenOptions::new()
        .create(true)
        .append(true)
        .open(format!("{record}.events"))
        .unwrap();
    loop {
        let e = c.next_event().expect("event");
        writeln!(events, "{}", serde_json::to_string(&e).unwrap()).unwrap();
    }
}
