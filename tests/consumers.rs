//! What users point at a modelfs mount is inference code, so these tests run the real
//! consumers over a real mount and compare with the same files on disk: ONNX Runtime on an
//! external-data model through its quant view, gguf's memory-mapping reader, and safetensors
//! and tokenizers on the files of sentence-transformers/all-MiniLM-L6-v2
//! (tests/python/consumers.py does the loading and comparing; llama.cpp has its own script,
//! scripts/llama_cpp_check.sh, because llama-cpp-python builds llama.cpp from source, ~20
//! minutes on 2 cores).
//!
//! Each consumer runs three times over one store: cold (empty store, lazy fetch from the mock
//! Hub), then after a remount with the mock Hub stopped, once as if the network were down and
//! once with `--offline`. The stopped mock is the proof that the second and third runs fetched
//! nothing: any byte not in the store would be an `EIO` and the consumer would fail. After the
//! cold run every file's `user.modelfs.cached_bytes` is recorded against its size: what the
//! consumer's reads fetched (whole chunks, plus modelfs's read-ahead when it reads
//! sequentially), and so the saving of fetching lazily.
//!
//! The tests never skip: a missing Python package fails with a message to run
//! scripts/setup.sh.

mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::metrics::{metrics_addr, sample};
use support::mock_hub::{MockConfig, MockHub};
use support::mount::{temp_dir, Mounted};

/// One consumer script run loads two copies of a model of at most 87 MiB; a few seconds
/// normally. This only bounds a hang (a read stuck on the mount), so the test reports it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(180);

/// The warm runs have no Hub; a read that did need it fails after this instead of 60 s.
const WARM_READ_TIMEOUT: &str = "5";

/// The background sha256 check of a file read in full, bounded like other waits in the suite.
const VERIFY_WAIT: Duration = Duration::from_secs(30);

/// Run `python3 consumers.py ARGS` to completion; panic with its output (and `context`, e.g.
/// the daemon's log) when it fails or hangs.
fn python(args: &[&str], context: impl Fn() -> String) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(support::python::script("consumers.py")).args(args);
    support::python::run(cmd, &format!("consumers.py {args:?}"), SCRIPT_TIMEOUT, context)
}

/// `name version` of every Python package the checks use; fails when one is missing.
fn versions() -> BTreeMap<String, String> {
    python(&["versions"], String::new)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect()
}

/// One consumer run: `consumers.py CHECK --mounted MOUNT/<mounted> --disk HUB_DIR/<repo>/<disk>`.
struct Check {
    check: &'static str,
    /// The PyPI package that does the reading, for the report.
    package: &'static str,
    /// Under the mount root: `<org>/<repo>/<view>/<path>`.
    mounted: &'static str,
    /// Under the repo's fixture directory.
    disk: &'static str,
    /// Exactly the files (repo paths) the consumer reads, all of each of them: every other file
    /// of the repo must stay unfetched.
    reads: &'static [&'static str],
}

struct Case {
    /// `consumers.py fixtures --only` value.
    fixture: &'static str,
    repo: &'static str,
    checks: &'static [Check],
    /// The load plan format its model file has (`modelfs_load_plans_total{format}`).
    plan: &'static str,
}

/// Every file of a fixture repo (symlinks followed, as the mock Hub does), as repo paths.
fn repo_files(dir: &Path, prefix: &str, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if std::fs::metadata(&path).unwrap().is_dir() {
            repo_files(&path, &rel, out);
        } else {
            out.push(rel);
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Cached {
    status: String,
    cached: u64,
    size: u64,
}

fn xattr_str(path: &Path, name: &str) -> String {
    let v = xattr::get(path, format!("user.modelfs.{name}"))
        .unwrap_or_else(|e| panic!("getxattr {name} of {}: {e}", path.display()))
        .unwrap_or_else(|| panic!("{} has no user.modelfs.{name}", path.display()));
    String::from_utf8(v).unwrap()
}

/// What the store holds of every file of the repo, read through its `all` view.
fn cached(m: &Mounted, repo: &str, files: &[String]) -> BTreeMap<String, Cached> {
    files
        .iter()
        .map(|f| {
            let p = m.path(&format!("{repo}/all/{f}"));
            let c = Cached {
                status: xattr_str(&p, "status"),
                cached: xattr_str(&p, "cached_bytes").parse().unwrap(),
                size: xattr_str(&p, "size").parse().unwrap(),
            };
            (f.clone(), c)
        })
        .collect()
}

/// `probe FILE after PHASE: CACHED/SIZE` lines the script prints between the phases of a check.
fn probes(out: &str) -> Vec<(String, u64, u64)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("probe "))
        .filter_map(|l| {
            let (what, figures) = l.rsplit_once(": ")?;
            let (c, s) = figures.split_once('/')?;
            Some((what.to_owned(), c.parse().ok()?, s.parse().ok()?))
        })
        .collect()
}

