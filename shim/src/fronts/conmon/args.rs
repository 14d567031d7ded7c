//! conmon's command line, parsed as GLib's GOption parses it (conmon 2.1.6's
//! `cli.c`): `--opt value` or `--opt=value`; a string option takes the next argument
//! even if it begins with `-` (`--runtime-arg --log`), and an empty one (`''`);
//! short options (`-c ID`, `-ti`); repeatable options keep their order; arguments
//! that are not options (the `1` podman puts after `--api-version`) are ignored;
//! `--` ends the options; an unknown option is an error.

#[derive(Debug, Default, Clone)]
pub struct Args {
    pub version: bool,
    pub help: bool,
    pub api_version: bool,
    pub cid: Option<String>,
    pub cuuid: Option<String>,
    pub name: Option<String>,
    pub runtime: Option<String>,
    pub bundle: Option<String>,
    pub persist_dir: Option<String>,
    pub container_pidfile: Option<String>,
    pub conmon_pidfile: Option<String>,
    pub exit_dir: Option<String>,
    pub socket_dir_path: Option<String>,
    pub log_paths: Vec<String>,
    pub log_level: Option<String>,
    pub log_tag: Option<String>,
    pub log_size_max: Option<i64>,
    pub log_global_size_max: Option<i64>,
    pub runtime_args: Vec<String>,
    pub runtime_opts: Vec<String>,
    pub terminal: bool,
    pub stdin: bool,
    pub leave_stdin_open: bool,
    pub exec: bool,
    pub exec_attach: bool,
    pub exec_process_spec: Option<String>,
    pub full_attach: bool,
    pub exit_command: Option<String>,
    pub exit_command_args: Vec<String>,
    pub exit_delay: Option<i64>,
    pub restore: Option<String>,
    pub timeout: Option<i64>,
    pub sync: bool,
    pub syslog: bool,
    pub systemd_cgroup: bool,
    pub no_pivot: bool,
    pub no_new_keyring: bool,
    pub no_sync_log: bool,
    pub replace_listen_pid: bool,
    pub sdnotify_socket: Option<String>,
    pub seccomp_notify_socket: Option<String>,
    pub seccomp_notify_plugins: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// G_OPTION_ARG_NONE.
    Flag,
    /// G_OPTION_ARG_STRING (and STRING_ARRAY: repeatable).
    Str,
    /// G_OPTION_ARG_INT / INT64.
    Int,
}

/// Every option conmon 2.1.6 takes: (long name, short name, kind).
const OPTIONS: &[(&str, Option<char>, Kind)] = &[
    ("api-version", None, Kind::Flag),
    ("bundle", Some('b'), Kind::Str),
    ("cid", Some('c'), Kind::Str),
    ("conmon-pidfile", Some('P'), Kind::Str),
    ("container-pidfile", Some('p'), Kind::Str),
    ("cuuid", Some('u'), Kind::Str),
    ("exec", Some('e'), Kind::Flag),
    ("exec-attach", None, Kind::Flag),
    ("exec-process-spec", None, Kind::Str),
    ("exit-command", None, Kind::Str),
    ("exit-command-arg", None, Kind::Str),
    ("exit-delay", None, Kind::Int),
    ("exit-dir", None, Kind::Str),
    ("full-attach", None, Kind::Flag),
    ("help", Some('h'), Kind::Flag),
    ("leave-stdin-open", None, Kind::Flag),
    ("log-global-size-max", None, Kind::Int),
    ("log-level", None, Kind::Str),
    ("log-path", Some('l'), Kind::Str),
    ("log-size-max", None, Kind::Int),
    ("log-tag", None, Kind::Str),
    ("name", Some('n'), Kind::Str),
    ("no-new-keyring", None, Kind::Flag),
    ("no-pivot", None, Kind::Flag),
    ("no-sync-log", None, Kind::Flag),
    ("persist-dir", Some('0'), Kind::Str),
    ("pidfile", None, Kind::Str),
    ("replace-listen-pid", None, Kind::Flag),
    ("restore", None, Kind::Str),
    ("restore-arg", None, Kind::Str),
    ("runtime", Some('r'), Kind::Str),
    ("runtime-arg", None, Kind::Str),
    ("runtime-opt", None, Kind::Str),
    ("sdnotify-socket", None, Kind::Str),
    ("seccomp-notify-plugins", None, Kind::Str),
    ("seccomp-notify-socket", None, Kind::Str),
    ("socket-dir-path", None, Kind::Str),
    ("stdin", Some('i'), Kind::Flag),
    ("sync", None, Kind::Flag),
    ("syslog", None, Kind::Flag),
    ("systemd-cgroup", Some('s'), Kind::Flag),
    ("terminal", Some('t'), Kind::Flag),
    ("timeout", Some('T'), Kind::Int),
    ("version", None, Kind::Flag),
];

