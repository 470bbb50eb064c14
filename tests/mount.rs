//! Real-mount integration tests: the `modelfs` binary mounted with FUSE against the mock Hub,
//! checked byte for byte with what `cat`, `ls`, `stat`, `getfattr`, `pread` and `mmap` see.

mod support;

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo, Origin};
use support::mount::{bytes, errno, run, sha256_hex, temp_dir, Mounted};

/// Small chunks keep the suite fast while still crossing many chunk boundaries.
const CHUNK: usize = 64 << 10;
const CHUNK_ARG: &str = "65536";

fn sized_repo() -> (MockRepo, Vec<(String, Vec<u8>)>) {
    let sizes = [0, 1, 4095, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17];
    let mut files = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        files.push((format!("sizes/file-{size}.bin"), bytes(i as u64 + 1, size)));
    }
    files.push(("weights/model.safetensors".into(), bytes(100, 5 * CHUNK + 3)));
    files.push(("name with spaces.txt".into(), b"spaces\n".to_vec()));
    files.push(("ünïcødé/日本語 ファイル.json".into(), br#"{"k": "v"}"#.to_vec()));
    files.push(("a/b/c/d/e/f/g/deep.txt".into(), bytes(7, 1000)));
    files.push(("config.json".into(), br#"{"model_type": "bert"}"#.to_vec()));
    let mock_files = files
        .iter()
        .map(|(p, d)| {
            if d.len() > 2 * CHUNK {
                MockFile::lfs(p, d.clone())
            } else {
                MockFile::git(p, d.clone())
            }
        })
        .collect();
    let mut repo = MockRepo::new("test-org/sized", mock_files);
    repo.pipeline_tag = Some("feature-extraction".into());
    (repo, files)
}

fn hub_with(repos: Vec<MockRepo>) -> MockHub {
    let hub = MockHub::start(MockConfig::default());
    for r in repos {
        hub.add_repo(r);
    }
    hub
}

use support::mount::getfattr;

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    support::mount::wait_for(what, support::mount::SETTLE, f)
}

#[test]
fn every_file_is_byte_exact_through_cat_ls_and_stat() {
    let (repo, files) = sized_repo();
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);

    for (path, data) in &files {
        let p = m.path(&format!("test-org/sized/all/{path}"));
        let meta = std::fs::metadata(&p).unwrap_or_else(|e| panic!("stat {path}: {e}"));
        assert_eq!(meta.len(), data.len() as u64, "size of {path}");
        assert!(meta.is_file());
        let read = std::fs::read(&p).unwrap();
        assert_eq!(sha256_hex(&read), sha256_hex(data), "contents of {path}");
    }
    // `cat` of a multi-chunk LFS file, and `stat` from the command line.
    let cat = std::process::Command::new("cat")
        .arg(m.path("test-org/sized/all/weights/model.safetensors"))
        .output()
        .unwrap();
    assert_eq!(
        sha256_hex(&cat.stdout),
        sha256_hex(&files.iter().find(|f| f.0.ends_with("safetensors")).unwrap().1)
    );
    let stat = run(
        "stat",
        &["-c", "%s %F", m.path("test-org/sized/all/sizes/file-65537.bin").to_str().unwrap()],
    );
    assert_eq!(stat.trim(), "65537 regular file");

    // ls of the tree: exactly the repo's names, directories included.
    let top: BTreeSet<String> = run("ls", &["-A", m.path("test-org/sized/all").to_str().unwrap()])
        .lines()
        .map(String::from)
        .collect();
    let want: BTreeSet<String> =
        ["a", "config.json", "name with spaces.txt", "sizes", "weights", "ünïcødé"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    assert_eq!(top, want);
    // The repo directory lists its views; a repo with no quants has only `all`.
    let views = run("ls", &[m.path("test-org/sized").to_str().unwrap()]);
    assert_eq!(views.trim(), "all");
    // Orgs and repos read before are listed.
    assert_eq!(run("ls", &[m.path("").to_str().unwrap()]).trim(), "test-org");
    assert_eq!(run("ls", &[m.path("test-org").to_str().unwrap()]).trim(), "sized");
    m.stop();
}

#[test]
fn random_preads_and_mmap_match_the_source() {
    let (repo, files) = sized_repo();
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    let opened: Vec<(File, Vec<u8>)> = files
        .iter()
        .filter(|(_, d)| !d.is_empty())
        .map(|(p, d)| (File::open(m.path(&format!("test-org/sized/all/{p}"))).unwrap(), d.clone()))
        .collect();

    let config =
        ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() };
    proptest!(config, |(which in 0..opened.len(), offset_frac in 0.0f64..1.1, len in 0usize..(3 * CHUNK))| {
        let (file, data) = &opened[which];
        let offset = ((data.len() as f64) * offset_frac) as u64;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        // pread may legitimately return less than asked only at the end of the file.
        while got < len {
            let n = file.read_at(&mut buf[got..], offset + got as u64).unwrap();
            if n == 0 { break; }
            got += n;
        }
        let start = (offset as usize).min(data.len());
        let end = (start + len).min(data.len());
        prop_assert_eq!(got, end - start);
        prop_assert!(buf[..got] == data[start..end], "bytes differ at offset {} len {}", offset, len);
    });

    // mmap: the way llama.cpp and safetensors read.
    for (file, data) in &opened {
        let map = unsafe { memmap2::Mmap::map(file).unwrap() };
        assert_eq!(map.len(), data.len());
        assert!(map[..] == data[..]);
    }
    drop(opened);
    m.stop();
}

#[test]
fn quant_views_show_exactly_their_files() {
    let onnx = MockRepo::new(
        "onnx-community/tiny-onnx",
        vec![
            MockFile::git("config.json", b"{}".to_vec()),
            MockFile::git("tokenizer.json", b"{\"t\":1}".to_vec()),
            MockFile::git("README.md", b"# tiny".to_vec()),
            MockFile::lfs("onnx/model.onnx", bytes(1, 1000)),
            MockFile::lfs("onnx/model_fp16.onnx", bytes(2, 1000)),
            MockFile::lfs("onnx/model_q4f16.onnx", bytes(3, 1000)),
            MockFile::lfs("onnx/model_q4f16.onnx_data", bytes(4, 3000)),
            MockFile::lfs("onnx/model_quantized.onnx", bytes(5, 1000)),
            MockFile::lfs("model.safetensors", bytes(6, 2000)),
        ],
    );
    let gguf = MockRepo::new(
        "bartowski/Tiny-GGUF",
        vec![
            MockFile::git("README.md", b"# gguf".to_vec()),
            MockFile::lfs("Tiny-Q4_K_M.gguf", bytes(7, 500)),
            MockFile::lfs("Tiny-f16.gguf", bytes(8, 500)),
            MockFile::lfs("Q8_0/Tiny-Q8_0-00001-of-00002.gguf", bytes(9, 500)),
            MockFile::lfs("Q8_0/Tiny-Q8_0-00002-of-00002.gguf", bytes(10, 500)),
            MockFile::lfs("mmproj-Tiny-F16.gguf", bytes(11, 500)),
        ],
    );
    let hub = hub_with(vec![onnx, gguf]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &[]);

    let tree = |rel: &str| -> BTreeSet<String> {
        let root = m.path(rel);
        run("find", &[root.to_str().unwrap(), "-type", "f"])
            .lines()
            .map(|l| {
                l.strip_prefix(root.to_str().unwrap()).unwrap().trim_start_matches('/').to_string()
            })
            .collect()
    };
    let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();

    assert_eq!(
        run("ls", &["-U", m.path("onnx-community/tiny-onnx").to_str().unwrap()])
            .split_whitespace()
            .collect::<Vec<_>>(),
        vec!["fp16", "fp32", "q4f16", "q8", "all"]
    );
    let shared = ["config.json", "tokenizer.json", "README.md"];
    let with_shared = |extra: &[&str]| set(&[&shared[..], extra].concat());
    assert_eq!(
        tree("onnx-community/tiny-onnx/q4f16"),
        with_shared(&["onnx/model_q4f16.onnx", "onnx/model_q4f16.onnx_data"])
    );
    assert_eq!(tree("onnx-community/tiny-onnx/fp32"), with_shared(&["onnx/model.onnx"]));
    assert_eq!(tree("onnx-community/tiny-onnx/q8"), with_shared(&["onnx/model_quantized.onnx"]));
    assert_eq!(tree("onnx-community/tiny-onnx/all").len(), 9);

    let gguf_views: Vec<String> =
        run("ls", &["-U", m.path("bartowski/Tiny-GGUF").to_str().unwrap()])
            .split_whitespace()
            .map(String::from)
            .collect();
    assert_eq!(gguf_views, vec!["f16", "Q4_K_M", "Q8_0", "all"]);
    assert_eq!(
        tree("bartowski/Tiny-GGUF/Q4_K_M"),
        set(&["README.md", "Tiny-Q4_K_M.gguf", "mmproj-Tiny-F16.gguf"])
    );
    assert_eq!(
        tree("bartowski/Tiny-GGUF/Q8_0"),
        set(&[
            "README.md",
            "Q8_0/Tiny-Q8_0-00001-of-00002.gguf",
            "Q8_0/Tiny-Q8_0-00002-of-00002.gguf",
            "mmproj-Tiny-F16.gguf"
        ])
    );
    // Quant lookups are case-insensitive, and read the same bytes.
    let a = std::fs::read(m.path("bartowski/Tiny-GGUF/q4_k_m/Tiny-Q4_K_M.gguf")).unwrap();
    assert_eq!(a, bytes(7, 500));
    // The shared file is the same content in every view and stored once.
    assert_eq!(std::fs::read(m.path("bartowski/Tiny-GGUF/f16/README.md")).unwrap(), b"# gguf");
    m.stop();
}

#[test]
fn xattrs_report_status_progress_and_identity() {
    let (repo, files) = sized_repo();
    let head = repo.head();
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    let big = m.path("test-org/sized/all/weights/model.safetensors");
    let big_data = &files.iter().find(|f| f.0.ends_with("safetensors")).unwrap().1;
    let repo_dir = m.path("test-org/sized");
    let x = |p: &Path, n: &str| getfattr(p, &format!("user.modelfs.{n}"));

    assert_eq!(x(&big, "status"), Ok("missing".into()));
    assert_eq!(x(&big, "cached_bytes"), Ok("0".into()));
    assert_eq!(x(&big, "size"), Ok(big_data.len().to_string()));
    assert_eq!(x(&big, "sha256"), Ok(sha256_hex(big_data)));
    assert_eq!(x(&big, "revision"), Ok(head.clone()));
    assert_eq!(x(&repo_dir, "status"), Ok("available".into()));
    assert_eq!(x(&repo_dir, "revision"), Ok(head.clone()));
    assert_eq!(x(&repo_dir, "pipeline_tag"), Ok("feature-extraction".into()));
    assert_eq!(x(&repo_dir, "quants"), Err(libc::ENODATA), "no quants, no value");
    let total: usize = files.iter().map(|f| f.1.len()).sum();
    assert_eq!(x(&repo_dir, "progress"), Ok(format!("0/{total}")));

    // One byte in the second chunk: exactly that chunk is fetched.
    let f = File::open(&big).unwrap();
    let mut one = [0u8; 1];
    f.read_at(&mut one, CHUNK as u64 + 5).unwrap();
    assert_eq!(one[0], big_data[CHUNK + 5]);
    assert_eq!(x(&big, "status"), Ok("partial".into()));
    assert_eq!(x(&big, "cached_bytes"), Ok(CHUNK.to_string()));
    assert_eq!(x(&repo_dir, "status"), Ok("partial".into()));
    assert_eq!(x(&repo_dir, "progress"), Ok(format!("{CHUNK}/{total}")));

    // Whole file: complete, then verified once the background sha256 check has run.
    assert_eq!(std::fs::read(&big).unwrap(), *big_data);
    wait_for("verified", || x(&big, "status") == Ok("verified".into()));
    assert_eq!(x(&big, "cached_bytes"), Ok(big_data.len().to_string()));

    // Every file: the repo is downloaded.
    for (p, _) in &files {
        std::fs::read(m.path(&format!("test-org/sized/all/{p}")))
            .unwrap_or_else(|e| panic!("{p}: {e}\n{}", m.log()));
    }
    assert_eq!(x(&repo_dir, "progress"), Ok(format!("{total}/{total}")));
    assert_eq!(x(&repo_dir, "status"), Ok("downloaded".into()));
    // Git-stored files are verified against their blob oid, and have no sha256.
    let small = m.path("test-org/sized/all/config.json");
    wait_for("git file verified", || x(&small, "status") == Ok("verified".into()));
    assert_eq!(x(&small, "sha256"), Err(libc::ENODATA));

    // Unknown names: ENODATA. listxattr: exactly the names that have values.
    assert_eq!(x(&big, "nonsense"), Err(libc::ENODATA));
    assert_eq!(getfattr(&big, "user.other"), Err(libc::ENODATA));
    let names = |p: &Path| -> BTreeSet<String> {
        xattr::list(p).unwrap().map(|n| n.to_string_lossy().into_owned()).collect()
    };
    let prefixed =
        |ns: &[&str]| ns.iter().map(|n| format!("user.modelfs.{n}")).collect::<BTreeSet<_>>();
    assert_eq!(names(&big), prefixed(&["status", "cached_bytes", "size", "sha256", "revision"]));
    assert_eq!(names(&small), prefixed(&["status", "cached_bytes", "size", "revision"]));
    assert_eq!(names(&repo_dir), prefixed(&["status", "progress", "revision", "pipeline_tag"]));
    assert_eq!(names(&m.path("test-org/sized/all")), prefixed(&["status", "progress", "revision"]));
    assert!(names(&m.path("test-org")).is_empty());

    // getfattr -d, as a user would run it.
    let dump = run("getfattr", &["-d", big.to_str().unwrap()]);
    assert!(dump.contains("user.modelfs.status=\"verified\""), "{dump}");
    assert!(dump.contains(&format!("user.modelfs.revision=\"{head}\"")), "{dump}");
    drop(f);
    m.stop();
}

#[test]
fn quant_xattrs_cover_the_view() {
    let hub = hub_with(vec![MockRepo::new(
        "o/q",
        vec![
            MockFile::git("config.json", b"{}".to_vec()),
            MockFile::lfs("onnx/model_q4.onnx", bytes(1, 100)),
            MockFile::lfs("onnx/model.onnx", bytes(2, 200)),
        ],
    )]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &[]);
    let q4 = m.path("o/q/q4");
    assert_eq!(getfattr(&m.path("o/q"), "user.modelfs.quants"), Ok("fp32,q4".into()));
    assert_eq!(getfattr(&q4, "user.modelfs.progress"), Ok("0/102".into()));
    std::fs::read(m.path("o/q/q4/onnx/model_q4.onnx")).unwrap();
    std::fs::read(m.path("o/q/q4/config.json")).unwrap();
    assert_eq!(getfattr(&q4, "user.modelfs.progress"), Ok("102/102".into()));
    assert_eq!(getfattr(&q4, "user.modelfs.status"), Ok("downloaded".into()));
    assert_eq!(getfattr(&m.path("o/q/fp32"), "user.modelfs.status"), Ok("partial".into()));
    m.stop();
}

#[test]
fn errors_are_the_documented_errnos() {
    let mut gated =
        MockRepo::new("gated-org/gated", vec![MockFile::lfs("model.bin", bytes(1, 5000))]);
    gated.gated = true;
    let hub =
        hub_with(vec![gated, MockRepo::new("o/r", vec![MockFile::git("a.txt", b"a".to_vec())])]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--read-timeout", "3"]);
    let err = |p: &str| errno(&std::fs::metadata(m.path(p)).unwrap_err());

    // Unknown repo, revision, file, view: ENOENT.
    assert_eq!(err("o/nope"), libc::ENOENT);
    assert_eq!(err("o/r@no-such-branch"), libc::ENOENT);
    assert_eq!(err("o/r/all/missing.txt"), libc::ENOENT);
    assert_eq!(err("o/r/q4"), libc::ENOENT);
    // Invalid names: ENOENT without any request to the Hub.
    hub.clear_requests();
    for bad in
        ["-bad", "a..b", "o/-bad", "o/r@", "o/a--b", &format!("o/{}", "x".repeat(97)), ".hidden"]
    {
        assert_eq!(err(bad), libc::ENOENT, "{bad}");
    }
    // Any valid org name is a directory, also without a request.
    assert!(std::fs::metadata(m.path("some-org-never-seen")).unwrap().is_dir());
    assert!(hub.requests().is_empty(), "invalid names reached the Hub: {:?}", hub.requests());

    // Gated without a token: listed, but reading is EACCES.
    let gated_file = m.path("gated-org/gated/all/model.bin");
    assert_eq!(std::fs::metadata(&gated_file).unwrap().len(), 5000);
    assert_eq!(errno(&std::fs::read(&gated_file).unwrap_err()), libc::EACCES);

    // Writes of every kind: EROFS.
    let ro = |r: std::io::Result<()>| errno(&r.unwrap_err());
    assert_eq!(ro(std::fs::write(m.path("o/r/all/a.txt"), b"x")), libc::EROFS);
    assert_eq!(ro(std::fs::write(m.path("o/r/all/new.txt"), b"x")), libc::EROFS);
    assert_eq!(ro(std::fs::create_dir(m.path("o/r/all/d"))), libc::EROFS);
    assert_eq!(ro(std::fs::remove_file(m.path("o/r/all/a.txt"))), libc::EROFS);
    assert_eq!(ro(std::fs::rename(m.path("o/r/all/a.txt"), m.path("o/r/all/b.txt"))), libc::EROFS);
    assert_eq!(ro(xattr::set(m.path("o/r/all/a.txt"), "user.x", b"1")), libc::EROFS);

    // The Hub gone: a file never read fails with EIO after the read timeout, not a hang.
    let meta = std::fs::metadata(m.path("o/r/all/a.txt")).unwrap();
    assert_eq!(meta.len(), 1);
    hub.stop();
    let started = Instant::now();
    assert_eq!(errno(&std::fs::read(m.path("o/r/all/a.txt")).unwrap_err()), libc::EIO);
    assert!(started.elapsed() < Duration::from_secs(30), "EIO took {:?}", started.elapsed());
    m.stop();
}

#[test]
fn remount_without_the_hub_serves_what_was_read() {
    let (repo, files) = sized_repo();
    let head = repo.head();
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let read_paths: Vec<&(String, Vec<u8>)> =
        files.iter().filter(|f| !f.0.starts_with("sizes/")).collect();
    {
        let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
        for (p, d) in &read_paths {
            assert_eq!(std::fs::read(m.path(&format!("test-org/sized/all/{p}"))).unwrap(), *d);
        }
        // One chunk of a multi-chunk file only: a read in its middle is random access, so
        // read-ahead leaves the other chunks alone.
        let f = File::open(m.path("test-org/sized/all/sizes/file-196625.bin")).unwrap();
        let mut buf = vec![0u8; 100];
        f.read_exact_at(&mut buf, CHUNK as u64 + 10).unwrap();
        drop(f);
        assert!(m.stop().success());
    }
    hub.stop();
    for args in [vec!["--chunk-size", CHUNK_ARG, "--read-timeout", "2"], vec!["--offline"]] {
        let m = Mounted::start(&hub.endpoint(), &store, &args);
        for (p, d) in &read_paths {
            assert_eq!(
                std::fs::read(m.path(&format!("test-org/sized/all/{p}"))).unwrap(),
                *d,
                "{p} with {args:?}"
            );
        }
        let data = &files.iter().find(|f| f.0 == "sizes/file-196625.bin").unwrap().1;
        let f = File::open(m.path("test-org/sized/all/sizes/file-196625.bin")).unwrap();
        let mut buf = vec![0u8; 1000];
        f.read_exact_at(&mut buf, CHUNK as u64).unwrap();
        assert_eq!(buf, data[CHUNK..CHUNK + 1000]);
        // Never read: EIO, whole-file or at an uncached offset.
        assert_eq!(errno(&f.read_exact_at(&mut buf, 0).unwrap_err()), libc::EIO);
        assert_eq!(errno(&f.read_exact_at(&mut buf, 2 * CHUNK as u64).unwrap_err()), libc::EIO);
        assert_eq!(
            errno(&std::fs::read(m.path("test-org/sized/all/sizes/file-4096.bin")).unwrap_err()),
            libc::EIO
        );
        // Browsable: listings and xattrs come from the stored manifest.
        assert_eq!(run("ls", &[m.path("test-org").to_str().unwrap()]).trim(), "sized");
        assert_eq!(getfattr(&m.path("test-org/sized"), "user.modelfs.revision"), Ok(head.clone()));
        // An @commit path works with no Hub too.
        assert!(m.path(&format!("test-org/sized@{head}/all/config.json")).exists());
        // A repo never seen: offline, it does not exist; with the Hub unreachable, nobody can
        // tell, so it is an I/O error rather than a false ENOENT.
        let unknown = errno(&std::fs::metadata(m.path("test-org/unknown")).unwrap_err());
        let offline = args.contains(&"--offline");
        assert_eq!(unknown, if offline { libc::ENOENT } else { libc::EIO }, "{args:?}");
        drop(f);
        m.stop();
    }
}

#[test]
fn open_handles_keep_their_commit_when_the_branch_moves() {
    let old = bytes(1, 3 * CHUNK);
    let new = bytes(2, 3 * CHUNK);
    let repo = MockRepo::new("o/moving", vec![MockFile::lfs("w.bin", old.clone())]);
    let first = repo.head();
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let m =
        Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG, "--revalidate", "1"]);
    let path = m.path("o/moving/all/w.bin");
    let f = File::open(&path).unwrap();
    let mut buf = vec![0u8; CHUNK];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, old[..CHUNK]);

    let second = {
        let mut sha = String::new();
        hub.update_repo("o/moving", |r| sha = r.commit(vec![MockFile::lfs("w.bin", new.clone())]));
        sha
    };
    assert_ne!(first, second);
    // After the revalidate interval a fresh lookup shows the new commit...
    wait_for("branch re-resolved", || {
        getfattr(&m.path("o/moving"), "user.modelfs.revision") == Ok(second.clone())
    });
    std::thread::sleep(Duration::from_millis(1100)); // let the kernel's 1 s entry TTL lapse
    assert_eq!(std::fs::read(&path).unwrap(), new);
    // ...while the handle opened before reads the old commit to its end.
    let mut rest = vec![0u8; 2 * CHUNK];
    f.read_exact_at(&mut rest, CHUNK as u64).unwrap();
    assert!(rest == old[CHUNK..], "an open handle saw bytes of another commit");
    // The old commit stays reachable by its hash.
    assert_eq!(std::fs::read(m.path(&format!("o/moving@{first}/all/w.bin"))).unwrap(), old);
    drop(f);
    m.stop();
}

