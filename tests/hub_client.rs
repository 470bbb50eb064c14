//! `HubClient` against the mock Hub: revisions, paged listings, byte-exact ranges, the
//! redirect-and-remember path to the CDN, where the token goes, how Hub errors map to
//! `HubError`, and what retries do with injected faults. No kernel needed.

#[path = "support/mock_hub.rs"]
mod mock_hub;

use std::time::{Duration, Instant};

use mock_hub::{Fault, FaultRule, MockConfig, MockFile, MockHub, MockRepo, Origin};
use modelfs::hub::client::{HubClient, HubConfig};
use modelfs::hub::{HubError, RangeFetcher, RemoteFile, RepoSource, TreeEntry};
use modelfs::manifest::{FileHash, RepoId};
use rand::{Rng, RngCore, SeedableRng};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const TOKEN: &str = "hf_mock_token";
const REPO: &str = "test-org/test-model";

fn repo_id() -> RepoId {
    RepoId::new("test-org", "test-model")
}

fn client(hub: &MockHub, token: Option<&str>, read_timeout: Duration) -> HubClient {
    let mut config = HubConfig::new(hub.endpoint().parse().unwrap());
    config.token = token.map(str::to_owned);
    config.read_timeout = read_timeout;
    HubClient::new(config).unwrap()
}

fn default_client(hub: &MockHub) -> HubClient {
    client(hub, None, Duration::from_secs(20))
}

fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn lfs_hash(data: &[u8]) -> FileHash {
    FileHash::Lfs(Sha256::digest(data).into())
}

fn git_hash(data: &[u8]) -> FileHash {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    FileHash::Git(h.finalize().into())
}

/// A hub with one repo: a git config, an LFS model (300 KB), a git-stored 50 KB file.
struct Fixture {
    hub: MockHub,
    config: Vec<u8>,
    model: Vec<u8>,
    text: Vec<u8>,
    commit: String,
}

fn fixture(config: MockConfig) -> Fixture {
    let hub = MockHub::start(config);
    let config = br#"{"model_type":"test"}"#.to_vec();
    let model = random_bytes(1, 300_000);
    let text = random_bytes(2, 50_000);
    let mut repo = MockRepo::new(
        REPO,
        vec![
            MockFile::git("config.json", config.clone()),
            MockFile::lfs("onnx/model.onnx", model.clone()),
            MockFile::git("notes/big.txt", text.clone()),
        ],
    );
    repo.pipeline_tag = Some("text-generation".into());
    let commit = repo.head();
    hub.add_repo(repo);
    Fixture { hub, config, model, text, commit }
}

fn remote(commit: &str, path: &str, size: usize) -> RemoteFile {
    RemoteFile { repo: repo_id(), commit: commit.into(), path: path.into(), size: size as u64 }
}

fn count(hub: &MockHub, origin: Origin, path_contains: &str) -> usize {
    hub.requests()
        .iter()
        .filter(|r| r.origin == origin && r.path_and_query.contains(path_contains))
        .count()
}

#[tokio::test]
async fn resolves_branches_tags_and_commits() {
    let f = fixture(MockConfig::default());
    let first = f.commit.clone();
    let mut second = String::new();
    f.hub.update_repo(REPO, |r| {
        second = r.commit(vec![MockFile::git("config.json", b"{}".to_vec())]);
        r.tag("v1.0", &first);
        r.branch("refs/pr/1", &first);
    });
    assert_ne!(first, second);
    let c = default_client(&f.hub);
    let main = c.resolve(&repo_id(), "main").await.unwrap();
    assert_eq!(main.commit, second);
    assert_eq!(main.pipeline_tag.as_deref(), Some("text-generation"));
    assert_eq!(c.resolve(&repo_id(), "v1.0").await.unwrap().commit, first);
    assert_eq!(c.resolve(&repo_id(), "refs/pr/1").await.unwrap().commit, first);
    assert_eq!(c.resolve(&repo_id(), &first).await.unwrap().commit, first);
    // One request per call: the client does not cache.
    f.hub.clear_requests();
    c.resolve(&repo_id(), "main").await.unwrap();
    c.resolve(&repo_id(), "main").await.unwrap();
    assert_eq!(count(&f.hub, Origin::Hub, "/revision/main"), 2);
    assert_eq!(f.hub.requests().len(), 2);
}

