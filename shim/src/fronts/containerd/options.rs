//! What containerd tells `start` on its stdin, and the runtime options in it.
//!
//! - containerd 1.6/1.7 and 2.0-2.2: the runtime options, a protobuf `Any`, when the
//!   runtime has an `options` table (nothing otherwise).
//! - containerd 2.3+: a `BootstrapParams` (bootstrap.proto): instance id, namespace,
//!   socket dir, and the runtime options as one of its extensions. Such a containerd
//!   gets a `BootstrapResult` back.
//!
//! The options come as containerd's runc options (`containerd.runc.v1.Options`, for
//! runtime_type `io.containerd.runc.v2`) or, for any other runtime type such as
//! `io.containerd.tether.v2`, as `runtimeoptions.v1.Options` whose body is the TOML of
//! the runtime's `options` table (or whose `config_path` names a TOML file). Of them
//! the shim reads what makes sense for it: `BinaryName` (the OCI runtime), `Root` (its
//! `--root`, joined with the namespace as containerd's runc shim does) and
//! `SystemdCgroup`.

use super::proto::{self, Any, BootstrapParams, RuncOptions};
use prost::Message;

/// The type URL of `runtimeoptions.v1.Options` (generic runtime options).
const GENERIC_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
/// Config files named by `config_path` are read up to this size.
const CONFIG_FILE_LIMIT: u64 = 1 << 20;

#[derive(Clone, PartialEq, prost::Message)]
struct GenericOptions {
    #[prost(string, tag = "2")]
    config_path: String,
    #[prost(bytes = "vec", tag = "3")]
    config_body: Vec<u8>,
}

/// The runtime options of containerd's that the shim reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeOptions {
    pub binary_name: Option<String>,
    pub root: Option<String>,
    pub systemd_cgroup: bool,
}

/// What `start` learned from its stdin.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StartInput {
    /// containerd spoke the bootstrap protocol (2.3+): answer a BootstrapResult.
    pub bootstrap: bool,
    pub options: RuntimeOptions,
    /// Where containerd wants task API sockets (BootstrapParams.socket_dir).
    pub socket_dir: Option<String>,
}

/// Parses `start`'s stdin for task `id` in `namespace`. Unknown or undecodable
/// input is no options at all (as containerd's shims treat options they do not know).
pub fn parse_start_input(bytes: &[u8], namespace: &str, id: &str) -> Result<StartInput, String> {
    if bytes.is_empty() {
        return Ok(StartInput::default());
    }
    // A BootstrapParams names this very task; an options Any decoded as one would
    // carry its type URL as the instance id.
    if let Ok(p) = BootstrapParams::decode(bytes) {
        if p.instance_id == id && p.namespace == namespace {
            let mut options = RuntimeOptions::default();
            for any in p.extensions.iter().filter_map(|e| e.value.as_ref()) {
                if let Some(o) = from_any(any)? {
                    options = o;
                }
            }
            return Ok(StartInput {
                bootstrap: true,
                options,
                socket_dir: p.socket_dir.filter(|d| !d.is_empty()),
            });
        }
    }
    let options = match Any::decode(bytes) {
        Ok(any) => from_any(&any)?.unwrap_or_default(),
        Err(_) => RuntimeOptions::default(),
    };
    Ok(StartInput {
        bootstrap: false,
        options,
        socket_dir: None,
    })
}

/// The options in `any`, if it is runc's or generic options; None for other types.
pub fn from_any(any: &Any) -> Result<Option<RuntimeOptions>, String> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name == proto::RUNC_OPTIONS_TYPE {
        let o = RuncOptions::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode containerd's runc options: {e}"))?;
        return Ok(Some(RuntimeOptions {
            binary_name: Some(o.binary_name).filter(|s| !s.is_empty()),
            root: Some(o.root).filter(|s| !s.is_empty()),
            systemd_cgroup: o.systemd_cgroup,
        }));
    }
    if name == GENERIC_OPTIONS_TYPE {
        let o = GenericOptions::decode(any.value.as_slice())
            .map_err(|e| format!("cannot decode containerd's runtime options: {e}"))?;
        let body = if o.config_path.is_empty() {
            String::from_utf8(o.config_body)
                .map_err(|_| "the runtime options' TOML is not UTF-8".to_string())?
        } else {
            read_config_file(&o.config_path)?
        };
        return from_toml(&body).map(Some);
    }
    Ok(None)
}

