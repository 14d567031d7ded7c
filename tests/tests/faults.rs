//! A runtime that hangs or dies (fault-injection runtimes, named so): the shim stays
//! responsive, names what happened, and loses nothing.

use std::fs;
use std::time::Duration;
use tether_protocol::*;
use tether_tests::*;

const T: Duration = Duration::from_secs(20);

#[test]
fn a_hanging_runtime_does_not_stall_the_shim() {
    let work = TempDir::new("tether-hang");
    let runtime = fault_runtime("hanging-runtime", work.path());
    let shim = Shim::launch_with(
        &BundleSpec::new(&["true"]),
        &["--runtime", runtime.to_str().unwrap()],
    );
    // The create call never answers while the runtime hangs...
    let mut creator = shim.client();
    let pending = std::thread::spawn(move || creator.create(&null_stdio()));
    let pid_file = work.path().join("hanging-runtime.pid");
    wait_until(T, "the runtime to hang", || pid_file.exists());
    // ...but everyone else is served.
    let mut c = shim.client();
    assert_eq!(c.hello().unwrap().status, ContainerStatus::Creating);
    let e = c.create(&null_stdio()).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::WrongState), "{e}");
    assert!(e.to_string().contains("being created"), "{e}");
    let e = c.call_value("shutdown", serde_json::json!({})).unwrap_err();
    assert_eq!(
        e.rpc_kind(),
        Some(ErrorKind::WrongState),
        "a runtime call is running"
    );
    // When the runtime finally dies, the waiting create gets runc's story.
    let pid: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // SAFETY: signalling the fault-injection runtime's sleep.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let e = pending.join().unwrap().unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::RuntimeFailed));
    assert!(e.to_string().contains("killed by SIGKILL"), "{e}");
    assert_eq!(c.hello().unwrap().status, ContainerStatus::New, "usable again");
}

#[test]
fn a_runtime_that_dies_is_reported_as_such() {
    let work = TempDir::new("tether-die");
    let runtime = fault_runtime("dying-runtime", work.path());
    let shim = Shim::launch_with(
        &BundleSpec::new(&["true"]),
        &["--runtime", runtime.to_str().unwrap()],
    );
    let mut c = shim.client();
    let e = c.create(&null_stdio()).unwrap_err();
    assert_eq!(e.rpc_kind(), Some(ErrorKind::RuntimeFailed));
    let msg = e.to_string();
    assert!(
        msg.contains("killed by SIGKILL") && msg.contains("logged nothing"),
        "{msg}"
    );
    assert!(!msg.contains("exit status"), "{msg}");
    // Nothing half-made is left: the shim is back to `new`.
    assert_eq!(c.hello().unwrap().status, ContainerStatus::New);
}