#[tokio::test]
async fn lists_files_across_pages_with_hashes() {
    let f = fixture(MockConfig { page_size: 2, ..MockConfig::default() });
    let extra = random_bytes(3, 1000);
    f.hub.update_repo(REPO, |r| {
        r.commit(vec![
            MockFile::lfs("onnx/model_q4.onnx", extra.clone()),
            MockFile::git("tokenizer.json", b"{\"v\":1}".to_vec()),
            MockFile::git("a/b/c/deep.txt", b"deep".to_vec()),
        ]);
    });
    let c = default_client(&f.hub);
    let head = c.resolve(&repo_id(), "main").await.unwrap().commit;
    f.hub.clear_requests();
    let files = c.list_files(&repo_id(), &head).await.unwrap();
    let entry =
        |path: &str, size: usize, hash| TreeEntry { path: path.into(), size: size as u64, hash };
    assert_eq!(
        files,
        vec![
            entry("a/b/c/deep.txt", 4, git_hash(b"deep")),
            entry("config.json", f.config.len(), git_hash(&f.config)),
            entry("notes/big.txt", f.text.len(), git_hash(&f.text)),
            entry("onnx/model.onnx", f.model.len(), lfs_hash(&f.model)),
            entry("onnx/model_q4.onnx", extra.len(), lfs_hash(&extra)),
            entry("tokenizer.json", 7, git_hash(b"{\"v\":1}")),
        ]
    );
    // 6 files and 5 directories (a, a/b, a/b/c, notes, onnx) at 2 entries a page.
    assert_eq!(count(&f.hub, Origin::Hub, "/tree/"), 6);
    assert!(f.hub.requests().iter().all(|r| r.status == 200));
}

async fn check_random_ranges(c: &HubClient, file: &RemoteFile, data: &[u8], seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for i in 0..200 {
        let start = rng.gen_range(0..data.len());
        // Mostly small ranges, sometimes up to the end, sometimes one byte.
        let end = match i % 4 {
            0 => start + 1,
            1 => data.len(),
            _ => rng.gen_range(start + 1..=data.len().min(start + 70_000)),
        };
        let bytes = c.fetch_range(file, start as u64..end as u64).await.unwrap();
        assert!(bytes[..] == data[start..end], "{} bytes {start}..{end} differ", file.path);
    }
    let whole = c.fetch_range(file, 0..data.len() as u64).await.unwrap();
    assert!(whole[..] == data[..], "whole {} differs", file.path);
}

#[tokio::test]
async fn random_ranges_are_byte_exact() {
    let f = fixture(MockConfig::default());
    let c = default_client(&f.hub);
    let model = remote(&f.commit, "onnx/model.onnx", f.model.len());
    check_random_ranges(&c, &model, &f.model, 11).await;
    let text = remote(&f.commit, "notes/big.txt", f.text.len());
    check_random_ranges(&c, &text, &f.text, 12).await;
    let config = remote(&f.commit, "config.json", f.config.len());
    check_random_ranges(&c, &config, &f.config, 13).await;
}

#[tokio::test]
async fn redirect_is_followed_once_per_file_and_reused() {
    let f = fixture(MockConfig::default());
    let c = default_client(&f.hub);
    let model = remote(&f.commit, "onnx/model.onnx", f.model.len());
    f.hub.clear_requests();
    for i in 0..10u64 {
        let range = i * 1000..i * 1000 + 500;
        let bytes = c.fetch_range(&model, range.clone()).await.unwrap();
        assert!(bytes[..] == f.model[range.start as usize..range.end as usize]);
    }
    assert_eq!(count(&f.hub, Origin::Hub, "/resolve/"), 1);
    assert_eq!(count(&f.hub, Origin::Cdn, "/lfs/"), 10);
    // Every request carried exactly the range asked, with an inclusive end; no HEAD.
    let ranges: Vec<_> = f
        .hub
        .requests()
        .iter()
        .filter(|r| r.origin == Origin::Cdn)
        .map(|r| r.range.clone())
        .collect();
    assert_eq!(ranges[3].as_deref(), Some("bytes=3000-3499"));
    assert!(f.hub.requests().iter().all(|r| r.method == "GET"));

    // Another file needs its own redirect.
    let text = remote(&f.commit, "notes/big.txt", f.text.len());
    c.fetch_range(&text, 0..10).await.unwrap();
    c.fetch_range(&text, 10..20).await.unwrap();
    assert_eq!(
        count(&f.hub, Origin::Hub, "/notes/big.txt"),
        2,
        "git files at a commit: 206 direct"
    );
}

