//! The OCI runtime's command line (runc; crun and youki take the same). Every
//! invocation is spawned and left running: the event loop learns its end from the
//! reaper, so nothing blocks while runc works.

use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Stdio};

/// How to call the runtime: fixed at launch, saved in the state dir for `cleanup`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Runtime {
    /// Binary name or path (`runc`).
    pub path: String,
    /// `--root`: where the runtime keeps its state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    #[serde(default)]
    pub systemd_cgroup: bool,
    /// Further global options, placed before the subcommand.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_args: Vec<String>,
}

/// Stdio for one runtime invocation; `None` is /dev/null. `runc create` and
/// `runc exec` hand theirs to the container process.
#[derive(Default)]
pub struct RuntimeStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

fn stdio(fd: Option<OwnedFd>) -> Stdio {
    fd.map(Stdio::from).unwrap_or_else(Stdio::null)
}

impl Runtime {
    /// The full argv, runtime binary first (also used by tests of the argument mapping).
    pub fn argv(&self, log: &Path, args: &[String]) -> Vec<String> {
        let mut argv = vec![self.path.clone()];
        if let Some(root) = &self.root {
            argv.extend(["--root".to_string(), root.clone()]);
        }
        argv.extend([
            "--log".to_string(),
            log.display().to_string(),
            "--log-format".to_string(),
            "json".to_string(),
        ]);
        if self.systemd_cgroup {
            argv.push("--systemd-cgroup".to_string());
        }
        argv.extend(self.extra_args.iter().cloned());
        argv.extend(args.iter().cloned());
        argv
    }

    /// Starts `runtime ARGS...` with a fresh log file; returns its pid.
    pub fn spawn(&self, log: &Path, args: &[String], io: RuntimeStdio) -> io::Result<i32> {
        // A fresh log per invocation: its last error is this call's error.
        File::create(log)?;
        let argv = self.argv(log, args);
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(stdio(io.stdin))
            .stdout(stdio(io.stdout))
            .stderr(stdio(io.stderr))
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run runtime {}: {e}", self.path)))?;
        // The reaper collects it; the Child handle is dropped without waiting.
        Ok(child.id() as i32)
    }
}

/// The runtime's own account of why it failed: the last error in its JSON log, or
/// the last line of a non-JSON log, else a description of the exit.
/// `how` says how the runtime ended ("exited with status 1", "was killed by SIGKILL"),
/// for when it logged nothing.
pub fn failure_message(what: &str, log: &Path, how: &str) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let mut last_error = None;
    let mut last_line = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let msg = v.get("msg").and_then(|m| m.as_str()).unwrap_or(line).to_string();
                let level = v.get("level").and_then(|l| l.as_str()).unwrap_or("");
                if level == "error" || level == "fatal" {
                    last_error = Some(msg.clone());
                }
                last_line = Some(msg);
            }
            Err(_) => last_line = Some(line.to_string()),
        }
    }
    match last_error.or(last_line) {
        Some(msg) if msg.starts_with(what) => msg,
        Some(msg) => format!("{what} failed: {msg}"),
        None => format!("{what} failed: it {how} and logged nothing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_places_global_options_first() {
        let rt = Runtime {
            path: "runc".into(),
            root: Some("/r".into()),
            systemd_cgroup: true,
            extra_args: vec!["--debug".into()],
        };
        let argv = rt.argv(Path::new("/s/l.log"), &["start".into(), "c1".into()]);
        assert_eq!(
            argv.join(" "),
            "runc --root /r --log /s/l.log --log-format json --systemd-cgroup --debug start c1"
        );
    }

    #[test]
    fn failure_message_prefers_last_error() {
        let dir = std::env::temp_dir().join(format!("tether-rt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("l.log");
        fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\n{\"level\":\"error\",\"msg\":\"rootfs /x does not exist\"}\n{\"level\":\"info\",\"msg\":\"bye\"}\n",
        )
        .unwrap();
        assert_eq!(
            failure_message("runc create", &log, "exited with status 1"),
            "runc create failed: rootfs /x does not exist"
        );
        fs::write(&log, "").unwrap();
        assert_eq!(
            failure_message("runc start", &log, "was killed by SIGKILL"),
            "runc start failed: it was killed by SIGKILL and logged nothing"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
