//! `tetherctl`: tether for people. Every command is one or two protocol calls through
//! the same client a Rust daemon would use.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use tether_protocol::*;

const USAGE: &str = "usage: tetherctl [-s SOCKET | --id ID] [--state-root DIR] COMMAND [ARGS]

shim:
  launch --id ID --bundle DIR [tether-shim start flags]   start a shim, print its socket
  list                                                     every shim under the state root
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
    match command.as_str() {
        "launch" => launch(&g, &a).map(|socket| {
            println!("{}", socket.display());
            0
        }),
        "list" => list(&g),
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

/// Finds `tether-shim` beside this binary, else on PATH.
fn shim_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tether-shim")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tether-shim"))
}

fn launch(g: &Global, a: &[String]) -> Result<PathBuf, String> {
    let mut args = vec!["start".to_string()];
    if !a.iter().any(|x| x == "--state-dir" || x == "--state-root") {
        args.extend(["--state-root".to_string(), g.state_root.display().to_string()]);
    }
    args.extend(a.iter().cloned());
    let out = Command::new(shim_binary())
        .args(&args)
        .output()
        .map_err(|e| format!("tether-shim: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// One line per shim under the state root: id, shim pid, alive or dead, status, last seq.
fn list(g: &Global) -> Result<i32, String> {
    let entries = std::fs::read_dir(&g.state_root).map_err(|e| format!("{}: {e}", g.state_root.display()))?;
    println!(
        "{:<24} {:>8} {:<6} {:<9} {:>8}",
        "ID", "SHIM PID", "SHIM", "STATUS", "LAST SEQ"
    );
    let mut rows: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    rows.sort();
    for dir in rows {
        let id = dir
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let pid = std::fs::read_to_string(dir.join("shim.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        let hello = Client::connect(dir.join("shim.sock")).and_then(|mut c| {
            c.set_timeout(Some(std::time::Duration::from_secs(2)))?;
            c.hello()
        });
        let (alive, status, seq) = match hello {
            Ok(h) => (
                "alive",
                format!("{:?}", h.status).to_lowercase(),
                h.last_seq.to_string(),
            ),
            Err(_) => ("dead", last_status_on_disk(&dir), last_seq_on_disk(&dir)),
        };
        let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        println!("{id:<24} {pid:>8} {alive:<6} {status:<9} {seq:>8}");
    }
    Ok(0)
}

/// A dead shim's container status as the state dir tells it.
fn last_status_on_disk(dir: &Path) -> String {
    if dir.join("exits/init.json").exists() {
        "stopped".into()
    } else if dir.join("init.pid").exists() {
        "unknown".into()
    } else {
        "new".into()
    }
}

fn last_seq_on_disk(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("events.jsonl"))
        .ok()
        .and_then(|t| {
            t.lines()
                .last()
                .and_then(|l| serde_json::from_str::<Event>(l).ok())
        })
        .map(|e| e.seq.to_string())
        .unwrap_or_else(|| "0".into())
}

/// Copies a shim-made output FIFO to our stdout or stderr until EOF (in a thread).
fn drain_fifo(path: Option<String>, to_stderr: bool) -> Option<std::thread::JoinHandle<()>> {
    let path = path?;
    if path == "/dev/null" {
        return None;
    }
    Some(std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
        else {
            return;
        };
        // Back to blocking reads: the shim is the writer, EOF comes when it closes.
        {
            use nix::fcntl::{fcntl, FcntlArg, OFlag};
            let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
            if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFL) {
                let _ = fcntl(
                    fd,
                    FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) - OFlag::O_NONBLOCK),
                );
            }
        }
        let mut buf = [0u8; 32 << 10];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let r = if to_stderr {
                        std::io::stderr().write_all(&buf[..n])
                    } else {
                        let mut out = std::io::stdout();
                        out.write_all(&buf[..n]).and_then(|_| out.flush())
                    };
                    if r.is_err() {
                        break;
                    }
                }
            }
        }
    }))
}

