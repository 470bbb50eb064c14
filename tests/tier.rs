//! The shared tier on real mounts (doc/DESIGN.md, "The shared tier"): three daemons with
//! their own stores share one tier; a file read on all three crosses the CDN once in all,
//! every byte exact; a corrupt object in the tier is a miss that the Hub answers.
//!
//! The tier is a `file://` directory, and an S3 bucket on a real S3 server the test starts
//! on 127.0.0.1: moto, or s3s-fs with `MODELFS_TEST_S3=s3s-fs` (scripts/test_s3s.sh).

mod support;

use std::path::Path;

use support::metrics::{metrics_addr, sample};
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, temp_dir, wait_for, Mounted, SETTLE};
use support::tier::{cdn_bytes, objects, s3_env, S3Server, S3_SECRET};

const MIB: usize = 1 << 20;

/// Three daemons with their own stores read one file through the tier at `url`; `objects`
/// counts the chunk objects in it. The CDN must send one copy of the file in all.
fn three_nodes_fetch_each_chunk_once(url: &str, env: &[(&str, &str)], objects: impl Fn() -> usize) {
    let data = bytes(7, 24 * MIB + 12345);
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(
        "tier/model",
        vec![MockFile::lfs("model.safetensors", data.clone())],
    ));
    let args = ["--chunk-size", "1M", "--tier", url, "--metrics-addr", "127.0.0.1:0"];
    let chunks = data.len().div_ceil(MIB);
    let mut served_from_tier = 0.0;
    for node in 0..3 {
        let store = temp_dir(&format!("tier-node{node}"));
        let m = Mounted::start_env(&hub.endpoint(), &store, &args, env);
        let got = std::fs::read(m.path("tier/model/all/model.safetensors")).unwrap();
        assert!(got == data, "node {node} read wrong bytes");
        if node == 0 {
            // The first node's uploads run behind its reads: wait for every chunk object.
            let start = std::time::Instant::now();
            while objects() != chunks {
                assert!(
                    start.elapsed() < SETTLE,
                    "{} of {chunks} chunks in the tier:\n{}",
                    objects(),
                    m.log()
                );
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        } else {
            served_from_tier += sample(&metrics_addr(&m), "modelfs_tier_fetched_bytes_total");
        }
        assert!(!m.log().contains("hf_mock_token"), "a token in the log");
        for (k, v) in env.iter().filter(|(k, _)| k.contains("SECRET")) {
            assert!(!m.log().contains(v), "{k} in the log");
        }
        m.stop();
    }
    let from_cdn = cdn_bytes(&hub);
    eprintln!(
        "CDN bytes for three nodes: {from_cdn} = {:.2}x the file",
        from_cdn as f64 / data.len() as f64
    );
    assert_eq!(from_cdn, data.len() as u64, "the CDN sent more than one copy of the file");
    assert_eq!(served_from_tier, 2.0 * data.len() as f64, "nodes 2 and 3 read all from the tier");
}

#[test]
fn three_nodes_on_one_shared_directory_fetch_each_chunk_from_the_hub_once() {
    let tier = temp_dir("tier");
    let url = format!("file://{}", tier.display());
    three_nodes_fetch_each_chunk_once(&url, &[], || objects(&tier));
}

#[test]
fn three_nodes_on_one_s3_bucket_fetch_each_chunk_from_the_hub_once() {
    let s3 = S3Server::start("models");
    let env = s3_env(&s3.endpoint);
    three_nodes_fetch_each_chunk_once("s3://models/cluster-a", &env, || s3.objects("models"));
}

