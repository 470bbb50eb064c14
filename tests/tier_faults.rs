//! The shared tier's fault matrix (issue 14; doc/DESIGN.md, "The shared tier") on real mounts
//! and a real S3 server: a tier that stalls, answers 5xx, is slow, sends objects of the wrong
//! length, loses its objects in the middle of a read, or refuses the credentials. A dead tier,
//! and corrupt and truncated objects, are in `tests/tier.rs`.
//!
//! What must hold whatever the tier does: every byte read is the Hub's (whole files are
//! compared), each read succeeds, from the tier when it serves right and from the Hub when it
//! does not, the failure is counted under its kind in `modelfs_tier_errors_total`, and the
//! AWS secret never reaches the log.
//!
//! The faults are injected on the wire, by a proxy between the daemons and moto
//! (`support::s3_proxy`): the bucket itself stays right. Each test first has one node read the
//! file through a healthy tier, so that the bucket has every chunk, then has a node with a
//! fresh store read it with the fault set.

mod support;

use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use modelfs::tier::{BREAKER_FAILURES, TIER_ERROR_KINDS, TIER_TIMEOUT};
use support::metrics::{metrics_addr, sample};
use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, temp_dir, wait_for, Mounted, TestDir, SETTLE};
use support::s3_proxy::{Fault, S3Proxy};
use support::tier::{cdn_bytes, s3_env, S3Server, S3_SECRET};

const MIB: usize = 1 << 20;
const BUCKET: &str = "models";
const ARGS: [&str; 6] =
    ["--chunk-size", "1M", "--tier", "s3://models/cluster-a", "--metrics-addr", "127.0.0.1:0"];
/// The file every node reads, and the bucket is filled with.
const FILE: &str = "tier/model/all/w.bin";
/// A second file, never put in the tier before the fault.
const OTHER: &str = "tier/model/all/x.bin";

/// A Hub with two files, an S3 bucket, and the proxy the nodes reach the bucket through.
struct Cluster {
    hub: MockHub,
    s3: S3Server,
    proxy: S3Proxy,
    data: Vec<u8>,
    other: Vec<u8>,
}

/// A mounted daemon with a store of its own.
struct Node {
    mount: Mounted,
    metrics: String,
    /// Dropped after the mount (fields drop in order).
    _store: TestDir,
}

impl Cluster {
    /// `len` bytes in [`FILE`] (8 MiB and a bit in [`OTHER`]), the bucket empty.
    fn new(seed: u64, len: usize) -> Cluster {
        let data = bytes(seed, len);
        let other = bytes(seed + 1000, 8 * MIB + 777);
        let hub = MockHub::start(MockConfig::default());
        hub.add_repo(MockRepo::new(
            "tier/model",
            vec![MockFile::lfs("w.bin", data.clone()), MockFile::lfs("x.bin", other.clone())],
        ));
        let s3 = S3Server::start(BUCKET);
        let proxy = S3Proxy::start(&s3.endpoint);
        Cluster { hub, s3, proxy, data, other }
    }

    fn chunks(&self) -> usize {
        self.data.len().div_ceil(MIB)
    }

    /// A node with a fresh store, its tier the bucket through the proxy.
    fn node(&self, name: &str) -> Node {
        let store = temp_dir(name);
        let endpoint = self.proxy.endpoint();
        let env = s3_env(&endpoint);
        let mount = Mounted::start_env(&self.hub.endpoint(), &store, &ARGS, &env);
        let metrics = metrics_addr(&mount);
        Node { mount, metrics, _store: store }
    }

    /// A node reads [`FILE`] through a healthy tier and every chunk of it lands in the bucket;
    /// then the Hub's record of requests is cleared, for the next node's to be counted alone.
    fn fill_tier(&self) {
        let node = self.node("tier-fill");
        assert!(node.read(FILE) == self.data, "wrong bytes through a healthy tier");
        wait_for("every chunk in the bucket", SETTLE, || self.s3.objects(BUCKET) == self.chunks());
        node.stop();
        self.hub.clear_requests();
    }
}

impl Node {
    fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.mount.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    fn metric(&self, series: &str) -> f64 {
        sample(&self.metrics, series)
    }