pub const USAGE: &str =
    "usage: tether-conmon --cid ID --cuuid ID --runtime PATH [--bundle DIR] [-p PIDFILE] [-P CONMON_PIDFILE]
         [--exit-dir DIR] [-l k8s-file:PATH|PATH|none] [--log-size-max N] [--runtime-arg ARG]...
         [--exit-command PATH [--exit-command-arg ARG]... [--exit-delay SECS]] [-i] [--api-version] ...
       tether-conmon --version
(conmon 2.1.6's command line; docs/CONMON.md says what is supported)";

/// Parses conmon's argv (without argv[0]).
pub fn parse(argv: &[String]) -> Result<Args, String> {
    let mut a = Args::default();
    let mut i = 0;
    while i < argv.len() {
        let arg = &argv[i];
        i += 1;
        if arg == "--" {
            break;
        }
        if let Some(long) = arg.strip_prefix("--") {
            let (name, inline) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (long, None),
            };
            let Some(&(name, _, kind)) = OPTIONS.iter().find(|o| o.0 == name) else {
                return Err(format!("Unknown option {arg}"));
            };
            let value = match (kind, inline) {
                (Kind::Flag, None) => None,
                (Kind::Flag, Some(_)) => return Err(format!("Error parsing option --{name}")),
                (_, Some(v)) => Some(v),
                (_, None) => {
                    let v = argv
                        .get(i)
                        .cloned()
                        .ok_or_else(|| format!("Missing argument for --{name}"))?;
                    i += 1;
                    Some(v)
                }
            };
            a.set(name, kind, value)?;
        } else if arg.len() > 1 && arg.starts_with('-') {
            let shorts: Vec<char> = arg[1..].chars().collect();
            for (k, c) in shorts.iter().enumerate() {
                let Some(&(name, _, kind)) = OPTIONS.iter().find(|o| o.1 == Some(*c)) else {
                    return Err(format!("Unknown option -{c}"));
                };
                if kind == Kind::Flag {
                    a.set(name, kind, None)?;
                    continue;
                }
                // The rest of the group is the value, else the next argument.
                let rest: String = shorts[k + 1..].iter().collect();
                let value = if !rest.is_empty() {
                    rest
                } else {
                    let v = argv
                        .get(i)
                        .cloned()
                        .ok_or_else(|| format!("Missing argument for -{c}"))?;
                    i += 1;
                    v
                };
                a.set(name, kind, Some(value))?;
                break;
            }
        }
        // Anything else is a positional argument: ignored, as conmon does.
    }
    Ok(a)
}

