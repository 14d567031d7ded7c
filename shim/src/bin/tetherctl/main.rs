//! `tetherctl`: tether for people. Every command is one or two protocol calls through
//! the same client a Rust daemon would use.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tether_protocol::*;

mod attach;
mod exec;
mod logs;
mod shims;
mod tty;

use attach::attach;
use exec::{exec, run_container};
use logs::logs;
use shims::{launch, list, upgrade};
use tty::{watch_window_size, window_size, RawMode};

const USAGE: &str = "usage: tetherctl [-s SOCKET | --id ID] [--state-root DIR] COMMAND [ARGS]

shim:
  launch --id ID --bundle DIR [tether-shim start flags]   start a shim, print its socket
  list                                                     every shim under the state root
  upgrade [--all] [--binary PATH]                          new binary, same shim (--all: every shim under the root)
container:
  hello | state [PROCESS] | pids
  create [--stdin P] [--stdout P] [--stderr P]             P: FIFO, file or /dev/null; absent: shim-made FIFO
  start
  exec [-t] [-e K=V]... [--cwd DIR] EXEC_ID -- ARGS...     run a process and attach to it
  kill [--process P] [--all] [SIGNAL]
  wait [PROCESS]
  resize [--process P] ROWS COLS
  close-stdin [PROCESS]
  events [--since N]                                       follow events (replay after N)
  logs [-f] [--since RFC3339] [--path FILE | PROCESS]      a CRI log, across rotations
  attach [PROCESS]                                         attach to output (and stdin)
  reopen-log [PROCESS]                                     after renaming the log away
  delete [--force] [--process P]
  pause | resume | stats
  update [--memory BYTES] [--cpu-shares N] [--cpu-quota N] [--cpu-period N] [--pids N]
  checkpoint --image-path DIR [--work-path DIR] [--leave-running] [--tcp-established]
             [--ext-unix-sk] [--shell-job] [--file-locks]
  shutdown [--force]
  call METHOD [JSON]                                       any method, raw JSON params
  run --id ID --bundle DIR                                 launch, create, start, print output, wait, delete";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(args) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("tetherctl: {e}");
            std::process::exit(1);
        }
    }
}

struct Global {
    socket: Option<PathBuf>,
    id: Option<String>,
    state_root: PathBuf,
}

impl Global {
    fn socket(&self) -> Result<PathBuf, String> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Ok(s) = std::env::var("TETHER_SOCKET") {
            return Ok(PathBuf::from(s));
        }
        match &self.id {
            Some(id) => Ok(self.state_root.join(id).join("shim.sock")),
            None => Err("name the shim: -s SOCKET, --id ID or TETHER_SOCKET".into()),
        }
    }

    fn client(&self) -> Result<Client, String> {
        Client::connect(self.socket()?).map_err(|e| e.to_string())
    }
}

