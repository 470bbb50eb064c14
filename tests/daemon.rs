//! The mount as an operator runs it (doc/CONFIGURATION.md, issue 6): configuration file errors and
//! precedence, `--daemon` (detach, pid file, log file, readiness reported to the parent),
//! `sd_notify` through a real datagram socket, SIGHUP reloads, and JSON logs. Each test runs
//! the real binary against the mock Hub; the precedence matrix itself is unit-tested in
//! `src/cli.rs` and `src/config.rs`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, temp_dir, Mounted};

/// How long a daemon may take to mount, reload or stop. Generous: CI machines are shared.
const WAIT: Duration = Duration::from_secs(30);

const REPO: &str = "test-org/ops";
const FILE: &str = "test-org/ops/all/config.json";

fn hub() -> MockHub {
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(
        REPO,
        vec![
            MockFile::git("config.json", br#"{"model_type": "bert"}"#.to_vec()),
            MockFile::lfs("model.safetensors", bytes(3, 200_000)),
        ],
    ));
    hub
}

fn modelfs() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelfs"));
    cmd.env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env_remove("MODELFS_STORE")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "modelfs=debug")
        .stdin(Stdio::null());
    cmd
}

fn mounted(mp: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let mp = mp.to_str().expect("utf-8 mountpoint");
    info.lines().any(|l| l.split(' ').nth(4) == Some(mp) && l.contains("modelfs"))
}

/// Poll `cond` until it holds or [`WAIT`] passes; `what` and `context()` explain a failure.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}:\n{}", context());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process that is gone, or a zombie nobody reaps (the detached daemon's parent is init,
/// which in a container may never reap).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn bad_config_is_an_error_naming_file_and_line() {
    let dir = temp_dir("badcfg");
    let config = dir.join("modelfs.toml");
    std::fs::write(&config, "threads = 4\n# a comment\nmax_cache = \"50G\"\n").unwrap();
    let out = modelfs()
        .arg("mount")
        .arg(dir.join("models"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let location = format!("config {}:3:1: unknown field `max_cache`", config.display());
    assert!(err.contains(&location), "stderr: {err}");
    assert!(!mounted(&dir.join("models")));

    // An explicitly named file that does not exist is an error too (the default one is not).
    let missing = dir.join("absent.toml");
    let out = modelfs()
        .arg("mount")
        .arg(dir.join("models"))
        .arg("--config")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("config {}: ", missing.display())), "stderr: {err}");
}