    fn errors(&self, kind: &str) -> f64 {
        self.metric(&format!("modelfs_tier_errors_total{{kind=\"{kind}\"}}"))
    }

    fn fetched(&self) -> f64 {
        self.metric("modelfs_tier_fetched_bytes_total")
    }

    fn log(&self) -> String {
        self.mount.log()
    }

    /// Stop the daemon, once its log is checked for the secrets it was given.
    fn stop(self) {
        let log = self.log();
        assert!(!log.contains(S3_SECRET), "the AWS secret in the log:\n{log}");
        assert!(!log.contains("hf_mock_token"), "the Hub token in the log");
        self.mount.stop();
    }
}

/// A tier that takes requests and never answers them (GETs: the read path stuck while the
/// bucket still takes writes). Each read that asks it waits [`TIER_TIMEOUT`]; after
/// [`BREAKER_FAILURES`] of them the breaker opens and the tier is not asked again. The chunks
/// are read one at a time in reverse order, as a loader reading tensors in name order jumps
/// through a file: no read-ahead, every read a tier request of its own, the worst case.
#[test]
fn a_stalled_tier_costs_each_reader_a_bounded_wait_and_the_hub_answers() {
    let c = Cluster::new(31, 8 * MIB + 4321);
    c.fill_tier();
    c.proxy.set_for("GET", Fault::Stall);
    let node = c.node("tier-stall");
    let file = std::fs::File::open(node.mount.path(FILE)).unwrap();
    let mut got = vec![0u8; c.data.len()];
    let start = Instant::now();
    let mut waits = Vec::new();
    for index in (0..c.chunks()).rev() {
        let at = index * MIB;
        let end = (at + MIB).min(got.len());
        let read = Instant::now();
        file.read_exact_at(&mut got[at..end], at as u64).unwrap();
        waits.push(read.elapsed());
    }
    let took = start.elapsed();
    eprintln!("a stalled tier: {took:?} for the file, per read (last chunk first): {waits:?}");
    assert!(got == c.data, "wrong bytes");
    assert_eq!(cdn_bytes(&c.hub), c.data.len() as u64, "the Hub answered every chunk");
    assert_eq!(node.fetched(), 0.0);
    assert!(node.errors("timeout") >= 1.0, "{}", node.log());
    assert_eq!(node.errors("unavailable"), 0.0, "a stall counted as something else");
    assert!(node.log().contains("the tier keeps failing"), "no breaker:\n{}", node.log());
    let long = waits.iter().filter(|w| **w >= TIER_TIMEOUT / 2).count();
    assert!(
        long <= BREAKER_FAILURES as usize,
        "{long} reads waited for the stalled tier; the breaker opens after {BREAKER_FAILURES}"
    );
    // The bound the design gives: BREAKER_FAILURES waits of TIER_TIMEOUT, and the Hub's time.
    let bound = TIER_TIMEOUT * BREAKER_FAILURES + Duration::from_secs(5);
    assert!(took < bound, "{took:?} for the file with a stalled tier (bound {bound:?})");

    // With the breaker open, another file is read without asking the tier at all.
    let gets = c.proxy.requests("GET");
    let start = Instant::now();
    assert!(node.read(OTHER) == c.other, "wrong bytes");
    assert!(start.elapsed() < TIER_TIMEOUT, "{:?} with the breaker open", start.elapsed());
    assert_eq!(c.proxy.requests("GET"), gets, "the tier was asked with the breaker open");
    c.proxy.clear();
    node.stop();
}

/// 503 on every GET: each is a miss the Hub answers at once (no stall), counted, and the
/// breaker stops the asking.
#[test]
fn a_tier_answering_5xx_to_reads_is_a_miss_the_hub_answers() {
    let c = Cluster::new(32, 6 * MIB + 99);
    c.fill_tier();
    c.proxy.set_for("GET", Fault::Status(503));
    let node = c.node("tier-503");
    assert!(node.read(FILE) == c.data, "wrong bytes");
    assert_eq!(cdn_bytes(&c.hub), c.data.len() as u64);
    assert_eq!(node.fetched(), 0.0);
    assert!(c.proxy.faulted("GET") >= 1, "no GET was answered 503: {:?}", c.proxy.counts());
    assert!(node.errors("unavailable") >= 1.0, "{}", node.log());
    assert_eq!(node.errors("timeout"), 0.0);
    assert!(node.log().contains("the tier keeps failing"), "no breaker:\n{}", node.log());
    c.proxy.clear();
    node.stop();
}