#[test]
fn concurrent_readers_of_one_chunk_share_one_fetch() {
    let data = bytes(3, 4 * CHUNK);
    let hub = hub_with(vec![MockRepo::new("o/shared", vec![MockFile::lfs("w.bin", data.clone())])]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    let path = m.path("o/shared/all/w.bin");
    std::fs::metadata(&path).unwrap();
    hub.clear_requests();
    std::thread::scope(|s| {
        for i in 0..16 {
            let path = &path;
            let data = &data;
            s.spawn(move || {
                let f = File::open(path).unwrap();
                // Each reader on its own pages with kernel read-ahead off, so all sixteen
                // reads reach the daemon instead of waiting on one page-cache fill.
                let rc =
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
                assert_eq!(rc, 0);
                let mut buf = vec![0u8; 512];
                let off = CHUNK as u64 + 4096 * i + 100;
                f.read_exact_at(&mut buf, off).unwrap();
                assert_eq!(buf, data[off as usize..off as usize + 512]);
            });
        }
    });
    // Read-ahead may fetch further chunks, but no chunk is ever fetched twice, and the one
    // all sixteen readers wanted was fetched once.
    let ranges: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.origin == Origin::Cdn)
        .filter_map(|r| r.range)
        .collect();
    let distinct: BTreeSet<&String> = ranges.iter().collect();
    assert_eq!(distinct.len(), ranges.len(), "a chunk was fetched twice: {ranges:?}");
    assert!(ranges.contains(&format!("bytes={}-{}", CHUNK, 2 * CHUNK - 1)), "{ranges:?}");
    m.stop();
}

