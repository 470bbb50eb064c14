//! `modelfs::cache::ModelCache` (doc/LIBRARY.md) against the mock Hub: scanning, downloading a
//! quant with progress, whole and random reads, every error kind, a progress callback that
//! stops, and a library and a mount on one store at once.

mod support;

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelfs::cache::{CacheOptions, ErrorKind, ModelCache, QuantStatus};
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, getfattr, temp_dir, wait_for, Mounted};

const MIB: usize = 1 << 20;
const REPO: &str = "lib/model-onnx";

/// An ONNX repo with two quants and shared files.
fn repo_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("config.json", b"{\"hidden\": 64}".to_vec()),
        ("tokenizer.json", bytes(1, 40_000)),
        ("onnx/model.onnx", bytes(2, 3 * MIB + 11)),
        ("onnx/model_q4f16.onnx", bytes(3, 2 * MIB + 7)),
    ]
}

fn hub_with(config: MockConfig) -> MockHub {
    let hub = MockHub::start(config);
    let files = repo_files()
        .into_iter()
        .map(|(p, d)| if p.ends_with(".json") { MockFile::git(p, d) } else { MockFile::lfs(p, d) })
        .collect();
    hub.add_repo(MockRepo::new(REPO, files));
    hub
}

fn open(hub: &MockHub, store: &Path) -> ModelCache {
    ModelCache::open(CacheOptions {
        store: Some(store.to_path_buf()),
        endpoint: Some(hub.endpoint()),
        token: Some("hf_mock_token".into()),
        read_timeout: Duration::from_secs(10),
        chunk_size: Some(1 << 20),
        ..CacheOptions::default()
    })
    .expect("open the cache")
}

#[test]
fn scan_download_and_read_a_repo_through_the_library() {
    let hub = hub_with(MockConfig::default());
    let dir = temp_dir("library");
    let cache = open(&hub, &dir.join("store"));
    let files = repo_files();

    let m = cache.scan_repo(REPO).unwrap();
    assert_eq!(m.repo, REPO);
    assert_eq!(m.commit.len(), 40);
    assert_eq!(m.files.len(), 4);
    assert_eq!(m.quants.keys().collect::<Vec<_>>(), ["all", "fp32", "q4f16"]);
    let q4 = &m.quants["q4f16"];
    assert_eq!(q4.files, ["config.json", "onnx/model_q4f16.onnx", "tokenizer.json"]);
    assert_eq!(q4.total_bytes, (14 + 40_000 + 2 * MIB + 7) as u64);
    assert_eq!(cache.get_manifest(REPO).unwrap().quants["q4f16"].status, QuantStatus::Available);

    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    let report = cache
        .download_quant(REPO, "q4f16", move |loaded, total| {
            seen.lock().unwrap().push((loaded, total));
            true
        })
        .unwrap();
    assert_eq!(report.files, 3);
    let calls = calls.lock().unwrap().clone();
    assert!(calls.len() >= 4, "one call at the start and one per chunk: {calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "progress went back: {calls:?}");
    assert_eq!(calls.last().copied(), Some((q4.total_bytes, q4.total_bytes)));
    let status = cache.get_manifest(REPO).unwrap();
    assert_eq!(status.quants["q4f16"].status, QuantStatus::Downloaded);
    assert_eq!(status.quants["fp32"].status, QuantStatus::Partial, "shares config and tokenizer");

    for (path, data) in &files {
        assert!(cache.get_file(REPO, path).unwrap() == *data, "{path}");
    }
    // Random reads through the reader, compared with the source.
    let data = &files[2].1;
    let mut f = cache.open_file(REPO, "onnx/model.onnx").unwrap();
    assert_eq!(f.len(), data.len() as u64);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = state % data.len() as u64;
        let len = (state >> 40) as usize % 300_000;
        f.seek(SeekFrom::Start(at)).unwrap();
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f.read(&mut buf[got..]).unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        let end = (at as usize + len).min(data.len());
        assert!(buf[..got] == data[at as usize..end], "bytes at {at}+{len}");
    }
    assert_eq!(f.seek(SeekFrom::End(0)).unwrap(), data.len() as u64);
    assert_eq!(f.read(&mut [0u8; 8]).unwrap(), 0);
    assert!(f.seek(SeekFrom::Current(-(data.len() as i64) - 1)).is_err());
}

