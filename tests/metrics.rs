//! `--metrics-addr` on a real mount: what `/metrics` says after cold and warm reads, Hub
//! faults and errors, parsed by the official Python Prometheus client's OpenMetrics parser
//! (the format the endpoint declares); `/healthz` and `/readyz` through a start and a stop.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::metrics::{get, metrics_addr};
use support::mock_hub::{Fault, FaultRule, MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, drop_page_cache, errno, sha256_hex, temp_dir, Mounted};

/// Small chunks, so that a 260 KiB file is five fetches.
const CHUNK: usize = 64 << 10;
const CHUNK_ARG: &str = "65536";

/// The token the daemon is given: it must never show in what the endpoint serves.
const TOKEN: &str = "hf_MetricsMarkerToken7d2c";

/// Label names the exposition may use; their values come from fixed sets in src/metrics.rs.
const LABELS: [&str; 9] =
    ["source", "result", "reason", "errno", "le", "version", "format", "kind", "op"];

/// One file per retry reason the mock Hub can provoke, with the fault that provokes it.
fn faults() -> Vec<(&'static str, Fault, &'static str)> {
    vec![
        ("retry/status.bin", Fault::Status(503), "status_5xx"),
        ("retry/limited.bin", Fault::RateLimited { retry_after_secs: 0 }, "rate_limited"),
        ("retry/reset.bin", Fault::Reset, "reset"),
        ("retry/truncated.bin", Fault::Truncate { after: 10 }, "truncated"),
        // The client gives up on a stalled body after a quarter of --read-timeout (1 s here).
        ("retry/stalled.bin", Fault::Stall(Duration::from_secs(3)), "timeout"),
    ]
}

const BIG: &str = "weights/model.safetensors";
const BIG_LEN: usize = 4 * CHUNK + 17;
const WRONG: &str = "bad/wrong.bin";

fn repo() -> (MockRepo, HashMap<String, Vec<u8>>) {
    let mut files =
        vec![MockFile::lfs(BIG, bytes(1, BIG_LEN)), MockFile::git(WRONG, bytes(2, 999))];
    for (i, (path, _, _)) in faults().into_iter().enumerate() {
        files.push(MockFile::git(path, bytes(10 + i as u64, 1000 + i)));
    }
    let data = files.iter().map(|f| (f.path.clone(), f.data.clone())).collect();
    (MockRepo::new("test-org/metrics", files), data)
}

// ------------------------------------------------------------------------------ HTTP, parsing

/// `/metrics`, parsed by `prometheus_client.openmetrics.parser` (strict: it rejects anything
/// that is not valid OpenMetrics, `# EOF` included). Samples by `name{label="value",...}`,
/// labels sorted by name.
struct Scrape {
    text: String,
    samples: HashMap<String, f64>,
    /// Family name → type, as the parser read them.
    types: HashMap<String, String>,
    labels: Vec<BTreeMap<String, String>>,
}

impl Scrape {
    fn get(&self, series: &str) -> f64 {
        *self.samples.get(series).unwrap_or_else(|| panic!("{series} missing from:\n{}", self.text))
    }
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = {"samples": [], "types": {}}
for family in text_string_to_metric_families(sys.stdin.read()):
    out["types"][family.name] = family.type
    for s in family.samples:
        out["samples"].append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

fn scrape(addr: &str) -> Scrape {
    let answer = get(addr, "/metrics").expect("GET /metrics");
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert!(
        answer
            .head
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{}",
        answer.head
    );
    let mut child = Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("python3 cannot be run ({e}); run scripts/setup.sh"));
    child.stdin.take().unwrap().write_all(answer.body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the exposition (is prometheus-client installed? \
         scripts/setup.sh installs tests/python/requirements.txt):\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        answer.body
    );
    #[derive(serde::Deserialize)]
    struct Parsed {
        samples: Vec<(String, BTreeMap<String, String>, f64)>,
        types: HashMap<String, String>,
    }
    let parsed: Parsed = serde_json::from_slice(&out.stdout).unwrap();
    let mut samples = HashMap::new();
    let mut labels = Vec::new();
    for (name, l, value) in parsed.samples {
        let key = if l.is_empty() {
            name
        } else {
            let inner: Vec<String> = l.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", inner.join(","))
        };
        assert!(samples.insert(key.clone(), value).is_none(), "{key} twice");
        labels.push(l);
    }
    Scrape { text: answer.body, samples, types: parsed.types, labels }
}