fn run(args: Vec<String>) -> Result<i32, String> {
    let mut g = Global {
        socket: None,
        id: None,
        state_root: PathBuf::from("/run/tether"),
    };
    let mut rest = args.into_iter();
    let mut command = None;
    let mut cmd_args = Vec::new();
    while let Some(a) = rest.next() {
        if command.is_some() {
            cmd_args.push(a);
            continue;
        }
        match a.as_str() {
            "-s" | "--socket" => g.socket = rest.next().map(PathBuf::from),
            "--id" => g.id = rest.next(),
            "--state-root" => {
                g.state_root = rest
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--state-root needs a value")?
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(0);
            }
            _ => command = Some(a),
        }
    }
    let Some(command) = command else {
        return Err(format!("a command is required\n{USAGE}"));
    };
    let a = cmd_args;
    // `COMMAND -h`: what follows `--` is the process's own (exec ... -- ARGS).
    if a.iter()
        .take_while(|x| *x != "--")
        .any(|x| x == "-h" || x == "--help")
    {
        return match command_usage(&command) {
            Some(usage) => {
                println!("{usage}");
                Ok(0)
            }
            None => Err(format!("unknown command {command:?}\n{USAGE}")),
        };
    }
    match command.as_str() {
        "launch" => launch(&g, &a).map(|socket| {
            println!("{}", socket.display());
            0
        }),
        "list" => list(&g),
        "upgrade" => upgrade(&g, &a),
        "hello" => print_call(&g, "hello", json!({})),
        "state" => print_call(&g, "state", process_param(a.first())),
        "pids" => print_call(&g, "pids", json!({})),
        "start" => print_call(&g, "start", json!({})),
        "create" => {
            let mut p = json!({});
            let mut it = a.iter();
            while let Some(flag) = it.next() {
                let key = flag.trim_start_matches("--");
                if !["stdin", "stdout", "stderr"].contains(&key) {
                    return Err(format!("create: unknown flag {flag}"));
                }
                p[key] = json!(it.next().ok_or(format!("{flag} needs a path"))?);
            }
            print_call(&g, "create", p)
        }
        "kill" => {
            let mut p = json!({});
            let mut it = a.iter();
            while let Some(x) = it.next() {
                match x.as_str() {
                    "--all" => p["all"] = json!(true),
                    "--process" => p["process"] = json!(it.next().ok_or("--process needs a value")?),
                    sig => p["signal"] = sig.parse::<i32>().map(|n| json!(n)).unwrap_or(json!(sig)),
                }
            }
            print_call(&g, "kill", p)
        }
        "wait" => {
            let mut c = g.client()?;
            let r: ExitRecord = c
                .call("wait", &process_param(a.first()))
                .map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string(&r).unwrap_or_default());
            Ok(r.status.unwrap_or(255))
        }
        "resize" => {
            let (process, nums) = take_process_flag(&a);
            let [rows, cols] = nums[..] else {
                return Err("resize ROWS COLS".into());
            };
            let rows: u16 = rows.parse().map_err(|_| "rows must be a number")?;
            let cols: u16 = cols.parse().map_err(|_| "cols must be a number")?;
            print_call(
                &g,
                "resize",
                json!({"process": process, "rows": rows, "cols": cols}),
            )
        }
        "close-stdin" => print_call(&g, "close_stdin", process_param(a.first())),
        "reopen-log" => print_call(&g, "reopen_log", process_param(a.first())),
        "delete" => {
            let (process, rest) = take_process_flag(&a);
            let force = rest.iter().any(|x| *x == "--force");
            print_call(&g, "delete", json!({"process": process, "force": force}))
        }
        "shutdown" => print_call(&g, "shutdown", json!({"force": a.iter().any(|x| x == "--force")})),
        "pause" | "resume" | "stats" => print_call(&g, &command, json!({})),
        "update" => print_call(&g, "update", json!({ "resources": update_resources(&a)? })),
        "checkpoint" => {
            let mut p = json!({});
            let mut it = a.iter();
            while let Some(flag) = it.next() {
                match flag.as_str() {
                    "--image-path" | "--work-path" => {
                        let key = flag.trim_start_matches("--").replace('-', "_");
                        p[key] = json!(it.next().ok_or(format!("{flag} needs a path"))?);
                    }
                    "--leave-running" | "--tcp-established" | "--ext-unix-sk" | "--shell-job"
                    | "--file-locks" => p[flag.trim_start_matches("--").replace('-', "_")] = json!(true),
                    other => return Err(format!("checkpoint: unknown flag {other}")),
                }
            }
            print_call(&g, "checkpoint", p)
        }
        "events" => {
            let since = match a.as_slice() {
                [flag, n] if flag == "--since" => Some(n.parse::<u64>().map_err(|_| "--since takes a seq")?),
                [] => None,
                _ => return Err("events [--since N]".into()),
            };
            let mut c = g.client()?;
            c.subscribe(since).map_err(|e| e.to_string())?;
            loop {
                let e = c.next_event().map_err(|e| e.to_string())?;
                println!("{}", serde_json::to_string(&e).unwrap_or_default());
            }
        }
        "call" => {
            let method = a.first().ok_or("call METHOD [JSON]")?;
            let params = match a.get(1) {
                Some(j) => serde_json::from_str(j).map_err(|e| format!("params: {e}"))?,
                None => json!({}),
            };
            print_call(&g, method, params)
        }
        "exec" => exec(&g, &a),
        "logs" => logs(&g, &a),
        "attach" => attach(&g, &a),
        "run" => run_container(&a),
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

/// The lines of USAGE that show `command` (and the deeper-indented lines that go on
/// with them), after the global flags; None for a command USAGE does not list.
fn command_usage(command: &str) -> Option<String> {
    const HEAD: &str = "usage: tetherctl [-s SOCKET | --id ID] [--state-root DIR] ";
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    let mut shown: Option<usize> = None;
    for line in USAGE.lines().skip(1) {
        match shown {
            Some(at) if indent(line) > at + 2 && line.trim_start().starts_with('[') => {
                out.push(format!(
                    "{}{}",
                    " ".repeat(HEAD.len() + indent(line) - at),
                    line.trim_start()
                ));
                continue;
            }
            _ => shown = None,
        }
        let alternatives = line.trim_start().split(" | ");
        if line.starts_with("  ")
            && alternatives
                .into_iter()
                .any(|alt| alt.split_whitespace().next() == Some(command))
        {
            shown = Some(indent(line));
            out.push(format!("{HEAD}{}", line.trim_start()));
        }
    }
    (!out.is_empty()).then(|| out.join("\n"))
}

/// `update --memory BYTES --cpu-shares N --cpu-quota N --cpu-period N --pids N` as
/// an OCI linux.resources object.
fn update_resources(a: &[String]) -> Result<Value, String> {
    let mut r = json!({});
    let mut it = a.iter();
    while let Some(flag) = it.next() {
        let v: i64 = it
            .next()
            .ok_or(format!("{flag} needs a number"))?
            .parse()
            .map_err(|_| format!("{flag} needs a number"))?;
        match flag.as_str() {
            "--memory" => r["memory"]["limit"] = json!(v),
            "--cpu-shares" => r["cpu"]["shares"] = json!(v),
            "--cpu-quota" => r["cpu"]["quota"] = json!(v),
            "--cpu-period" => r["cpu"]["period"] = json!(v),
            "--pids" => r["pids"]["limit"] = json!(v),
            other => return Err(format!("update: unknown flag {other}")),
        }
    }
    Ok(r)
}

fn process_param(p: Option<&String>) -> Value {
    match p {
        Some(p) => json!({ "process": p }),
        None => json!({}),
    }
}

/// Pulls `--process P` out of the args.
fn take_process_flag(a: &[String]) -> (Option<String>, Vec<&String>) {
    let mut process = None;
    let mut rest = Vec::new();
    let mut it = a.iter();
    while let Some(x) = it.next() {
        if x == "--process" {
            process = it.next().cloned();
        } else {
            rest.push(x);
        }
    }
    (process, rest)
}

fn print_call(g: &Global, method: &str, params: Value) -> Result<i32, String> {
    let mut c = g.client()?;
    let r = c.call_value(method, params).map_err(|e| e.to_string())?;
    println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
    Ok(0)
}
