//! `attach`: a process's output and our stdin over its SEQPACKET attach socket.

use super::*;

/// `attach [PROCESS]`: the process's output (stream byte 2 -> stdout, 3 -> stderr) and
/// our stdin to it, over its SEQPACKET attach socket; with a terminal, raw mode and
/// size forwarding. At our stdin's end the process's stdin is closed. Exits with the
/// process's status.
pub(crate) fn attach(g: &Global, a: &[String]) -> Result<i32, String> {
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
