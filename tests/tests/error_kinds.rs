//! Every error kind of docs/PROTOCOL.md's table, met the way a client meets it, and
//! answered with that kind: a parameter that does not fit is `invalid_params`, a path
//! that cannot be opened or made is `stdio_failed`, and so on. (`internal`,
//! `events_compacted`, `limit_exceeded` and `events_missing` need a failing disk or
//! thousands of events: hardening.rs and reattach.rs meet them; `shutting_down` lasts
//! only until the shim exits after `delete`.)

use serde_json::{json, Value};
use std::fs;
use tether_tests::tether_protocol::*;
use tether_tests::*;

/// The `data.kind` of the answer to one raw line.
fn kind_of_line(c: &mut Client, line: &str) -> String {
    c.send_raw(format!("{line}\n").as_bytes()).unwrap();
    let answer: Value = c.read_raw_line().unwrap().expect("an answer");
    answer["error"]["data"]["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("no error kind in {answer}"))
        .to_string()
}

fn kind_of(c: &mut Client, method: &str, params: Value) -> ErrorKind {
    let e = c
        .call_value(method, params.clone())
        .expect_err(&format!("{method} {params} succeeded"));
    e.rpc_kind().unwrap_or_else(|| panic!("{method} {params}: {e}"))
}

#[test]
fn each_error_kind_is_the_one_its_cause_has() {
    let shim = Shim::launch(&BundleSpec::new(&["sleep", "1000"]));
    let work = shim.work.path();
    let mut c = shim.client();

    assert_eq!(kind_of_line(&mut c, "{not json"), "parse_error");
    assert_eq!(kind_of_line(&mut c, "[1,2]"), "invalid_request");
    assert_eq!(kind_of(&mut c, "bogus", json!({})), ErrorKind::MethodNotFound);

    // A parameter that does not fit the method: invalid_params, before anything is
    // opened or run.
    let bad_params = [
        json!({"stdin": "/dev/null", "log": {"path": "relative.log"}}),
        json!({"stdin": "/dev/null", "stdout": "relative-out", "stderr": "/dev/null"}),
        json!({"stdin": "in", "stdout": "/dev/null", "stderr": "/dev/null"}),
        json!({"stdin": "/dev/null", "log": {"path": format!("{}/a.log", work.display()), "max_line": 0}}),
        json!({"stdin": "/dev/null", "log": {"path": format!("{}/b.log", work.display()), "max_size": 100, "max_files": 1}}),
        json!({"stdin": "/dev/null", "stdout": format!("{}/out", shim.state_dir.display())}),
        json!({"no_such_param": true}),
        json!({"stdin_eof": "sometime"}),
    ];
    for params in bad_params {
        assert_eq!(
            kind_of(&mut c, "create", params.clone()),
            ErrorKind::InvalidParams,
            "{params}"
        );
    }
    assert!(!work.join("a.log").exists() && !work.join("b.log").exists());

    // A path that cannot be opened or made: stdio_failed.
    let missing = format!("{}/no/such/dir/out", work.display());
    let p = json!({"stdin": "/dev/null", "stdout": missing, "stderr": "/dev/null"});
    assert_eq!(kind_of(&mut c, "create", p), ErrorKind::StdioFailed);
    let p = json!({"stdin": "/dev/null", "log": {"path": missing}});
    assert_eq!(kind_of(&mut c, "create", p), ErrorKind::StdioFailed);

    // State: nothing created yet.
    assert_eq!(kind_of(&mut c, "start", json!({})), ErrorKind::WrongState);
    c.create(&null_stdio()).unwrap();
    assert_eq!(kind_of(&mut c, "create", json!({})), ErrorKind::AlreadyExists);
    assert_eq!(
        kind_of(&mut c, "kill", json!({"process": "nobody", "signal": 9})),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind_of(&mut c, "kill", json!({"signal": "SIGNOPE"})),
        ErrorKind::InvalidParams
    );
    c.start().unwrap();
    let exec = json!({"exec_id": "e1", "process": {"args": ["sleep", "100"]},
        "stdin": "/dev/null", "stdout": "/dev/null", "stderr": "/dev/null"});
    c.call_value("exec", exec.clone()).unwrap();
    assert_eq!(kind_of(&mut c, "exec", exec), ErrorKind::AlreadyExists);
    let relative_exec = json!({"exec_id": "e2", "process": {"args": ["true"]}, "stdout": "out"});
    assert_eq!(kind_of(&mut c, "exec", relative_exec), ErrorKind::InvalidParams);
    let failing_exec = json!({"exec_id": "e3", "process": {"args": ["/nonexistent"]},
        "stdin": "/dev/null", "stdout": "/dev/null", "stderr": "/dev/null"});
    assert_eq!(kind_of(&mut c, "exec", failing_exec), ErrorKind::RuntimeFailed);
    assert_eq!(
        kind_of(&mut c, "resize", json!({"rows": 10, "cols": 10})),
        ErrorKind::WrongState
    );
    c.delete(None, true).unwrap();

    // A bundle that cannot be used.
    let broken = Shim::launch(&BundleSpec::new(&["true"]));
    fs::write(broken.bundle.join("config.json"), "{").unwrap();
    let mut c = broken.client();
    assert_eq!(kind_of(&mut c, "create", json!({})), ErrorKind::InvalidBundle);
}
