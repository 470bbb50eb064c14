//! Crash safety (doc/DESIGN.md, "Crash safety"): the daemon, and a `modelfs pull` beside it on the
//! same store, are killed with SIGKILL at random moments while readers stream and read at random,
//! many fetches are in flight, chunks and index entries are being written, files verified (and
//! synced) and evicted. Every restart must clear the dead mount by itself and come up on the same
//! store; no read, before or after a crash, may return a wrong byte; and at the end every byte of
//! every file must read back exactly, from the store alone for what it holds.
//!
//! A second test plays a power loss: the data-file writes that were never synced (everything
//! of a file not yet verified) are lost, while the index survives. Nothing wrong is served;
//! the lost chunks fail their crc32c, are dropped, and are fetched again.

mod support;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::mock_hub::{Fault, MockConfig, MockFile, MockHub, MockRepo, RandomFaults};
use support::mount::{bytes, sha256_hex, temp_dir, Mounted};

/// At least the 50 kills store format 2 was asked to survive.
const KILLS: usize = 50;
const CHUNK: usize = 1 << 20;
/// Enough reads of up to 256 KiB to stream a whole file, or to hit every chunk at random.
const READS_PER_READER: usize = 400;

fn files() -> Vec<(String, Vec<u8>)> {
    vec![
        ("weights/a.safetensors".into(), bytes(1, 27 * CHUNK + 4321)),
        ("weights/b.gguf".into(), bytes(2, 18 * CHUNK + 1)),
        ("onnx/model.onnx_data".into(), bytes(3, 36 * CHUNK - 7)),
        ("config.json".into(), bytes(4, 900)),
        ("tokenizer.json".into(), bytes(5, 70_000)),
    ]
}

/// Read `path` the way loaders do (a sequential pass, and random preads), checking every byte
/// that comes back. Stops at the first error: the daemon is gone. Returns bytes checked.
fn reader(path: PathBuf, want: Arc<Vec<u8>>, seed: u64, wrong: Arc<AtomicU64>) -> u64 {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let Ok(file) = std::fs::File::open(&path) else { return 0 };
    let mut checked = 0u64;
    let mut buf = vec![0u8; 256 << 10];
    let sequential = rng.gen_bool(0.5);
    let mut offset = 0usize;
    // Bounded: after the kill, pages the kernel has cached still read fine without a daemon.
    for _ in 0..READS_PER_READER {
        if !sequential {
            offset = rng.gen_range(0..want.len());
        }
        let len = rng.gen_range(1..=buf.len()).min(want.len() - offset);
        let n = match file.read_at(&mut buf[..len], offset as u64) {
            Ok(n) => n,
            Err(_) => return checked,
        };
        if buf[..n] != want[offset..offset + n] {
            wrong.fetch_add(1, Ordering::Relaxed);
            eprintln!("WRONG BYTES: {} at {offset}+{n}", path.display());
        }
        checked += n as u64;
        offset += n;
        if n == 0 || offset >= want.len() {
            if sequential {
                return checked;
            }
            offset = 0;
        }
    }
    checked
}

