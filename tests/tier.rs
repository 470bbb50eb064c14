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
    collect(&tier, &mut files);
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
