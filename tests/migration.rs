//! A store written by the last release of store format 1 (`tests/fixtures/store-v1.tar.gz`,
//! made by the modelfs of commit 9e4fefa) is migrated in place on first open, with a log line
//! of counts, and then serves exactly what it held: the hashes of its whole files still match
//! the Hub's (as `verify` checks them against the stored manifests), a partial file keeps its
//! chunk, and a mount reads it all offline. A migration interrupted by a crash, before or
//! after its rename, ends the same.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use support::mount::{sha256_hex, temp_dir, Mounted};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v1.tar.gz");
const REPO: &str = "fixture-org/v1-model";

fn unpack(store: &Path) {
    std::fs::create_dir_all(store).unwrap();
    let out = Command::new("tar").arg("xzf").arg(FIXTURE).arg("-C").arg(store).output().unwrap();
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
}

fn modelfs(store: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(args)
        .arg("--store")
        .arg(store)
        .env_remove("HF_TOKEN")
        .env("RUST_LOG", "modelfs=info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn xattr(path: &Path, name: &str) -> String {
    support::mount::getfattr(path, &format!("user.modelfs.{name}")).unwrap()
}

/// `h1 h2 ...` with `h0 = sha256(seed)`, as the fixture's README says.
fn fixture_bytes(seed: u32, len: usize) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h: [u8; 32] = Sha256::digest(seed.to_string().as_bytes()).into();
    let mut out = Vec::with_capacity(len + 32);
    while out.len() < len {
        h = Sha256::digest(h).into();
        out.extend_from_slice(&h);
    }
    out.truncate(len);
    out
}

fn check_migrated(store: &Path) {
    assert!(store.join("index/mdbx.dat").is_file(), "no format-2 index");
    assert!(!store.join("mdbx.dat").exists(), "the format-1 index is still there");
    assert!(!store.join("index.migrating").exists());
    let (ok, stdout, stderr) = modelfs(store, &["verify"]);
    assert!(ok, "verify after the migration:\n{stdout}{stderr}");
    assert!(
        stdout.contains("checked 3 files (488.3 KiB hashed): 0 mismatches, 0 with a chunk"),
        "{stdout}"
    );
    let (ok, stdout, _) = modelfs(store, &["status", "--json"]);
    assert!(ok);
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["stored_bytes"], 26 + 300_000 + 200_000 + 65_536, "{status}");
    assert_eq!(status["chunk_size"], 65_536);
}

#[test]
fn a_format_1_store_is_migrated_in_place_and_serves_what_it_held() {
    let dir = temp_dir("migrate");
    let store = dir.join("store");
    unpack(&store);
    let (ok, _, stderr) = modelfs(&store, &["status"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("store migrated from format 1 to format 2")
            && stderr.contains("chunks=11")
            && stderr.contains("bytes=565562")
            && stderr.contains("files=4"),
        "no migration line with its counts:\n{stderr}"
    );
    check_migrated(&store);
    // A second open migrates nothing.
    let (_, _, stderr) = modelfs(&store, &["status"]);
    assert!(!stderr.contains("migrated"), "{stderr}");

    // Offline, every byte that was stored reads exactly; what was not is EIO.
    let m = Mounted::start("http://127.0.0.1:9", &store, &["--offline"]);
    let all = m.path(&format!("{REPO}/all"));
    assert_eq!(std::fs::read(all.join("config.json")).unwrap(), b"{\"model_type\": \"fixture\"}\n");
    for (path, seed, len) in [("onnx/model.onnx", 1, 300_000), ("onnx/model_q4.onnx", 2, 200_000)] {
        let got = std::fs::read(all.join(path)).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&fixture_bytes(seed, len)), "{path}");
        assert_eq!(xattr(&all.join(path), "status"), "verified");
        assert_eq!(xattr(&all.join(path), "sha256"), sha256_hex(&got));
    }
    let weights = all.join("weights.safetensors");
    assert_eq!(xattr(&weights, "status"), "partial");
    assert_eq!(xattr(&weights, "cached_bytes"), "65536");
    let file = std::fs::File::open(&weights).unwrap();
    let mut head = vec![0; 65_536];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).unwrap();
    assert!(head == fixture_bytes(3, 150_000)[..65_536]);
    let mut tail = [0u8; 10];
    let err = std::os::unix::fs::FileExt::read_exact_at(&file, &mut tail, 100_000).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    drop(file);
    m.stop();
}

/// A crash during the migration leaves its staging directory: the next open starts over.
/// A crash after the rename leaves the old index beside the new one: the next open removes
/// it and keeps the new one.
#[test]
fn an_interrupted_migration_is_finished_by_the_next_open() {
    let dir = temp_dir("migrate-crash");
    let store = dir.join("store");
    unpack(&store);
    std::fs::create_dir_all(store.join("index.migrating")).unwrap();
    std::fs::write(store.join("index.migrating/mdbx.dat"), b"half written").unwrap();
    let (ok, _, stderr) = modelfs(&store, &["status"]);
    assert!(ok && stderr.contains("store migrated from format 1 to format 2"), "{stderr}");
    check_migrated(&store);

    // The rename happened, the removal did not.
    let old = dir.join("old");
    unpack(&old);
    std::fs::rename(old.join("mdbx.dat"), store.join("mdbx.dat")).unwrap();
    let (ok, _, stderr) = modelfs(&store, &["status"]);
    assert!(ok, "{stderr}");
    assert!(!stderr.contains("migrated"), "migrated twice:\n{stderr}");
    check_migrated(&store);
}
