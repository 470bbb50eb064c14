//! What a new user trips over, tried as one would: the real binary, the mock Hub, real FUSE
//! mounts. A second mount on a live mountpoint, a daemon that must unmount nothing but its
//! own mount, a Hub that does not answer, messages that must say the right thing, progress
//! without a terminal, help text, files opened concurrently while `gc` runs in another
//! process, a damaged store, and Python's `open()` asking a file whether it is a terminal.

mod support;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use support::mock_hub::{MockFile, MockHub, MockRepo};
use support::mount::{bytes, sha256_hex, temp_dir, wait_for, Mounted, SETTLE};

/// Small chunks: multi-chunk files stay small.
const CHUNK: usize = 64 << 10;
const CHUNK_ARG: &str = "65536";

fn hub_with(repos: Vec<MockRepo>) -> MockHub {
    MockHub::with_repos(repos)
}

/// `modelfs ARGS...` with no token, no user configuration and no store in reach but what the
/// test says.
fn modelfs(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelfs"));
    cmd.args(args)
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        .env_remove("MODELFS_STORE")
        .env_remove("NOTIFY_SOCKET")
        .env("RUST_LOG", "modelfs=info")
        .stdin(Stdio::null());
    cmd
}

fn run(args: &[&str]) -> (Output, String, String) {
    let out = modelfs(args).output().expect("run modelfs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

fn xattr(path: &Path, name: &str) -> Result<String, i32> {
    support::mount::getfattr(path, &format!("user.modelfs.{name}"))
}

/// A port on 127.0.0.1 where nothing listens: connections are refused.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn small_repo(id: &str) -> (MockRepo, Vec<u8>) {
    let data = bytes(7, 3 * CHUNK + 11);
    let repo = MockRepo::new(
        id,
        vec![MockFile::lfs("w.bin", data.clone()), MockFile::git("config.json", b"{}".to_vec())],
    );
    (repo, data)
}

#[test]
fn a_second_mount_on_a_live_mountpoint_is_refused_and_the_first_serves_on() {
    let (repo, data) = small_repo("o/two");
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let first = Mounted::start(&hub.endpoint(), &store, &[]);
    let other_store = temp_dir("store2");
    let mp = first.mountpoint.to_str().unwrap().to_string();
    let (out, _, stderr) = run(&[
        "mount",
        &mp,
        "--store",
        other_store.to_str().unwrap(),
        "--endpoint",
        &hub.endpoint(),
    ]);
    assert_eq!(out.status.code(), Some(1), "the second mount did not fail:\n{stderr}");
    let said = format!("{mp} is already mounted by modelfs (pid {}", first.pid());
    assert!(stderr.contains(&said), "expected {said:?} in:\n{stderr}");
    assert_eq!(stderr.matches("already mounted").count(), 1, "said more than once:\n{stderr}");
    // Nothing was stacked, and the first mount is untouched by the second's exit.
    let stacked = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(mp.as_str()))
        .count();
    assert_eq!(stacked, 1, "mounts at {mp}");
    assert_eq!(std::fs::read(first.path("o/two/all/w.bin")).unwrap(), data);
    let log = first.log();
    assert!(first.stop().success());
    assert!(!log.contains("Failed to umount"), "{log}");
}

/// A mount on top of another mount (a Kubernetes `emptyDir`, a bind mount): stopping the
/// daemon unmounts its own mount and leaves the one underneath. fuser's own unmount, by path,
/// took the mount underneath too (after ours was detached, the path showed that one).
#[test]
fn stopping_a_mount_leaves_the_mount_it_sits_on_and_logs_no_unmount_failure() {
    let (repo, data) = small_repo("o/under");
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let dir = temp_dir("mnt");
    let mp = dir.join("models");
    std::fs::create_dir_all(&mp).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &mp,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    std::fs::write(mp.join("underneath"), b"still here").unwrap();
    let m = Mounted::start_in(dir, &hub.endpoint(), &store, &[], &[]);
    assert_eq!(std::fs::read(m.path("o/under/all/w.bin")).unwrap(), data);
    let mountpoint = m.mountpoint.clone();
    let (status, dir) = m.stop_keeping_dir();
    assert!(status.success());
    let log = std::fs::read_to_string(dir.join("modelfs.log")).unwrap_or_default();
    let underneath = std::fs::read(mountpoint.join("underneath"));
    let _ = nix::mount::umount2(&mountpoint, nix::mount::MntFlags::MNT_DETACH);
    assert_eq!(
        underneath.ok().as_deref(),
        Some(&b"still here"[..]),
        "the mount underneath went with ours:\n{log}"
    );
    assert!(!log.contains("Failed to umount") && !log.contains("Unmount failed"), "{log}");
}