/// What the daemon needs of an S3 server, through the daemon's own `ObjectTier` on the test's
/// server: a missing object is a miss (a 404, not an error), a create is write-once (a second
/// create of the key succeeds and keeps the first bytes: `If-None-Match: *`), and a delete
/// removes (a missing key too), after which the key can be created anew.
#[test]
fn the_s3_server_answers_as_the_tier_needs() {
    use modelfs::tier::{ObjectTier, Tier};
    let s3 = S3Server::start("models");
    let tier = ObjectTier::new(std::sync::Arc::new(s3.client("models")), "answers");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let get = |key| rt.block_on(tier.get(key)).unwrap().map(|b| b.to_vec());
    let first = bytes::Bytes::from_static(b"first");
    assert_eq!(get("k"), None, "{:?}: a missing object", s3.kind);
    rt.block_on(tier.create("k", first.clone())).unwrap();
    rt.block_on(tier.create("k", bytes::Bytes::from_static(b"second"))).unwrap();
    assert_eq!(get("k").as_deref(), Some(&b"first"[..]), "{:?}: not write-once", s3.kind);
    rt.block_on(tier.delete("k")).unwrap();
    assert_eq!(get("k"), None, "{:?}: not deleted", s3.kind);
    rt.block_on(tier.delete("k")).unwrap();
    rt.block_on(tier.create("k", bytes::Bytes::from_static(b"third"))).unwrap();
    assert_eq!(get("k").as_deref(), Some(&b"third"[..]), "{:?}", s3.kind);
    // The kit's own signed requests, which tests use to look at and change a bucket.
    let (status, listing) = s3.get_body("GET", "/models?list-type=2").expect("a listing");
    assert!(status == 200 && listing.contains("<Key>answers/k</Key>"), "{listing}");
    assert_eq!(s3.request("DELETE", "/models/answers/k"), Some(204));
    assert_eq!(get("k"), None, "{:?}: not deleted by a signed DELETE", s3.kind);
}

#[test]
fn a_corrupt_tier_object_is_a_miss_the_hub_answers() {
    let data = bytes(8, 4 * MIB);
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new("tier/model", vec![MockFile::lfs("w.bin", data.clone())]));
    let tier = temp_dir("tier-bad");
    let url = format!("file://{}", tier.display());
    let args = ["--chunk-size", "1M", "--tier", url.as_str(), "--metrics-addr", "127.0.0.1:0"];
    let store = temp_dir("tier-bad-1");
    let m = Mounted::start(&hub.endpoint(), &store, &args);
    assert!(std::fs::read(m.path("tier/model/all/w.bin")).unwrap() == data);
    wait_for("every chunk in the tier", SETTLE, || objects(&tier) == 4);
    m.stop();
    // Flip one byte of every object's data, and cut one short.
    let mut files = Vec::new();
    fn collect(p: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            if e.path().is_dir() {
                collect(&e.path(), out)
            } else {
                out.push(e.path())
            }
        }
    }
    collect(&tier.join("chunks"), &mut files);
    for (i, f) in files.iter().enumerate() {
        let mut b = std::fs::read(f).unwrap();
        if i == 0 {
            b.truncate(b.len() / 2);
        } else {
            let n = b.len();
            b[n - 1] ^= 0x55;
        }
        std::fs::write(f, b).unwrap();
    }
    hub.clear_requests();
    let store = temp_dir("tier-bad-2");
    let m = Mounted::start(&hub.endpoint(), &store, &args);
    assert!(std::fs::read(m.path("tier/model/all/w.bin")).unwrap() == data, "wrong bytes");
    let addr = metrics_addr(&m);
    wait_for("the repaired objects written", SETTLE, || {
        sample(&addr, "modelfs_tier_stored_bytes_total") == data.len() as f64
    });
    assert!(sample(&addr, "modelfs_tier_errors_total{kind=\"corrupt\"}") >= 1.0, "{}", m.log());
    assert_eq!(sample(&addr, "modelfs_tier_fetched_bytes_total"), 0.0);
    assert_eq!(cdn_bytes(&hub), data.len() as u64, "the Hub answered what the tier could not");
    m.stop();
    // The bad copies were removed and the Hub's bytes written in their place: a third node
    // reads all of the file from the tier.
    let store = temp_dir("tier-bad-3");
    let m = Mounted::start(&hub.endpoint(), &store, &args);
    let good =
        || files.iter().all(|f| std::fs::metadata(f).is_ok_and(|md| md.len() as usize == MIB + 17));
    wait_for("the tier repaired", SETTLE, good);
    hub.clear_requests();
    assert!(std::fs::read(m.path("tier/model/all/w.bin")).unwrap() == data);
    assert_eq!(sample(&metrics_addr(&m), "modelfs_tier_fetched_bytes_total"), data.len() as f64);
    assert_eq!(cdn_bytes(&hub), 0);
    m.stop();
}