#[tokio::test]
async fn relative_redirects_are_resolved_against_the_hub() {
    // A branch name where the commit belongs: the mock answers a relative 307 to the commit.
    let f = fixture(MockConfig::default());
    let c = client(&f.hub, Some(TOKEN), Duration::from_secs(20));
    let text = remote("main", "notes/big.txt", f.text.len());
    f.hub.clear_requests();
    assert!(c.fetch_range(&text, 5..15).await.unwrap()[..] == f.text[5..15]);
    assert!(c.fetch_range(&text, 100..200).await.unwrap()[..] == f.text[100..200]);
    let hub_paths: Vec<_> = f.hub.requests().iter().map(|r| r.path_and_query.clone()).collect();
    let pinned = format!("/{REPO}/resolve/{}/notes/big.txt", f.commit);
    assert_eq!(
        hub_paths,
        vec![format!("/{REPO}/resolve/main/notes/big.txt"), pinned.clone(), pinned]
    );
    // The target is on the Hub itself, so it gets the token.
    assert!(f
        .hub
        .requests()
        .iter()
        .all(|r| r.authorization.as_deref() == Some("Bearer hf_mock_token")));
}

#[tokio::test]
async fn the_token_goes_to_the_hub_and_never_to_the_cdn() {
    let f = fixture(MockConfig::default());
    let c = client(&f.hub, Some(TOKEN), Duration::from_secs(20));
    f.hub.clear_requests();
    let head = c.resolve(&repo_id(), "main").await.unwrap().commit;
    c.list_files(&repo_id(), &head).await.unwrap();
    let model = remote(&head, "onnx/model.onnx", f.model.len());
    c.fetch_range(&model, 0..100).await.unwrap();
    c.fetch_range(&model, 100..200).await.unwrap();
    let requests = f.hub.requests();
    let hub: Vec<_> = requests.iter().filter(|r| r.origin == Origin::Hub).collect();
    let cdn: Vec<_> = requests.iter().filter(|r| r.origin == Origin::Cdn).collect();
    assert_eq!((hub.len(), cdn.len()), (3, 2));
    for r in hub {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer hf_mock_token"),
            "{}",
            r.path_and_query
        );
    }
    for r in cdn {
        assert_eq!(r.authorization, None, "{}", r.path_and_query);
    }
}

fn not_found(r: Result<impl std::fmt::Debug, HubError>, what: &str) -> String {
    match r {
        Err(HubError::NotFound(m)) => m,
        other => panic!("{what}: expected NotFound, got {other:?}"),
    }
}