fn wait_for(what: &str, f: impl FnMut() -> bool) {
    support::mount::wait_for(what, support::mount::SETTLE, f)
}

/// The pid of the daemon serving `mountpoint` (the test support keeps its child private).
fn daemon_pid(mountpoint: &Path) -> i32 {
    let want = mountpoint.as_os_str().as_encoded_bytes();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if args.get(1) == Some(&&b"mount"[..]) && args.get(2) == Some(&want) {
            return pid;
        }
    }
    panic!("no daemon serves {}", mountpoint.display());
}

// ------------------------------------------------------------------------------ the tests

#[test]
fn metrics_tell_what_readers_and_the_hub_did() {
    let hub = MockHub::start(MockConfig { valid_tokens: vec![TOKEN.into()], ..Default::default() });
    let (repo, data) = repo();
    hub.add_repo(repo);
    let store = temp_dir("store");
    let m = Mounted::start_env(
        &hub.endpoint(),
        &store,
        &["--chunk-size", CHUNK_ARG, "--read-timeout", "4", "--metrics-addr", "127.0.0.1:0"],
        &[("HF_TOKEN", TOKEN)],
    );
    let addr = metrics_addr(&m);
    let health = get(&addr, "/healthz").unwrap();
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    wait_for("/readyz to answer 200", || get(&addr, "/readyz").unwrap().status == 200);
    assert_eq!(get(&addr, "/nothing").unwrap().status, 404);

    let s0 = scrape(&addr);
    for (family, kind) in [
        ("modelfs_read_bytes", "counter"),
        ("modelfs_fetches", "counter"),
        ("modelfs_fetch_duration_seconds", "histogram"),
        ("modelfs_fetched_bytes", "counter"),
        ("modelfs_retries", "counter"),
        ("modelfs_cache_bytes", "gauge"),
        ("modelfs_open_handles", "gauge"),
        ("modelfs_fuse_errors", "counter"),
        ("modelfs_file_verifications", "counter"),
        ("modelfs_build", "info"),
    ] {
        assert_eq!(s0.types.get(family).map(String::as_str), Some(kind), "{family}");
    }
    let delta = |s: &Scrape, series: &str| s.get(series) - s0.get(series);
    let network = "modelfs_read_bytes_total{source=\"network\"}";
    let store_bytes = "modelfs_read_bytes_total{source=\"store\"}";
    let fetched_ok = "modelfs_fetches_total{result=\"ok\"}";
    let fetched_err = "modelfs_fetches_total{result=\"error\"}";
    let count = "modelfs_fetch_duration_seconds_count";

    // Cold: every chunk fetched once; every byte read either waited for the network or found
    // its chunk already stored by read-ahead.
    let big = m.path(&format!("test-org/metrics/all/{BIG}"));
    assert_eq!(sha256_hex(&std::fs::read(&big).unwrap()), sha256_hex(&data[BIG]));
    let s1 = scrape(&addr);
    assert_eq!(delta(&s1, fetched_ok), 5.0, "one fetch per chunk");
    assert_eq!(delta(&s1, fetched_err), 0.0);
    assert_eq!(delta(&s1, count), 5.0, "histogram count == fetches");
    assert_eq!(delta(&s1, "modelfs_fetched_bytes_total"), BIG_LEN as f64);
    assert!(delta(&s1, network) > 0.0, "the first read waited for the Hub");
    assert_eq!(delta(&s1, network) + delta(&s1, store_bytes), BIG_LEN as f64);
    assert_eq!(delta(&s1, "modelfs_retries_total{reason=\"status_5xx\"}"), 0.0);
    wait_for("the handle to be released", || scrape(&addr).get("modelfs_open_handles") == 0.0);

    // Warm, with the page cache dropped: every byte from the store, nothing fetched. The
    // file is verified by now, so the kernel reads its data file itself (passthrough, where it
    // is on): no byte goes through the daemon.
    drop_page_cache(&big);
    assert_eq!(sha256_hex(&std::fs::read(&big).unwrap()), sha256_hex(&data[BIG]));
    let s2 = scrape(&addr);
    let through_daemon = if s2.get("modelfs_passthrough") == 1.0 {
        // Two: the open that dropped the page cache, and the read's.
        assert_eq!(
            s2.get("modelfs_passthrough_opens_total") - s1.get("modelfs_passthrough_opens_total"),
            2.0
        );
        0.0
    } else {
        BIG_LEN as f64
    };
    assert_eq!(s2.get(store_bytes) - s1.get(store_bytes), through_daemon);
    assert_eq!(s2.get(network), s1.get(network));
    assert_eq!(s2.get(fetched_ok), s1.get(fetched_ok));
    assert_eq!(s2.get(count), s1.get(count));

    // An open handle shows; a missing name is one ENOENT.
    let held = File::open(&big).unwrap();
    assert_eq!(scrape(&addr).get("modelfs_open_handles"), 1.0);
    let missing = std::fs::metadata(m.path("test-org/metrics/all/missing.bin")).unwrap_err();
    assert_eq!(errno(&missing), libc::ENOENT);
    let s3 = scrape(&addr);
    assert_eq!(
        s3.get("modelfs_fuse_errors_total{errno=\"ENOENT\"}")
            - s2.get("modelfs_fuse_errors_total{errno=\"ENOENT\"}"),
        1.0
    );
    assert_eq!(s3.get("modelfs_fuse_errors_total{errno=\"EIO\"}"), 0.0);
    drop(held);

    // Each fault costs one retry, counted under its reason, and the read still succeeds.
    for (path, fault, reason) in faults() {
        let series = format!("modelfs_retries_total{{reason=\"{reason}\"}}");
        let before = scrape(&addr);
        hub.inject(FaultRule {
            origin: None,
            path_contains: path.to_owned(),
            ranged_only: true,
            times: 1,
            fault,
        });
        let read = std::fs::read(m.path(&format!("test-org/metrics/all/{path}")))
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", m.log()));
        assert_eq!(read, data[path], "{path}");
        let after = scrape(&addr);
        assert_eq!(after.get(&series) - before.get(&series), 1.0, "{path}: {series}");
        let retries = |s: &Scrape| {
            s.samples
                .iter()
                .filter(|(k, _)| k.starts_with("modelfs_retries_total"))
                .map(|(_, v)| v)
                .sum::<f64>()
        };
        assert_eq!(retries(&after) - retries(&before), 1.0, "{path}: only one retry in all");
        assert_eq!(after.get(fetched_ok) - before.get(fetched_ok), 1.0, "{path}: one fetch");
        assert_eq!(after.get(count) - before.get(count), 1.0, "{path}");
    }

    // Wrong bytes from the Hub: the file fails its whole-file check once.
    hub.inject(FaultRule {
        origin: None,
        path_contains: WRONG.to_owned(),
        ranged_only: true,
        times: 1,
        fault: Fault::WrongBytes,
    });
    let _ = std::fs::read(m.path(&format!("test-org/metrics/all/{WRONG}")));
    let failed = "modelfs_file_verifications_total{result=\"failed\"}";
    let verified = "modelfs_file_verifications_total{result=\"verified\"}";
    wait_for("the failed verification", || delta(&scrape(&addr), failed) == 1.0);
    // The big file and the five fault files are complete and matched; so is the wrong one,
    // fetched again after its mismatch (one chunk: checked before it is served).
    let start = std::time::Instant::now();
    loop {
        // Said with the count and the daemon's log: a wrong count here is a race to see.
        let got = delta(&scrape(&addr), verified);
        if got == 7.0 {
            break;
        }
        assert!(
            start.elapsed() < support::mount::SETTLE,
            "{got} verified files, not seven:\n{}",
            m.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }

    // Nothing secret and nothing unbounded: no token, no URL, no path, known label names.
    let last = scrape(&addr);
    assert!(!last.text.contains(TOKEN), "the token leaked:\n{}", last.text);
    assert!(!m.log().contains(TOKEN), "the token is in the log");
    for labels in &last.labels {
        for (k, v) in labels {
            assert!(LABELS.contains(&k.as_str()), "label {k}");
            assert!(
                v.chars().all(|c| c.is_ascii_alphanumeric() || "._+".contains(c)),
                "label value {v:?}"
            );
        }
    }

    // Shutdown: with a file still open the daemon lingers (grace period) and says it is not
    // ready; once it is gone nothing answers.
    let held = File::open(&big).unwrap();
    let pid = nix::unistd::Pid::from_raw(daemon_pid(&m.mountpoint));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    wait_for("/readyz to answer 503", || get(&addr, "/readyz").is_ok_and(|a| a.status == 503));
    assert_eq!(get(&addr, "/healthz").map(|a| a.status).ok(), Some(200));
    drop(held);
    m.stop();
    match get(&addr, "/readyz") {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(a) => panic!("/readyz answered {} after the daemon stopped", a.status),
    }
}

#[test]
fn a_busy_metrics_address_fails_the_start_before_mounting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = temp_dir("busy");
    let mountpoint = dir.join("models");
    let out = Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .arg("mount")
        .arg(&mountpoint)
        .arg("--store")
        .arg(dir.join("store"))
        .args(["--endpoint", "http://127.0.0.1:9", "--metrics-addr", &addr])
        .env_remove("HF_TOKEN")
        .env("HF_HOME", dir.join("hf-home"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started anyway:\n{stderr}");
    assert!(stderr.contains(&format!("--metrics-addr {addr}")), "{stderr}");
    assert!(stderr.contains("Address already in use"), "{stderr}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(mountpoint.to_str().unwrap()), "mounted anyway");
}

/// A verified file is opened with FUSE passthrough: the kernel reads its data file, so its
/// bytes (by `read` and by `mmap`) are exact and no read reaches the daemon; `/metrics`, the
/// log and `modelfs status` say passthrough is on.
#[test]
fn verified_files_are_served_by_passthrough_without_the_daemon() {
    let data = bytes(77, 3 * CHUNK + 123);
    let hub = MockHub::with_repos(vec![MockRepo::new(
        "o/pt",
        vec![MockFile::lfs("w.bin", data.clone())],
    )]);
    let store = temp_dir("store");
    let m = Mounted::start(
        &hub.endpoint(),
        &store,
        &["--chunk-size", CHUNK_ARG, "--metrics-addr", "127.0.0.1:0"],
    );
    let addr = metrics_addr(&m);
    let file = m.path("o/pt/all/w.bin");
    // Opened before it is verified, and held: served through the daemon until closed.
    let early = File::open(&file).unwrap();
    assert_eq!(sha256_hex(&std::fs::read(&file).unwrap()), sha256_hex(&data));
    wait_for("verification", || {
        support::mount::getfattr(&file, "user.modelfs.status") == Ok("verified".into())
    });
    // The kernel refuses a passthrough open while a handle on the inode goes through the page
    // cache: this one is served the same way as the held one, not failed.
    let opens = scrape(&addr).get("modelfs_passthrough_opens_total");
    assert_eq!(sha256_hex(&std::fs::read(&file).unwrap()), sha256_hex(&data));
    let mut again = vec![0; data.len()];
    std::os::unix::fs::FileExt::read_exact_at(&early, &mut again, 0).unwrap();
    assert!(again == data);
    assert_eq!(scrape(&addr).get("modelfs_passthrough_opens_total"), opens);
    drop(early);
    wait_for("the held handle to be released", || scrape(&addr).get("modelfs_open_handles") == 0.0);
    let before = scrape(&addr);
    assert_eq!(before.get("modelfs_passthrough"), 1.0, "{}", m.log());
    let served = |s: &Scrape| {
        s.get("modelfs_read_bytes_total{source=\"store\"}")
            + s.get("modelfs_read_bytes_total{source=\"network\"}")
    };
    for _ in 0..2 {
        drop_page_cache(&file);
        assert_eq!(sha256_hex(&std::fs::read(&file).unwrap()), sha256_hex(&data));
        let f = File::open(&file).unwrap();
        // SAFETY: a read-only private mapping of a file nobody writes.
        let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
        assert!(map[..] == data[..], "mmap of a passthrough file");
    }
    let after = scrape(&addr);
    assert!(after.get("modelfs_passthrough_opens_total") >= 4.0, "{}", after.text);
    assert_eq!(served(&after), served(&before), "reads reached the daemon");
    assert!(m.log().contains("passthrough=on"), "{}", m.log());
    let status = Command::new(env!("CARGO_BIN_EXE_modelfs"))
        .args(["status", "--store"])
        .arg(&*store)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains(", FUSE passthrough on"), "{stdout}");
    m.stop();
}
