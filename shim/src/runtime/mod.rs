//! The OCI runtime (runc; crun and youki take the same command line). Every
//! invocation is spawned and left running: the event loop learns its end from the
//! reaper, so nothing blocks while the runtime works.

mod call;
mod failure;

pub use call::RuntimeCall;
pub use failure::{failure_message, failure_message_with};

use serde::{Deserialize, Serialize};
use std::fs::File;
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
    /// Flags added to `create` and `restore`, after their own (conmon's
    /// `--no-pivot`, `--no-new-keyring`, `--runtime-opt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub create_args: Vec<String>,
    /// Flags added to `exec`, after its own (conmon's `--runtime-opt`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_args: Vec<String>,
}

/// Stdio for one runtime invocation; `None` is /dev/null. `runc create` and
/// `runc exec` hand theirs to the container process.
#[derive(Default)]
pub struct RuntimeStdio {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Starts a process and returns its pid without waiting for it (the reaper
/// collects it). A trait so the core can be driven without a real runtime in tests.
pub trait Spawn {
    fn spawn(&mut self, argv: &[String], io: RuntimeStdio) -> io::Result<i32>;
}

/// The real thing: fork and exec.
pub struct Exec;

impl Spawn for Exec {
    fn spawn(&mut self, argv: &[String], io: RuntimeStdio) -> io::Result<i32> {
        let stdio = |fd: Option<OwnedFd>| fd.map(Stdio::from).unwrap_or_else(Stdio::null);
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty command line"))?;
        let mut cmd = Command::new(program);
        crate::sys::with_caller_umask(&mut cmd);
        let child = cmd
            .args(args)
            .stdin(stdio(io.stdin))
            .stdout(stdio(io.stdout))
            .stderr(stdio(io.stderr))
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run runtime {program}: {e}")))?;
        // The reaper collects it; the Child handle is dropped without waiting.
        Ok(child.id() as i32)
    }
}

impl Runtime {
    /// The runtime binary's file name, for messages (`runc create failed: ...`).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The full argv of `call` on container `id`, runtime binary first.
    pub fn argv(&self, log: &Path, call: &RuntimeCall, id: &str) -> Vec<String> {
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
        let extra = match call {
            RuntimeCall::Create { .. } | RuntimeCall::Restore { .. } => &self.create_args,
            RuntimeCall::Exec { .. } => &self.exec_args,
            _ => &Vec::new(),
        };
        argv.extend(call.args_with(id, extra));
        argv
    }

    /// Starts `call` with a fresh log file (its last error is this call's error).
    pub fn spawn(
        &self,
        spawner: &mut dyn Spawn,
        log: &Path,
        call: &RuntimeCall,
        id: &str,
        io: RuntimeStdio,
    ) -> io::Result<i32> {
        File::create(log)?;
        spawner.spawn(&self.argv(log, call, id), io)
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
            ..Default::default()
        };
        let argv = rt.argv(Path::new("/s/l.log"), &RuntimeCall::Start, "c1");
        assert_eq!(
            argv.join(" "),
            "runc --root /r --log /s/l.log --log-format json --systemd-cgroup --debug start c1"
        );
    }

    #[test]
    fn an_engines_subcommand_flags_go_before_the_id_of_their_calls_only() {
        let rt = Runtime {
            path: "runc".into(),
            create_args: vec!["--no-pivot".into(), "--preserve-fds".into(), "1".into()],
            exec_args: vec!["--preserve-fds".into(), "2".into()],
            ..Default::default()
        };
        let log = Path::new("/l");
        let tail = |call: RuntimeCall| rt.argv(log, &call, "c1")[5..].join(" ");
        let create = RuntimeCall::Create {
            bundle: "/b".into(),
            pid_file: "/p".into(),
            console_socket: None,
        };
        assert_eq!(
            tail(create),
            "create --bundle /b --pid-file /p --no-pivot --preserve-fds 1 c1"
        );
        let exec = RuntimeCall::Exec {
            process: "/x".into(),
            pid_file: "/p".into(),
            console_socket: None,
        };
        assert_eq!(
            tail(exec),
            "exec --detach --pid-file /p --process /x --preserve-fds 2 c1"
        );
        assert_eq!(tail(RuntimeCall::Start), "start c1");
    }
}
