//! The core driven with synthetic inputs, no runtime and no root: a recording fake
//! spawner stands in for runc (it starts nothing and hands out pids far above
//! pid_max, so a signal the core sends can reach no real process); the tests write
//! pid files and feed reaped exits in the orders that matter.

use super::testing::{fake_core, Recorded};
use super::*;
use crate::registry::Routes;
use mio::Poll;
use std::fs;
use std::path::Path;
use tether_protocol::{ContainerStatus, CreateParams, DeleteParams, EventBody, ExecParams, ProcessParams};

/// What came out, in order, as short strings: `created`, `exit init 137 oom`,
/// `reply 3 ok`, `reply 4 wrong_state`.
fn describe(outputs: Vec<Output>) -> Vec<String> {
    outputs
        .into_iter()
        .map(|o| match o {
            Output::Event(e, _) => match &e.body {
                EventBody::Exit(r) => format!(
                    "exit {} {}{}",
                    r.process,
                    r.status.unwrap_or(-1),
                    if r.oom_killed { " oom" } else { "" }
                ),
                body => body.name().to_string(),
            },
            Output::Reply(t, r) => match *r {
                Ok(_) => format!("reply {t} ok"),
                Err(e) => format!("reply {t} {:?}", e.kind),
            },
            Output::Exit { .. } => "shim exit".to_string(),
        })
        .collect()
}