/// Every message a user met that said the wrong thing, as it reads now.
#[test]
fn messages_say_what_is_wrong() {
    let dir = temp_dir("msgs");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let f = file.to_str().unwrap();
    let store = dir.join("store");
    let s = store.to_str().unwrap();
    let mp = dir.join("mp");
    let m = mp.to_str().unwrap();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec!["mount", f, "--store", s], format!("mountpoint {f} is not a directory")),
        (
            vec!["mount", m, "--store", f],
            format!("store at {f} cannot be opened: not a directory"),
        ),
        (vec!["status", "--store", f], format!("store {f} is not a directory (see --store)")),
        (
            vec!["pull", "o/r", "--store", s, "--endpoint", "localhost:8080"],
            "endpoint \"localhost:8080\" is not an http(s) URL (did you mean http://localhost:8080?)"
                .into(),
        ),
        (
            vec!["mount", m, "--store", s, "--endpoint", "localhost:8080"],
            "--endpoint \"localhost:8080\" is not an http(s) URL (did you mean http://localhost:8080?)"
                .into(),
        ),
        (vec!["unmount", m], format!("{m} is not mounted")),
    ];
    for (args, want) in cases {
        if args[0] == "unmount" {
            std::fs::create_dir_all(&mp).unwrap();
        }
        let (out, _, stderr) = run(&args);
        assert_eq!(out.status.code(), Some(1), "modelfs {args:?}:\n{stderr}");
        assert!(stderr.contains(&want), "modelfs {args:?}: expected {want:?} in:\n{stderr}");
        assert_eq!(stderr.matches(want.as_str()).count(), 1, "said twice: {stderr}");
        assert!(
            !stderr.contains("os error 17") && !stderr.contains("Invalid argument"),
            "{stderr}"
        );
    }
}

/// The status line says which store was read, how, and what it takes on disk.
#[test]
fn status_names_the_store_and_its_disk_use() {
    let (repo, _) = small_repo("o/st");
    let hub = hub_with(vec![repo]);
    let dir = temp_dir("st");
    let store = dir.join("store");
    let s = store.to_str().unwrap();
    let (out, _, stderr) = run(&["pull", "o/st", "--store", s, "--endpoint", &hub.endpoint()]);
    assert!(out.status.success(), "{stderr}");
    let (out, stdout, _) = run(&["status", "--store", s]);
    assert!(out.status.success());
    let last = stdout.lines().last().unwrap();
    assert!(last.starts_with(&format!("store {s} (from --store): ")), "{last}");
    assert!(last.contains(" cached in 1 repo, ") && last.ends_with(" on disk"), "{last}");
}

/// A Hub that refuses connections is said within moments, costs one read timeout for the
/// whole pull (not one for the resolution and another for the fetch), and the last line says
/// what failed.
#[test]
fn a_dead_hub_is_said_at_once_and_costs_one_budget() {
    let store = temp_dir("store");
    let endpoint = dead_endpoint();
    let started = Instant::now();
    let mut child = modelfs(&[
        "pull",
        "o/r",
        "--store",
        store.to_str().unwrap(),
        "--endpoint",
        &endpoint,
        "--read-timeout",
        "4",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut first_word = None;
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if first_word.is_none() && line.contains("the Hub does not answer") {
            first_word = Some(started.elapsed());
        }
        lines.push(line);
    }
    let status = child.wait().unwrap();
    let elapsed = started.elapsed();
    let text = lines.join("\n");
    assert_eq!(status.code(), Some(1), "{text}");
    let said = first_word.unwrap_or_else(|| panic!("never said the Hub does not answer:\n{text}"));
    assert!(said < Duration::from_secs(2), "said after {said:?}:\n{text}");
    // One 4 s budget, not two: the pull used to spend one on the resolution and one on each
    // file.
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}:\n{text}");
    let last = lines.last().unwrap();
    assert!(
        last.contains(&format!("the Hub at {endpoint}/ does not answer (")),
        "the last line does not say what failed: {last}"
    );
}

