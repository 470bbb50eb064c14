//! Crash safety (issue 5, SPEC §4): the daemon is killed with SIGKILL at random moments while
//! readers stream and read at random, many fetches are in flight and chunks are being written.
//! Every restart must clear the dead mount by itself and come up on the same store; no read,
//! before or after a crash, may return a wrong byte; and at the end every byte of every file
//! must read back exactly, from the store alone for what it holds.

mod support;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use support::mock_hub::{Fault, MockConfig, MockFile, MockHub, MockRepo, RandomFaults};
use support::mount::{bytes, sha256_hex, temp_dir, Mounted};

/// At least the 20 kills issue 5 asks for, with margin.
const KILLS: usize = 24;
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

    for kill in 0..KILLS {
        let m = Mounted::start_in(dir, &hub.endpoint(), &store, &args, &[]);
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
        "kills survived: {KILLS} ({kills_mid_fetch} while this daemon was fetching); bytes checked by readers during the kills: {checked_total}; \
         chunks served from the store alone afterwards: {chunks_from_store}; wrong reads: {wrong}"
    );
    assert_eq!(wrong, 0, "wrong bytes were served");
    assert!(checked_total > 0, "the readers never read anything: the kills proved nothing");
    assert!(kills_mid_fetch >= KILLS / 2, "only {kills_mid_fetch} kills landed while fetching");
}