/// 500 on every PUT: the node's uploads fail and are counted, nothing lands in the bucket,
/// and its reads are not affected: a file the Hub serves is exact, and a file the tier has is
/// still read from the tier (a tier that refuses writes still serves reads).
#[test]
fn a_tier_answering_5xx_to_writes_costs_uploads_not_reads() {
    let c = Cluster::new(33, 4 * MIB + 5);
    c.fill_tier();
    c.proxy.set_for("PUT", Fault::Status(500));
    let node = c.node("tier-put-500");
    assert!(node.read(OTHER) == c.other, "wrong bytes");
    let addr = node.metrics.clone();
    wait_for("the failed uploads counted", SETTLE, || {
        sample(&addr, "modelfs_tier_errors_total{kind=\"unavailable\"}") >= 1.0
    });
    wait_for("the breaker on writes", SETTLE, || node.log().contains("the tier keeps failing"));
    assert!(c.proxy.faulted("PUT") >= 1, "{:?}", c.proxy.counts());
    assert_eq!(cdn_bytes(&c.hub), c.other.len() as u64);
    assert_eq!(node.metric("modelfs_tier_stored_bytes_total"), 0.0);
    assert_eq!(c.s3.objects(BUCKET), c.chunks(), "a PUT answered 500 stored something");
    // The uploads that failed stopped the uploads, not the reads.
    c.hub.clear_requests();
    assert!(node.read(FILE) == c.data, "wrong bytes");
    assert_eq!(node.fetched(), c.data.len() as f64, "not read from the tier:\n{}", node.log());
    assert_eq!(cdn_bytes(&c.hub), 0);
    c.proxy.clear();
    node.stop();
}

/// Every GET answered late and slowly, but within the tier's timeout: the bytes come from
/// the tier, exact, and the Hub is not asked.
#[test]
fn a_slow_tier_within_its_timeout_serves_every_byte() {
    let c = Cluster::new(34, 6 * MIB + 4096);
    c.fill_tier();
    // 300 ms to the first byte, then 4 MiB/s: about 0.55 s per object, a tenth of the timeout.
    c.proxy.set_for(
        "GET",
        Fault::Slow { first_byte: Duration::from_millis(300), bytes_per_sec: 4 << 20 },
    );
    let node = c.node("tier-slow");
    assert!(node.read(FILE) == c.data, "wrong bytes");
    assert!(c.proxy.faulted("GET") >= c.chunks(), "{:?}", c.proxy.counts());
    assert_eq!(node.fetched(), c.data.len() as f64, "not all from the tier:\n{}", node.log());
    assert_eq!(cdn_bytes(&c.hub), 0, "the Hub was asked");
    for kind in TIER_ERROR_KINDS {
        assert_eq!(node.errors(kind), 0.0, "{kind}:\n{}", node.log());
    }
    c.proxy.clear();
    node.stop();
}

/// Objects that arrive a byte short, then padded, in well-formed answers: each is a corrupt
/// object, a miss the Hub answers; the node deletes it and writes the Hub's bytes back, so a
/// later node reads the file from the tier.
#[test]
fn a_tier_object_of_the_wrong_length_is_a_miss_and_is_replaced() {
    let c = Cluster::new(35, 5 * MIB + 1234);
    c.fill_tier();
    for (name, delta) in [("tier-short", -1), ("tier-padded", 4096)] {
        c.proxy.set_for("GET", Fault::WrongLength(delta));
        let deletes = c.proxy.requests("DELETE");
        let node = c.node(name);
        assert!(node.read(FILE) == c.data, "{name}: wrong bytes");
        assert_eq!(cdn_bytes(&c.hub), c.data.len() as u64, "{name}: the Hub answered");
        assert_eq!(node.fetched(), 0.0, "{name}: bytes of a wrong length served");
        assert_eq!(node.errors("corrupt"), c.chunks() as f64, "{name}:\n{}", node.log());
        assert_eq!(node.errors("unavailable"), 0.0, "{name}");
        assert_eq!(c.proxy.requests("DELETE") - deletes, c.chunks(), "{name}: not all deleted");
        let addr = node.metrics.clone();
        wait_for("the Hub's bytes written back", SETTLE, || {
            sample(&addr, "modelfs_tier_stored_bytes_total") == c.data.len() as f64
        });
        node.stop();
        c.hub.clear_requests();
    }
    c.proxy.clear();
    wait_for("every chunk in the bucket", SETTLE, || c.s3.objects(BUCKET) == c.chunks());
    let node = c.node("tier-after");
    assert!(node.read(FILE) == c.data, "wrong bytes");
    assert_eq!(node.fetched(), c.data.len() as f64, "the tier was not repaired");
    assert_eq!(cdn_bytes(&c.hub), 0);
    node.stop();
}