#[test]
fn default_chunk_size_and_sigterm_unmount() {
    // Default 8 MiB chunks: a file one byte over a chunk.
    let data = bytes(9, (8 << 20) + 1);
    let hub = hub_with(vec![MockRepo::new("o/big", vec![MockFile::lfs("big.bin", data.clone())])]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &[]);
    assert_eq!(sha256_hex(&std::fs::read(m.path("o/big/all/big.bin")).unwrap()), sha256_hex(&data));
    let status = m.stop();
    assert!(status.success(), "SIGTERM should unmount cleanly and exit 0, got {status}");
}

#[test]
fn a_stalled_fetch_blocks_nothing_else_and_ends_in_eio() {
    use support::mock_hub::{Fault, FaultRule};
    let slow = bytes(4, 3 * CHUNK);
    let hub = hub_with(vec![MockRepo::new(
        "o/stall",
        vec![MockFile::lfs("slow.bin", slow.clone()), MockFile::git("fast.txt", b"fast".to_vec())],
    )]);
    // Every body from the CDN for slow.bin stalls far longer than the read timeout.
    hub.inject(FaultRule::ranged(
        Some(Origin::Cdn),
        &sha256_hex(&slow),
        1000,
        Fault::Stall(Duration::from_secs(60)),
    ));
    let store = temp_dir("store");
    let m = Mounted::start(
        &hub.endpoint(),
        &store,
        &["--chunk-size", CHUNK_ARG, "--read-timeout", "6"],
    );
    let slow_path = m.path("o/stall/all/slow.bin");
    std::fs::metadata(&slow_path).unwrap();
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        let f = File::open(slow_path).unwrap();
        let mut buf = [0u8; 16];
        f.read_exact_at(&mut buf, 0)
    });
    std::thread::sleep(Duration::from_millis(300));
    // While that read waits on the network: listings, stat, xattrs and another file's fetch.
    assert_eq!(run("ls", &[m.path("o/stall/all").to_str().unwrap()]).split_whitespace().count(), 2);
    assert_eq!(std::fs::metadata(m.path("o/stall/all/slow.bin")).unwrap().len(), slow.len() as u64);
    assert_eq!(std::fs::read(m.path("o/stall/all/fast.txt")).unwrap(), b"fast");
    assert_eq!(getfattr(&m.path("o/stall/all/fast.txt"), "user.modelfs.size"), Ok("4".into()));
    assert!(!reader.is_finished(), "the stalled read finished before the other operations ran");
    let outcome = reader.join().unwrap();
    assert_eq!(errno(&outcome.unwrap_err()), libc::EIO);
    assert!(started.elapsed() < Duration::from_secs(40), "EIO took {:?}", started.elapsed());
    m.stop();
}

