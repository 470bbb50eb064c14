//! The store commands find the store of the mount that runs, with no `--store`, however that
//! mount was told where its store is. Alone in its test binary: the commands choose a running
//! mount's store only when every live mount has the same one, and the other test binaries'
//! mounts (cargo runs binaries one after another) are gone by the time this one runs.

mod support;

use std::process::{Command, Stdio};

use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, temp_dir, Mounted};

#[test]
fn commands_beside_a_running_mount_need_no_store_flag() {
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new("o/found", vec![MockFile::lfs("w.bin", bytes(5, 100_000))]));
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &[]);
    let home = temp_dir("home");
    let modelfs = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_modelfs"))
            .args(args)
            .args(["--config", "/dev/null"])
            .env_remove("MODELFS_STORE")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("HF_TOKEN")
            .env("HOME", &*home)
            .env("RUST_LOG", "modelfs=warn")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(out.status.success(), "modelfs {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let endpoint = hub.endpoint();
    modelfs(&["pull", "o/found", "--endpoint", &endpoint]);
    let status = modelfs(&["status"]);
    let store = std::fs::canonicalize(&*store).unwrap();
    let want = format!(
        "store {} (the store of the mount at {} (pid {})): ",
        store.display(),
        m.mountpoint.display(),
        m.pid()
    );
    assert!(status.lines().last().unwrap().starts_with(&want), "{want}\n{status}");
    assert!(status.contains("o/found"), "the pull went elsewhere:\n{status}");
    // The mount serves what the pull stored, without asking the Hub.
    hub.clear_requests();
    assert_eq!(std::fs::read(m.path("o/found/all/w.bin")).unwrap(), bytes(5, 100_000));
    assert!(hub.requests().iter().all(|r| r.range.is_none()), "{:?}", hub.requests());
    m.stop();
}