/// Feeds our stdin to a stdin FIFO (in a thread); EOF on ours closes the process's.
fn feed_stdin(path: Option<String>, socket: PathBuf, process: String) {
    let Some(path) = path.filter(|p| p != "/dev/null") else {
        return;
    };
    std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) else {
            return;
        };
        let mut buf = [0u8; 32 << 10];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if f.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        if let Ok(mut c) = Client::connect(&socket) {
            let _ = c.call_value("close_stdin", json!({"process": process}));
        }
    });
}

/// `exec [-t] [-e K=V]... [--cwd DIR] ID -- ARGS...`
fn exec(g: &Global, a: &[String]) -> Result<i32, String> {
    let mut tty = false;
    let mut env: Vec<String> = Vec::new();
    let mut cwd = None;
    let mut exec_id = None;
    let mut it = a.iter();
    let mut argv: Vec<String> = Vec::new();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-t" | "--tty" => tty = true,
            "-e" | "--env" => env.push(it.next().ok_or("-e needs K=V")?.clone()),
            "--cwd" => cwd = it.next().cloned(),
            "--" => {
                argv = it.by_ref().cloned().collect();
                break;
            }
            id if exec_id.is_none() => exec_id = Some(id.to_string()),
            other => argv.push(other.to_string()),
        }
    }
    let exec_id = exec_id.ok_or("exec needs an EXEC_ID")?;
    if argv.is_empty() {
        return Err("exec needs a command after --".into());
    }
    let socket = g.socket()?;
    let mut c = Client::connect(&socket).map_err(|e| e.to_string())?;
    let mut process = json!({"args": argv, "terminal": tty});
    if !env.is_empty() {
        // The shim merges these into the bundle's env by name.
        process["env"] = json!(env);
    }
    if let Some(cwd) = cwd {
        process["cwd"] = json!(cwd);
    }
    let raw = if tty { RawMode::enter() } else { None };
    let result: Result<ExecResult, _> = c.exec(&ExecParams {
        exec_id: exec_id.clone(),
        process,
        ..Default::default()
    });
    let r = match result {
        Ok(r) => r,
        Err(e) => {
            drop(raw);
            return Err(e.to_string());
        }
    };
    if tty {
        if let Some((rows, cols)) = window_size() {
            let _ = c.call_value("resize", json!({"process": exec_id, "rows": rows, "cols": cols}));
        }
        watch_window_size(socket.clone(), exec_id.clone());
    }
    feed_stdin(r.stdio.stdin.clone(), socket.clone(), exec_id.clone());
    let outs = [
        drain_fifo(r.stdio.stdout.clone(), false),
        drain_fifo(r.stdio.stderr.clone(), true),
    ];
    let exit = c.wait(Some(&exec_id)).map_err(|e| e.to_string());
    for t in outs.into_iter().flatten() {
        let _ = t.join();
    }
    drop(raw);
    let exit = exit?;
    let _ = c.delete(Some(&exec_id), false);
    Ok(exit.status.unwrap_or(255))
}

/// The terminal in raw mode while a `-t` exec runs; restored on drop.
struct RawMode(nix::sys::termios::Termios);

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, &raw);
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.0);
    }
}

/// TIOCGWINSZ, the one call nix has no safe wrapper for.
mod tty {
    #![allow(unsafe_code)]
    pub fn window_size() -> Option<(u16, u16)> {
        let mut w = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ fills one winsize struct, which lives on our stack.
        (unsafe { libc::ioctl(1, libc::TIOCGWINSZ, &mut w) } == 0).then_some((w.ws_row, w.ws_col))
    }
}
use tty::window_size;

/// Forwards SIGWINCH as `resize` calls.
fn watch_window_size(socket: PathBuf, process: String) {
    let changed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _ = signal_hook::flag::register(signal_hook::consts::SIGWINCH, changed.clone());
    std::thread::spawn(move || loop {
        std::thread::sleep(std::time::Duration::from_millis(100));
        if changed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            if let (Some((rows, cols)), Ok(mut c)) = (window_size(), Client::connect(&socket)) {
                let _ = c.call_value("resize", json!({"process": process, "rows": rows, "cols": cols}));
            }
        }
    });
}

