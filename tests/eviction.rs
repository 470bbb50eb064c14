//! Eviction and full disks (issue 5, doc/DESIGN.md, "Eviction and full disks"): `--max-cache-size`
//! keeps the store under its bound by evicting least recently used whole files, never one that is
//! open; a full disk turns into eviction and retry, and when nothing can be evicted reads still
//! succeed, streamed without caching. No read ever returns a wrong byte.

mod support;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use support::mock_hub::{MockConfig, MockFile, MockHub, MockRepo};
use support::mount::{bytes, sha256_hex, temp_dir, Mounted};

const MIB: usize = 1 << 20;

fn repo(files: usize, size: usize) -> (MockHub, Vec<(String, Vec<u8>)>) {
    let data: Vec<(String, Vec<u8>)> = (0..files)
        .map(|i| (format!("shard-{i:02}.safetensors"), bytes(i as u64 + 1, size + i)))
        .collect();
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new(
        "evict/repo",
        data.iter().map(|(p, d)| MockFile::lfs(p, d.clone())).collect(),
    ));
    (hub, data)
}

fn cached_bytes(path: &Path) -> u64 {
    let v = xattr::get(path, "user.modelfs.cached_bytes").unwrap().unwrap();
    String::from_utf8(v).unwrap().parse().unwrap()
}

/// Sum of what every file has cached, as the mount reports it: the store's own records.
fn stored(m: &Mounted, files: &[(String, Vec<u8>)]) -> u64 {
    files.iter().map(|(p, _)| cached_bytes(&m.path(&format!("evict/repo/all/{p}")))).sum()
}

/// Wait for background eviction to bring the store to at most `bound`.
fn settles_under(m: &Mounted, files: &[(String, Vec<u8>)], bound: u64) -> u64 {
    settles("store", bound, || stored(m, files))
}