/// With the Hub refusing connections, a lookup whose branch is due for revalidation answers
/// from the last known commit at once (it waited out the whole read timeout before), the log
/// says at start that the Hub does not answer, and two reads of files that are not stored
/// share one read timeout.
#[test]
fn an_unreachable_hub_stalls_no_lookup_and_reads_share_one_budget() {
    let (repo, data) = small_repo("o/down");
    let repo = {
        let mut repo = repo;
        repo.commit(vec![
            MockFile::lfs("w.bin", data.clone()),
            MockFile::git("config.json", b"{}".to_vec()),
            MockFile::lfs("a.bin", bytes(8, 2 * CHUNK)),
            MockFile::lfs("b.bin", bytes(9, 2 * CHUNK)),
        ]);
        repo
    };
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let s = store.to_str().unwrap();
    let (out, _, stderr) =
        run(&["pull", "o/down", "--include", "w.bin", "--store", s, "--endpoint", &hub.endpoint()]);
    assert!(out.status.success(), "{stderr}");
    let endpoint = hub.endpoint();
    hub.stop();
    let m = Mounted::start(&endpoint, &store, &["--revalidate", "0", "--read-timeout", "10"]);
    wait_for("the start probe's verdict", SETTLE, || {
        m.log().contains("the Hub does not answer at start")
    });
    for _ in 0..3 {
        let t = Instant::now();
        let meta = std::fs::metadata(m.path("o/down/all/w.bin")).unwrap();
        assert_eq!(meta.len(), data.len() as u64);
        assert!(t.elapsed() < Duration::from_secs(3), "stat took {:?}:\n{}", t.elapsed(), m.log());
    }
    assert_eq!(std::fs::read(m.path("o/down/all/w.bin")).unwrap(), data);
    let t = Instant::now();
    for name in ["a.bin", "b.bin"] {
        let err = std::fs::read(m.path(&format!("o/down/all/{name}"))).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{name}: {err}");
    }
    assert!(t.elapsed() < Duration::from_secs(14), "two reads took {:?}", t.elapsed());
    let log = m.log();
    assert!(log.contains("a.bin in o/down@"), "the read error names no file:\n{log}");
    m.stop();
}

/// Without a terminal, a long file is not a long silence: a progress line every few seconds.
/// A pull whose filters match nothing fails and says so.
#[test]
fn pull_without_a_terminal_prints_progress_lines_and_refuses_an_empty_selection() {
    let data = bytes(21, 16 * CHUNK);
    let hub = hub_with(vec![MockRepo::new("o/slow", vec![MockFile::lfs("w.bin", data.clone())])]);
    hub.slow_ranges_of(&data, Duration::from_millis(450));
    let store = temp_dir("store");
    let s = store.to_str().unwrap();
    let endpoint = hub.endpoint();
    let args = ["pull", "o/slow", "--store", s, "--endpoint", &endpoint, "--chunk-size", CHUNK_ARG];
    let (out, _, stderr) = run(&[&args[..], &["--include", "*.nothing"]].concat());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no file matches --include \"*.nothing\"; nothing to pull"),
        "{stderr}"
    );

    let all = [&args[..], &["--max-connections", "1"]].concat();
    let (out, _, stderr) = run(&all);
    assert!(out.status.success(), "{stderr}");
    let progress =
        stderr.lines().position(|l| l.starts_with("pulling   ") && l.contains(" of 1.0 MiB ("));
    let verified = stderr.lines().position(|l| l.starts_with("verified  w.bin"));
    match (progress, verified) {
        (Some(p), Some(v)) => assert!(p < v, "{stderr}"),
        _ => panic!("no progress line before the file was done:\n{stderr}"),
    }
}

#[test]
fn help_names_the_environment_and_the_same_values_everywhere() {
    let (_, top, _) = run(&["--help"]);
    for var in ["HF_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "HF_ENDPOINT", "HF_HUB_OFFLINE"] {
        assert!(top.contains(var), "--help does not mention {var}:\n{top}");
    }
    for command in ["pull", "status", "mount"] {
        let (_, help, _) = run(&[command, "--help"]);
        assert!(help.contains("--store <DIR>"), "{command}: {help}");
        assert!(help.contains("the config file's `store`"), "{command}: {help}");
        if command != "status" {
            assert!(help.contains("--endpoint <URL>"), "{command}: {help}");
            assert!(help.contains("HF_TOKEN"), "{command}: {help}");
        }
    }
    let (_, unmount, _) = run(&["unmount", "--help"]);
    assert!(unmount.contains("Where the mount is"), "{unmount}");
}

