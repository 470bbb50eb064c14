//! Read-only stores (`--store-ro`, doc/CONFIGURATION.md): a store `modelfs pull` filled,
//! mounted read-only, serves a node whose own store is empty with no network at all.

mod support;

use std::path::Path;
use std::process::Command;

use support::metrics::{metrics_addr, sample};
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, getfattr, run, temp_dir, Mounted};

const MIB: usize = 1 << 20;

/// A read-only bind mount of `dir` at `at`, removed when dropped.
struct ReadOnlyBind<'a>(&'a Path);

impl<'a> ReadOnlyBind<'a> {
    fn new(dir: &Path, at: &'a Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        run("mount", &["--bind", dir.to_str().unwrap(), at.to_str().unwrap()]);
        let bind = ReadOnlyBind(at);
        run("mount", &["-o", "remount,bind,ro", at.to_str().unwrap()]);
        bind
    }
}

impl Drop for ReadOnlyBind<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_read_only_store_on_a_read_only_mount_serves_with_no_network() {
    let files =
        [("config.json", b"{\"layers\": 2}".to_vec()), ("model.bin", bytes(41, 5 * MIB + 3))];
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(
        "ro/model",
        vec![
            MockFile::git(files[0].0, files[0].1.clone()),
            MockFile::lfs(files[1].0, files[1].1.clone()),
        ],
    ));
    let dir = temp_dir("store-ro");
    let prepared = dir.join("prepared");
    let out = Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(["pull", "ro/model", "--chunk-size", "1M", "--endpoint", &hub.endpoint(), "--store"])
        .arg(&prepared)
        .env_remove("HF_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    hub.stop();

    let ro = dir.join("ro");
    let _bind = ReadOnlyBind::new(&prepared, &ro);
    assert!(std::fs::write(ro.join("probe"), b"x").is_err(), "the bind mount is writable");
    let args = [
        "--offline",
        "--chunk-size",
        "1M",
        "--store-ro",
        ro.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    let m = Mounted::start("http://127.0.0.1:9", &dir.join("store"), &args);
    assert_eq!(m.names("ro/model/all"), ["config.json", "model.bin"]);
    for (p, d) in &files {
        let path = m.path(&format!("ro/model/all/{p}"));
        assert!(std::fs::read(&path).unwrap() == *d, "{p} read wrong");
        assert_eq!(getfattr(&path, "user.modelfs.status").unwrap(), "verified", "{p}");
    }
    assert_eq!(m.names("ro"), ["model"], "the read-only store's repos are listed");
    assert!(!m.log().contains("ERROR"), "{}", m.log());
    // The files are verified there: as root each open is passed through to the kernel, which
    // reads the read-only store's data file itself; otherwise the daemon reads it, and counts.
    let addr = metrics_addr(&m);
    let from_ro = sample(&addr, "modelfs_store_ro_read_bytes_total");
    let passed_through = sample(&addr, "modelfs_passthrough_opens_total");
    assert!(
        from_ro >= files[1].1.len() as f64 || passed_through >= files.len() as f64,
        "{from_ro} bytes from the read-only store, {passed_through} passthrough opens"
    );
    m.stop();
    // Nothing was copied into the node's own store: it serves from the read-only one.
    let copied = modelfs::commands::disk_usage(&dir.join("store/data"));
    assert_eq!(copied, 0, "{copied} bytes of data files in the node's store");
}

/// A read-only store of another chunk size cannot be layered: the mount refuses to start.
#[test]
fn a_read_only_store_of_another_chunk_size_is_refused() {
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new("ro/other", vec![MockFile::lfs("w.bin", bytes(42, MIB))]));
    let dir = temp_dir("store-ro-size");
    let prepared = dir.join("prepared");
    let pulled = Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(["pull", "ro/other", "--chunk-size", "2M", "--endpoint", &hub.endpoint(), "--store"])
        .arg(&prepared)
        .status()
        .unwrap();
    assert!(pulled.success());
    let out = Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(["mount", "/nonexistent-mountpoint", "--chunk-size", "1M", "--store-ro"])
        .arg(&prepared)
        .arg("--store")
        .arg(dir.join("store"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be layered"), "{err}");
}
