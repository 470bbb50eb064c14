//! The store commands (`pull`, `status`, `verify`, `gc`) as a user runs them: the real
//! binary against the mock Hub, beside a real FUSE mount of the same store where the test
//! needs one, checked against what the mount's xattrs and reads show.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use modelfs::commands::human_bytes;
use modelfs::manifest::FileHash;
use modelfs::store::mdbx::MdbxStore;
use modelfs::store::ChunkStore;
use serde_json::Value;
use sha2::{Digest, Sha256};
use support::mock_hub::{Fault, FaultRule, MockFile, MockHub, MockRepo, Origin};
use support::mount::{bytes, run, sha256_hex, temp_dir, Mounted};

/// Small chunks: multi-chunk files stay small, and a pull has many steps to watch.
const CHUNK: usize = 64 << 10;
const CHUNK_ARG: &str = "65536";

fn hub_with(repos: Vec<MockRepo>) -> MockHub {
    MockHub::with_repos(repos)
}

/// `modelfs ARGS... --store STORE`, with no token and no user configuration in reach.
fn modelfs(store: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelfs"));
    cmd.args(args)
        .arg("--store")
        .arg(store)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env("HF_HOME", store.with_extension("hf-home"))
        .env("RUST_LOG", "modelfs=info")
        .stdin(Stdio::null());
    cmd
}

fn output(store: &Path, args: &[&str]) -> Output {
    modelfs(store, args).output().expect("run modelfs")
}

/// Run a command that must succeed; its stdout and stderr.
fn ok(store: &Path, args: &[&str]) -> (String, String) {
    let out = output(store, args);
    let (stdout, stderr) = texts(&out);
    assert!(out.status.success(), "modelfs {args:?} failed ({}):\n{stderr}", out.status);
    (stdout, stderr)
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn pull(hub: &MockHub, store: &Path, args: &[&str]) -> (String, String) {
    let endpoint = hub.endpoint();
    let mut all = vec!["pull", "--endpoint", &endpoint, "--chunk-size", CHUNK_ARG];
    all.extend_from_slice(args);
    ok(store, &all)
}

fn status_json(store: &Path, args: &[&str]) -> Value {
    let mut all = vec!["status", "--json"];
    all.extend_from_slice(args);
    let (stdout, _) = ok(store, &all);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("status --json: {e}:\n{stdout}"))
}