/// Files opened by eight threads at once are all published as open before `open` returns: a
/// `gc` in another process, run while they are held, evicts none of them, round after round,
/// and they still read exactly with the Hub gone.
#[test]
fn concurrently_opened_files_survive_gc_in_another_process() {
    const FILES: usize = 8;
    let files: Vec<(String, Vec<u8>)> =
        (0..FILES).map(|i| (format!("f{i}.bin"), bytes(40 + i as u64, 2 * CHUNK + i))).collect();
    let hub = hub_with(vec![MockRepo::new(
        "o/open",
        files.iter().map(|(p, d)| MockFile::lfs(p, d.clone())).collect(),
    )]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    let path = |p: &str| m.path(&format!("o/open/all/{p}"));
    for (p, d) in &files {
        assert_eq!(std::fs::read(path(p)).unwrap(), *d);
    }
    let s = store.to_str().unwrap();
    let cached = |p: &str| xattr(&path(p), "cached_bytes").unwrap().parse::<usize>().unwrap();
    let open_all = || -> Vec<File> {
        let barrier = Arc::new(Barrier::new(FILES));
        let handles: Vec<_> = files
            .iter()
            .map(|(p, _)| {
                let (barrier, p) = (barrier.clone(), path(p));
                std::thread::spawn(move || {
                    barrier.wait();
                    File::open(p).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    };
    for round in 0..10 {
        let open = open_all();
        let (out, stdout, stderr) = run(&["gc", "--max-cache-size", "1", "--store", s]);
        assert!(out.status.success(), "{stderr}");
        for (p, d) in &files {
            assert_eq!(cached(p), d.len(), "round {round}: {p} evicted while open:\n{stdout}");
        }
        assert!(stdout.contains(&format!("kept {FILES} files open")), "round {round}: {stdout}");
        drop(open);
    }
    let open = open_all();
    hub.stop();
    run(&["gc", "--max-cache-size", "1", "--store", s]);
    for (f, (p, d)) in open.iter().zip(&files) {
        let mut got = vec![0; d.len()];
        f.read_exact_at(&mut got, 0).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(got == *d, "{p} read wrong");
    }
    drop(open);
    // Closed, they go (the kernel sends the releases a moment after close returns).
    wait_for("gc to evict the closed files", SETTLE, || {
        run(&["gc", "--max-cache-size", "1", "--store", s]);
        files.iter().all(|(p, _)| cached(p) == 0)
    });
    assert!(m.stop().success());
}

/// Python's `open()` asks every file whether it is a terminal (`TCGETS`): the answer is
/// ENOTTY, as any regular file gives it, without a warning in the log.
#[test]
fn ioctls_are_not_a_typewriter_quietly() {
    let (repo, data) = small_repo("o/py");
    let hub = hub_with(vec![repo]);
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &[]);
    let file = m.path("o/py/all/w.bin");
    let script = "import errno, fcntl, hashlib, sys, termios\n\
                  f = open(sys.argv[1], 'rb')\n\
                  print(hashlib.sha256(f.read()).hexdigest())\n\
                  try:\n    fcntl.ioctl(f.fileno(), termios.TCGETS, bytes(64))\n    print('tty')\n\
                  except OSError as e:\n    print(errno.errorcode[e.errno])\n";
    let out = Command::new("python3").arg("-c").arg(script).arg(&file).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout, format!("{}\nENOTTY\n", sha256_hex(&data)));
    let log = m.log();
    assert!(!log.contains("Not Implemented") && !log.contains("ioctl"), "{log}");
    m.stop();
}

/// A chunk whose bytes rot on disk is found by `verify`, which fails (a cron job can tell);
/// an index whose B-tree pages are damaged is refused at open with what to do, by the mount
/// and by the commands alike.
#[test]
fn damage_is_reported_and_a_damaged_index_is_refused_with_what_to_do() {
    let (repo, data) = small_repo("o/rot");
    let hub = hub_with(vec![repo]);
    let dir = temp_dir("rot");
    let store = dir.join("store");
    let s = store.to_str().unwrap();
    let endpoint = hub.endpoint();
    let pull = ["pull", "o/rot", "--store", s, "--endpoint", &endpoint, "--chunk-size", CHUNK_ARG];
    let (out, _, stderr) = run(&pull);
    assert!(out.status.success(), "{stderr}");
    let (out, _, _) = run(&["verify", "--store", s]);
    assert!(out.status.success());

    // One flipped bit in the second chunk's bytes, in the file's data file.
    let sha = sha256_hex(&data);
    let data_file = store.join("data").join(&sha[..2]).join(&sha);
    let mut image = std::fs::read(&data_file).unwrap();
    assert!(image == data, "the data file holds the file");
    image[CHUNK + 100] ^= 0x10;
    std::fs::write(&data_file, &image).unwrap();
    let (out, stdout, stderr) = run(&["verify", "--store", s]);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("DAMAGED o/rot@"), "{stdout}");
    assert!(stdout.contains(": 0 mismatches, 1 with a chunk that failed its checksum"), "{stdout}");
    assert!(stderr.contains("store damaged: 0 files did not match"), "{stderr}");
    // The next pull fetches what was dropped, and all is well again.
    let (out, _, stderr) = run(&pull);
    assert!(out.status.success(), "{stderr}");
    assert!(run(&["verify", "--store", s]).0.status.success());

    // Now garble every B-tree page (branch or leaf) of the index, header and all, as a disk
    // that wrote garbage would: libmdbx's page header has the flags at byte 10 and the page's
    // own number at byte 16; 4 KiB pages.
    let db = store.join("index/mdbx.dat");
    let mut image = std::fs::read(&db).unwrap();
    let page = 4096;
    let mut garbled = 0;
    for n in 3..image.len() / page {
        let p = &mut image[n * page..(n + 1) * page];
        let flags = u16::from_le_bytes([p[10], p[11]]);
        let pgno = u32::from_le_bytes([p[16], p[17], p[18], p[19]]) as usize;
        if pgno == n && matches!(flags & 0x07, 0x01 | 0x02) {
            for (i, b) in p.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(151).wrapping_add(n as u8);
            }
            garbled += 1;
        }
    }
    assert!(garbled > 0, "no B-tree page found to damage");
    std::fs::write(&db, &image).unwrap();
    let advice = format!("move it aside (`mv {s} {s}.damaged`) or remove it (`rm -r {s}`)");
    for args in [vec!["status", "--store", s], vec!["verify", "--store", s]] {
        let (out, _, stderr) = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("its index is damaged"), "{args:?}: {stderr}");
        assert!(stderr.contains(&advice), "{args:?}: {stderr}");
    }
    let mp = dir.join("mp");
    let (out, _, stderr) =
        run(&["mount", mp.to_str().unwrap(), "--store", s, "--endpoint", &endpoint]);
    assert_eq!(out.status.code(), Some(1), "the mount started on a damaged store:\n{stderr}");
    assert!(stderr.contains(&advice), "{stderr}");
}

