//! Shims under a state root: launching one, listing them.

use super::*;

/// Finds `tether-shim` beside this binary, else on PATH.
pub(crate) fn shim_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("tether-shim")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("tether-shim"))
}

pub(crate) fn launch(g: &Global, a: &[String]) -> Result<PathBuf, String> {
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
pub(crate) fn list(g: &Global) -> Result<i32, String> {
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
pub(crate) fn last_status_on_disk(dir: &Path) -> String {
    if dir.join("exits/init.json").exists() {
        "stopped".into()
    } else if dir.join("init.pid").exists() {
        "unknown".into()
    } else {
        "new".into()
    }
}

pub(crate) fn last_seq_on_disk(dir: &Path) -> String {
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

/// `upgrade [--all] [--binary PATH]`: one shim, or every live shim under the state
/// root one after another; a line each (`ID FROM -> TO, paused N us` or why not).
/// Exit code 1 if any was refused.
pub(crate) fn upgrade(g: &Global, a: &[String]) -> Result<i32, String> {
    let mut all = false;
    let mut binary: Option<PathBuf> = None;
    let mut it = a.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--all" => all = true,
            "--binary" => {
                let path = PathBuf::from(it.next().ok_or("--binary needs a path")?);
                binary = Some(std::path::absolute(&path).map_err(|e| format!("{}: {e}", path.display()))?);
            }
            other => return Err(format!("upgrade: unknown flag {other}")),
        }
    }
    let params = match &binary {
        Some(b) => json!({ "binary": b }),
        None => json!({}),
    };
    let sockets: Vec<(String, PathBuf)> = if all {
        let entries =
            std::fs::read_dir(&g.state_root).map_err(|e| format!("{}: {e}", g.state_root.display()))?;
        let mut dirs: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("shim.sock").exists())
            .collect();
        dirs.sort();
        dirs.into_iter()
            .map(|d| {
                (
                    d.file_name().unwrap_or_default().to_string_lossy().to_string(),
                    d.join("shim.sock"),
                )
            })
            .collect()
    } else {
        let socket = g.socket()?;
        vec![(
            g.id.clone().unwrap_or_else(|| socket.display().to_string()),
            socket,
        )]
    };
    let started = std::time::Instant::now();
    let (mut done, mut refused) = (0, 0);
    for (id, socket) in sockets {
        let answer =
            Client::connect(&socket).and_then(|mut c| c.call::<_, UpgradeResult>("upgrade", &params));
        match answer {
            Ok(r) => {
                done += 1;
                println!("{id} {} -> {}, paused {} us", r.from, r.to, r.paused_us);
            }
            Err(e) => {
                refused += 1;
                println!("{id} not upgraded: {e}");
            }
        }
    }
    if all {
        println!(
            "{done} upgraded, {refused} not, in {} ms",
            started.elapsed().as_millis()
        );
    }
    Ok(i32::from(refused > 0))
}