/// The views of the first commit of `repo` in a `status --json` document, by name.
fn views(status: &Value, repo: &str) -> BTreeMap<String, Value> {
    let repo = status["repos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["repo"] == repo)
        .unwrap_or_else(|| panic!("{repo} not in {status}"));
    repo["commits"][0]["views"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
        .collect()
}

/// `[verified, complete, partial, failed, missing]` of a view in `status --json`.
fn counts(view: &Value) -> [u64; 5] {
    let f = &view["files"];
    let n = |k: &str| f[k].as_u64().unwrap();
    assert_eq!(
        n("total"),
        n("verified") + n("complete") + n("partial") + n("failed") + n("missing")
    );
    [n("verified"), n("complete"), n("partial"), n("failed"), n("missing")]
}

fn progress(view: &Value) -> (u64, u64) {
    (view["cached_bytes"].as_u64().unwrap(), view["total_bytes"].as_u64().unwrap())
}

/// A `user.modelfs.` xattr of `path`.
fn getfattr(path: &Path, name: &str) -> Result<String, i32> {
    support::mount::getfattr(path, &format!("user.modelfs.{name}"))
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    support::mount::wait_for(what, support::mount::SETTLE, f)
}

/// A repo of every kind of file a pull meets: git-stored and LFS, empty, one byte, exactly
/// a chunk, several chunks, nested.
fn mixed_repo() -> (MockRepo, Vec<(String, Vec<u8>)>) {
    let files: Vec<(String, Vec<u8>)> = vec![
        ("config.json".into(), br#"{"model_type": "bert"}"#.to_vec()),
        ("empty.txt".into(), vec![]),
        ("one.bin".into(), vec![7]),
        ("weights/exact.bin".into(), bytes(1, CHUNK)),
        ("weights/model.safetensors".into(), bytes(2, 5 * CHUNK + 3)),
        ("a/b/deep.txt".into(), bytes(3, 1000)),
    ];
    let mock = files
        .iter()
        .map(|(p, d)| {
            if d.len() >= CHUNK {
                MockFile::lfs(p, d.clone())
            } else {
                MockFile::git(p, d.clone())
            }
        })
        .collect();
    (MockRepo::new("test-org/mixed", mock), files)
}

fn onnx_repo() -> MockRepo {
    MockRepo::new(
        "onnx-community/tiny",
        vec![
            MockFile::git("config.json", b"{}".to_vec()),
            MockFile::git("tokenizer.json", b"{\"t\":1}".to_vec()),
            MockFile::git("README.md", b"# tiny".to_vec()),
            MockFile::lfs("onnx/model.onnx", bytes(1, 1000)),
            MockFile::lfs("onnx/model_fp16.onnx", bytes(2, 3 * CHUNK)),
            MockFile::lfs("onnx/model_q4f16.onnx", bytes(3, 1000)),
            MockFile::lfs("onnx/model_q4f16.onnx_data", bytes(4, 2 * CHUNK + 5)),
            MockFile::lfs("model.safetensors", bytes(6, 2000)),
        ],
    )
}

/// Bytes of the files shared by every view of [`onnx_repo`].
const ONNX_SHARED: u64 = 2 + 7 + 6;

#[test]
fn a_pulled_repo_is_read_through_the_mount_without_asking_the_hub() {
    let (repo, files) = mixed_repo();
    let head = repo.head();
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let (stdout, stderr) = pull(&hub, &store, &["test-org/mixed"]);
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    assert_eq!(
        stdout.lines().next().unwrap().split(" in ").next().unwrap(),
        format!(
            "pulled test-org/mixed at {}: 6 files, {} ({} fetched, 0 B already stored)",
            &head[..12],
            human_bytes(total as u64),
            human_bytes(total as u64)
        )
    );
    // Not a terminal: one plain line per file.
    let mut done: Vec<&str> = stderr.lines().filter(|l| l.starts_with("verified  ")).collect();
    done.sort();
    assert_eq!(done.len(), 6, "{stderr}");
    assert!(done.contains(&"verified  weights/model.safetensors (320.0 KiB)"), "{done:?}");

    // A second pull has nothing to fetch.
    hub.clear_requests();
    let (stdout, _) = pull(&hub, &store, &["test-org/mixed"]);
    assert!(stdout.contains("(0 B fetched, "), "{stdout}");
    assert!(hub.requests().iter().all(|r| r.range.is_none()), "{:?}", hub.requests());

    // The mount finds the ref, the manifest and every byte in the store.
    hub.clear_requests();
    let m = Mounted::start(&hub.endpoint(), &store, &[]);
    for (path, data) in &files {
        let p = m.path(&format!("test-org/mixed/all/{path}"));
        assert_eq!(sha256_hex(&std::fs::read(&p).unwrap()), sha256_hex(data), "{path}");
        assert_eq!(getfattr(&p, "status"), Ok("verified".into()), "{path}");
    }
    assert_eq!(getfattr(&m.path("test-org/mixed"), "revision"), Ok(head));
    assert!(hub.requests().is_empty(), "the mount asked the Hub: {:?}", hub.requests());
    m.stop();
}

#[test]
fn pull_of_a_quant_caches_exactly_its_view() {
    let hub = hub_with(vec![onnx_repo()]);
    let store = temp_dir("store");
    pull(&hub, &store, &["onnx-community/tiny", "--quant", "Q4F16"]);
    let status = status_json(&store, &[]);
    let v = views(&status, "onnx-community/tiny");
    assert_eq!(v.keys().map(String::as_str).collect::<Vec<_>>(), ["all", "fp16", "fp32", "q4f16"]);
    let q4 = ONNX_SHARED + 1000 + 2 * CHUNK as u64 + 5;
    assert_eq!(v["q4f16"]["status"], "downloaded");
    assert_eq!(progress(&v["q4f16"]), (q4, q4));
    assert_eq!(counts(&v["q4f16"]), [5, 0, 0, 0, 0]);
    // The other views have the shared files and nothing else.
    assert_eq!(v["fp32"]["status"], "partial");
    assert_eq!(progress(&v["fp32"]), (ONNX_SHARED, ONNX_SHARED + 1000));
    assert_eq!(counts(&v["fp32"]), [3, 0, 0, 0, 1]);
    assert_eq!(counts(&v["fp16"]), [3, 0, 0, 0, 1]);
    assert_eq!(counts(&v["all"]), [5, 0, 0, 0, 3]);
    assert_eq!(status["stored_bytes"].as_u64(), Some(q4));
    assert_eq!(status["chunk_size"].as_u64(), Some(CHUNK as u64));
    let refs = &status["repos"][0]["refs"];
    assert_eq!(refs[0]["name"], "main");
    assert_eq!(refs[0]["commit"], status["repos"][0]["commits"][0]["commit"]);

    // An unknown quant is an error that lists the views, before anything is fetched.
    let out = output(
        &store,
        &["pull", "--endpoint", &hub.endpoint(), "onnx-community/tiny", "--quant", "q3"],
    );
    assert!(!out.status.success());
    assert!(
        texts(&out).1.contains(
            "onnx-community/tiny has no quant \"q3\"; its views are: fp16, fp32, q4f16, all"
        ),
        "{}",
        texts(&out).1
    );
}

#[test]
fn pull_include_globs_select_by_path() {
    let hub = hub_with(vec![onnx_repo()]);
    let store = temp_dir("store");
    pull(&hub, &store, &["onnx-community/tiny", "--include", "onnx/*q4f16*", "--include", "*.md"]);
    let v = views(&status_json(&store, &["onnx-community/tiny"]), "onnx-community/tiny");
    assert_eq!(counts(&v["all"]), [3, 0, 0, 0, 5]);
    assert_eq!(progress(&v["all"]).0, 6 + 1000 + 2 * CHUNK as u64 + 5);
    // Globs within a quant: only what both select.
    let store = temp_dir("store");
    pull(&hub, &store, &["onnx-community/tiny", "--quant", "fp16", "--include", "onnx/"]);
    let v = views(&status_json(&store, &[]), "onnx-community/tiny");
    assert_eq!(counts(&v["all"]), [1, 0, 0, 0, 7]);
    assert_eq!(progress(&v["fp16"]).0, 3 * CHUNK as u64);
}

#[test]
fn pull_beside_a_mount_shows_its_progress_in_the_xattrs() {
    let data = bytes(11, 6 * CHUNK + 123);
    let repo = MockRepo::new(
        "o/slow",
        vec![MockFile::lfs("w.bin", data.clone()), MockFile::git("config.json", b"{}".to_vec())],
    );
    let hub = hub_with(vec![repo]);
    // Each chunk's body waits a little: one chunk at a time, the pull takes a few seconds.
    hub.slow_ranges_of(&data, Duration::from_millis(400));
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    let file = m.path("o/slow/all/w.bin");
    assert_eq!(getfattr(&file, "cached_bytes"), Ok("0".into()));

    let endpoint = hub.endpoint();
    let mut child =
        modelfs(&store, &["pull", "--endpoint", &endpoint, "o/slow", "--max-connections", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
    let mut seen = Vec::new();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        let cached: u64 = getfattr(&file, "cached_bytes").unwrap().parse().unwrap();
        if seen.last() != Some(&cached) {
            seen.push(cached);
        }
        assert!(started.elapsed() < Duration::from_secs(60), "pull did not end; saw {seen:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "pull failed: {}", texts(&out).1);
    // The mount saw the file grow chunk by chunk while the pull ran.
    let between: Vec<u64> =
        seen.iter().copied().filter(|&c| c > 0 && c < data.len() as u64).collect();
    assert!(between.len() >= 3, "saw {seen:?}");
    assert!(between.iter().all(|c| c % CHUNK as u64 == 0), "saw {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "cached_bytes went down: {seen:?}");
    assert_eq!(getfattr(&file, "status"), Ok("verified".into()));
    assert_eq!(getfattr(&m.path("o/slow"), "status"), Ok("downloaded".into()));

    // Everything is in the store: the Hub can go.
    hub.stop();
    assert_eq!(sha256_hex(&std::fs::read(&file).unwrap()), sha256_hex(&data));
    assert_eq!(std::fs::read(m.path("o/slow/all/config.json")).unwrap(), b"{}");
    m.stop();
}

/// The files of the `q4f16` view of [`onnx_repo`].
const QUANT_FILES: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "README.md",
    "onnx/model_q4f16.onnx",
    "onnx/model_q4f16.onnx_data",
];

#[test]
fn status_says_what_the_xattrs_say() {
    let hub = hub_with(vec![onnx_repo()]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    let root = m.path("onnx-community/tiny");
    // One view whole, one file of another in part, one file failed.
    for f in QUANT_FILES {
        std::fs::read(root.join("q4f16").join(f)).unwrap();
    }
    let part = std::fs::File::open(root.join("fp16/onnx/model_fp16.onnx")).unwrap();
    let mut buf = [0u8; 10];
    std::os::unix::fs::FileExt::read_exact_at(&part, &mut buf, CHUNK as u64 + 1).unwrap();
    drop(part);
    // Served with a wrong byte at every attempt: the check before serving (a one-chunk file)
    // fails it after its 3 attempts.
    hub.inject(FaultRule::new(
        Some(Origin::Cdn),
        &sha256_hex(&bytes(1, 1000)),
        3,
        Fault::WrongBytes,
    ));
    let _ = std::fs::read(root.join("fp32/onnx/model.onnx"));
    wait_for("verification", || {
        let settled =
            |f: &str, want: &str| getfattr(&root.join(f), "status").as_deref() == Ok(want);
        settled("fp32/onnx/model.onnx", "failed")
            && QUANT_FILES.iter().all(|f| settled(&format!("q4f16/{f}"), "verified"))
    });

    let status = status_json(&store, &[]);
    let (table, _) = ok(&store, &["status"]);
    let v = views(&status, "onnx-community/tiny");
    assert_eq!(v.len(), 4);
    for (name, view) in &v {
        let dir = root.join(name);
        let xstatus = getfattr(&dir, "status").unwrap();
        let xprogress = getfattr(&dir, "progress").unwrap();
        assert_eq!(view["status"], xstatus.as_str(), "{name}");
        let (cached, total) = progress(view);
        assert_eq!(format!("{cached}/{total}"), xprogress, "{name}");
        // Per-file states, as getfattr tells them file by file.
        let mut want = [0u64; 5];
        for f in run("find", &[dir.to_str().unwrap(), "-type", "f"]).lines() {
            let s = getfattr(Path::new(f), "status").unwrap();
            let i = ["verified", "complete", "partial", "failed", "missing"]
                .iter()
                .position(|k| *k == s)
                .unwrap();
            want[i] += 1;
        }
        assert_eq!(counts(view), want, "{name}");
        // The table's row for the view says the same.
        let row = table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("no row for {name}:\n{table}"));
        let cols: Vec<&str> = row.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect();
        assert_eq!(
            cols[..4],
            [name.as_str(), &xstatus, &human_bytes(cached), &human_bytes(total)],
            "{row}"
        );
    }
    assert_eq!(counts(&v["q4f16"]), [5, 0, 0, 0, 0]);
    assert_eq!(counts(&v["fp16"]), [3, 0, 1, 0, 0]);
    assert_eq!(counts(&v["fp32"]), [3, 0, 0, 1, 0]);
    assert_eq!(v["fp32"]["status"], "failed");
    let head = getfattr(&root, "revision").unwrap();
    assert!(
        table.starts_with(&format!("onnx-community/tiny\n  main -> {}, resolved ", &head[..12])),
        "{table}"
    );
    assert!(table.contains(&format!("  commit {head}\n")), "{table}");

    // A revision the store never saw, and a store that does not exist: clear errors.
    let out = output(&store, &["status", "onnx-community/tiny@v9"]);
    assert!(!out.status.success());
    assert!(
        texts(&out).1.contains("onnx-community/tiny@v9 is not in the store"),
        "{}",
        texts(&out).1
    );
    let nowhere = store.join("nowhere");
    let out = output(&nowhere, &["status"]);
    assert!(texts(&out).1.contains("no store at"), "{}", texts(&out).1);
    assert!(!nowhere.exists(), "status created a store");
    m.stop();
}

/// Put `data` (wrong bytes, right length) in the store as the whole content of `hash`, with
/// valid chunk checksums: only the whole-file hash can tell.
fn store_wrong_bytes(store: &Path, hash: FileHash, data: &[u8]) {
    let s = MdbxStore::open(store, CHUNK as u64).unwrap();
    let content = hash.content_id();
    s.evict_file(&content).unwrap();
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        s.put_chunk(&content, data.len() as u64, i as u64, chunk).unwrap();
    }
    assert_eq!(
        s.file_record(&content).unwrap().unwrap().state,
        modelfs::store::FileState::Complete
    );
}

#[test]
fn verify_passes_a_good_store_and_fails_a_corrupted_file() {
    let (repo, files) = mixed_repo();
    let head = repo.head();
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    pull(&hub, &store, &["test-org/mixed"]);
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    let (stdout, _) = ok(&store, &["verify"]);
    assert_eq!(
        stdout,
        format!(
            "checked 5 files ({} hashed): 0 mismatches, 0 with a chunk that failed its checksum\n",
            human_bytes(total as u64)
        )
    );

    let data = &files.iter().find(|f| f.0 == "weights/model.safetensors").unwrap().1;
    let mut bad = data.clone();
    bad[3 * CHUNK + 17] ^= 0x40;
    store_wrong_bytes(&store, FileHash::Lfs(Sha256::digest(data).into()), &bad);
    let out = output(&store, &["verify", "test-org/mixed"]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "MISMATCH test-org/mixed@{}: weights/model.safetensors: discarded and marked failed\n",
            &head[..12]
        )),
        "{stdout}"
    );
    assert!(stdout.contains(": 1 mismatch, "), "{stdout}");
    assert!(
        stderr.contains("modelfs: store damaged: 1 file did not match the Hub's hash"),
        "{stderr}"
    );
    let v = views(&status_json(&store, &[]), "test-org/mixed");
    assert_eq!(counts(&v["all"]), [5, 0, 0, 1, 0]);

    // The failed file is fetched afresh by the next pull, and the store verifies again.
    let (stdout, _) = pull(&hub, &store, &["test-org/mixed"]);
    assert!(stdout.contains(&format!("({} fetched, ", human_bytes(data.len() as u64))), "{stdout}");
    ok(&store, &["verify"]);
}

#[test]
fn pull_names_the_files_that_fail() {
    let good = bytes(1, 3000);
    let bad = bytes(2, 3000);
    let hub = hub_with(vec![MockRepo::new(
        "o/bad",
        vec![MockFile::lfs("good.bin", good.clone()), MockFile::lfs("bad.bin", bad.clone())],
    )]);
    // Wrong at every one of the 3 attempts a one-chunk file gets (one wrong answer is healed
    // by fetching again: see `a_wrong_answer_once_is_fetched_again`).
    hub.inject(FaultRule::new(Some(Origin::Cdn), &sha256_hex(&bad), 3, Fault::WrongBytes));
    let store = temp_dir("store");
    let out = output(&store, &["pull", "--endpoint", &hub.endpoint(), "o/bad"]);
    let (stdout, stderr) = texts(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("FAILED    bad.bin: bad.bin did not match the Hub's hash; marked failed"),
        "{stderr}"
    );
    assert!(stderr.contains("verified  good.bin (2.9 KiB)"), "{stderr}");
    assert!(stdout.contains("; 1 file failed"), "{stdout}");
    assert!(stderr.contains("modelfs: o/bad: 1 file failed: bad.bin"), "{stderr}");
    // Unknown repos fail with the Hub's answer.
    let out = output(&store, &["pull", "--endpoint", &hub.endpoint(), "o/none"]);
    assert!(texts(&out).1.contains("o/none: not found on the Hub"), "{}", texts(&out).1);
    let out = output(&store, &["pull", "--endpoint", &hub.endpoint(), "o"]);
    assert!(texts(&out).1.contains("\"o\" is not ORG/REPO"), "{}", texts(&out).1);
}

/// A one-chunk file is checked against its hash before anyone sees it: one wrong answer from
/// the CDN is fetched again, and the file ends verified without ever having been wrong.
#[test]
fn a_wrong_answer_once_is_fetched_again() {
    let data = bytes(3, 3000);
    let hub = hub_with(vec![MockRepo::new("o/flaky", vec![MockFile::lfs("w.bin", data.clone())])]);
    hub.inject(FaultRule::new(Some(Origin::Cdn), &sha256_hex(&data), 1, Fault::WrongBytes));
    let store = temp_dir("store");
    let (_, stderr) = ok(&store, &["pull", "--endpoint", &hub.endpoint(), "o/flaky"]);
    assert!(stderr.contains("verified  w.bin"), "{stderr}");
    assert_eq!(hub.faults_left(&sha256_hex(&data)), 0, "the fault was never hit");
    let v = views(&status_json(&store, &[]), "o/flaky");
    assert_eq!(counts(&v["all"]), [1, 0, 0, 0, 0]);
}

#[test]
fn gc_evicts_the_least_recently_used_files_down_to_the_bound() {
    let sizes = [3 * CHUNK, 2 * CHUNK, CHUNK + 1];
    let files: Vec<(String, Vec<u8>)> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| (format!("f{i}.bin"), bytes(i as u64 + 1, n)))
        .collect();
    let hub = hub_with(vec![MockRepo::new(
        "o/lru",
        files.iter().map(|(p, d)| MockFile::lfs(p, d.clone())).collect(),
    )]);
    let store = temp_dir("store");
    // Pulled one at a time, a second apart: access times are in whole seconds.
    for (i, (path, _)) in files.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(1100));
        }
        pull(&hub, &store, &["o/lru", "--include", path]);
    }
    let out = output(&store, &["gc"]);
    assert!(!out.status.success());
    assert!(texts(&out).1.contains("gc needs a bound: pass --max-cache-size"), "{}", texts(&out).1);

    let total: usize = sizes.iter().sum();
    // A bound one byte under the total: the oldest file goes, and only it.
    let bound = (total - 1).to_string();
    let (stdout, _) = ok(&store, &["gc", "--max-cache-size", &bound]);
    assert_eq!(
        stdout,
        format!(
            "store: {} before, {} after (bound {})\nevicted 1 file ({}); kept 0 files open and 0 files pinned\n",
            human_bytes(total as u64),
            human_bytes((total - sizes[0]) as u64),
            human_bytes(total as u64 - 1),
            human_bytes(sizes[0] as u64),
        )
    );
    let status = status_json(&store, &[]);
    assert_eq!(status["stored_bytes"].as_u64(), Some((total - sizes[0]) as u64));
    assert_eq!(counts(&views(&status, "o/lru")["all"]), [2, 0, 0, 0, 1]);
    // Under the bound already: nothing to do.
    let (stdout, _) = ok(&store, &["gc", "--max-cache-size", &bound]);
    assert!(stdout.contains("evicted 0 files (0 B)"), "{stdout}");
}