/// The mount's own view of a pull in another process: `downloading` while the pull fetches,
/// `partial` for what is partly stored with nothing in flight.
#[test]
fn views_say_downloading_only_while_a_fetch_runs() {
    let data = bytes(31, 8 * CHUNK);
    let hub = hub_with(vec![MockRepo::new(
        "o/dl",
        vec![MockFile::lfs("w.bin", data.clone()), MockFile::lfs("x.bin", bytes(32, 2 * CHUNK))],
    )]);
    hub.slow_ranges_of(&data, Duration::from_millis(300));
    let store = temp_dir("store");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", CHUNK_ARG]);
    let repo = m.path("o/dl");
    assert_eq!(xattr(&repo, "status"), Ok("available".into()));
    // One chunk of x.bin through the mount, and nothing in flight after it.
    File::open(m.path("o/dl/all/x.bin")).unwrap().read_exact_at(&mut [0u8; 10], 0).unwrap();
    assert_eq!(xattr(&repo, "status"), Ok("partial".into()));

    let endpoint = hub.endpoint();
    let s = store.to_str().unwrap();
    let mut child = modelfs(&[
        "pull",
        "o/dl",
        "--include",
        "w.bin",
        "--store",
        s,
        "--endpoint",
        &endpoint,
        "--max-connections",
        "1",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut seen = Vec::new();
    while child.try_wait().unwrap().is_none() {
        let status = xattr(&repo, "status").unwrap();
        if seen.last() != Some(&status) {
            seen.push(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(child.wait().unwrap().success());
    assert!(seen.contains(&"downloading".to_string()), "the pull was never seen: {seen:?}");
    assert_eq!(
        xattr(&repo, "status"),
        Ok("partial".into()),
        "x.bin is partly stored, nothing in flight"
    );
    assert_eq!(xattr(&m.path("o/dl/all/w.bin"), "status"), Ok("verified".into()));
    m.stop();
}