/// Wait for `measure` (bytes of `what`) to come to at most `bound`, failing after 20 s.
fn settles(what: &str, bound: u64, measure: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = measure();
        if now <= bound {
            return now;
        }
        assert!(Instant::now() < deadline, "{what} stays at {now} bytes over a bound of {bound}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_small_bound_filled_many_times_over_keeps_open_files() {
    // 16 files of 3 MiB against a 10 MiB bound: three rounds store ~14 times the bound.
    let (hub, files) = repo(16, 3 * MIB);
    let store = temp_dir("evict-store");
    let bound = 10 * MIB as u64;
    let m =
        Mounted::start(&hub.endpoint(), &store, &["--chunk-size", "1M", "--max-cache-size", "10M"]);
    let path = |p: &str| m.path(&format!("evict/repo/all/{p}"));

    // Two files stay open (and fully read) throughout: they must never be evicted.
    let held: Vec<(File, &Vec<u8>, String)> = files[..2]
        .iter()
        .map(|(p, d)| {
            let f = File::open(path(p)).unwrap();
            let mut got = vec![0; d.len()];
            f.read_exact_at(&mut got, 0).unwrap();
            assert!(got == *d);
            (f, d, p.clone())
        })
        .collect();

    let mut read_total = 0u64;
    for round in 0..3 {
        for (p, d) in &files[2..] {
            let got = std::fs::read(path(p)).unwrap();
            assert!(got == *d, "round {round}: {p} read wrong");
            read_total += got.len() as u64;
            for (_, want, held_path) in &held {
                assert_eq!(
                    cached_bytes(&path(held_path)),
                    want.len() as u64,
                    "{held_path} evicted while open"
                );
            }
        }
        let now = settles_under(&m, &files, bound);
        eprintln!("round {round}: {read_total} bytes read so far, {now} stored (bound {bound})");
    }
    assert!(read_total > 10 * bound, "the bound was not filled many times over");
    // The held files still read right from an open handle, and from the store.
    for (f, want, _) in &held {
        let mut got = vec![0; want.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert!(got == **want);
    }
    // Once closed, they are ordinary: the oldest go first when room is needed again.
    drop(held);
    for (p, d) in &files[2..6] {
        assert!(std::fs::read(path(p)).unwrap() == *d);
    }
    settles_under(&m, &files, bound);
    assert!(m.log().contains("evicted least recently used files"), "{}", m.log());
    m.stop();
}

/// Mount a tmpfs of `size` at `dir`: a disk that really fills up.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&out.stderr));
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_evicts_and_then_streams_without_caching() {
    // 20 files of 4 MiB on a 24 MiB disk, no bound: the disk is the bound.
    let (hub, files) = repo(20, 4 * MIB);
    let base = temp_dir("evict-full");
    let _disk = Tmpfs::mount(&base.join("store"), "24m");
    let store = base.join("store/db");
    let m = Mounted::start(&hub.endpoint(), &store, &["--chunk-size", "1M"]);
    let path = |p: &str| m.path(&format!("evict/repo/all/{p}"));
    let whole = |p: &str, d: &[u8]| cached_bytes(&path(p)) == d.len() as u64;
    let (first, second) = files.split_at(12);

    // Reading 48 MiB one file at a time overflows the disk twice: eviction makes room, just
    // enough each time, so most of what fits stays (making room for a fixed 128 MiB emptied
    // the disk at each overflow and kept one file).
    for (p, d) in first {
        assert!(std::fs::read(path(p)).unwrap() == *d, "{p} read wrong on a full disk");
    }
    let log = m.log();
    assert!(log.contains("evicted least recently used files"), "no eviction:\n{log}");
    let kept = first.iter().filter(|(p, d)| whole(p, d)).count();
    assert!(kept >= 3, "{kept} whole files kept on a 24 MiB disk of 4 MiB files:\n{log}");

    // 32 MiB of files never read (so not in the page cache either), all open at once, read
    // one after the other: the first ones are stored whole (the first batch makes room), and
    // once only open files are left, the rest is streamed. (When exactly libmdbx can reuse
    // the pages an eviction freed depends on its readers, so which file is the first to be
    // streamed may vary by one; that enough are stored whole, and that the store then holds
    // exactly those, does not.)
    let open: Vec<File> = second.iter().map(|(p, _)| File::open(path(p)).unwrap()).collect();
    for (f, (p, d)) in open.iter().zip(second) {
        let mut got = vec![0; d.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(d), "{p} read wrong on a full disk");
    }
    assert!(
        m.log().contains("serving it without caching"),
        "reads with a full store were not streamed:\n{}",
        m.log()
    );
    let stored: Vec<bool> = second.iter().map(|(p, d)| whole(p, d)).collect();
    let kept = stored.iter().filter(|s| **s).count();
    assert!(kept >= 3, "only {kept} of the open files stored whole: {stored:?}\n{}", m.log());
    // Concurrent readers of files that could not be stored all get exact bytes.
    std::thread::scope(|s| {
        for ((f, (p, d)), _) in open.iter().zip(second).zip(&stored).filter(|(_, s)| !**s) {
            s.spawn(move || {
                let mut got = vec![0; d.len()];
                f.read_exact_at(&mut got, 0).unwrap();
                assert_eq!(sha256_hex(&got), sha256_hex(d), "{p} read wrong, streamed");
            });
        }
    });
    drop(open);
    // What the store kept is right: with the Hub gone, every cached file reads exactly, and
    // the files stored whole are exactly those above.
    assert!(m.stop().success());
    hub.stop();
    let m = Mounted::start(&hub.endpoint(), &store, &["--offline"]);
    let mut served = 0;
    for (p, d) in &files {
        let p = m.path(&format!("evict/repo/all/{p}"));
        if cached_bytes(&p) == d.len() as u64 {
            assert!(std::fs::read(&p).unwrap() == *d);
            served += 1;
        }
    }
    eprintln!("{served} of {} files served from the full store with the Hub gone", files.len());
    assert_eq!(served, kept, "the files of the second batch stored whole, and no other");
    m.stop();
}

/// A file held open keeps the store over its bound while a larger one is read; once the
/// larger one is closed too, the store comes back under the bound, and so does the disk it
/// takes (evicting a file removes its data file). Before, it stayed at 60 MiB of a 48 MiB bound
/// until the next write.
#[test]
fn the_bound_holds_again_once_open_files_are_closed_and_the_disk_follows() {
    const MB: usize = 1 << 20;
    let files: Vec<(String, Vec<u8>)> =
        [("held.bin", 20), ("a.bin", 10), ("b.bin", 10), ("big.bin", 40)]
            .iter()
            .enumerate()
            .map(|(i, (p, mib))| (p.to_string(), bytes(50 + i as u64, mib * MB)))
            .collect();
    let hub = MockHub::with_repos(vec![MockRepo::new(
        "evict/repo",
        files.iter().map(|(p, d)| MockFile::lfs(p, d.clone())).collect(),
    )]);
    let store = temp_dir("evict-bound");
    let m =
        Mounted::start(&hub.endpoint(), &store, &["--chunk-size", "1M", "--max-cache-size", "48M"]);
    let path = |p: &str| m.path(&format!("evict/repo/all/{p}"));
    let held = File::open(path("held.bin")).unwrap();
    let mut got = vec![0; 20 * MB];
    held.read_exact_at(&mut got, 0).unwrap();
    assert!(got == files[0].1);
    for (p, d) in &files[1..] {
        assert!(std::fs::read(path(p)).unwrap() == *d, "{p}");
    }
    let bound = 48 * MB as u64;
    let left = settles_under(&m, &files, bound);
    assert_eq!(cached_bytes(&path("held.bin")), 20 * MB as u64, "the held file was evicted");
    // An eviction commits the index first and unlinks the data file right after (an entry
    // never names bytes that are gone), so a look between the two sees the records gone and
    // the file still there: the disk follows the records, a moment later.
    let data_dir = store.join("data");
    let on_disk = settles("data files", bound, || modelfs::commands::disk_usage(&data_dir));
    // `disk_usage` counts what it cannot read as nothing: the held file's data file must be
    // seen, or the bound above would hold of an empty walk.
    assert!(on_disk >= 20 * MB as u64, "{on_disk} bytes of data files on disk, held file unseen");
    assert!(on_disk <= bound, "{on_disk} bytes of data files on disk, {left} cached");
    drop(held);
    m.stop();
}
