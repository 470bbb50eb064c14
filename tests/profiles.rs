//! Cache profiles on real mounts (doc/CONFIGURATION.md, "Cache profiles"): `none` stores
//! nothing and stays within its memory bound; per-repo profiles keep a `local` repo out of
//! the shared tier while the mount's default shares the others.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{
    bytes, drop_page_cache, getfattr, sha256_hex, temp_dir, wait_for, Mounted, SETTLE,
};
use support::tier::objects;

const MIB: usize = 1 << 20;

/// Every file under `dir` with its size and modification time: what "unchanged" compares.
/// libmdbx's lock file is left out: it is the readers' shared memory (each read transaction
/// takes a slot in it), not stored data.
fn listing(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u64, SystemTime)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let md = e.metadata().unwrap();
            if md.is_dir() {
                walk(&e.path(), out);
            } else if !e.file_name().to_string_lossy().ends_with("-lck") {
                out.insert(e.path(), (md.len(), md.modified().unwrap()));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

/// The daemon's peak resident set (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Profile `none`: 512 MiB read twice (1 GiB) through 8 MiB chunks leave the store directory
/// as it was, every byte is exact, and the daemon's peak RSS stays within its memory bound.
#[test]
fn profile_none_stores_nothing_and_stays_within_its_memory_bound() {
    let data = bytes(21, 512 * MIB + 77);
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new("prof/none", vec![MockFile::lfs("w.bin", data.clone())]));
    let store = temp_dir("profile-none");
    let m = Mounted::start(&hub.endpoint(), &store, &["--profile", "none"]);
    // The mount has made its store (index, lease); from here on nothing may change.
    let path = m.path("prof/none/all/w.bin");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), data.len() as u64);
    let before = listing(&store);
    for round in 0..2 {
        let got = std::fs::read(&path).unwrap();
        assert!(sha256_hex(&got) == sha256_hex(&data), "round {round}: wrong bytes");
        drop_page_cache(&path);
    }
    assert_eq!(listing(&store), before, "the store directory changed");
    assert_eq!(getfattr(&path, "user.modelfs.cached_bytes").unwrap(), "0");
    // 64 MiB of memory cache and 32 MiB of read-ahead in flight, over the daemon's own
    // footprint and the allocator's slack (142 MiB measured reading 256 MiB, 164 MiB reading
    // 512 MiB): half the file, whatever its size.
    let peak = peak_rss(m.pid());
    eprintln!("peak RSS {} MiB reading {} MiB", peak >> 20, data.len() >> 20);
    assert!(peak < 256 << 20, "peak RSS {} MiB", peak >> 20);
    m.stop();
}

/// One mount, a tier, two repos: the mount's default (`shared`) puts one in the tier; the
/// other's `[[repo]] profile = "local"` keeps its chunks and metadata out of it.
#[test]
fn a_local_repo_stays_out_of_the_tier_that_the_others_share() {
    let hub = MockHub::start(MockConfig::default());
    let (a, b) = (bytes(31, 2 * MIB + 3), bytes(32, 3 * MIB + 9));
    hub.add_repo(MockRepo::new("prof/kept", vec![MockFile::lfs("w.bin", a.clone())]));
    hub.add_repo(MockRepo::new("prof/shared", vec![MockFile::lfs("w.bin", b.clone())]));
    let dir = temp_dir("profile-local");
    let tier = dir.join("tier");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "tier = \"file://{}\"\n\n[[repo]]\nid = \"prof/kept\"\nprofile = \"local\"\n",
            tier.display()
        ),
    )
    .unwrap();
    let args = ["--chunk-size", "1M", "--config", config.to_str().unwrap()];
    let m = Mounted::start(&hub.endpoint(), &dir.join("store"), &args);
    assert!(std::fs::read(m.path("prof/kept/all/w.bin")).unwrap() == a);
    assert!(std::fs::read(m.path("prof/shared/all/w.bin")).unwrap() == b);
    wait_for("the shared repo's chunks in the tier", SETTLE, || objects(&tier) == 4);
    wait_for("its ref", SETTLE, || tier.join("repos/v1/prof/shared/refs/main").exists());
    m.stop();
    assert_eq!(objects(&tier), 4, "only the shared repo's chunks");
    assert!(!tier.join("repos/v1/prof/kept").exists(), "the local repo's metadata in the tier");
    // The local repo is still stored: it reads with the Hub gone.
    let endpoint = hub.endpoint();
    hub.stop();
    let m = Mounted::start(&endpoint, &dir.join("store"), &args);
    assert!(std::fs::read(m.path("prof/kept/all/w.bin")).unwrap() == a);
    m.stop();
}

/// `shared` needs a tier: a mount that names it without one refuses to start, and says why.
#[test]
fn profile_shared_without_a_tier_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(["mount", "/nonexistent-mountpoint", "--profile", "shared", "--store"])
        .arg(&*temp_dir("profile-refused"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("profile shared needs a tier"), "{err}");
}
