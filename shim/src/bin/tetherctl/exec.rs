//! Processes attached through their FIFOs: `exec` (with a terminal or not) and
//! `run`, a container's whole life.

use super::*;

/// Copies a shim-made output FIFO to our stdout or stderr until EOF (in a thread).
pub(crate) fn drain_fifo(path: Option<String>, to_stderr: bool) -> Option<std::thread::JoinHandle<()>> {
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
pub(crate) fn feed_stdin(path: Option<String>, socket: PathBuf, process: String) {
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
pub(crate) fn exec(g: &Global, a: &[String]) -> Result<i32, String> {
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

/// `run --id ID --bundle DIR [shim flags]`: the whole life of a container, printing
/// its output and every event.
pub(crate) fn run_container(a: &[String]) -> Result<i32, String> {
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