#[test]
fn each_failure_has_its_kind() {
    let hub = hub_with(MockConfig::default());
    hub.add_repo({
        let mut r = MockRepo::new("lib/gated", vec![MockFile::git("config.json", b"{}".to_vec())]);
        r.gated = true;
        r
    });
    let dir = temp_dir("library-errors");
    let cache = open(&hub, &dir.join("store"));
    let kind = |e: modelfs::cache::CacheError| e.kind();
    assert_eq!(kind(cache.scan_repo("lib/nope").unwrap_err()), ErrorKind::NotFound);
    assert_eq!(kind(cache.get_file(REPO, "missing.bin").unwrap_err()), ErrorKind::NotFound);
    assert_eq!(
        kind(cache.download_quant(REPO, "q2_k", |_, _| true).unwrap_err()),
        ErrorKind::NotFound
    );
    assert_eq!(kind(cache.scan_repo("not a repo").unwrap_err()), ErrorKind::InvalidInput);
    // Gated: with the mock's valid token it reads; with none it is refused.
    assert!(cache.get_file("lib/gated", "config.json").is_ok());
    let anonymous = ModelCache::open(CacheOptions {
        store: Some(dir.join("store-2")),
        endpoint: Some(hub.endpoint()),
        token: Some("hf_not_valid".into()),
        ..CacheOptions::default()
    })
    .unwrap();
    assert_eq!(
        kind(anonymous.get_file("lib/gated", "config.json").unwrap_err()),
        ErrorKind::PermissionDenied
    );
    // The Hub down: what is not stored is an I/O error; what is stored still reads.
    cache.get_file(REPO, "config.json").unwrap();
    hub.stop();
    let down = ModelCache::open(CacheOptions {
        store: Some(dir.join("store-3")),
        endpoint: Some(hub.endpoint()),
        read_timeout: Duration::from_secs(2),
        ..CacheOptions::default()
    })
    .unwrap();
    assert_eq!(kind(down.scan_repo(REPO).unwrap_err()), ErrorKind::Io);
    assert!(cache.get_file(REPO, "config.json").unwrap() == b"{\"hidden\": 64}");
}

#[test]
fn a_progress_callback_that_says_stop_stops_the_download() {
    let hub = hub_with(MockConfig { cdn_rate: Some(4 << 20), ..MockConfig::default() });
    let dir = temp_dir("library-stop");
    // Two chunks in flight at a time: a stop leaves most of the quant's 6 chunks unfetched.
    let cache = ModelCache::open(CacheOptions {
        store: Some(dir.join("store")),
        endpoint: Some(hub.endpoint()),
        max_connections: 2,
        chunk_size: Some(1 << 20),
        ..CacheOptions::default()
    })
    .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let e = cache
        .download_quant(REPO, "fp32", move |_, _| counted.fetch_add(1, Ordering::SeqCst) < 2)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Interrupted, "{e}");
    let status = cache.get_manifest(REPO).unwrap();
    let fp32 = &status.quants["fp32"];
    assert!(fp32.cached_bytes < fp32.total_bytes, "it went on to the end");
    // Stopped cleanly: nothing is left counted as in flight.
    assert_ne!(fp32.status, QuantStatus::Downloading, "{fp32:?}");
    // Stopped cleanly: a second download finishes it.
    cache.download_quant(REPO, "fp32", |_, _| true).unwrap();
    assert_eq!(cache.get_manifest(REPO).unwrap().quants["fp32"].status, QuantStatus::Downloaded);
}

#[test]
fn a_library_and_a_mount_on_one_store_serve_what_the_other_fetched() {
    // Slow enough that the mount sees the library's download in flight.
    let hub = hub_with(MockConfig { cdn_rate: Some(2 << 20), ..MockConfig::default() });
    let dir = temp_dir("library-mount");
    let store = dir.join("store");
    let cache = open(&hub, &store);
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", "1M"]);
    let files = repo_files();
    let model = m.path(&format!("{REPO}/fp32/onnx/model.onnx"));
    assert_eq!(getfattr(&model, "user.modelfs.status").unwrap(), "missing");
    let download = std::thread::scope(|s| {
        let job = s.spawn(|| cache.download_quant(REPO, "fp32", |_, _| true));
        wait_for("the mount to see the library's download", Duration::from_secs(20), || {
            getfattr(&m.path(&format!("{REPO}/fp32")), "user.modelfs.status").as_deref()
                == Ok("downloading")
        });
        job.join().unwrap()
    });
    download.unwrap();
    assert_eq!(getfattr(&model, "user.modelfs.status").unwrap(), "verified");
    hub.clear_requests();
    assert!(std::fs::read(&model).unwrap() == files[2].1);
    assert!(hub.requests().iter().all(|r| r.is_probe()), "the mount fetched what the library had");
    // The other way: the mount reads the q4f16 model, the library then has it.
    let q4 = m.path(&format!("{REPO}/q4f16/onnx/model_q4f16.onnx"));
    assert!(std::fs::read(&q4).unwrap() == files[3].1);
    wait_for("the mount's file verified", Duration::from_secs(20), || {
        cache.get_manifest(REPO).unwrap().quants["q4f16"].status == QuantStatus::Downloaded
    });
    hub.clear_requests();
    assert!(cache.get_file(REPO, "onnx/model_q4f16.onnx").unwrap() == files[3].1);
    assert!(hub.requests().is_empty(), "the library fetched what the mount had");
}