/// A tier that does not answer (nothing listens at its endpoint) is a miss: every read is
/// answered from the Hub, the failures are counted, and the breaker stops asking it.
#[test]
fn a_tier_that_is_down_costs_misses_not_reads() {
    let data = bytes(9, 6 * MIB);
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new("tier/model", vec![MockFile::lfs("w.bin", data.clone())]));
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint = format!("http://127.0.0.1:{dead}");
    let env = s3_env(&endpoint);
    let args = ["--chunk-size", "1M", "--tier", "s3://models/x", "--metrics-addr", "127.0.0.1:0"];
    let store = temp_dir("tier-down");
    let m = Mounted::start_env(&hub.endpoint(), &store, &args, &env);
    assert!(std::fs::read(m.path("tier/model/all/w.bin")).unwrap() == data, "wrong bytes");
    let addr = metrics_addr(&m);
    assert!(sample(&addr, "modelfs_tier_errors_total{kind=\"unavailable\"}") >= 1.0, "{}", m.log());
    assert_eq!(cdn_bytes(&hub), data.len() as u64);
    assert!(m.log().contains("the tier keeps failing"), "no breaker:\n{}", m.log());
    assert!(!m.log().contains(S3_SECRET), "the secret in the log");
    m.stop();
}

/// The repo of the metadata tests: weights (LFS) and a config (in git).
fn model_repo(id: &str) -> (MockRepo, Vec<(&'static str, Vec<u8>)>) {
    let files = vec![
        ("config.json", b"{\"dim\": 64}".to_vec()),
        ("model.safetensors", bytes(11, 3 * MIB + 5)),
    ];
    let repo = MockRepo::new(
        id,
        vec![
            MockFile::git(files[0].0, files[0].1.clone()),
            MockFile::lfs(files[1].0, files[1].1.clone()),
        ],
    );
    (repo, files)
}

/// A node reads a repo with a token, through the tier; it then holds every chunk and the
/// repo's metadata. Returns the tier's URL.
fn first_node_fills(
    hub: &MockHub,
    id: &str,
    files: &[(&str, Vec<u8>)],
    tier: &Path,
    env: &[(&str, &str)],
) -> String {
    let url = format!("file://{}", tier.display());
    let args = ["--chunk-size", "1M", "--tier", url.as_str(), "--metrics-addr", "127.0.0.1:0"];
    let m = Mounted::start_env(&hub.endpoint(), &temp_dir("tier-meta-1"), &args, env);
    for (p, d) in files {
        assert!(std::fs::read(m.path(&format!("{id}/all/{p}"))).unwrap() == *d, "{p}");
    }
    wait_for("every chunk in the tier", SETTLE, || objects(tier) == 5);
    let head = tier.join(format!("repos/v1/{id}/refs/main"));
    wait_for("the ref in the tier", SETTLE, || head.exists());
    m.stop();
    url
}

/// The Hub down, the tier up: a node that never saw the repo (an empty store) lists it and
/// reads every byte of it from what another node put in the tier.
#[test]
fn with_the_hub_down_a_new_node_lists_and_reads_a_repo_another_node_fetched() {
    let (repo, files) = model_repo("tier/meta");
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(repo);
    let tier = temp_dir("tier-meta");
    let url = first_node_fills(&hub, "tier/meta", &files, &tier, &[]);
    let endpoint = hub.endpoint();
    hub.stop();

    let args = ["--chunk-size", "1M", "--tier", url.as_str(), "--metrics-addr", "127.0.0.1:0"];
    let store = temp_dir("tier-meta-2");
    let m = Mounted::start(&endpoint, &store, &args);
    assert_eq!(m.names("tier/meta/all"), ["config.json", "model.safetensors"]);
    for (p, d) in &files {
        let got = std::fs::read(m.path(&format!("tier/meta/all/{p}"))).unwrap();
        assert!(got == *d, "{p} read wrong from the tier");
    }
    let addr = metrics_addr(&m);
    assert!(sample(&addr, "modelfs_tier_revisions_served_total") >= 1.0, "{}", m.log());
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    assert_eq!(sample(&addr, "modelfs_tier_fetched_bytes_total"), total as f64);
    assert!(sample(&addr, "modelfs_tier_request_duration_seconds_count{op=\"get\"}") >= 5.0);
    // `status` tells where the bytes came from: all from the tier, none from the Hub.
    let want = format!("fetched (tier {}, Hub 0 B)", modelfs::commands::human_bytes(total as u64));
    let mut said = String::new();
    wait_for("status to report the traffic", SETTLE, || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelfs"))
            .args(["status", "--store"])
            .arg(&*store)
            .output()
            .unwrap();
        said = String::from_utf8_lossy(&out.stdout).into_owned();
        said.contains(&want) && said.contains("tier: ")
    });
    assert!(said.contains("no errors"), "{said}");
    m.stop();
}