/// `--daemon` returns once the mount answers, with the pid in the pid file and the log in the
/// default place next to the store, which here comes from the configuration file (no
/// `--store`); SIGTERM unmounts and removes the pid file.
#[test]
fn daemon_detaches_and_stops_cleanly() {
    let hub = hub();
    let dir = temp_dir("daemon");
    let store = dir.join("store-from-config");
    let config = dir.join("modelfs.toml");
    std::fs::write(&config, format!("store = {:?}\nendpoint = {:?}\n", store, hub.endpoint()))
        .unwrap();
    let mp = dir.join("models");
    let pid_file = dir.join("run/modelfs.pid");
    let out = modelfs()
        .arg("mount")
        .arg(&mp)
        .arg("--daemon")
        .arg("--config")
        .arg(&config)
        .arg("--pid-file")
        .arg(&pid_file)
        .output()
        .unwrap();
    let log_path = store.join("modelfs.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(out.status.success(), "{out:?}\nlog:\n{}", log());
    // The parent waited for the mount: no polling needed.
    assert!(mounted(&mp), "parent exited before the mount was up:\n{}", log());
    assert_eq!(std::fs::read(mp.join(FILE)).unwrap(), br#"{"model_type": "bert"}"#);

    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(!process_gone(pid));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(env!("CARGO_BIN_EXE_modelfs").as_bytes()));
    // Detached: in a session of its own, not the test's, and not its leader (so it can never
    // acquire a controlling terminal).
    let sid = nix::unistd::getsid(Some(Pid::from_raw(pid))).unwrap();
    assert_ne!(sid, nix::unistd::getsid(None).unwrap());
    assert_ne!(sid, Pid::from_raw(pid));
    assert!(log().contains("mounted"), "log:\n{}", log());

    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    wait_for("the pid file to go", || !pid_file.exists(), log);
    wait_for("the process to exit", || process_gone(pid), log);
    assert!(!mounted(&mp), "still mounted:\n{}", log());
    assert!(log().contains("unmounted"), "log:\n{}", log());
}

/// A detached start that fails after the fork reports the daemon's error through the parent.
#[test]
fn daemon_start_failure_reaches_the_parent() {
    let dir = temp_dir("daemonfail");
    let not_a_dir = dir.join("file");
    std::fs::write(&not_a_dir, "").unwrap();
    let pid_file = dir.join("modelfs.pid");
    let out = modelfs()
        .arg("mount")
        .arg(dir.join("models"))
        .arg("--daemon")
        .arg("--offline")
        .arg("--store")
        .arg(not_a_dir.join("store"))
        .arg("--log-file")
        .arg(dir.join("modelfs.log"))
        .arg("--pid-file")
        .arg(&pid_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("modelfs: store: "), "stderr: {err}");
    assert!(!mounted(&dir.join("models")));
    // The daemon that failed removed its pid file.
    wait_for("the pid file to go", || !pid_file.exists(), String::new);
}

#[test]
fn sd_notify_ready_once_answering_then_stopping() {
    let hub = hub();
    let dir = temp_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(WAIT)).unwrap();
    let store = dir.join("store");
    let m = Mounted::start_env(
        &hub.endpoint(),
        &store,
        &[],
        &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = socket.recv(&mut buf).expect("READY=1 within the timeout");
    assert_eq!(&buf[..n], b"READY=1");
    // READY promises an answering mount: a read works at once.
    assert_eq!(std::fs::read(m.path(FILE)).unwrap(), br#"{"model_type": "bert"}"#);

    let status = m.stop();
    assert!(status.success(), "{status}");
    let n = socket.recv(&mut buf).expect("STOPPING=1 within the timeout");
    assert_eq!(&buf[..n], b"STOPPING=1");
    // Nothing more: STOPPING is sent once.
    socket.set_nonblocking(true).unwrap();
    assert!(socket.recv(&mut buf).is_err());
}

#[test]
fn sighup_reloads_the_config_and_survives_a_broken_one() {
    let hub = hub();
    let dir = temp_dir("hup");
    let config = dir.join("modelfs.toml");
    std::fs::write(&config, "max_cache_size = \"1G\"\n").unwrap();
    let m = Mounted::start(
        &hub.endpoint(),
        &dir.join("store"),
        &["--config", config.to_str().unwrap(), "--max-connections", "4"],
    );
    let pid = Pid::from_raw(m.pid() as i32);
    let count = |needle: &str| m.log().matches(needle).count();

    // Live: the bound and the pins. Restart only: threads. max_connections is set on the
    // command line, so the file's value is not a change at all.
    std::fs::write(
        &config,
        "max_cache_size = \"2G\"\nthreads = 8\nmax_connections = 9\n\
         [[repo]]\nid = \"test-org/ops\"\npin = true\n",
    )
    .unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for("the reload", || count("configuration reloaded") == 1, || m.log());
    let log = m.log();
    assert!(log.contains("changed=max_cache_size,pinned"), "log:\n{log}");
    assert!(log.contains("need a restart to apply settings=threads\n"), "log:\n{log}");
    assert!(!log.contains("max_connections"), "log:\n{log}");

    // A broken file changes nothing and the mount keeps serving.
    std::fs::write(&config, "max_cache_size = \"3G\"\n\nthreads = \"many\"\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for("the refused reload", || count("configuration not reloaded") == 1, || m.log());
    let location = format!("{}:3:11", config.display());
    assert!(m.log().contains(&location), "log:\n{}", m.log());
    assert_eq!(std::fs::read(m.path(FILE)).unwrap(), br#"{"model_type": "bert"}"#);

    // And the next good file is compared with what runs (2G), not with the broken one.
    std::fs::write(&config, "max_cache_size = \"2G\"\nthreads = 8\n").unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    wait_for("the second reload", || count("configuration reloaded") == 2, || m.log());
    let last = m.log().lines().rfind(|l| l.contains("configuration reloaded")).map(str::to_owned);
    assert!(last.as_deref().is_some_and(|l| l.contains("changed=pinned")), "{last:?}");

    let status = m.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn json_logs_are_one_object_per_line_without_the_token() {
    const TOKEN: &str = "hf_mock_token";
    let hub = hub();
    let dir = temp_dir("json");
    let log_file = dir.join("logs/modelfs.json");
    let m = Mounted::start_env(
        &hub.endpoint(),
        &dir.join("store"),
        &["--log-format", "json", "--log-file", log_file.to_str().unwrap()],
        &[("HF_TOKEN", TOKEN)],
    );
    let data = std::fs::read(m.path("test-org/ops/all/model.safetensors")).unwrap();
    assert_eq!(data, bytes(3, 200_000));
    let status = m.stop();
    assert!(status.success(), "{status}");

    let text = std::fs::read_to_string(&log_file).unwrap();
    assert!(!text.contains(TOKEN), "the token reached the log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not JSON: {l}")))
        .collect();
    let message = |v: &serde_json::Value| v["fields"]["message"].as_str().map(str::to_owned);
    let line = |msg: &str| {
        lines
            .iter()
            .find(|v| message(v).as_deref() == Some(msg))
            .unwrap_or_else(|| panic!("no {msg:?} line in:\n{text}"))
    };
    let mounted_line = line("mounted");
    assert_eq!(mounted_line["level"], "INFO");
    assert_eq!(mounted_line["fields"]["store"], dir.join("store").to_str().unwrap());
    assert_eq!(mounted_line["fields"]["offline"], false);
    assert!(mounted_line["timestamp"].is_string());
    assert_eq!(line("unmounted")["level"], "INFO");
    let fetches: Vec<_> =
        lines.iter().filter(|v| message(v).as_deref() == Some("fetching chunk")).collect();
    assert!(!fetches.is_empty(), "no fetch lines in:\n{text}");
    for f in fetches {
        assert_eq!(f["level"], "DEBUG");
        assert_eq!(f["fields"]["repo"], REPO);
        assert_eq!(f["fields"]["path"], "model.safetensors");
    }
}