/// `run --id ID --bundle DIR [shim flags]`: the whole life of a container, printing
/// its output and every event.
fn run_container(a: &[String]) -> Result<i32, String> {
    let g = Global {
        socket: None,
        id: None,
        state_root: PathBuf::from("/run/tether"),
    };
    let socket = launch(&g, a)?;
    let mut c = Client::connect(&socket).map_err(|e| e.to_string())?;
    let show = |e: &Event| println!("event: {}", serde_json::to_string(e).unwrap_or_default());
    c.subscribe(Some(0)).map_err(|e| e.to_string())?;
    let created = c.create(&CreateParams::default()).map_err(|e| e.to_string())?;
    let outs = [
        drain_fifo(created.stdio.stdout.clone(), false),
        drain_fifo(created.stdio.stderr.clone(), true),
    ];
    c.start().map_err(|e| e.to_string())?;
    let exit = loop {
        let e = c.next_event().map_err(|e| e.to_string())?;
        show(&e);
        if let EventBody::Exit(r) = e.body {
            if r.process == INIT_PROCESS {
                break r;
            }
        }
    };
    for t in outs.into_iter().flatten() {
        let _ = t.join();
    }
    c.delete(None, false).map_err(|e| e.to_string())?;
    while let Ok(e) = c.next_event() {
        show(&e);
        if e.body == (EventBody::Deleted {}) {
            break;
        }
    }
    Ok(exit.status.unwrap_or(255))
}