/// A gated repo a node with a token put in the tier: a node without one is refused its
/// bytes while the Hub answers (the Hub lists a gated repo to anyone), and its listing and
/// bytes while the Hub is down.
#[test]
fn a_node_without_a_token_gets_eacces_for_a_gated_repo_in_the_tier() {
    let (mut repo, files) = model_repo("tier/gated");
    repo.gated = true;
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(repo);
    let tier = temp_dir("tier-gated");
    let url = first_node_fills(&hub, "tier/gated", &files, &tier, &[("HF_TOKEN", "hf_mock_token")]);
    let args = ["--chunk-size", "1M", "--tier", url.as_str(), "--metrics-addr", "127.0.0.1:0"];

    let m = Mounted::start(&hub.endpoint(), &temp_dir("tier-gated-2"), &args);
    let weights = m.path("tier/gated/all/model.safetensors");
    let err = std::fs::read(&weights).map(drop).expect_err("gated bytes without a token");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}\n{}", m.log());
    assert_eq!(sample(&metrics_addr(&m), "modelfs_tier_fetched_bytes_total"), 0.0);
    m.stop();

    let endpoint = hub.endpoint();
    hub.stop();
    let m = Mounted::start(&endpoint, &temp_dir("tier-gated-3"), &args);
    let err = std::fs::read_dir(m.path("tier/gated/all")).map(drop).expect_err("gated, Hub down");
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}\n{}", m.log());
    let err = std::fs::read(m.path("tier/gated/all/model.safetensors")).map(drop).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
    m.stop();
}

/// `modelfs pull --tier` seeds the tier for a cluster: with what it fetches, and with what its
/// store held already (a node that pulled before the tier existed). A node that never saw the
/// repo then reads all of it from the tier, the Hub down.
#[test]
fn pull_with_a_tier_seeds_it_for_every_node() {
    let (repo, files) = model_repo("tier/seed");
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(repo);
    let tier = temp_dir("tier-seed");
    let url = format!("file://{}", tier.display());
    let store = temp_dir("tier-seed-store");
    let pull_into = |store: &Path, extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelfs"))
            .args(["pull", "tier/seed", "--chunk-size", "1M", "--endpoint", &hub.endpoint()])
            .arg("--store")
            .arg(store)
            .args(extra)
            .env_remove("HF_TOKEN")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "pull {extra:?}:\n{text}");
        text
    };
    let pull = |extra: &[&str]| pull_into(&store, extra);
    pull(&[]);
    assert_eq!(objects(&tier), 0);
    // Everything is stored already: the pull fetches nothing and uploads all of it.
    hub.clear_requests();
    let said = pull(&["--tier", &url]);
    assert_eq!(cdn_bytes(&hub), 0, "the pull fetched what its store held");
    assert_eq!(objects(&tier), 5, "every chunk in the tier when the pull returned:\n{said}");
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let written = modelfs::commands::human_bytes(total as u64);
    assert!(said.contains(&format!("{written} in the tier")), "{said}");
    assert!(tier.join("repos/v1/tier/seed/refs/main").exists(), "the ref seeded");
    // Another node's pull reads the chunks from the tier, not the Hub.
    hub.clear_requests();
    pull_into(&temp_dir("tier-seed-other"), &["--tier", &url]);
    assert_eq!(cdn_bytes(&hub), 0, "a pull through a seeded tier asked the Hub for bytes");

    let endpoint = hub.endpoint();
    hub.stop();
    let args = ["--chunk-size", "1M", "--tier", url.as_str()];
    let m = Mounted::start(&endpoint, &temp_dir("tier-seed-node"), &args);
    for (p, d) in &files {
        let got = std::fs::read(m.path(&format!("tier/seed/all/{p}")))
            .unwrap_or_else(|e| panic!("{p}: {e}\n{}", m.log()));
        assert!(got == *d, "{p} read wrong");
    }
    m.stop();
}

