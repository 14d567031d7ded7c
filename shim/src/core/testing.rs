//! For tests only: a core whose runtime is a recording fake. It starts nothing and
//! hands out pids far above pid_max, so a signal the core sends can reach no real
//! process; tests write pid files and feed reaped exits themselves.

use super::Core;
use crate::runtime::{Runtime, RuntimeStdio, Spawn};
use crate::state_dir::StateDir;
use std::cell::RefCell;
use std::fs;
use std::path::Path;
use std::rc::Rc;

pub const FIRST_FAKE_PID: i32 = 90_000_000;

/// Each spawn: the pid handed out and the argv.
pub type Spawned = Vec<(i32, Vec<String>)>;

#[derive(Clone, Default)]
pub struct Recorded(pub Rc<RefCell<Spawned>>);

pub struct FakeRuntime(pub Recorded);

impl Spawn for FakeRuntime {
    fn spawn(&mut self, argv: &[String], _io: RuntimeStdio) -> std::io::Result<i32> {
        let mut calls = self.0 .0.borrow_mut();
        let pid = FIRST_FAKE_PID + calls.len() as i32;
        calls.push((pid, argv.to_vec()));
        Ok(pid)
    }
}

/// A core with container id `c1`, a bundle and a state dir under `dir` (made afresh).
pub fn fake_core(dir: &Path) -> (Core, Recorded) {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.join("bundle/rootfs")).unwrap();
    fs::create_dir_all(dir.join("state")).unwrap();
    fs::write(
        dir.join("bundle/config.json"),
        r#"{"root":{"path":"rootfs"},"process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
    )
    .unwrap();
    let calls = Recorded::default();
    let core = Core::with_spawner(
        "c1".into(),
        dir.join("bundle"),
        Runtime {
            path: "fake-runc".into(),
            ..Default::default()
        },
        StateDir::new(dir.join("state")),
        Box::new(FakeRuntime(calls.clone())),
    )
    .unwrap();
    (core, calls)
}