/// The bucket loses every object while a node is half-way through the file: what the node
/// read before comes from the tier, what it reads after from the Hub, every byte exact, and
/// a missing object is not an error.
#[test]
fn objects_deleted_in_the_middle_of_a_read_are_misses_the_hub_answers() {
    let c = Cluster::new(36, 16 * MIB + 321);
    c.fill_tier();
    let node = c.node("tier-deleted");
    let file = std::fs::File::open(node.mount.path(FILE)).unwrap();
    let half = 8 * MIB;
    let mut got = vec![0u8; c.data.len()];
    // The first half chunk by chunk, last first: jumps, so read-ahead does not fetch the
    // second half from the tier before the objects are gone.
    for index in (0..half / MIB).rev() {
        let at = index * MIB;
        file.read_exact_at(&mut got[at..at + MIB], at as u64).unwrap();
    }
    let before = node.fetched();
    for key in keys(&c.s3) {
        assert_eq!(c.s3.request("DELETE", &format!("/{BUCKET}/{key}")), Some(204), "{key}");
    }
    assert_eq!(c.s3.objects(BUCKET), 0);
    file.read_exact_at(&mut got[half..], half as u64).unwrap();
    assert!(got == c.data, "wrong bytes");
    let (fetched, from_cdn) = (node.fetched(), cdn_bytes(&c.hub) as f64);
    eprintln!("deleted mid-read: {before} bytes from the tier before, {fetched} in all; {from_cdn} from the CDN");
    assert!(before >= half as f64, "the first half was not read from the tier");
    assert!(from_cdn > 0.0, "nothing was read after the objects were deleted");
    assert_eq!(fetched + from_cdn, c.data.len() as f64, "a chunk fetched twice, or from nowhere");
    for kind in TIER_ERROR_KINDS {
        assert_eq!(node.errors(kind), 0.0, "{kind}:\n{}", node.log());
    }
    node.stop();
}

/// The keys in the bucket (one listing page: these tests write fewer than 1000).
fn keys(s3: &S3Server) -> Vec<String> {
    let (_, body) = s3.get_body("GET", &format!("/{BUCKET}?list-type=2")).expect("a listing");
    body.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>"))
        .map(|(k, _)| k.to_owned())
        .collect()
}

/// Every request refused with 403 `SignatureDoesNotMatch` (a wrong secret, a rotated key):
/// the Hub answers, the refusal is counted as such and logged as such, and the secret is not
/// in the log.
#[test]
fn a_tier_refusing_the_credentials_is_a_miss_and_says_so() {
    let c = Cluster::new(37, 4 * MIB + 17);
    c.fill_tier();
    c.proxy.set(Fault::Forbidden);
    let node = c.node("tier-403");
    assert!(node.read(FILE) == c.data, "wrong bytes");
    assert_eq!(cdn_bytes(&c.hub), c.data.len() as u64);
    assert_eq!(node.fetched(), 0.0);
    assert!(c.proxy.faulted("GET") >= 1, "{:?}", c.proxy.counts());
    assert!(node.errors("denied") >= 1.0, "{}", node.log());
    assert_eq!(node.errors("unavailable"), 0.0, "a refusal counted as something else");
    let log = node.log();
    assert!(log.contains("the tier keeps failing"), "no breaker:\n{log}");
    assert!(log.contains("SignatureDoesNotMatch"), "the refusal is not in the log:\n{log}");
    c.proxy.clear();
    node.stop();
}