/// Bytes with thousands separators: exact, and readable at a glance.
fn bytes_str(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn row(report: &mut String, who: &str, what: &str, read: u64, size: u64, note: &str) {
    let pct = if size == 0 { 100.0 } else { 100.0 * read as f64 / size as f64 };
    let line = format!(
        "  {who:<12} {what:<42} {:>12} of {:>12} B {pct:>6.1}%  {note}",
        bytes_str(read),
        bytes_str(size)
    );
    writeln!(report, "{}", line.trim_end()).unwrap();
}

fn run_checks(m: &Mounted, repo: &str, checks: &[Check], hub_dir: &Path, run: &str) -> Vec<String> {
    checks
        .iter()
        .map(|c| {
            let mounted = m.path(c.mounted);
            let disk = hub_dir.join(repo).join(c.disk);
            let out = python(
                &[
                    c.check,
                    "--mounted",
                    mounted.to_str().unwrap(),
                    "--disk",
                    disk.to_str().unwrap(),
                ],
                || format!("modelfs log ({run}):\n{}", m.log()),
            );
            print!("[{} {run}] {out}", c.check);
            out
        })
        .collect()
}

/// A cold run on 1 MiB chunks, so that these small models span many: the consumer loads the
/// same tensors as from disk, a load plan starts for its model file, and the bytes it waited
/// a whole request for (fetched on demand, not ahead by a plan or read-ahead) are few.
fn cold_with_load_plans(case: &Case, hub: &MockHub, hub_dir: &Path) {
    let store = temp_dir("store-plans");
    let m = Mounted::start(
        &hub.endpoint(),
        &store,
        &["--chunk-size", "1M", "--metrics-addr", "127.0.0.1:0"],
    );
    run_checks(&m, case.repo, case.checks, hub_dir, "cold, 1 MiB chunks");
    let addr = metrics_addr(&m);
    let plans = sample(&addr, &format!("modelfs_load_plans_total{{format=\"{}\"}}", case.plan));
    let plan = sample(&addr, "modelfs_plan_fetched_bytes_total");
    let demand = sample(&addr, "modelfs_demand_fetched_bytes_total");
    let all = sample(&addr, "modelfs_fetched_bytes_total");
    println!(
        "== {}: cold, 1 MiB chunks: {plans} {} plan(s); of {} fetched, {} by plans, {} on demand",
        case.repo,
        case.plan,
        bytes_str(all as u64),
        bytes_str(plan as u64),
        bytes_str(demand as u64)
    );
    assert!(plans >= 1.0, "no {} load plan started:\n{}", case.plan, m.log());
    assert!(demand < all / 2.0, "most bytes were fetched on demand:\n{}", m.log());
    assert!(m.stop().success());
    let _ = std::fs::remove_dir_all(&store);
}

fn consumers_read_through_the_mount(case: Case) {
    let versions = versions();
    let dir = temp_dir("consumers");
    let hub_dir = dir.join("hub");
    python(&["fixtures", "--only", case.fixture, "--out", hub_dir.to_str().unwrap()], String::new);
    let hub = MockHub::start(MockConfig::default());
    assert_eq!(hub.load_dir(&hub_dir).unwrap(), vec![case.repo.to_owned()]);
    let mut files = Vec::new();
    repo_files(&hub_dir.join(case.repo), "", &mut files);
    cold_with_load_plans(&case, &hub, &hub_dir);
    let store = temp_dir("store");

    // Cold: an empty store, everything the consumer touches is fetched on first access.
    let m = Mounted::start(&hub.endpoint(), &store, &[]);
    let nothing = cached(&m, case.repo, &files);
    assert!(nothing.values().all(|c| c.cached == 0), "store not empty: {nothing:?}");
    let mut report = String::new();
    let mut after = nothing.clone();
    for check in case.checks {
        let before = after;
        let out = run_checks(&m, case.repo, std::slice::from_ref(check), &hub_dir, "cold");
        let out = &out[0];
        after = cached(&m, case.repo, &files);
        // The consumer read its files whole, and nothing else of the repo.
        for (f, c) in &after {
            let want = if check.reads.contains(&f.as_str()) { c.size } else { before[f].cached };
            assert_eq!(c.cached, want, "{}: cached bytes of {f} after the cold run", check.check);
        }
        // Half-way through (header only), whole chunks were still unfetched, read-ahead
        // included (the script waits for the figure to settle before printing it).
        for (what, c, s) in probes(out) {
            assert!(c > 0 && c < s, "{}: probe {what} read {c} of {s} bytes", check.check);
            row(&mut report, check.check, &what, c, s, "");
        }
        let version = &versions[check.package];
        for f in check.reads {
            let c = &after[*f];
            row(
                &mut report,
                check.check,
                f,
                c.cached,
                c.size,
                &format!("{} {version}", check.package),
            );
        }
    }
    assert!(
        hub.requests().iter().any(|r| r.range.is_some()),
        "the cold run fetched no range: {:?}",
        hub.requests()
    );
    // Files read whole are hashed in the background and must pass.
    let start = Instant::now();
    while cached(&m, case.repo, &files).values().any(|c| c.status == "complete") {
        assert!(start.elapsed() < VERIFY_WAIT, "the sha256 check did not finish:\n{}", m.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let cold = cached(&m, case.repo, &files);
    for (f, c) in &cold {
        let want = if c.cached == 0 {
            "missing"
        } else if c.cached == c.size {
            "verified"
        } else {
            "partial"
        };
        assert_eq!(c.status, want, "status of {f}");
    }
    let (read, total): (u64, u64) =
        cold.values().fold((0, 0), |(r, t), c| (r + c.cached, t + c.size));
    for (f, c) in cold.iter().filter(|(_, c)| c.cached == 0) {
        row(&mut report, "-", f, c.cached, c.size, "never read");
    }
    row(&mut report, "whole repo", case.repo, read, total, "");
    println!(
        "== {}: cold run, default 8 MiB chunks; bytes in the store (fetched) vs file size; \
         every file read in full is verified\n{report}",
        case.repo
    );
    assert!(m.stop().success());

    // Warm: the Hub is gone. Same consumers, same answers, not one byte more in the store.
    hub.stop();
    let requests = hub.requests().len();
    for args in [vec!["--read-timeout", WARM_READ_TIMEOUT], vec!["--offline"]] {
        let run = if args[0] == "--offline" { "offline" } else { "hub-down" };
        let m = Mounted::start(&hub.endpoint(), &store, &args);
        for out in run_checks(&m, case.repo, case.checks, &hub_dir, run) {
            for (what, c, s) in probes(&out) {
                assert_eq!(c, s, "{run}: probe {what}: a warm store holds the whole file");
            }
        }
        assert_eq!(cached(&m, case.repo, &files), cold, "{run}: the store changed");
        assert!(m.stop().success());
    }
    assert_eq!(hub.requests().len(), requests, "a stopped mock Hub answered");
    // Passed: the ~100 MiB of fixtures and store are not worth keeping for inspection.
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&store);
}

#[test]
fn onnx_runtime_runs_an_external_data_model_from_its_quant_view() {
    consumers_read_through_the_mount(Case {
        fixture: "onnx",
        repo: "onnx-community/tiny-q4f16",
        checks: &[Check {
            check: "onnx",
            package: "onnxruntime",
            mounted: "onnx-community/tiny-q4f16/q4f16/onnx/model_q4f16.onnx",
            disk: "onnx/model_q4f16.onnx",
            reads: &["onnx/model_q4f16.onnx", "onnx/model_q4f16.onnx_data"],
        }],
        plan: "onnx",
    });
}

#[test]
fn gguf_reader_maps_a_gguf_file_from_its_quant_view() {
    consumers_read_through_the_mount(Case {
        fixture: "gguf",
        repo: "bartowski/Tiny-GGUF",
        checks: &[Check {
            check: "gguf",
            package: "gguf",
            mounted: "bartowski/Tiny-GGUF/Q8_0/Tiny-Q8_0.gguf",
            disk: "Tiny-Q8_0.gguf",
            reads: &["Tiny-Q8_0.gguf"],
        }],
        plan: "gguf",
    });
}

#[test]
fn tokenizers_and_safetensors_load_all_minilm_l6_v2() {
    consumers_read_through_the_mount(Case {
        fixture: "minilm",
        repo: "sentence-transformers/all-MiniLM-L6-v2",
        checks: &[
            Check {
                check: "tokenizers",
                package: "tokenizers",
                mounted: "sentence-transformers/all-MiniLM-L6-v2/all/tokenizer.json",
                disk: "tokenizer.json",
                reads: &["tokenizer.json"],
            },
            Check {
                check: "safetensors",
                package: "safetensors",
                mounted: "sentence-transformers/all-MiniLM-L6-v2/all/model.safetensors",
                disk: "model.safetensors",
                reads: &["model.safetensors"],
            },
        ],
        plan: "safetensors",
    });
}