#[test]
fn gc_takes_its_bound_and_pins_from_the_config_file() {
    let old = bytes(1, 2 * CHUNK);
    let new = bytes(2, 2 * CHUNK);
    let hub = hub_with(vec![
        MockRepo::new("o/pinned", vec![MockFile::lfs("w.bin", old.clone())]),
        MockRepo::new("o/loose", vec![MockFile::lfs("w.bin", new.clone())]),
    ]);
    let store = temp_dir("store");
    pull(&hub, &store, &["o/pinned"]);
    std::thread::sleep(Duration::from_millis(1100));
    pull(&hub, &store, &["o/loose"]);
    let config = store.join("config.toml");
    std::fs::write(
        &config,
        format!("max_cache_size = \"{}\"\n\n[[repo]]\nid = \"o/pinned\"\npin = true\n", CHUNK),
    )
    .unwrap();
    // The pinned repo's file is the older, but it stays; the other goes, and the store is
    // still over the bound.
    let (stdout, _) = ok(&store, &["gc", "--config", config.to_str().unwrap()]);
    assert_eq!(
        stdout,
        format!(
            "store: 256.0 KiB before, 128.0 KiB after (bound 64.0 KiB)\n\
             evicted 1 file (128.0 KiB); kept 0 files open and 1 file pinned\n\
             still over the bound: what is left is open or pinned\n"
        )
    );
    let status = status_json(&store, &[]);
    assert_eq!(counts(&views(&status, "o/pinned")["all"]), [1, 0, 0, 0, 0]);
    assert_eq!(counts(&views(&status, "o/loose")["all"]), [0, 0, 0, 0, 1]);
    // A bad config file is an error naming it.
    std::fs::write(&config, "max_cache = 1\n").unwrap();
    let out = output(&store, &["gc", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        texts(&out).1.contains(&format!("config {}:1:", config.display())),
        "{}",
        texts(&out).1
    );
}