struct Harness {
    core: Core,
    poll: Poll,
    routes: Routes,
    calls: Recorded,
    dir: PathBuf,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("tether-core-{name}-{}", std::process::id()));
        let (core, calls) = fake_core(&dir);
        Harness {
            core,
            poll: Poll::new().unwrap(),
            routes: Routes::default(),
            calls,
            dir,
        }
    }

    fn call(&mut self, call: Call) -> Reply {
        let mut io = Io::new(self.poll.registry(), &mut self.routes);
        self.core.call(call, &mut io)
    }

    /// A call that must be deferred: its ticket.
    fn deferred(&mut self, call: Call) -> Ticket {
        match self.call(call) {
            Reply::Later(d) => d.ticket(),
            Reply::Now(r) => panic!("expected a deferred answer, got {r:?}"),
        }
    }

    fn reap(&mut self, pid: i32, status: i32) {
        let signal = (status > 128).then_some(status - 128);
        let mut io = Io::new(self.poll.registry(), &mut self.routes);
        self.core
            .on_child_exits(vec![ChildExit { pid, status, signal }], &mut io);
    }

    /// The pid and argv of the newest runtime call.
    fn last_call(&self) -> (i32, String) {
        let calls = self.calls.0.borrow();
        let (pid, argv) = calls.last().unwrap();
        (*pid, argv.join(" "))
    }

    fn write_pid(&self, file: &str, pid: i32) {
        fs::write(self.dir.join("state").join(file), pid.to_string()).unwrap();
    }

    fn outputs(&mut self) -> Vec<String> {
        describe(self.core.take_outputs())
    }

    /// Create (/dev/null stdio) and start; init gets `init_pid`. Outputs drained.
    fn running(&mut self, init_pid: i32) {
        let quiet = CreateParams {
            stdin: Some("/dev/null".into()),
            stdout: Some("/dev/null".into()),
            stderr: Some("/dev/null".into()),
            ..Default::default()
        };
        self.deferred(Call::Create(quiet));
        let (op, _) = self.last_call();
        self.write_pid("init.pid", init_pid);
        self.reap(op, 0);
        self.deferred(Call::Start);
        let (op, _) = self.last_call();
        self.reap(op, 0);
        let out = self.outputs();
        assert_eq!(out[0], "created");
        assert_eq!(out[2], "started");
    }

    /// Starts exec `id`; its ticket.
    fn exec(&mut self, id: &str) -> Ticket {
        self.deferred(Call::Exec(ExecParams {
            exec_id: id.into(),
            process: serde_json::json!({"args": ["true"]}),
            stdin: Some("/dev/null".into()),
            stdout: Some("/dev/null".into()),
            stderr: Some("/dev/null".into()),
            ..Default::default()
        }))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

const INIT: i32 = 95_000_001;
const EXEC: i32 = 95_000_002;

#[test]
fn an_exit_reaped_before_the_pid_file_is_read_follows_the_start_event() {
    let mut h = Harness::new("early-exit");
    h.running(INIT);
    let ticket = h.exec("e1");
    let (op, argv) = h.last_call();
    assert!(argv.contains(" exec --detach --pid-file "), "{argv}");
    h.write_pid("exec-e1.pid", EXEC);
    // The process ends before `runc exec` returns: kept, not lost, not published.
    h.reap(EXEC, 3);
    assert_eq!(h.outputs(), Vec::<String>::new());
    h.reap(op, 0);
    assert_eq!(
        h.outputs(),
        [
            "exec_added",
            "exec_started",
            &format!("reply {ticket} ok"),
            "exit e1 3"
        ]
    );
}

#[test]
fn init_reaped_while_start_runs_publishes_started_first() {
    let mut h = Harness::new("start-race");
    h.deferred(Call::Create(CreateParams {
        stdin: Some("/dev/null".into()),
        stdout: Some("/dev/null".into()),
        stderr: Some("/dev/null".into()),
        ..Default::default()
    }));
    let (create, _) = h.last_call();
    h.write_pid("init.pid", INIT);
    h.reap(create, 0);
    h.outputs();
    let start = h.deferred(Call::Start);
    let (op, _) = h.last_call();
    h.reap(INIT, 0);
    assert_eq!(h.outputs(), Vec::<String>::new(), "exit held until start returns");
    assert_eq!(h.core.status(), ContainerStatus::Created);
    h.reap(op, 0);
    assert_eq!(
        h.outputs(),
        ["started", &format!("reply {start} ok"), "exit init 0"]
    );
    assert_eq!(h.core.status(), ContainerStatus::Stopped);
}

#[test]
fn an_oom_kill_is_claimed_by_the_exit_it_caused() {
    let mut h = Harness::new("oom");
    h.running(INIT);
    let counter = h.dir.join("memory.oom_control");
    fs::write(&counter, "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n").unwrap();
    h.core.oom.count_from(fs::File::open(&counter).unwrap());
    h.exec("e1");
    let (op, _) = h.last_call();
    h.write_pid("exec-e1.pid", EXEC);
    h.reap(op, 0);
    h.outputs();
    // The kernel kills init for memory; the notification has not been read.
    fs::write(&counter, "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n").unwrap();
    // An exit that is not SIGKILL does not take the kill...
    h.reap(EXEC, 1);
    // ...the SIGKILLed one does, and the oom event comes before any exit.
    h.reap(INIT, 137);
    assert_eq!(h.outputs(), ["oom", "exit e1 1", "exit init 137 oom"]);
}

#[test]
fn init_exiting_while_execs_run_is_published_after_them() {
    let mut h = Harness::new("init-last");
    h.running(INIT);
    h.exec("e1");
    let (op, _) = h.last_call();
    h.write_pid("exec-e1.pid", EXEC);
    h.reap(op, 0);
    h.outputs();
    h.reap(INIT, 0);
    assert_eq!(h.outputs(), Vec::<String>::new(), "init's exit waits for e1");
    assert_eq!(h.core.status(), ContainerStatus::Running);
    h.reap(EXEC, 137);
    assert_eq!(h.outputs(), ["exit e1 137", "exit init 0"]);
}

#[test]
fn an_exec_still_launching_holds_init_exit_back() {
    let mut h = Harness::new("launching");
    h.running(INIT);
    let ticket = h.exec("e1");
    let (op, _) = h.last_call();
    h.reap(INIT, 0);
    assert_eq!(h.outputs(), Vec::<String>::new());
    // The exec fails (the container is gone): init's exit may go now.
    h.reap(op, 1);
    assert_eq!(
        h.outputs(),
        [format!("reply {ticket} RuntimeFailed"), "exit init 0".to_string()]
    );
}

#[test]
fn delete_while_an_operation_is_in_flight_is_refused() {
    let mut h = Harness::new("delete-busy");
    h.deferred(Call::Create(CreateParams::default()));
    let (create, _) = h.last_call();
    let refused = |h: &mut Harness| match h.call(Call::Delete(DeleteParams {
        process: None,
        force: true,
    })) {
        Reply::Now(Err(e)) => e.kind,
        other => panic!("{other:?}"),
    };
    assert_eq!(refused(&mut h), ErrorKind::WrongState);
    assert_eq!(h.core.status(), ContainerStatus::Creating);
    h.write_pid("init.pid", INIT);
    h.reap(create, 0);
    h.deferred(Call::Start);
    assert_eq!(refused(&mut h), ErrorKind::WrongState, "start in flight");
}

#[test]
fn a_wait_whose_client_left_is_forgotten() {
    let mut h = Harness::new("cancel");
    h.running(INIT);
    let tickets: Vec<Ticket> = (0..1000)
        .map(|_| h.deferred(Call::Wait(ProcessParams::default())))
        .collect();
    let kept = h.deferred(Call::Wait(ProcessParams::default()));
    for t in tickets {
        h.core.cancel(t);
    }
    assert_eq!(h.core.init.as_ref().unwrap().waiter_count(), 1);
    h.reap(INIT, 0);
    assert_eq!(h.outputs(), ["exit init 0", &format!("reply {kept} ok")]);
}

#[test]
fn a_failed_create_is_cleaned_up_before_it_is_answered() {
    let mut h = Harness::new("create-fails");
    let create = h.deferred(Call::Create(CreateParams::default()));
    let waiter_ticket = h.deferred(Call::Wait(ProcessParams::default()));
    let (op, _) = h.last_call();
    h.reap(op, 1);
    // Not answered yet: the runtime's leftovers are deleted first.
    let (cleanup, argv) = h.last_call();
    assert!(argv.ends_with("delete --force c1"), "{argv}");
    assert_eq!(h.outputs(), Vec::<String>::new());
    assert_eq!(h.core.status(), ContainerStatus::Creating);
    h.reap(cleanup, 0);
    assert_eq!(
        h.outputs(),
        [
            format!("reply {waiter_ticket} RuntimeFailed"),
            format!("reply {create} RuntimeFailed")
        ]
    );
    assert_eq!(h.core.status(), ContainerStatus::New);
    // Shim-made FIFOs stay for the retry; nothing of the runtime's is left.
    assert!(!Path::new(&h.dir.join("state/init.pid")).exists());
}

#[test]
fn a_create_that_succeeds_without_a_pid_file_fails_cleanly() {
    let mut h = Harness::new("no-pid-file");
    let create = h.deferred(Call::Create(CreateParams::default()));
    let (op, _) = h.last_call();
    h.reap(op, 0);
    let (cleanup, _) = h.last_call();
    h.reap(cleanup, 0);
    let out = h.outputs();
    assert_eq!(out, [format!("reply {create} RuntimeFailed")]);
    assert_eq!(h.core.status(), ContainerStatus::New);
    // A retry is a fresh create, not `already_exists`.
    h.deferred(Call::Create(CreateParams::default()));
}

#[test]
fn concurrent_runtime_calls_never_share_a_scratch_file() {
    let mut h = Harness::new("scratch");
    h.running(INIT);
    for _ in 0..3 {
        h.deferred(Call::Pids);
        h.deferred(Call::Update(tether_protocol::UpdateParams {
            resources: serde_json::json!({"pids": {"limit": 10}}),
        }));
    }
    let calls = h.calls.0.borrow();
    let files: Vec<&str> = calls
        .iter()
        .flat_map(|(_, argv)| argv.iter())
        .filter(|a| a.contains("/rt-"))
        .map(String::as_str)
        .collect();
    let mut unique = files.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(files.len(), unique.len(), "{files:?}");
    // Per pids: its log (its output file is its stdout); per update: log + input.
    assert_eq!(files.len(), 2 + 9, "create, start, then {files:?}");
}