fn read_config_file(path: &str) -> Result<String, String> {
    use std::io::Read;
    let mut s = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(CONFIG_FILE_LIMIT).read_to_string(&mut s))
        .map_err(|e| format!("runtime options config_path {path}: {e}"))?;
    Ok(s)
}

/// `BinaryName`, `Root` and `SystemdCgroup` of a runtime's `options` table as
/// containerd writes it (flat `Key = value` lines; other keys and tables ignored).
pub fn from_toml(body: &str) -> Result<RuntimeOptions, String> {
    let mut o = RuntimeOptions::default();
    for line in body.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            break; // a sub-table: not the options' own keys
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
        let value = value.trim();
        match key {
            "BinaryName" => o.binary_name = Some(toml_string(key, value)?).filter(|s| !s.is_empty()),
            "Root" => o.root = Some(toml_string(key, value)?).filter(|s| !s.is_empty()),
            "SystemdCgroup" => {
                o.systemd_cgroup = match value {
                    "true" => true,
                    "false" => false,
                    v => return Err(format!("runtime option SystemdCgroup = {v}: not a boolean")),
                }
            }
            _ => {}
        }
    }
    Ok(o)
}

/// A TOML basic ("...") or literal ('...') string on one line.
fn toml_string(key: &str, value: &str) -> Result<String, String> {
    let bad = || format!("runtime option {key} = {value}: not a TOML string");
    if let Some(inner) = value.strip_prefix('\'') {
        return inner.split_once('\'').map(|(s, _)| s.to_string()).ok_or_else(bad);
    }
    let inner = value.strip_prefix('"').ok_or_else(bad)?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Ok(out),
            '\\' => match chars.next().ok_or_else(bad)? {
                '"' => out.push('"'),
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                't' => out.push('\t'),
                _ => return Err(bad()),
            },
            c => out.push(c),
        }
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fronts::containerd::proto::{BootstrapParams, Extension};

    fn generic(body: &str) -> Any {
        let g = GenericOptions {
            config_path: String::new(),
            config_body: body.as_bytes().to_vec(),
        };
        Any::pack(GENERIC_OPTIONS_TYPE, &g)
    }

    #[test]
    fn generic_options_toml() {
        let any = generic(
            "BinaryName = '/usr/bin/crun'\nRoot = \"/run/x\"\nSystemdCgroup = true\n[sub]\nRoot = 'no'\n",
        );
        let o = from_any(&any).unwrap().unwrap();
        assert_eq!(o.binary_name.as_deref(), Some("/usr/bin/crun"));
        assert_eq!(o.root.as_deref(), Some("/run/x"));
        assert!(o.systemd_cgroup);
        assert!(from_toml("SystemdCgroup = 1").is_err());
        assert!(from_toml("Root = /x").is_err());
        assert_eq!(from_toml("Other = 'x'\n").unwrap(), RuntimeOptions::default());
    }

    #[test]
    fn runc_options_and_bootstrap() {
        let runc = RuncOptions {
            binary_name: "runc".into(),
            root: "/r".into(),
            systemd_cgroup: false,
        };
        let any = Any::pack(proto::RUNC_OPTIONS_TYPE, &runc);
        // 1.6/1.7: the Any alone.
        let input = parse_start_input(&any.encode_to_vec(), "k8s.io", "c1").unwrap();
        assert!(!input.bootstrap);
        assert_eq!(input.options.root.as_deref(), Some("/r"));
        // 2.3+: BootstrapParams with the options as an extension.
        let params = BootstrapParams {
            instance_id: "c1".into(),
            namespace: "k8s.io".into(),
            containerd_version: "v2.4.2".into(),
            containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
            extensions: vec![Extension { value: Some(any) }],
            socket_dir: Some("/run/containerd/s".into()),
        };
        let input = parse_start_input(&params.encode_to_vec(), "k8s.io", "c1").unwrap();
        assert!(input.bootstrap);
        assert_eq!(input.options.binary_name.as_deref(), Some("runc"));
        assert_eq!(input.socket_dir.as_deref(), Some("/run/containerd/s"));
        // Nothing, or something else: no options.
        assert_eq!(parse_start_input(b"", "n", "i").unwrap(), StartInput::default());
        assert_eq!(
            parse_start_input(b"\xff\xff", "n", "i").unwrap(),
            StartInput::default()
        );
    }
}