/// `logs [-f] [--since TS] [--path FILE | PROCESS]`: the process's CRI log, its rotated
/// files (log.N ... log.1) first, each stream to its own output; `-f` follows the log
/// through rotations.
fn logs(g: &Global, a: &[String]) -> Result<i32, String> {
    let (mut follow, mut since, mut path, mut process) = (false, None, None, None);
    let mut it = a.iter();
    while let Some(x) = it.next() {
        match x.as_str() {
            "-f" | "--follow" => follow = true,
            "--since" => since = Some(it.next().ok_or("--since needs an RFC 3339 time")?.clone()),
            "--path" => path = Some(PathBuf::from(it.next().ok_or("--path needs a file")?)),
            p => process = Some(p.to_string()),
        }
    }
    let path = match path {
        Some(p) => p,
        None => {
            let mut c = g.client()?;
            let st: ProcessState = c
                .call("state", &process_param(process.as_ref()))
                .map_err(|e| e.to_string())?;
            PathBuf::from(st.stdio.log.ok_or("the process has no log")?)
        }
    };
    let mut files = rotated_logs(&path);
    files.push(path.clone());
    let mut out = LogPrinter { since };
    for f in &files[..files.len() - 1] {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        out.print(&bytes);
    }
    // The live file: read to its end; with -f, keep reading, and move on to the new
    // file when the log is rotated or reopened.
    let mut file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut pending = Vec::new();
    loop {
        let mut chunk = Vec::new();
        file.read_to_end(&mut chunk).map_err(|e| e.to_string())?;
        pending.extend_from_slice(&chunk);
        let whole = pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        out.print(&pending[..whole]);
        pending.drain(..whole);
        if !follow {
            out.print(&pending);
            return Ok(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let moved = std::fs::metadata(&path)
            .ok()
            .zip(file.metadata().ok())
            .is_some_and(|(now, open)| {
                use std::os::unix::fs::MetadataExt;
                now.ino() != open.ino()
            });
        if moved {
            let mut rest = Vec::new();
            file.read_to_end(&mut rest).map_err(|e| e.to_string())?;
            pending.extend_from_slice(&rest);
            file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
}

/// `path.N` ... `path.1`, oldest first.
fn rotated_logs(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    let mut numbered: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| {
                let p = e.ok()?.path();
                let n = p
                    .file_name()?
                    .to_str()?
                    .strip_prefix(name)?
                    .strip_prefix('.')?
                    .parse()
                    .ok()?;
                Some((n, p))
            })
            .collect()
        })
        .unwrap_or_default();
    numbered.sort_by_key(|n| std::cmp::Reverse(n.0));
    numbered.into_iter().map(|(_, p)| p).collect()
}

/// CRI records -> each stream's bytes: a `P` record's line goes on, `F` ends it.
struct LogPrinter {
    since: Option<String>,
}

impl LogPrinter {
    fn print(&mut self, bytes: &[u8]) {
        let (mut out, mut err) = (std::io::stdout().lock(), std::io::stderr().lock());
        for rec in bytes.split(|b| *b == b'\n').filter(|r| !r.is_empty()) {
            let mut parts = rec.splitn(4, |b| *b == b' ');
            let (Some(ts), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if self.since.as_deref().is_some_and(|s| ts < s.as_bytes()) {
                continue;
            }
            let w: &mut dyn Write = if stream == b"stderr" { &mut err } else { &mut out };
            let _ = w.write_all(parts.next().unwrap_or(b""));
            if tag == b"F" {
                let _ = w.write_all(b"\n");
            }
        }
        let _ = out.flush();
    }
}

/// `attach [PROCESS]`: the process's output (stream byte 2 -> stdout, 3 -> stderr) and
/// our stdin to it, over its SEQPACKET attach socket; with a terminal, raw mode and
/// size forwarding. At our stdin's end the process's stdin is closed. Exits with the
/// process's status.
fn attach(g: &Global, a: &[String]) -> Result<i32, String> {
    use nix::sys::socket::{
        connect, recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr,
    };
    use std::os::fd::AsRawFd;
    let process = a.first().cloned().unwrap_or_else(|| INIT_PROCESS.to_string());
    let socket_path = g.socket()?;
    let mut c = Client::connect(&socket_path).map_err(|e| e.to_string())?;
    let path = c
        .call_value("attach", json!({"process": process}))
        .map_err(|e| e.to_string())?["path"]
        .as_str()
        .ok_or("attach answered without a path")?
        .to_string();
    let st: ProcessState = c
        .call("state", &json!({"process": process}))
        .map_err(|e| e.to_string())?;
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    let addr = UnixAddr::new(path.as_str()).map_err(|e| format!("{path}: {e}"))?;
    connect(fd.as_raw_fd(), &addr).map_err(|e| format!("connect {path}: {e}"))?;
    let raw = if st.terminal { RawMode::enter() } else { None };
    if st.terminal {
        if let Some((rows, cols)) = window_size() {
            let _ = c.call_value("resize", json!({"process": process, "rows": rows, "cols": cols}));
        }
        watch_window_size(socket_path.clone(), process.clone());
    }
    let input = fd.try_clone().map_err(|e| e.to_string())?;
    let (sock, proc_name) = (socket_path.clone(), process.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        let mut stdin = std::io::stdin();
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if send(input.as_raw_fd(), &buf[..n], MsgFlags::empty()).is_err() {
                        return;
                    }
                }
            }
        }
        if let Ok(mut c) = Client::connect(&sock) {
            let _ = c.call_value("close_stdin", json!({"process": proc_name}));
        }
    });
    let mut buf = vec![0u8; 8193];
    let mut why = None;
    loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let payload = &buf[1..n];
        match buf[0] {
            2 => {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(payload).and_then(|_| out.flush());
            }
            3 => {
                let _ = std::io::stderr().write_all(payload);
            }
            4 => why = Some(String::from_utf8_lossy(payload).into_owned()),
            _ => {}
        }
    }
    drop(raw);
    if let Some(why) = why {
        return Err(format!("the shim detached us: {why}"));
    }
    let exit = c.wait(Some(&process)).map_err(|e| e.to_string())?;
    Ok(exit.status.unwrap_or(255))
}
