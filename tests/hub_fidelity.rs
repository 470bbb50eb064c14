//! The mock Hub is only worth what its fidelity is: this test points the official Python
//! client, huggingface_hub, at it and checks downloads (git and LFS, by branch, tag and
//! commit), model info, paged tree listings and the error classes the client derives from
//! the mock's status codes and `X-Error-Code` headers (tests/python/fidelity.py). It never
//! skips: without huggingface_hub it fails and says how to install it.

#[path = "support/mock_hub.rs"]
mod mock_hub;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mock_hub::{MockConfig, MockFile, MockHub, MockRepo, Origin};
use rand::{RngCore, SeedableRng};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Small enough that the fixture repo needs several tree pages.
const PAGE_SIZE: usize = 5;
const TOKEN: &str = "hf_mock_token";
/// The whole script takes a few seconds; this only bounds a hang.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

const REPO: &str = "fidelity-org/fidelity-model";
const GATED: &str = "fidelity-org/gated-model";
const PRIVATE: &str = "fidelity-org/private-model";
const DEEP_FILE: &str = "deep/nested dir/ünïcödé file ✓.txt";

fn describe(files: &[MockFile]) -> Value {
    let mut out: Vec<Value> = files
        .iter()
        .map(|f| {
            let blob_id = if f.lfs {
                let sha = hex::encode(Sha256::digest(&f.data));
                mock_hub::git_blob_oid(mock_hub::lfs_pointer(&sha, f.data.len() as u64).as_bytes())
            } else {
                mock_hub::git_blob_oid(&f.data)
            };
            json!({
                "path": f.path,
                "size": f.data.len(),
                "sha256": hex::encode(Sha256::digest(&f.data)),
                "lfs": f.lfs,
                "blob_id": blob_id,
            })
        })
        .collect();
    out.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    Value::Array(out)
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn python_with_hub() -> String {
    let out = Command::new("python3")
        .args(["-c", "import huggingface_hub; print(huggingface_hub.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => panic!(
            "huggingface_hub is not importable by python3 ({}); run scripts/setup.sh \
             (it installs tests/python/requirements.txt)",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 cannot be run ({e}); run scripts/setup.sh"),
    }
}

/// Runs the script to completion or `SCRIPT_TIMEOUT`, returning (success, stdout + stderr).
fn run_script(hub: &MockHub, fixtures: &Path, home: &Path) -> (bool, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/fidelity.py");
    let stdout_path = home.join("stdout.txt");
    let stderr_path = home.join("stderr.txt");
    let mut child = Command::new("python3")
        .arg(&script)
        .arg(fixtures)
        .env("HF_ENDPOINT", hub.endpoint())
        .env("HF_TOKEN", TOKEN)
        .env("HF_HOME", home.join("hf_home"))
        .env("HF_HUB_CACHE", home.join("hub_cache"))
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .env("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN_PATH")
        // A proxy from the environment must not intercept the loopback origins.
        // Temporary files of the script (its fresh caches) go away with `home`.
        .env("TMPDIR", home)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawn python3");
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = format!(
        "--- stdout\n{}\n--- stderr\n{}",
        std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    match status {
        Some(s) => (s.success(), output),
        None => (false, format!("timed out after {SCRIPT_TIMEOUT:?}\n{output}")),
    }
}

#[test]
fn huggingface_hub_accepts_the_mock() {
    let version = python_with_hub();
    let hub = MockHub::start(MockConfig { page_size: PAGE_SIZE, ..MockConfig::default() });

    let lfs_data = random_bytes(7, 3 * 1024 * 1024 + 123);
    let mut first = vec![
        MockFile::new("config.json", br#"{"model_type": "mock", "version": 1}"#.to_vec()),
        MockFile::new("onnx/model.onnx", lfs_data),
        MockFile::new(DEEP_FILE, "deep and non-ASCII\n".as_bytes().to_vec()),
        MockFile::new("README.md", b"# fidelity\n".to_vec()),
    ];
    first.extend((0..7).map(|i| {
        MockFile::new(&format!("extra/file_{i}.txt"), format!("extra {i}\n").into_bytes())
    }));
    assert!(first[1].lfs && !first[0].lfs && !first[2].lfs, "fixture LFS choice");
    let mut repo = MockRepo::new(REPO, first.clone());
    repo.pipeline_tag = Some("text-generation".to_owned());
    let first_sha = repo.head();
    repo.tag("v1.0", &first_sha);
    let changed = vec![
        MockFile::new("config.json", br#"{"model_type": "mock", "version": 2}"#.to_vec()),
        MockFile::lfs("weights/extra.bin", random_bytes(8, 200_000)),
    ];
    let head_sha = repo.commit(changed.clone());
    assert_ne!(head_sha, first_sha);
    assert_eq!(head_sha.len(), 40);
    hub.add_repo(repo);

    let mut head_files: Vec<MockFile> =
        first.iter().filter(|f| f.path != "config.json").cloned().collect();
    head_files.extend(changed);

    let gated_file = MockFile::lfs("model.safetensors", random_bytes(9, 70_000));
    let mut gated = MockRepo::new(GATED, vec![gated_file.clone()]);
    gated.gated = true;
    hub.add_repo(gated);
    let private_file = MockFile::git("config.json", b"{}".to_vec());
    let mut private = MockRepo::new(PRIVATE, vec![private_file.clone()]);
    private.private = true;
    hub.add_repo(private);

    let fixtures = json!({
        "repo": REPO,
        "head": head_sha,
        "first": first_sha,
        "tag": "v1.0",
        "pipeline_tag": "text-generation",
        "files_head": describe(&head_files),
        "files_first": describe(&first),
        "folders": ["deep", "deep/nested dir", "extra", "onnx", "weights"],
        "deep_file": DEEP_FILE,
        "gated_repo": GATED,
        "gated_file": describe(std::slice::from_ref(&gated_file))[0],
        "private_repo": PRIVATE,
        "private_file": describe(std::slice::from_ref(&private_file))[0],
    });
    let home = tempfile::tempdir().unwrap();
    let fixtures_path = home.path().join("fixtures.json");
    std::fs::write(&fixtures_path, serde_json::to_vec_pretty(&fixtures).unwrap()).unwrap();

    let (ok, output) = run_script(&hub, &fixtures_path, home.path());
    assert!(ok, "huggingface_hub {version} disagrees with the mock Hub:\n{output}");

    let requests = hub.requests();
    // Listing 17 entries (12 files, 5 folders) five at a time fetches pages 2 to 4 by cursor.
    let next_pages = requests
        .iter()
        .filter(|r| {
            r.origin == Origin::Hub
                && r.path_and_query.contains("/tree/")
                && r.path_and_query.contains("cursor=")
        })
        .count();
    assert!(next_pages >= 3, "the recursive listing was not paged: {requests:#?}");

    // LFS bytes came from the CDN, and the token never went there.
    let cdn: Vec<_> = requests.iter().filter(|r| r.origin == Origin::Cdn).collect();
    assert!(
        cdn.iter().any(|r| r.method == "GET" && r.status == 200),
        "no LFS download reached the CDN: {requests:#?}"
    );
    for r in &cdn {
        assert_eq!(r.authorization, None, "the CDN received a token: {r:#?}");
    }
    // ...while the Hub did get it, so the absence above means something.
    let bearer = format!("Bearer {TOKEN}");
    assert!(requests
        .iter()
        .any(|r| r.origin == Origin::Hub && r.authorization.as_deref() == Some(bearer.as_str())));
    // Git files by branch went through the relative 307 to their commit.
    assert!(requests.iter().any(
        |r| r.status == 307 && r.path_and_query == format!("/{REPO}/resolve/main/config.json")
    ));
    assert!(requests.iter().any(|r| r.status == 200
        && r.path_and_query == format!("/{REPO}/resolve/{head_sha}/config.json")));
}

#[test]
fn stop_refuses_connections() {
    let hub = MockHub::start(MockConfig::default());
    let addr = hub.endpoint().trim_start_matches("http://").to_owned();
    let open = std::net::TcpStream::connect(&addr).unwrap();
    hub.stop();
    assert!(std::net::TcpStream::connect(&addr).is_err(), "still accepting after stop()");
    // The connection opened before stop() was closed by the mock: reading sees EOF or reset.
    let mut buf = [0u8; 1];
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let read = std::io::Read::read(&mut &open, &mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "open connection survived stop(): {read:?}");
    if let Err(e) = &read {
        assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "open connection survived stop()");
        assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "open connection survived stop()");
    }
}

/// From inside a tokio test, reqwest reaches the bytes of a git file through the relative 307
/// and of an LFS file through the 302 to the CDN, which never sees the token.
#[tokio::test]
async fn reqwest_follows_both_redirects_from_an_async_test() {
    let hub = MockHub::start(MockConfig::default());
    let small = b"small git file".to_vec();
    let large = random_bytes(3, 2 * 1024 * 1024);
    hub.add_repo(MockRepo::new(
        "org/redirects",
        vec![
            MockFile::new("a b/small.txt", small.clone()),
            MockFile::new("large.gguf", large.clone()),
        ],
    ));
    let client = reqwest::Client::new();
    for (path, want) in [("a%20b/small.txt", &small), ("large.gguf", &large)] {
        let url = format!("{}/org/redirects/resolve/main/{path}", hub.endpoint());
        let response =
            client.get(url).bearer_auth(TOKEN).header("Range", "bytes=1-").send().await.unwrap();
        assert_eq!(response.status(), 206, "{path}");
        assert_eq!(response.bytes().await.unwrap().as_ref(), &want[1..], "{path}");
    }
    let requests = hub.requests();
    let statuses: Vec<(Origin, u16)> = requests.iter().map(|r| (r.origin, r.status)).collect();
    assert_eq!(
        statuses,
        [(Origin::Hub, 307), (Origin::Hub, 206), (Origin::Hub, 302), (Origin::Cdn, 206)]
    );
    assert_eq!(requests[3].authorization, None);
    assert_eq!(requests[3].range.as_deref(), Some("bytes=1-"));
    drop(hub); // Dropping inside the runtime must not panic.
}