impl Args {
    fn set(&mut self, name: &str, kind: Kind, value: Option<String>) -> Result<(), String> {
        let s = value.unwrap_or_default();
        let int = |s: &str| -> Result<i64, String> {
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("Cannot parse integer value \u{201c}{s}\u{201d} for --{name}"))
        };
        let n = if kind == Kind::Int { Some(int(&s)?) } else { None };
        match name {
            "api-version" => self.api_version = true,
            "bundle" => self.bundle = Some(s),
            "cid" => self.cid = Some(s),
            "conmon-pidfile" => self.conmon_pidfile = Some(s),
            "container-pidfile" | "pidfile" => self.container_pidfile = Some(s),
            "cuuid" => self.cuuid = Some(s),
            "exec" => self.exec = true,
            "exec-attach" => self.exec_attach = true,
            "exec-process-spec" => self.exec_process_spec = Some(s),
            "exit-command" => self.exit_command = Some(s),
            "exit-command-arg" => self.exit_command_args.push(s),
            "exit-delay" => self.exit_delay = n,
            "exit-dir" => self.exit_dir = Some(s),
            "full-attach" => self.full_attach = true,
            "help" => self.help = true,
            "leave-stdin-open" => self.leave_stdin_open = true,
            "log-global-size-max" => self.log_global_size_max = n,
            "log-level" => self.log_level = Some(s),
            "log-path" => self.log_paths.push(s),
            "log-size-max" => self.log_size_max = n,
            "log-tag" => self.log_tag = Some(s),
            "name" => self.name = Some(s),
            "no-new-keyring" => self.no_new_keyring = true,
            "no-pivot" => self.no_pivot = true,
            "no-sync-log" => self.no_sync_log = true,
            "persist-dir" => self.persist_dir = Some(s),
            "replace-listen-pid" => self.replace_listen_pid = true,
            "restore" => self.restore = Some(s),
            "restore-arg" | "runtime-opt" => self.runtime_opts.push(s),
            "runtime" => self.runtime = Some(s),
            "runtime-arg" => self.runtime_args.push(s),
            "sdnotify-socket" => self.sdnotify_socket = Some(s),
            "seccomp-notify-plugins" => self.seccomp_notify_plugins = Some(s),
            "seccomp-notify-socket" => self.seccomp_notify_socket = Some(s),
            "socket-dir-path" => self.socket_dir_path = Some(s),
            "stdin" => self.stdin = true,
            "sync" => self.sync = true,
            "syslog" => self.syslog = true,
            "systemd-cgroup" => self.systemd_cgroup = true,
            "terminal" => self.terminal = true,
            "timeout" => self.timeout = n,
            "version" => self.version = true,
            _ => return Err(format!("Unknown option --{name}")),
        }
        Ok(())
    }

    /// The log conmon's `-l` values name: the first `k8s-file:PATH` or bare PATH.
    pub fn log(&self) -> Result<LogTarget, String> {
        let mut target = LogTarget::None;
        for l in &self.log_paths {
            let t = match l.split_once(':') {
                Some(("k8s-file", path)) => LogTarget::K8sFile(path.to_string()),
                Some(("journald", _)) => LogTarget::Unsupported(l.clone()),
                Some(_) => return Err(format!("unknown log driver in --log-path {l:?}")),
                None => match l.as_str() {
                    "none" | "off" | "null" => LogTarget::None,
                    "journald" | "passthrough" => LogTarget::Unsupported(l.clone()),
                    path => LogTarget::K8sFile(path.to_string()),
                },
            };
            match t {
                LogTarget::K8sFile(_) if matches!(target, LogTarget::K8sFile(_)) => {}
                LogTarget::K8sFile(_) => target = t,
                LogTarget::Unsupported(ref d) => {
                    return Err(format!(
                        "log driver {d:?} is not supported by tether-conmon (k8s-file and none are)"
                    ))
                }
                LogTarget::None => {}
            }
        }
        if self.log_paths.is_empty() {
            return Err("Log driver not provided. Use --log-path".to_string());
        }
        Ok(target)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    K8sFile(String),
    None,
    Unsupported(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn podmans_recorded_command_line() {
        let a = parse(&argv(&[
            "--api-version",
            "1",
            "-c",
            "abc",
            "-u",
            "abc",
            "-r",
            "/usr/bin/runc",
            "-b",
            "/b",
            "-p",
            "/r/pidfile",
            "-n",
            "fervent",
            "--exit-dir",
            "/x/exits",
            "--full-attach",
            "-l",
            "k8s-file:/b/ctr.log",
            "--log-level",
            "warning",
            "--log-size-max",
            "10000",
            "--runtime-arg",
            "--log-format=json",
            "--runtime-arg",
            "--log",
            "--runtime-arg=/r/oci-log",
            "--conmon-pidfile",
            "/r/conmon.pid",
            "--exit-command",
            "/usr/bin/podman",
            "--exit-command-arg",
            "--network-config-dir",
            "--exit-command-arg",
            "",
            "--exit-command-arg",
            "--rm",
            "-ti",
        ]))
        .unwrap();
        assert!(a.api_version && a.full_attach && a.terminal && a.stdin);
        assert_eq!(a.cid.as_deref(), Some("abc"));
        assert_eq!(a.runtime_args, ["--log-format=json", "--log", "/r/oci-log"]);
        assert_eq!(a.exit_command_args, ["--network-config-dir", "", "--rm"]);
        assert_eq!(a.log_size_max, Some(10000));
        assert_eq!(a.log().unwrap(), LogTarget::K8sFile("/b/ctr.log".into()));
        assert_eq!(a.conmon_pidfile.as_deref(), Some("/r/conmon.pid"));
    }

    #[test]
    fn short_values_joined_and_bad_input() {
        let a = parse(&argv(&["-cID", "-T", "5", "--timeout=7", "-l", "none"])).unwrap();
        assert_eq!(a.cid.as_deref(), Some("ID"));
        assert_eq!(a.timeout, Some(7));
        assert_eq!(a.log().unwrap(), LogTarget::None);
        assert!(parse(&argv(&["--bogus"]))
            .unwrap_err()
            .contains("Unknown option --bogus"));
        assert!(parse(&argv(&["-x"])).unwrap_err().contains("Unknown option -x"));
        assert!(parse(&argv(&["--cid"])).unwrap_err().contains("Missing argument"));
        assert!(parse(&argv(&["--timeout", "x"]))
            .unwrap_err()
            .contains("Cannot parse"));
        assert!(parse(&argv(&["--stdin=1"])).is_err());
        let a = parse(&argv(&["-l", "passthrough"])).unwrap();
        assert!(a.log().unwrap_err().contains("not supported"));
        assert!(parse(&argv(&["-c", "x"])).unwrap().log().is_err());
    }
}