#[test]
fn sigterm_with_a_file_open_still_unmounts_and_exits() {
    let data = bytes(5, 3 * CHUNK);
    let hub = hub_with(vec![MockRepo::new("o/open", vec![MockFile::lfs("w.bin", data.clone())])]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    // Held open across the signal, as an inference server holds its mmap'd weights.
    let f = File::open(m.path("o/open/all/w.bin")).unwrap();
    let map = unsafe { memmap2::Mmap::map(&f).unwrap() };
    assert!(map[..CHUNK] == data[..CHUNK]);
    let started = Instant::now();
    let status = m.stop();
    assert!(status.success(), "exit status {status}");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    drop(map);
    drop(f);
}

/// Over a CDN that is slow to answer (300 ms to first byte) against what a chunk takes at its
/// per-connection rate, with memory for more chunks than connections, sequential reads make
/// read-ahead ask for runs of adjacent chunks in one streamed request each: fewer requests
/// than chunks, no byte asked for twice, and every byte right.
#[test]
fn read_ahead_coalesces_runs_over_a_slow_to_answer_cdn() {
    const MIB: usize = 1 << 20;
    let config = MockConfig {
        cdn_first_byte: Duration::from_millis(300),
        cdn_rate: Some(40_000_000),
        ..MockConfig::default()
    };
    let hub = MockHub::start(config);
    let data = bytes(77, 24 * MIB);
    hub.add_repo(MockRepo::new("slow/cdn", vec![MockFile::lfs("model.safetensors", data.clone())]));
    let store = temp_dir("store");
    let args = ["--chunk-size", "1M", "--max-connections", "2", "--max-inflight-bytes", "16M"];
    let m = Mounted::start(&hub.endpoint(), &store, &args);
    let path = m.path("slow/cdn/all/model.safetensors");
    let file = File::open(&path).unwrap();
    let mut got = vec![0u8; data.len()];
    for (i, piece) in got.chunks_mut(MIB).enumerate() {
        file.read_exact_at(piece, (i * MIB) as u64).unwrap();
    }
    assert!(got == data, "bytes differ");
    drop(file);
    m.stop();

    let ranges: Vec<(u64, u64)> = hub
        .requests()
        .iter()
        .filter(|r| r.origin == Origin::Cdn && r.status == 206)
        .filter_map(|r| {
            let (a, b) = r.range.as_deref()?.strip_prefix("bytes=")?.split_once('-')?;
            Some((a.parse().ok()?, b.parse::<u64>().ok()? + 1))
        })
        .collect();
    let mut asked: Vec<u64> =
        ranges.iter().flat_map(|&(a, b)| a / MIB as u64..b.div_ceil(MIB as u64)).collect();
    asked.sort_unstable();
    assert_eq!(asked, (0..24).collect::<Vec<u64>>(), "chunks asked: {ranges:?}");
    assert!(
        ranges.iter().any(|&(a, b)| b - a >= 2 * MIB as u64),
        "no request carried a run of chunks: {ranges:?}"
    );
    assert!(ranges.len() < 24, "{} requests for 24 chunks: {ranges:?}", ranges.len());
}