/// An object rewritten with other bytes under a valid header and crc32c passes the object
/// checks; the file's hash then finds it bad, and every object of the file is removed from
/// the tier, so the next node is served the Hub's bytes, not the forgery.
#[test]
fn a_file_found_bad_is_removed_from_the_tier() {
    let data = bytes(12, 4 * MIB);
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new("tier/forged", vec![MockFile::lfs("w.bin", data.clone())]));
    let tier = temp_dir("tier-forged");
    let url = format!("file://{}", tier.display());
    let args = ["--chunk-size", "1M", "--tier", url.as_str()];
    let m = Mounted::start(&hub.endpoint(), &temp_dir("tier-forged-1"), &args);
    assert!(std::fs::read(m.path("tier/forged/all/w.bin")).unwrap() == data);
    wait_for("every chunk in the tier", SETTLE, || objects(&tier) == 4);
    m.stop();
    // Chunk 2, forged: other bytes, a header and a crc32c that match them.
    let content = modelfs::manifest::FileHash::Lfs(sha256(&data)).content_id().to_hex();
    let key = tier.join(format!("chunks/v1/{}/{content}/{MIB}/2", &content[..2]));
    let forged = vec![0xEE; MIB];
    let mut object = b"MFSC\x01".to_vec();
    object.extend_from_slice(&(MIB as u64).to_le_bytes());
    object.extend_from_slice(&crc32c::crc32c(&forged).to_le_bytes());
    object.extend_from_slice(&forged);
    std::fs::write(&key, object).unwrap();

    let m = Mounted::start(&hub.endpoint(), &temp_dir("tier-forged-2"), &args);
    let read = std::fs::read(m.path("tier/forged/all/w.bin"));
    assert!(!read.is_ok_and(|got| got == data), "the forgery went unnoticed");
    wait_for("the bad file's objects removed", SETTLE, || objects(&tier) == 0);
    assert!(m.log().contains("does not match the Hub's hash"), "{}", m.log());
    m.stop();

    hub.clear_requests();
    let m = Mounted::start(&hub.endpoint(), &temp_dir("tier-forged-3"), &args);
    assert!(std::fs::read(m.path("tier/forged/all/w.bin")).unwrap() == data, "node 3");
    assert_eq!(cdn_bytes(&hub), data.len() as u64, "node 3 was served the Hub's bytes");
    m.stop();
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// `[[repo]] pull_on_start` on a mount with `--tier` (given on the command line, which the
/// pull the mount starts does not see): the pull seeds the tier, for every node.
#[test]
fn a_pull_on_start_seeds_the_mounts_tier() {
    let (repo, files) = model_repo("tier/onstart");
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(repo);
    let dir = temp_dir("tier-onstart");
    let tier = dir.join("tier");
    let config = dir.join("config.toml");
    std::fs::write(&config, "[[repo]]\nid = \"tier/onstart\"\npull_on_start = true\n").unwrap();
    let url = format!("file://{}", tier.display());
    let args = ["--chunk-size", "1M", "--tier", url.as_str(), "--config", config.to_str().unwrap()];
    let m = Mounted::start(&hub.endpoint(), &dir.join("store"), &args);
    wait_for("the pull on start to end", SETTLE, || {
        m.log().contains("INFO modelfs::daemon: pulled")
    });
    assert_eq!(objects(&tier), 5, "the pulled repo's chunks in the tier:\n{}", m.log());
    m.stop();
    let endpoint = hub.endpoint();
    hub.stop();
    let m = Mounted::start(&endpoint, &temp_dir("tier-onstart-2"), &args[..4]);
    for (p, d) in &files {
        assert!(std::fs::read(m.path(&format!("tier/onstart/all/{p}"))).unwrap() == *d, "{p}");
    }
    m.stop();
}