#[tokio::test]
async fn hub_errors_map_to_not_found_and_denied() {
    let f = fixture(MockConfig::default());
    let mut gated = MockRepo::new("test-org/gated", vec![MockFile::lfs("w.bin", vec![7; 100])]);
    gated.gated = true;
    let gated_commit = gated.head();
    f.hub.add_repo(gated);
    let mut private = MockRepo::new("test-org/private", vec![MockFile::git("a.txt", vec![1; 10])]);
    private.private = true;
    f.hub.add_repo(private);

    let anonymous = default_client(&f.hub);
    let with_token = client(&f.hub, Some(TOKEN), Duration::from_secs(20));
    let missing = RepoId::new("test-org", "missing");
    for c in [&anonymous, &with_token] {
        let m = not_found(c.resolve(&missing, "main").await, "unknown repo");
        assert!(m.contains("test-org/missing"), "{m}");
        let m = not_found(c.resolve(&repo_id(), "no-such-branch").await, "unknown revision");
        assert!(m.contains("no-such-branch"), "{m}");
        let m = not_found(c.list_files(&repo_id(), &"0".repeat(40)).await, "unknown commit");
        assert!(m.contains(REPO), "{m}");
        let m = not_found(
            c.fetch_range(&remote(&f.commit, "no/such file.bin", 10), 0..10).await,
            "unknown file",
        );
        assert!(m.contains("no/such file.bin"), "{m}");
    }
    // A private repo does not exist for a client without a token.
    let private = RepoId::new("test-org", "private");
    not_found(anonymous.resolve(&private, "main").await, "private repo");
    assert!(with_token.resolve(&private, "main").await.is_ok());

    // A gated repo's metadata is public; its bytes need an accepted token.
    let gated = RepoId::new("test-org", "gated");
    assert_eq!(anonymous.resolve(&gated, "main").await.unwrap().commit, gated_commit);
    let file =
        RemoteFile { repo: gated.clone(), commit: gated_commit, path: "w.bin".into(), size: 100 };
    match anonymous.fetch_range(&file, 0..10).await {
        Err(HubError::Denied(m)) => assert!(m.contains("test-org/gated"), "{m}"),
        other => panic!("gated without token: {other:?}"),
    }
    assert_eq!(&with_token.fetch_range(&file, 0..10).await.unwrap()[..], &[7; 10]);

    // A token the Hub does not know is refused everywhere, and never echoed.
    let wrong = client(&f.hub, Some("hf_wrong_token"), Duration::from_secs(20));
    match wrong.resolve(&repo_id(), "main").await {
        Err(HubError::Denied(m)) => assert!(!m.contains("hf_wrong_token"), "{m}"),
        other => panic!("wrong token: {other:?}"),
    }

    // A range past the end of the file is the caller's mistake, not the Hub's: no request.
    f.hub.clear_requests();
    let model = remote(&f.commit, "onnx/model.onnx", f.model.len());
    assert!(matches!(
        anonymous.fetch_range(&model, 0..f.model.len() as u64 + 1).await,
        Err(HubError::Protocol(_))
    ));
    assert!(f.hub.requests().is_empty());
    // A file the listing said is bigger than it is: the Content-Range total disagrees.
    let wrong_size = remote(&f.commit, "config.json", f.config.len() + 5);
    let started = Instant::now();
    assert!(matches!(
        client(&f.hub, None, Duration::from_secs(1)).fetch_range(&wrong_size, 0..3).await,
        Err(HubError::Protocol(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_stopped_hub_is_unavailable_after_the_budget() {
    let f = fixture(MockConfig::default());
    let c = client(&f.hub, None, Duration::from_secs(1));
    let model = remote(&f.commit, "onnx/model.onnx", f.model.len());
    c.fetch_range(&model, 0..10).await.unwrap();
    let hub_port: u16 = f.hub.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    let cdn_port: u16 = f.hub.cdn_origin().rsplit(':').next().unwrap().parse().unwrap();
    f.hub.stop();
    // One outage, one budget: the first calls retry for about the 1 s budget, counted from
    // the first refused connection; the calls after it make one attempt each.
    let started = Instant::now();
    let resolve = c.resolve(&repo_id(), "main").await;
    assert!(
        matches!(&resolve, Err(HubError::Unavailable(m)) if m.contains("does not answer")),
        "{resolve:?}"
    );
    let fetch = c.fetch_range(&model, 10..20).await;
    assert!(matches!(fetch, Err(HubError::Unavailable(_))), "{fetch:?}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(500), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "two calls, one budget: {elapsed:?}");
    assert!(c.is_unreachable());
    for _ in 0..3 {
        let started = Instant::now();
        let resolve = c.resolve(&repo_id(), "main").await;
        assert!(matches!(resolve, Err(HubError::Unavailable(_))), "{resolve:?}");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    }
    // The Hub comes back on the same address: the next call reaches it, and the outage ends.
    let back = MockHub::start_on(MockConfig::default(), hub_port, cdn_port).unwrap();
    let mut repo = MockRepo::new(REPO, vec![MockFile::git("config.json", f.config.clone())]);
    repo.pipeline_tag = None;
    back.add_repo(repo);
    let info = c.resolve(&repo_id(), "main").await.unwrap();
    assert_eq!(info.commit.len(), 40);
    assert!(!c.is_unreachable());
}

#[tokio::test]
async fn names_with_spaces_and_non_ascii() {
    let hub = MockHub::start(MockConfig { page_size: 3, ..MockConfig::default() });
    let lfs_data = random_bytes(5, 20_000);
    let git_data = "ünïcödé ✓ contents\n".repeat(50).into_bytes();
    let odd = random_bytes(6, 999);
    let paths = [
        "dir with space/모델 weights.bin",
        "deep/nested dir/ünïcödé file ✓.txt",
        "a#b?c%d+e&f.txt",
    ];
    let repo = MockRepo::new(
        "test-org/unicode",
        vec![
            MockFile::lfs(paths[0], lfs_data.clone()),
            MockFile::git(paths[1], git_data.clone()),
            MockFile::git(paths[2], odd.clone()),
        ],
    );
    let commit = repo.head();
    hub.add_repo(repo);
    let c = default_client(&hub);
    let id = RepoId::new("test-org", "unicode");
    let listed: Vec<_> =
        c.list_files(&id, &commit).await.unwrap().into_iter().map(|e| e.path).collect();
    let mut expected: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for (path, data) in paths.iter().zip([&lfs_data, &git_data, &odd]) {
        let file = RemoteFile {
            repo: id.clone(),
            commit: commit.clone(),
            path: path.to_string(),
            size: data.len() as u64,
        };
        let bytes = c.fetch_range(&file, 1..data.len() as u64).await.unwrap();
        assert!(bytes[..] == data[1..], "{path}");
    }
}

// --- Retries under injected faults -------------------------------------------------------------

async fn fetch_model_ok(f: &Fixture, c: &HubClient, range: std::ops::Range<u64>) {
    let model = remote(&f.commit, "onnx/model.onnx", f.model.len());
    let bytes = c.fetch_range(&model, range.clone()).await.unwrap();
    assert!(bytes[..] == f.model[range.start as usize..range.end as usize]);
}

fn statuses(hub: &MockHub) -> Vec<(Origin, u16)> {
    hub.requests().iter().map(|r| (r.origin, r.status)).collect()
}

#[tokio::test]
async fn server_errors_resets_and_truncations_are_retried() {
    let f = fixture(MockConfig::default());
    let c = default_client(&f.hub);
    f.hub.inject(FaultRule::new(Some(Origin::Hub), "/resolve/", 2, Fault::Status(503)));
    fetch_model_ok(&f, &c, 1000..201_000).await;
    assert_eq!(
        statuses(&f.hub),
        vec![(Origin::Hub, 503), (Origin::Hub, 503), (Origin::Hub, 302), (Origin::Cdn, 206)]
    );

    // A 5xx from the remembered CDN target: retried through the Hub, which signs a new one.
    f.hub.clear_requests();
    f.hub.inject(FaultRule::new(Some(Origin::Cdn), "/lfs/", 1, Fault::Status(500)));
    fetch_model_ok(&f, &c, 0..10).await;
    assert_eq!(statuses(&f.hub), vec![(Origin::Cdn, 500), (Origin::Hub, 302), (Origin::Cdn, 206)]);

    // A reset, and a body cut short: retried until the bytes are whole. Whether the cut
    // reaches the client before or after the headers is up to the mock's timing, so only the
    // outcome and the number of CDN attempts are checked.
    for fault in [Fault::Reset, Fault::Truncate { after: 100 }] {
        f.hub.clear_requests();
        f.hub.inject(FaultRule::new(Some(Origin::Cdn), "/lfs/", 1, fault.clone()));
        fetch_model_ok(&f, &c, 5000..105_000).await;
        assert_eq!(count(&f.hub, Origin::Cdn, "/lfs/"), 2, "{fault:?}");
        assert_eq!(statuses(&f.hub).last(), Some(&(Origin::Cdn, 206)), "{fault:?}");
    }

    f.hub.inject(FaultRule::new(Some(Origin::Hub), "/revision/", 1, Fault::Truncate { after: 5 }));
    f.hub.inject(FaultRule::new(Some(Origin::Hub), "/revision/", 1, Fault::Reset));
    assert_eq!(c.resolve(&repo_id(), "main").await.unwrap().commit, f.commit);
    assert_eq!(count(&f.hub, Origin::Hub, "/revision/"), 3);
}

#[tokio::test]
async fn pieces_arrive_in_order_and_a_broken_body_resumes_after_the_last_whole_one() {
    let f = fixture(MockConfig::default());
    let c = default_client(&f.hub);
    let model = remote(&f.commit, "onnx/model.onnx", f.model.len());
    let whole = |range: std::ops::Range<usize>| f.model[range].to_vec();
    f.hub.clear_requests();
    // The CDN cuts the body after 150,000 bytes: three whole pieces of 50,000.
    f.hub.inject(FaultRule::new(Some(Origin::Cdn), "/lfs/", 1, Fault::Truncate { after: 150_000 }));
    let mut pieces: Vec<bytes::Bytes> = Vec::new();
    c.fetch_pieces(&model, 10_000..265_000, 50_000, &mut |p| pieces.push(p)).await.unwrap();
    let lens: Vec<usize> = pieces.iter().map(|p| p.len()).collect();
    assert_eq!(lens, [50_000, 50_000, 50_000, 50_000, 50_000, 5_000]);
    assert_eq!(pieces.concat(), whole(10_000..265_000));
    // The second attempt asked only for what had not been delivered.
    let ranges: Vec<Option<String>> = f
        .hub
        .requests()
        .iter()
        .filter(|r| r.origin == Origin::Cdn)
        .map(|r| r.range.clone())
        .collect();
    assert_eq!(
        ranges,
        [Some("bytes=10000-264999".to_string()), Some("bytes=160000-264999".to_string())]
    );
    // A range of one piece, and pieces larger than the range: one piece each.
    let mut one = Vec::new();
    c.fetch_pieces(&model, 0..7, 1 << 20, &mut |p| one.push(p)).await.unwrap();
    assert_eq!(one.concat(), whole(0..7));
    assert_eq!(one.len(), 1);
    // Nonsense is refused before any request.
    let mut none = |_: bytes::Bytes| unreachable!("no piece for a refused range");
    assert!(c.fetch_pieces(&model, 5..5, 10, &mut none).await.is_err());
    assert!(c.fetch_pieces(&model, 0..10, 0, &mut none).await.is_err());
}

#[tokio::test]
async fn an_expired_cdn_target_is_forgotten() {
    let f = fixture(MockConfig::default());
    let c = default_client(&f.hub);
    fetch_model_ok(&f, &c, 0..10).await;
    f.hub.clear_requests();
    f.hub.inject(FaultRule::new(Some(Origin::Cdn), "/lfs/", 1, Fault::Status(403)));
    fetch_model_ok(&f, &c, 10..20).await;
    let seen: Vec<_> = f.hub.requests().iter().map(|r| (r.origin, r.status)).collect();
    assert_eq!(seen, vec![(Origin::Cdn, 403), (Origin::Hub, 302), (Origin::Cdn, 206)]);
    // The new target is remembered in turn.
    fetch_model_ok(&f, &c, 20..30).await;
    assert_eq!(f.hub.requests().len(), 4);
}

#[tokio::test]
async fn rate_limits_wait_for_retry_after() {
    let f = fixture(MockConfig::default());
    let c = default_client(&f.hub);
    f.hub.inject(FaultRule::new(
        Some(Origin::Hub),
        "/revision/",
        1,
        Fault::RateLimited { retry_after_secs: 1 },
    ));
    let started = Instant::now();
    assert_eq!(c.resolve(&repo_id(), "main").await.unwrap().commit, f.commit);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    assert_eq!(count(&f.hub, Origin::Hub, "/revision/"), 2);
}

#[tokio::test]
async fn a_stalled_body_is_abandoned_and_retried_within_the_budget() {
    let f = fixture(MockConfig::default());
    // Budget 4 s: a stall is cut after 1 s and the retry still fits.
    let c = client(&f.hub, None, Duration::from_secs(4));
    f.hub.inject(FaultRule::new(
        Some(Origin::Cdn),
        "/lfs/",
        1,
        Fault::Stall(Duration::from_secs(30)),
    ));
    let started = Instant::now();
    fetch_model_ok(&f, &c, 0..50_000).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "{elapsed:?}");
    assert_eq!(count(&f.hub, Origin::Cdn, "/lfs/"), 2);

    // A stall on every attempt ends the call at its budget, not at the stall's end.
    f.hub.inject(FaultRule::new(
        Some(Origin::Cdn),
        "/lfs/",
        100,
        Fault::Stall(Duration::from_secs(30)),
    ));
    let started = Instant::now();
    let model = remote(&f.commit, "onnx/model.onnx", f.model.len());
    let r = c.fetch_range(&model, 0..10).await;
    assert!(matches!(r, Err(HubError::Unavailable(_))), "{r:?}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
}

#[tokio::test]
async fn persistent_server_errors_end_as_unavailable() {
    let f = fixture(MockConfig::default());
    let c = client(&f.hub, None, Duration::from_secs(1));
    f.hub.inject(FaultRule::new(Some(Origin::Hub), "/tree/", 1000, Fault::Status(502)));
    let started = Instant::now();
    let r = c.list_files(&repo_id(), &f.commit).await;
    assert!(matches!(r, Err(HubError::Unavailable(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(count(&f.hub, Origin::Hub, "/tree/") >= 3, "retried with backoff");
}
