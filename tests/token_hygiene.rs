//! Token hygiene (issue 5, point 6; doc/CONFIGURATION.md): the Hub token goes to the Hub's own
//! origin and nowhere else. A real mount of the `modelfs` binary runs with `HF_TOKEN` set to a
//! marker no other string contains, at `RUST_LOG=trace`, reads LFS files (bytes from the CDN
//! origin, a different host) and git files (bytes from the Hub), and is made to fail in the ways
//! that produce error messages. Then the marker is searched for everywhere it must not be: every
//! header and URL the CDN received, the daemon's whole log, and every extended attribute of every
//! file and directory.

mod support;

use std::path::Path;
use std::time::Duration;

use support::mock_hub::{Fault, FaultRule, MockConfig, MockFile, MockHub, MockRepo, Origin};
use support::mount::{bytes, errno, run, temp_dir, Mounted};

/// A token that no log line, URL or header would contain by accident.
fn marker() -> String {
    format!("hf_hygiene{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// Every `user.modelfs.*` value of every file and directory under `root`, as
/// `getfattr -R -d -m -` prints them.
fn all_xattrs(root: &Path) -> String {
    run("getfattr", &["-R", "-d", "-m", "-", "--absolute-names", root.to_str().unwrap()])
}

/// A port on 127.0.0.1 that was free a moment ago, for `--metrics-addr`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The body of `GET http://127.0.0.1:port/path`, with a plain socket (no client crate).
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{path}: {raw}");
    raw
}

/// Requests the CDN origin received, with anything carrying `token` in a header or URL.
fn leaks_to_cdn(hub: &MockHub, token: &str) -> (usize, Vec<String>) {
    let cdn: Vec<_> = hub.requests().into_iter().filter(|r| r.origin == Origin::Cdn).collect();
    let mut leaks = Vec::new();
    for r in &cdn {
        if r.path_and_query.contains(token) {
            leaks.push(format!("URL {}", r.path_and_query));
        }
        for (name, value) in &r.headers {
            if value.contains(token) || name.contains(token) {
                leaks.push(format!("header {name} on {}", r.path_and_query));
            }
        }
        if r.authorization.is_some() {
            leaks.push(format!("an Authorization header on {}", r.path_and_query));
        }
    }
    (cdn.len(), leaks)
}

#[test]
fn the_token_reaches_the_hub_only_and_is_never_shown() {
    let token = marker();
    let hub =
        MockHub::start(MockConfig { valid_tokens: vec![token.clone()], ..MockConfig::default() });
    let weights = bytes(1, 3 * (1 << 20) + 5);
    let adapter = bytes(2, 70_000);
    let mut private = MockRepo::new(
        "hygiene/private",
        vec![
            MockFile::lfs("model.safetensors", weights.clone()),
            MockFile::lfs("lora/adapter.safetensors", adapter.clone()),
            MockFile::git("config.json", br#"{"model_type":"llama"}"#.to_vec()),
            MockFile::git("tokenizer.json", bytes(3, 20_000)),
            MockFile::git("fails-5xx.txt", b"never served".to_vec()),
            MockFile::git("fails-401.txt", b"never served".to_vec()),
            MockFile::lfs("fails-gated.bin", bytes(4, 5000)),
            MockFile::lfs("fails-cdn.bin", bytes(7, 5000)),
        ],
    );
    private.private = true;
    let mut gated = MockRepo::new("hygiene/gated", vec![MockFile::lfs("w.bin", bytes(5, 9000))]);
    gated.gated = true;
    hub.add_repo(private);
    hub.add_repo(gated);

    let store = temp_dir("store");
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let m = Mounted::start_env(
        &hub.endpoint(),
        &store,
        &["--chunk-size", "1048576", "--read-timeout", "2", "--metrics-addr", &metrics_addr],
        &[("HF_TOKEN", &token), ("RUST_LOG", "trace")],
    );

    // Reads that succeed: a private repo (visible only with the token), LFS through the CDN,
    // git files from the Hub, and a gated repo the token may read.
    let read = |rel: &str| std::fs::read(m.path(rel));
    assert_eq!(read("hygiene/private/all/model.safetensors").unwrap(), weights);
    assert_eq!(read("hygiene/private/all/lora/adapter.safetensors").unwrap(), adapter);
    assert_eq!(read("hygiene/private/all/config.json").unwrap(), br#"{"model_type":"llama"}"#);
    assert_eq!(read("hygiene/private/all/tokenizer.json").unwrap(), bytes(3, 20_000));
    assert_eq!(read("hygiene/gated/all/w.bin").unwrap(), bytes(5, 9000));

    // Reads that fail, each with its own error message in the log: the Hub failing past the
    // budget, refusing the token, and a gated answer for a file.
    hub.inject(FaultRule::new(Some(Origin::Hub), "/fails-5xx.txt", 1_000_000, Fault::Status(503)));
    hub.inject(FaultRule::new(Some(Origin::Hub), "/fails-401.txt", 1_000_000, Fault::Status(401)));
    hub.inject(FaultRule::new(
        Some(Origin::Hub),
        "/fails-gated.bin",
        1_000_000,
        Fault::Coded { status: 401, code: "GatedRepo".into() },
    ));
    let err = |rel: &str| errno(&read(rel).unwrap_err());
    assert_eq!(err("hygiene/private/all/fails-5xx.txt"), libc::EIO);
    assert_eq!(err("hygiene/private/all/fails-401.txt"), libc::EACCES);
    assert_eq!(err("hygiene/private/all/fails-gated.bin"), libc::EACCES);
    // A failing CDN: the error names the CDN URL, which must not carry the token either.
    hub.inject(FaultRule::new(Some(Origin::Cdn), "/lfs/", 1_000_000, Fault::Status(500)));
    assert_eq!(err("hygiene/private/all/fails-cdn.bin"), libc::EIO);
    hub.clear_faults();

    // (i) The Hub got the token on every request.
    let hub_requests: Vec<_> =
        hub.requests().into_iter().filter(|r| r.origin == Origin::Hub).collect();
    assert!(hub_requests.len() >= 8, "{} Hub requests", hub_requests.len());
    let bearer = format!("Bearer {token}");
    for r in &hub_requests {
        assert_eq!(r.authorization.as_deref(), Some(bearer.as_str()), "{}", r.path_and_query);
    }
    // (ii) The CDN never saw it, in any header or URL.
    let (cdn_count, leaks) = leaks_to_cdn(&hub, &token);
    assert!(cdn_count >= 3, "the LFS reads went through the CDN ({cdn_count} requests)");
    assert!(leaks.is_empty(), "the token reached the CDN: {leaks:?}");

    // (iii) Not in any extended attribute of any file or directory.
    let xattrs = all_xattrs(&m.path("hygiene"));
    assert!(xattrs.contains("user.modelfs.status"), "getfattr saw nothing:\n{xattrs}");
    assert!(!xattrs.contains(&token), "the token is in an xattr");
    for dir in ["", "hygiene", "hygiene/private", "hygiene/private/all", "hygiene/gated"] {
        let one = run("getfattr", &["-d", "-m", "-", m.path(dir).to_str().unwrap()]);
        assert!(!one.contains(&token), "the token is in an xattr of /{dir}");
    }

    // ... nor in the metrics, which count the failures.
    let metrics = http_get(metrics_port, "/metrics");
    assert!(metrics.contains("# TYPE"), "not a metrics page:\n{metrics}");
    assert!(!metrics.contains(&token), "the token is in /metrics");

    // ... nor in the log at trace level, which did record the failures.
    std::thread::sleep(Duration::from_millis(200));
    let log = m.log();
    m.stop();
    assert!(log.contains("TRACE"), "the daemon did not log at trace level");
    assert!(log.contains("fails-5xx.txt"), "the 5xx failure was not logged:\n{log}");
    assert!(log.contains("fails-401.txt"), "the 401 failure was not logged");
    assert!(log.contains("fails-gated.bin"), "the gated failure was not logged");
    assert!(log.contains("fails-cdn.bin"), "the CDN failure was not logged");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&token)).collect();
    assert!(lines.is_empty(), "the token is in the log:\n{}", lines.join("\n"));
    // Not even in part: a prefix long enough to identify it.
    assert!(!log.contains(&token[..20]), "a prefix of the token is in the log");
    eprintln!(
        "token hygiene: {} Hub requests with the token, {cdn_count} CDN requests without it, \
         {} log bytes and {} xattr bytes free of it",
        hub_requests.len(),
        log.len(),
        xattrs.len()
    );
}

/// A token the Hub refuses: every call fails with 401 and every error is reported, and
/// still the token is in none of them.
#[test]
fn a_refused_token_is_reported_without_being_shown() {
    let token = marker();
    let hub = MockHub::start(MockConfig::default());
    hub.add_repo(MockRepo::new("hygiene/any", vec![MockFile::lfs("w.bin", bytes(6, 4000))]));
    let store = temp_dir("store");
    let m = Mounted::start_env(
        &hub.endpoint(),
        &store,
        &["--read-timeout", "2"],
        &[("HF_TOKEN", &token), ("RUST_LOG", "trace")],
    );
    let e = std::fs::metadata(m.path("hygiene/any/all/w.bin")).unwrap_err();
    assert!([libc::EACCES, libc::ENOENT].contains(&errno(&e)), "{e}");
    let requests = hub.requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.origin == Origin::Hub && r.status == 401), "{requests:?}");
    let xattrs = all_xattrs(&m.path(""));
    let log = m.log();
    m.stop();
    assert!(log.contains("401") || log.contains("denied"), "the refusal was not logged:\n{log}");
    assert!(!log.contains(&token), "the token is in the log");
    assert!(!xattrs.contains(&token), "the token is in an xattr");
}
