//! The `.hf-cache` view through a real mount: huggingface_hub and transformers, run with
//! `HF_HUB_CACHE=<mount>/.hf-cache HF_HUB_OFFLINE=1`, load sentence-transformers/all-MiniLM-L6-v2
//! (the real files, served by the mock Hub) by its repo id, with no download step, and get
//! exactly the bytes and the tokenizer output of the same files on disk
//! (tests/python/hf_cache.py does the loading and comparing, and fails on any attempt to write
//! under the view). Run cold (empty store, lazy fetch from the mock Hub) and warm (the mock
//! Hub stopped, `--offline`: any byte not in the store would fail the run).
//!
//! The tests never skip: a missing Python package fails with a message to run
//! scripts/setup.sh.

mod support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{errno, temp_dir, wait_for, Mounted};

/// Loading the model twice (by id and from disk) and reading its 87 MiB once; seconds
/// normally. This only bounds a hang (a read stuck on the mount), so the test reports it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

const MINILM: &str = "sentence-transformers/all-MiniLM-L6-v2";
const MINILM_FOLDER: &str = ".hf-cache/models--sentence-transformers--all-MiniLM-L6-v2";

/// Run `python3 tests/python/SCRIPT ARGS` with `env` to completion; panic with its output
/// (and `context`, e.g. the daemon's log) when it fails or hangs.
fn python(
    name: &str,
    args: &[&str],
    env: &[(&str, &Path)],
    context: impl Fn() -> String,
) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg(support::python::script(name))
        .args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("TRANSFORMERS_CACHE")
        .env("HF_HUB_DISABLE_TELEMETRY", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    support::python::run(cmd, &format!("{name} {args:?}"), SCRIPT_TIMEOUT, context)
}

