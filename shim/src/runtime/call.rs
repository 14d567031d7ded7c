//! Runtime subcommands as types: each knows its own flags, so command lines are
//! built in one place.

use std::path::PathBuf;
use tether_protocol::CriuOptions;

#[derive(Debug, Clone)]
pub enum RuntimeCall {
    Create {
        bundle: PathBuf,
        pid_file: PathBuf,
        console_socket: Option<PathBuf>,
    },
    Restore {
        bundle: PathBuf,
        pid_file: PathBuf,
        console_socket: Option<PathBuf>,
        criu: CriuOptions,
    },
    Start,
    Exec {
        process: PathBuf,
        pid_file: PathBuf,
        console_socket: Option<PathBuf>,
    },
    Kill {
        signal: i32,
        all: bool,
    },
    Delete {
        force: bool,
    },
    Pause,
    Resume,
    /// `ps --format json`: the pids, as a JSON list on stdout.
    Ps,
    Update {
        resources: PathBuf,
    },
    Checkpoint {
        criu: CriuOptions,
        leave_running: bool,
    },
}

impl RuntimeCall {
    pub fn subcommand(&self) -> &'static str {
        match self {
            RuntimeCall::Create { .. } => "create",
            RuntimeCall::Restore { .. } => "restore",
            RuntimeCall::Start => "start",
            RuntimeCall::Exec { .. } => "exec",
            RuntimeCall::Kill { .. } => "kill",
            RuntimeCall::Delete { .. } => "delete",
            RuntimeCall::Pause => "pause",
            RuntimeCall::Resume => "resume",
            RuntimeCall::Ps => "ps",
            RuntimeCall::Update { .. } => "update",
            RuntimeCall::Checkpoint { .. } => "checkpoint",
        }
    }

    /// True for create, restore and exec: the runtime hands its own stdio to the
    /// container's process, so its stderr is the process's, not the shim's to read.
    pub fn hands_stdio_to_process(&self) -> bool {
        matches!(
            self,
            RuntimeCall::Create { .. } | RuntimeCall::Restore { .. } | RuntimeCall::Exec { .. }
        )
    }

    /// The subcommand, its flags and the container id, in the order runc takes them.
    pub fn args(&self, id: &str) -> Vec<String> {
        self.args_with(id, &[])
    }

    /// [`Self::args`] with `extra` flags after the subcommand's own, before the id
    /// (the engine's own create, restore or exec flags: conmon's `--runtime-opt`).
    pub fn args_with(&self, id: &str, extra: &[String]) -> Vec<String> {
        let mut a = vec![self.subcommand().to_string()];
        let mut flag = |name: &str, value: &PathBuf| {
            a.push(name.to_string());
            a.push(value.display().to_string());
        };
        match self {
            RuntimeCall::Create {
                bundle,
                pid_file,
                console_socket,
            } => {
                flag("--bundle", bundle);
                flag("--pid-file", pid_file);
                if let Some(s) = console_socket {
                    flag("--console-socket", s);
                }
            }
            RuntimeCall::Restore {
                bundle,
                pid_file,
                console_socket,
                criu,
            } => {
                a.push("--detach".to_string());
                a.extend(criu_args(criu));
                a.extend(["--bundle".to_string(), bundle.display().to_string()]);
                a.extend(["--pid-file".to_string(), pid_file.display().to_string()]);
                if let Some(s) = console_socket {
                    a.extend(["--console-socket".to_string(), s.display().to_string()]);
                }
            }
            RuntimeCall::Exec {
                process,
                pid_file,
                console_socket,
            } => {
                a.push("--detach".to_string());
                a.extend(["--pid-file".to_string(), pid_file.display().to_string()]);
                a.extend(["--process".to_string(), process.display().to_string()]);
                if let Some(s) = console_socket {
                    a.extend(["--console-socket".to_string(), s.display().to_string()]);
                }
            }
            RuntimeCall::Kill { signal, all } => {
                if *all {
                    a.push("--all".to_string());
                }
                // `kill [--all] ID SIGNAL`: the signal follows the id.
                a.push(id.to_string());
                a.push(signal.to_string());
                return a;
            }
            RuntimeCall::Delete { force } => {
                if *force {
                    a.push("--force".to_string());
                }
            }
            RuntimeCall::Ps => a.extend(["--format".to_string(), "json".to_string()]),
            RuntimeCall::Update { resources } => flag("--resources", resources),
            RuntimeCall::Checkpoint { criu, leave_running } => {
                a.extend(criu_args(criu));
                if *leave_running {
                    a.push("--leave-running".to_string());
                }
            }
            RuntimeCall::Start | RuntimeCall::Pause | RuntimeCall::Resume => {}
        }
        a.extend(extra.iter().cloned());
        a.push(id.to_string());
        a
    }
}

/// The CRIU options as runtime flags (checkpoint and restore share them).
fn criu_args(o: &CriuOptions) -> Vec<String> {
    let mut a = vec!["--image-path".to_string(), o.image_path.clone()];
    if let Some(w) = &o.work_path {
        a.extend(["--work-path".to_string(), w.clone()]);
    }
    for (on, flag) in [
        (o.tcp_established, "--tcp-established"),
        (o.ext_unix_sk, "--ext-unix-sk"),
        (o.shell_job, "--shell-job"),
        (o.file_locks, "--file-locks"),
    ] {
        if on {
            a.push(flag.to_string());
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(call: RuntimeCall) -> String {
        call.args("c1").join(" ")
    }

    #[test]
    fn command_lines() {
        assert_eq!(
            line(RuntimeCall::Create {
                bundle: "/b".into(),
                pid_file: "/s/init.pid".into(),
                console_socket: Some("/s/c.sock".into()),
            }),
            "create --bundle /b --pid-file /s/init.pid --console-socket /s/c.sock c1"
        );
        assert_eq!(
            line(RuntimeCall::Exec {
                process: "/s/p.json".into(),
                pid_file: "/s/e.pid".into(),
                console_socket: None,
            }),
            "exec --detach --pid-file /s/e.pid --process /s/p.json c1"
        );
        assert_eq!(
            line(RuntimeCall::Kill { signal: 9, all: true }),
            "kill --all c1 9"
        );
        assert_eq!(line(RuntimeCall::Delete { force: true }), "delete --force c1");
        assert_eq!(line(RuntimeCall::Ps), "ps --format json c1");
        let criu = CriuOptions {
            image_path: "/img".into(),
            work_path: Some("/w".into()),
            tcp_established: true,
            ..Default::default()
        };
        assert_eq!(
            line(RuntimeCall::Checkpoint {
                criu: criu.clone(),
                leave_running: true
            }),
            "checkpoint --image-path /img --work-path /w --tcp-established --leave-running c1"
        );
        assert_eq!(
            line(RuntimeCall::Restore {
                bundle: "/b".into(),
                pid_file: "/s/init.pid".into(),
                console_socket: None,
                criu,
            }),
            "restore --detach --image-path /img --work-path /w --tcp-established --bundle /b --pid-file /s/init.pid c1"
        );
    }
}