#[test]
fn kill_9_at_random_moments_never_corrupts_the_store() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let hub = MockHub::start(MockConfig::default());
    let files = files();
    hub.add_repo(MockRepo::new(
        "crash/repo",
        files.iter().map(|(p, d)| MockFile::new(p, d.clone())).collect(),
    ));
    // A third of chunk fetches stall a little, so that many are in flight at each kill.
    hub.inject_random(RandomFaults {
        seed,
        probability: 0.3,
        ranged_only: true,
        kinds: vec![(None, Fault::Stall(Duration::from_millis(150)))],
    });
    let store = temp_dir("crash-store");
    let wrong = Arc::new(AtomicU64::new(0));
    let mut dir = temp_dir("crash-mnt");
    let mut checked_total = 0u64;
    let (mut kills_mid_fetch, mut fetches_logged) = (0, 0);
    // A bound well under the repo's 83 MiB keeps eviction evicting and readers fetching in
    // every round, so kills land in fetches, chunk writes and eviction passes alike.
    let args = ["--chunk-size", "1M", "--read-timeout", "10", "--max-cache-size", "24M"];
    let final_args = ["--chunk-size", "1M", "--read-timeout", "10"];

    let mut pulls_killed = 0;
    for kill in 0..KILLS {
        let m = Mounted::start_in(dir, &hub.endpoint(), &store, &args, &[]);
        // Every other round, a pull of the whole repo beside the mount, killed too.
        let mut pull = (kill % 2 == 0).then(|| {
            Command::new(env!("CARGO_BIN_EXE_modelfs"))
                .args(["pull", "crash/repo", "--endpoint", &hub.endpoint(), "--read-timeout", "10"])
                .arg("--store")
                .arg(&*store)
                .env("RUST_LOG", "modelfs=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        });
        let readers: Vec<_> = (0..6)
            .map(|r| {
                let (path, data) = &files[rng.gen_range(0..files.len())];
                let path = m.path(&format!("crash/repo/all/{path}"));
                let want = Arc::new(data.clone());
                let (wrong, seed) = (wrong.clone(), rng.gen());
                std::thread::Builder::new()
                    .name(format!("reader-{kill}-{r}"))
                    .spawn(move || reader(path, want, seed, wrong))
                    .unwrap()
            })
            .collect();
        // From just after the mount answers to well into the streams: some kills land
        // before any fetch, most during parallel fetches and store writes.
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..400)));
        if let Some(pull) = pull.as_mut() {
            if pull.try_wait().unwrap().is_none() {
                pulls_killed += 1;
            }
            let _ = pull.kill();
            let _ = pull.wait();
        }
        let log = m.log();
        dir = m.kill9();
        // Fetches begun by this daemon that it never finished storing: in flight at the kill.
        let begun = log.matches("fetching chunk").count();
        if begun > fetches_logged {
            kills_mid_fetch += 1;
        }
        fetches_logged = begun;
        for r in readers {
            checked_total += r.join().unwrap();
        }
    }

    // The store opens, and serves with no network at all exactly the bytes it holds (EIO for
    // the rest: `--offline` answers that at once, where a stopped Hub costs the read timeout).
    hub.stop();
    let offline: Vec<&str> = final_args.iter().copied().chain(["--offline"]).collect();
    let m = Mounted::start_in(dir, &hub.endpoint(), &store, &offline, &[]);
    let mut chunks_from_store = 0;
    for (path, data) in &files {
        let file = std::fs::File::open(m.path(&format!("crash/repo/all/{path}"))).unwrap();
        for (index, want) in data.chunks(CHUNK).enumerate() {
            let mut got = vec![0u8; want.len()];
            match file.read_exact_at(&mut got, (index * CHUNK) as u64) {
                Ok(()) => {
                    assert!(got == want, "{path} chunk {index} served wrong from the store");
                    chunks_from_store += 1;
                }
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{path} chunk {index}"),
            }
        }
    }
    let dir = m.kill9();

    // With the Hub back, everything reads exactly, and every file ends verified.
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(
        "crash/repo",
        files.iter().map(|(p, d)| MockFile::new(p, d.clone())).collect(),
    ));
    let m = Mounted::start_in(dir, &hub.endpoint(), &store, &final_args, &[]);
    for (path, data) in &files {
        let p = m.path(&format!("crash/repo/all/{path}"));
        assert_eq!(sha256_hex(&std::fs::read(&p).unwrap()), sha256_hex(data), "{path}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for (path, _) in &files {
        let p = m.path(&format!("crash/repo/all/{path}"));
        loop {
            let status = xattr::get(&p, "user.modelfs.status").unwrap().unwrap_or_default();
            if status == b"verified" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{path} is {status:?}, not verified");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    m.stop();

    let wrong = wrong.load(Ordering::Relaxed);
    eprintln!(
        "kills survived: {KILLS} ({kills_mid_fetch} while this daemon was fetching, {pulls_killed} pulls killed mid-way); bytes checked by readers during the kills: {checked_total}; \
         chunks served from the store alone afterwards: {chunks_from_store}; wrong reads: {wrong}"
    );
    assert_eq!(wrong, 0, "wrong bytes were served");
    assert!(checked_total > 0, "the readers never read anything: the kills proved nothing");
    assert!(kills_mid_fetch >= KILLS / 2, "only {kills_mid_fetch} kills landed while fetching");
    assert!(pulls_killed >= KILLS / 8, "only {pulls_killed} pulls were killed while running");
}

/// The data file of a content, as store format 2 lays it out (`src/store/data.rs`).
fn data_file(store: &Path, data: &[u8]) -> PathBuf {
    let sha = sha256_hex(data);
    store.join("data").join(&sha[..2]).join(sha)
}

/// A power loss after the index was written but before the data files were synced: the
/// bytes of every file not yet verified (only verification syncs a data file) are gone, read
/// back as zeros or not at all. The index still names those chunks; their crc32c no longer
/// matches, so they are dropped, never served, and fetched again. A verified file was synced
/// before it was marked so, and is served whole.
#[test]
fn lost_writes_of_unsynced_chunks_are_refetched_never_served() {
    const SMALL: usize = 64 << 10;
    let whole = bytes(11, 5 * SMALL + 10);
    let zeroed = bytes(12, 6 * SMALL + 20);
    let truncated = bytes(13, 4 * SMALL + 30);
    let repo = || {
        MockRepo::new(
            "lost/repo",
            vec![
                MockFile::lfs("whole.bin", whole.clone()),
                MockFile::lfs("zeroed.bin", zeroed.clone()),
                MockFile::lfs("truncated.bin", truncated.clone()),
            ],
        )
    };
    let hub = MockHub::with_repos(vec![repo()]);
    let store = temp_dir("lost-store");
    let args = ["--chunk-size", "65536"];
    let m = Mounted::start(&hub.endpoint(), &store, &args);
    let path = |m: &Mounted, p: &str| m.path(&format!("lost/repo/all/{p}"));
    assert!(std::fs::read(path(&m, "whole.bin")).unwrap() == whole);
    support::mount::wait_for("whole.bin verified", support::mount::SETTLE, || {
        support::mount::getfattr(&path(&m, "whole.bin"), "user.modelfs.status")
            == Ok("verified".into())
    });
    // Two chunks of each of the others, apart, with no read-ahead (the kernel's or ours, which
    // would complete and so verify and sync them): stored, not verified, never synced.
    for (p, data) in [("zeroed.bin", &zeroed), ("truncated.bin", &truncated)] {
        let f = std::fs::File::open(path(&m, p)).unwrap();
        // SAFETY: a valid descriptor; the advice only turns the kernel's read-ahead off.
        let rc = unsafe {
            libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_RANDOM)
        };
        assert_eq!(rc, 0);
        for index in [2, 0] {
            let mut got = vec![0; 4096];
            f.read_exact_at(&mut got, (index * SMALL) as u64).unwrap();
            assert!(got == data[index * SMALL..index * SMALL + 4096]);
        }
        assert_eq!(
            support::mount::getfattr(&path(&m, p), "user.modelfs.status"),
            Ok("partial".into())
        );
    }
    let dir = m.kill9();
    std::fs::write(data_file(&store, &zeroed), vec![0u8; zeroed.len()]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(data_file(&store, &truncated))
        .unwrap()
        .set_len(SMALL as u64 / 2)
        .unwrap();
    // Dropping the page cache is what the power loss did to those pages too.
    std::process::Command::new("sh")
        .args(["-c", "echo 1 > /proc/sys/vm/drop_caches"])
        .status()
        .unwrap();

    hub.stop();
    let offline: Vec<&str> = args.iter().copied().chain(["--offline"]).collect();
    let m = Mounted::start_in(dir, &hub.endpoint(), &store, &offline, &[]);
    assert!(std::fs::read(path(&m, "whole.bin")).unwrap() == whole, "a synced file lost bytes");
    for (p, data) in [("zeroed.bin", &zeroed), ("truncated.bin", &truncated)] {
        let f = std::fs::File::open(path(&m, p)).unwrap();
        for (index, want) in data.chunks(SMALL).enumerate() {
            let mut got = vec![0; want.len()];
            match f.read_exact_at(&mut got, (index * SMALL) as u64) {
                Ok(()) => panic!("{p} chunk {index}: lost bytes served (right: {})", got == want),
                Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{p} chunk {index}: {e}"),
            }
        }
        assert_eq!(
            support::mount::getfattr(&path(&m, p), "user.modelfs.cached_bytes"),
            Ok("0".into()),
            "{p}: the dropped chunks still count"
        );
    }
    assert!(m.log().contains("chunk failed its integrity check and was dropped"), "{}", m.log());
    let dir = m.kill9();

    // With the Hub back they are fetched again, exactly, and verified.
    let hub = MockHub::with_repos(vec![repo()]);
    let m = Mounted::start_in(dir, &hub.endpoint(), &store, &args, &[]);
    for (p, data) in [("whole.bin", &whole), ("zeroed.bin", &zeroed), ("truncated.bin", &truncated)]
    {
        assert!(std::fs::read(path(&m, p)).unwrap() == **data, "{p}");
        support::mount::wait_for("verified", support::mount::SETTLE, || {
            support::mount::getfattr(&path(&m, p), "user.modelfs.status") == Ok("verified".into())
        });
    }
    m.stop();
}