/// `hf_cache.py check` as a user runs a program over the mount: the view as the cache,
/// offline, and a home of its own (no token, no other cache).
fn check(m: &Mounted, commit: &str, disk: &Path, home: &Path, run: &str) {
    let cache = m.path(".hf-cache");
    let env =
        [("HF_HUB_CACHE", cache.as_path()), ("HF_HUB_OFFLINE", Path::new("1")), ("HF_HOME", home)];
    let args = ["check", "--repo", MINILM, "--commit", commit, "--disk", disk.to_str().unwrap()];
    let out = python("hf_cache.py", &args, &env, || format!("modelfs log ({run}):\n{}", m.log()));
    print!("[{run}] {out}");
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Everything that would change the view is refused with EROFS, and absent names are ENOENT.
fn read_only(m: &Mounted, commit: &str) {
    let folder = m.path(MINILM_FOLDER);
    let snapshot = folder.join("snapshots").join(commit);
    let erofs = |what: &str, r: std::io::Result<()>| match r {
        Err(e) if errno(&e) == libc::EROFS => {}
        other => panic!("{what}: {other:?}, expected EROFS"),
    };
    erofs("write refs/main", std::fs::write(folder.join("refs/main"), "x"));
    erofs("mkdir .locks", std::fs::create_dir(m.path(".hf-cache/.locks")));
    erofs("mkdir blobs", std::fs::create_dir(folder.join("blobs")));
    erofs("create in a snapshot", std::fs::write(snapshot.join("new.json"), "{}"));
    erofs("write a snapshot file", std::fs::write(snapshot.join("config.json"), "{}"));
    erofs("symlink in a snapshot", std::os::unix::fs::symlink("../x", snapshot.join("link")));
    erofs("remove a snapshot file", std::fs::remove_file(snapshot.join("config.json")));
    for absent in [
        folder.join("blobs"),
        folder.join(".no_exist"),
        folder.join("refs/no-such-branch"),
        folder.join("snapshots").join("0".repeat(40)),
        snapshot.join("not-there.json"),
        m.path(".hf-cache/datasets--sentence-transformers--all-MiniLM-L6-v2"),
        m.path(".hf-cache/models--sentence-transformers--no-such-model"),
    ] {
        match std::fs::metadata(&absent) {
            Err(e) if errno(&e) == libc::ENOENT => {}
            other => panic!("{}: {other:?}, expected ENOENT\n{}", absent.display(), m.log()),
        }
    }
    let main = std::fs::metadata(folder.join("refs/main")).unwrap();
    assert!(main.is_file() && main.len() == 40, "refs/main: {main:?}");
}

#[test]
fn huggingface_hub_and_transformers_load_by_repo_id_from_the_cache_view() {
    let versions = python("hf_cache.py", &["versions"], &[], String::new);
    print!("{versions}");
    let dir = temp_dir("hf-cache");
    let hub_dir = dir.join("hub");
    let out = hub_dir.to_str().unwrap();
    python("consumers.py", &["fixtures", "--only", "minilm", "--out", out], &[], String::new);
    let hub = MockHub::start(MockConfig::default());
    assert_eq!(hub.load_dir(&hub_dir).unwrap(), vec![MINILM.to_owned()]);
    let mut commit = String::new();
    hub.update_repo(MINILM, |r| commit = r.head());
    let disk = hub_dir.join(MINILM);
    let store = temp_dir("store");

    // Cold: an empty store. The view is in the root listing, and knows no repo yet.
    let m = Mounted::start(&hub.endpoint(), &store, &[]);
    assert!(names(&m.mountpoint).contains(&".hf-cache".to_owned()), "{}", m.log());
    assert_eq!(names(&m.path(".hf-cache")), Vec::<String>::new());
    check(&m, &commit, &disk, &dir.join("home-cold"), "cold");
    let folder = m.path(MINILM_FOLDER);
    assert_eq!(names(&m.path(".hf-cache")), ["models--sentence-transformers--all-MiniLM-L6-v2"]);
    assert_eq!(names(&folder), ["refs", "snapshots"]);
    assert_eq!(names(&folder.join("refs")), ["main"]);
    assert_eq!(names(&folder.join("snapshots")), [commit.clone()]);
    read_only(&m, &commit);
    assert!(m.stop().success());

    // Warm: the Hub is gone and the mount offline; the same programs find the same model.
    hub.stop();
    let requests = hub.requests().len();
    let m = Mounted::start(&hub.endpoint(), &store, &["--offline"]);
    assert_eq!(names(&m.path(".hf-cache")), ["models--sentence-transformers--all-MiniLM-L6-v2"]);
    check(&m, &commit, &disk, &dir.join("home-warm"), "warm, offline");
    read_only(&m, &commit);
    assert!(m.stop().success());
    assert_eq!(hub.requests().len(), requests, "a stopped mock Hub answered");
    drop(hub);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `refs/main` is the commit the branch resolves to now: after the branch moves (and the
/// revalidation interval), a new read shows the new commit, never stale pages of the old one;
/// a handle open before keeps reading what it opened.
#[test]
fn a_ref_follows_its_branch_and_is_never_stale() {
    let repo = MockRepo::new("o/moving", vec![MockFile::git("config.json", b"{\"v\":1}".to_vec())]);
    let first = repo.head();
    let hub = MockHub::with_repos(vec![repo]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--revalidate", "1"]);
    let main = m.path(".hf-cache/models--o--moving/refs/main");
    assert_eq!(std::fs::read_to_string(&main).unwrap(), first);
    let open = std::fs::File::open(&main).unwrap();
    let mut second = String::new();
    hub.update_repo("o/moving", |r| {
        second = r.commit(vec![MockFile::git("config.json", b"{\"v\":2}".to_vec())])
    });
    assert_ne!(first, second);
    wait_for("refs/main shows the new commit", Duration::from_secs(10), || {
        std::fs::read_to_string(&main).unwrap() == second
    });
    let snapshots = m.path(".hf-cache/models--o--moving/snapshots");
    let config = |commit: &str| std::fs::read(snapshots.join(commit).join("config.json")).unwrap();
    assert_eq!(config(&second), b"{\"v\":2}");
    assert_eq!(config(&first), b"{\"v\":1}");
    let mut buf = [0u8; 40];
    open.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(std::str::from_utf8(&buf).unwrap(), first, "an open ref changed under its reader");
    assert_eq!(names(&snapshots), {
        let mut both = vec![first.clone(), second.clone()];
        both.sort();
        both
    });
    drop(open);
    assert!(m.stop().success());
}
