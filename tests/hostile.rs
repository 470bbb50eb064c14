//! Hostile Hub input (issue 5, point 5): tree pages and headers crafted to escape the repo,
//! confuse the namespace, overflow sizes or exhaust memory. Each must become a clear error or
//! a skipped entry, never a panic and never a path outside the repo.
//!
//! Most cases go through the public parsers ([`parse_tree_page`], [`parse_content_range`],
//! [`parse_link_next`], [`next_page`]) and [`Manifest::build`], which is exactly what a listing
//! goes through in the daemon. The path cases also go through a real FUSE mount: the mock Hub
//! of `tests/support` only lists trees built from a map of real files, so it cannot send a
//! duplicate path or an arbitrary page; [`RawHub`] below serves a page verbatim instead.
//!
//! Every test counts the bad inputs it tries and prints the count (`hostile inputs: N in
//! <test>`), for the closing note of the issue.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use modelfs::hub::client::{
    next_page, parse_content_range, parse_link_next, parse_tree_page, HubClient, HubConfig,
    MAX_FILE_SIZE,
};
use modelfs::hub::{HubError, RepoSource, TreeEntry};
use modelfs::manifest::{FileEntry, FileHash, Manifest, RepoId};
use modelfs::names::{valid_repo_path, MAX_COMPONENT_LEN, MAX_REPO_PATH_LEN};
use reqwest::header::{HeaderMap, HeaderValue, LINK};
use reqwest::Url;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};
use support::mount::{temp_dir, Mounted};

const GIT: &str = "0123456789abcdef0123456789abcdef01234567";
const LFS: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn repo() -> RepoId {
    RepoId::new("o", "r")
}

fn report(test: &str, tried: usize) {
    eprintln!("hostile inputs: {tried} in {test}");
}

fn file(path: &str, size: u64) -> Value {
    json!({"type": "file", "path": path, "oid": GIT, "size": size})
}

/// The paths a page of `entries` keeps, in page order.
fn kept(entries: Vec<Value>) -> Vec<String> {
    let body = Value::Array(entries).to_string();
    parse_tree_page(body.as_bytes(), &repo()).unwrap().into_iter().map(|e| e.path).collect()
}

fn manifest(entries: Vec<TreeEntry>) -> Manifest {
    let files = entries
        .into_iter()
        .map(|e| FileEntry { path: e.path, size: e.size, hash: e.hash })
        .collect();
    Manifest::build(repo(), "c".repeat(40), None, files)
}

fn manifest_paths(entries: Vec<Value>) -> Vec<(String, u64)> {
    let body = Value::Array(entries).to_string();
    let m = manifest(parse_tree_page(body.as_bytes(), &repo()).unwrap());
    m.files.into_iter().map(|f| (f.path, f.size)).collect()
}

/// A page that must be refused as a whole, with an error that names the repo.
fn assert_page_error(body: &[u8]) {
    match parse_tree_page(body, &repo()) {
        Err(HubError::Protocol(m)) => assert!(m.contains("o/r"), "{m}"),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(&body[..body.len().min(80)])),
    }
}

/// Paths that are not a plain relative path inside the repo, each alone in a page with one
/// good file: only the good file survives.
const ESCAPING_PATHS: &[&str] = &[
    "..",
    ".",
    "../x",
    "../../../../etc/passwd",
    "a/../../x",
    "a/..",
    "a/./b",
    "./a",
    "/etc/passwd",
    "/",
    "//x",
    "a//b",
    "a/",
    "",
    "nul\0byte",
    "new\nline",
    "carriage\rreturn",
    "esc\x1b[2Jape",
    "tab\tx",
    "del\x7fx",
    "c1\u{85}x",
    "../",
    "..//..",
    "./",
];

#[test]
fn escaping_paths_are_skipped() {
    let mut tried = 0;
    for &bad in ESCAPING_PATHS {
        tried += 1;
        assert!(!valid_repo_path(bad), "{bad:?}");
        assert_eq!(kept(vec![file(bad, 1), file("good.txt", 2)]), vec!["good.txt"], "{bad:?}");
        // As the `lfs` form too: the path check comes before the hash.
        let mut lfs = file(bad, 1);
        lfs["lfs"] = json!({"oid": LFS, "size": 1});
        assert_eq!(kept(vec![lfs]), Vec::<String>::new(), "{bad:?}");
    }
    // Names that look dangerous but are plain names on Linux, as on the Hub: kept verbatim.
    for fine in ["...", "..a", "a..", ".hidden", "..\\..\\windows", "%2e%2e/x", "a b/ c"] {
        tried += 1;
        assert_eq!(kept(vec![file(fine, 1)]), vec![fine]);
    }
    report("escaping_paths_are_skipped", tried);
}

#[test]
fn duplicates_and_file_directory_clashes_leave_one_tree() {
    let entries = vec![
        file("dup.txt", 1),
        file("b/c", 2),
        file("dup.txt", 3),
        file("a", 4),
        file("a/x", 5),
        file("b", 6),
        file("b/c/d", 7),
        json!({"type": "directory", "path": "dup.txt", "oid": GIT, "size": 0}),
        file("dup.txt", 8),
    ];
    let tried = entries.len() - 1;
    // The parser keeps every servable entry; Manifest::build decides: first of duplicates,
    // and a path that is both a file and a directory is a directory.
    assert_eq!(kept(entries.clone()).len(), 8);
    assert_eq!(
        manifest_paths(entries),
        vec![("a/x".to_owned(), 5), ("b/c/d".to_owned(), 7), ("dup.txt".to_owned(), 1)]
    );
    report("duplicates_and_file_directory_clashes_leave_one_tree", tried);
}

#[test]
fn bad_sizes_skip_the_entry_or_fail_the_page() {
    // Each a `size` that no file can have: the entry is skipped, the page goes on.
    let skipped: Vec<Value> = vec![
        json!(-1),
        json!(-9_223_372_036_854_775_808i64),
        json!(1.5),
        json!(1e3),
        json!("12"),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!(MAX_FILE_SIZE + 1),
        json!(u64::MAX),
        json!(18_446_744_073_709_551_616f64),
    ];
    let mut tried = 0;
    for size in &skipped {
        tried += 1;
        let mut bad = file("bad", 0);
        bad["size"] = size.clone();
        assert_eq!(kept(vec![bad, file("ok", 1)]), vec!["ok"], "size {size}");
        // The LFS size decides for LFS files, so a bad one there is just as fatal (a null
        // one is an absent one: the entry's own size is used).
        let mut lfs = file("lfs", 1);
        lfs["lfs"] = json!({"oid": LFS, "size": size});
        let expected = if size.is_null() { vec!["lfs"] } else { vec![] };
        assert_eq!(kept(vec![lfs]), expected, "lfs.size {size}");
    }
    assert_eq!(kept(vec![file("edge", MAX_FILE_SIZE)]), vec!["edge"]);
    // Numbers JSON itself cannot carry into a u64 (spelled out, as a Hub could send them):
    // a number past f64 is a syntax error of the page; past u64 but finite, a skipped entry.
    let raw = |size: &str| {
        format!(r#"[{{"type":"file","path":"x","oid":"{GIT}","size":{size}}},{}]"#, file("ok", 1))
    };
    for size in ["1e400", "-1e400"] {
        tried += 1;
        assert_page_error(raw(size).as_bytes());
    }
    for size in
        ["18446744073709551616", "99999999999999999999999999999", "9007199254740993", "-0", "1E2"]
    {
        tried += 1;
        let got = parse_tree_page(raw(size).as_bytes(), &repo()).unwrap();
        let paths: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec!["ok"], "size {size}");
    }
    report("bad_sizes_skip_the_entry_or_fail_the_page", tried);
}

#[test]
fn missing_and_mistyped_fields_skip_the_entry() {
    let bad: Vec<Value> = vec![
        json!({"path": "x", "oid": GIT, "size": 1}),
        json!({"type": "file", "oid": GIT, "size": 1}),
        json!({"type": "file", "path": "x", "size": 1}),
        json!({"type": "file", "path": "x", "oid": GIT}),
        json!({"type": "file", "path": "x", "oid": &GIT[1..], "size": 1}),
        json!({"type": "file", "path": "x", "oid": format!("{GIT}0"), "size": 1}),
        json!({"type": "file", "path": "x", "oid": GIT.replace('0', "g"), "size": 1}),
        json!({"type": "file", "path": "x", "oid": 12, "size": 1}),
        json!({"type": "file", "path": 12, "oid": GIT, "size": 1}),
        json!({"type": "file", "path": ["x"], "oid": GIT, "size": 1}),
        json!({"type": 1, "path": "x", "oid": GIT, "size": 1}),
        json!({"type": "symlink", "path": "x", "oid": GIT, "size": 1}),
        json!({"type": "FILE", "path": "x", "oid": GIT, "size": 1}),
        json!({"type": "file", "path": "x", "oid": GIT, "size": 1, "lfs": "yes"}),
        json!({"type": "file", "path": "x", "oid": GIT, "size": 1, "lfs": {}}),
        json!({"type": "file", "path": "x", "oid": GIT, "size": 1, "lfs": {"oid": GIT}}),
        json!({"type": "file", "path": "x", "oid": GIT, "size": 1, "lfs": {"oid": null}}),
        json!({"type": "file", "path": "x", "oid": GIT, "lfs": {"oid": LFS}}),
        json!("a string"),
        json!(42),
        json!(null),
        json!([]),
        json!([file("nested", 1)]),
        json!({}),
    ];
    let tried = bad.len();
    for entry in bad {
        assert_eq!(kept(vec![entry.clone(), file("ok", 1)]), vec!["ok"], "{entry}");
    }
    // Unknown extra fields are ignored, as the Hub adds fields over time.
    let mut extra = file("extra", 1);
    extra["lastCommit"] = json!({"id": GIT, "title": "x", "date": "2024-01-01"});
    extra["xetHash"] = json!("abc");
    assert_eq!(kept(vec![extra]), vec!["extra"]);
    report("missing_and_mistyped_fields_skip_the_entry", tried);
}

#[test]
fn pages_that_are_not_json_arrays_are_clear_errors() {
    let deep_array = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_entry = format!(
        r#"[{{"type":"file","path":"x","oid":"{GIT}","size":1,"lfs":{}1{}}}]"#,
        "{\"a\":".repeat(10_000),
        "}".repeat(10_000)
    );
    let unclosed = "[".repeat(1_000_000);
    let bad: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b" ".to_vec(),
        b"null".to_vec(),
        b"{}".to_vec(),
        b"{\"entries\": []}".to_vec(),
        b"\"[]\"".to_vec(),
        b"[".to_vec(),
        b"[,]".to_vec(),
        b"[{},]".to_vec(),
        b"[] []".to_vec(),
        b"[]x".to_vec(),
        b"\xef\xbb\xbf[]".to_vec(),
        // Not UTF-8: a stray byte, a truncated sequence, an overlong `/`, an encoded surrogate.
        b"[{\"type\":\"file\",\"path\":\"\xff\"}]".to_vec(),
        b"[{\"type\":\"file\",\"path\":\"\xe6\x97\"}]".to_vec(),
        b"[{\"type\":\"file\",\"path\":\"..\xc0\xafetc\"}]".to_vec(),
        b"[{\"type\":\"file\",\"path\":\"\xed\xa0\x80\"}]".to_vec(),
        b"[\xff]".to_vec(),
        // Lone surrogates, escaped: valid JSON text, but no string.
        br#"[{"type":"file","path":"\ud800"}]"#.to_vec(),
        br#"[{"type":"file","path":"\udc00x"}]"#.to_vec(),
        deep_array.into_bytes(),
        deep_entry.into_bytes(),
        unclosed.into_bytes(),
        vec![0u8; 1000],
    ];
    let tried = bad.len();
    for body in &bad {
        assert_page_error(body);
    }
    // Nesting within serde_json's limit in an ignored field is fine.
    let shallow = format!(
        r#"[{{"type":"file","path":"x","oid":"{GIT}","size":1,"extra":{}1{}}}]"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert_eq!(parse_tree_page(shallow.as_bytes(), &repo()).unwrap().len(), 1);
    // An escaped NUL is valid JSON but not a path we present.
    let nul = format!(r#"[{{"type":"file","path":"a\u0000b","oid":"{GIT}","size":1}}]"#);
    assert_eq!(parse_tree_page(nul.as_bytes(), &repo()).unwrap(), vec![]);
    report("pages_that_are_not_json_arrays_are_clear_errors", tried + 1);
}

#[test]
fn overlong_names_are_skipped_at_the_kernel_limits() {
    let at = |n: usize| "c".repeat(n);
    // 15 components of 255 bytes, one of 128 and one of 127, and 16 slashes: 4096 bytes.
    let mut parts = vec![at(MAX_COMPONENT_LEN); 15];
    parts.push(at(128));
    parts.push(at(127));
    let longest = parts.join("/");
    assert_eq!(longest.len(), MAX_REPO_PATH_LEN);
    let deepest = vec!["d"; MAX_REPO_PATH_LEN / 2].join("/");
    assert_eq!(deepest.len(), MAX_REPO_PATH_LEN - 1);
    let good = vec![at(MAX_COMPONENT_LEN), longest.clone(), deepest.clone()];
    // 255 bytes of a 3-byte character is 85 characters; one more is over.
    let wide = "日".repeat(86);
    let bad = [
        at(MAX_COMPONENT_LEN + 1),
        format!("dir/{}", at(MAX_COMPONENT_LEN + 1)),
        format!("{longest}c"),
        format!("{deepest}/d"),
        at(10 << 20),
        vec!["d"; 1 << 20].join("/"),
        wide,
    ];
    let tried = bad.len();
    let mut entries: Vec<Value> = bad.iter().map(|p| file(p, 1)).collect();
    entries.extend(good.iter().map(|p| file(p, 1)));
    let start = Instant::now();
    assert_eq!(kept(entries), good);
    assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    report("overlong_names_are_skipped_at_the_kernel_limits", tried);
}

/// Tests that measure peak RSS hold this, so that one's allocations never count as another's.
static MEMORY_MEASURED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[test]
fn a_page_of_a_million_entries_is_parsed_in_bounded_time_and_memory() {
    let _alone = MEMORY_MEASURED.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 1_000_000;
    let mut body = Vec::with_capacity(N * 80);
    body.push(b'[');
    for i in 0..N {
        if i > 0 {
            body.push(b',');
        }
        // Every tenth entry is hostile, so skipping is measured too.
        let path = if i % 10 == 9 { format!("../f{i}") } else { format!("d{}/f{i}", i % 1000) };
        write!(body, r#"{{"type":"file","path":"{path}","oid":"{GIT}","size":{i}}}"#).unwrap();
    }
    body.push(b']');
    let before = peak_rss_mib();
    let start = Instant::now();
    let entries = parse_tree_page(&body, &repo()).unwrap();
    let parsed = start.elapsed();
    assert_eq!(entries.len(), N / 10 * 9);
    assert_eq!(entries[1].path, "d1/f1");
    let start = Instant::now();
    let m = manifest(entries);
    let built = start.elapsed();
    assert_eq!(m.files.len(), N / 10 * 9);
    let peak = peak_rss_mib();
    eprintln!(
        "million-entry page: {} MiB of JSON, parsed in {parsed:?}, manifest built in {built:?}, \
         peak RSS {before} -> {peak} MiB",
        body.len() >> 20
    );
    // Generous for a debug build of this crate on a shared CI core; a quadratic step would
    // take hours.
    assert!(parsed + built < Duration::from_secs(60), "{parsed:?} + {built:?}");
    report("a_page_of_a_million_entries_is_parsed_in_bounded_time_and_memory", N / 10);
}

#[test]
fn malformed_content_ranges_are_refused() {
    let bad = [
        "",
        "bytes",
        "bytes ",
        "bytes 0-1",
        "bytes 0-1/",
        "bytes -/*",
        "bytes 1-0/10",
        "bytes 0-10/10",
        "bytes 0-0/0",
        "bytes */100",
        "bytes 0-18446744073709551616/*",
        "bytes 18446744073709551615-18446744073709551616/*",
        "bytes 0--1/10",
        "bytes -0-1/10",
        "bytes +0-1/10",
        "bytes 0x0-0x1/10",
        "bytes 0-1/-10",
        "bytes 0-1/1e3",
        "bytes 0 -1/10",
        "bytes 0-1 /10",
        "bytes 0-1/10/20",
        "bytes 0-1/10, bytes 2-3/10",
        "bits 0-1/10",
        "bytes=0-1/10",
        "bytes\t0-1/10",
        "bytes ０-１/10",
        "bytes 0-1/*\0",
    ];
    for value in bad {
        assert_eq!(parse_content_range(value), None, "{value:?}");
    }
    assert_eq!(parse_content_range("bytes 0-9/10"), Some((0, 9, Some(10))));
    assert_eq!(
        parse_content_range("bytes 18446744073709551614-18446744073709551614/*"),
        Some((u64::MAX - 1, u64::MAX - 1, None))
    );
    report("malformed_content_ranges_are_refused", bad.len());
}

#[test]
fn malformed_link_headers_end_or_fail_the_listing_never_misdirect_it() {
    let none = [
        "",
        "<",
        ">",
        "<>",
        "<https://h/p>",
        "<https://h/p>; rel",
        "<https://h/p>; rel=",
        "<https://h/p>; rel=\"",
        "<https://h/p>; rel=\"nex\"",
        "<https://h/p>; rel=\"prev\"",
        "https://h/p; rel=\"next\"",
        "<https://h/p; rel=\"next\"",
        "<https://h/p>; title=\"rel=next\"",
        ", , ,",
        ";;;;",
        "<a>;rel=\"next,\"<b>",
    ];
    for value in none {
        assert_eq!(parse_link_next(value), None, "{value:?}");
    }
    // The target is what is between the first brackets, never beyond them, even when junk
    // follows.
    assert_eq!(parse_link_next("<a>b>; rel=next"), Some("a"));
    assert_eq!(parse_link_next("<x>; title=\"<y>; rel=next\", <z>; rel=next"), Some("z"));
    let base = Url::parse("https://hub.test/api/models/o/r/tree/main?recursive=true").unwrap();
    let errors: &[&[u8]] = &[
        b"<file:///etc/passwd>; rel=\"next\"",
        b"<javascript:alert(1)>; rel=\"next\"",
        b"<data:text/plain,x>; rel=\"next\"",
        b"<http://[::1>; rel=\"next\"",
        b"<http://h:99999/>; rel=\"next\"",
        b"<https://h/\xff>; rel=\"next\"",
    ];
    for value in errors {
        let mut headers = HeaderMap::new();
        headers.insert(LINK, HeaderValue::from_bytes(value).unwrap());
        assert!(
            matches!(next_page(&headers, &base), Err(HubError::Protocol(_))),
            "{:?}",
            String::from_utf8_lossy(value)
        );
    }
    report(
        "malformed_link_headers_end_or_fail_the_listing_never_misdirect_it",
        none.len() + 2 + errors.len(),
    );
}

// ------------------------------------------------------------------------------------------
// Through HTTP and a real mount
// ------------------------------------------------------------------------------------------

/// A Hub that answers one repo, `o/r` at `main`, with a tree page sent verbatim and file bytes
/// from a map; anything else is 404. One thread per connection, `Connection: close`.
struct RawHub {
    endpoint: String,
}

struct RawState {
    commit: String,
    page: Vec<u8>,
    files: BTreeMap<String, Vec<u8>>,
}

impl RawHub {
    fn start(page: Vec<u8>, files: BTreeMap<String, Vec<u8>>) -> RawHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(RawState { commit: "c".repeat(40), page, files });
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = state.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &state);
                });
            }
        });
        RawHub { endpoint }
    }
}

fn serve(mut stream: TcpStream, state: &RawState) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("").to_owned();
    let mut range = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = Some(value.trim().to_owned());
            }
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let tree = format!("/api/models/o/r/tree/{}", state.commit);
    let (status, extra, body) = if path == "/api/models/o/r/revision/main" {
        let body = json!({"id": "o/r", "sha": state.commit}).to_string().into_bytes();
        ("200 OK", String::new(), body)
    } else if path == tree {
        ("200 OK", String::new(), state.page.clone())
    } else if let Some(file) = path.strip_prefix(&format!("/o/r/resolve/{}/", state.commit)) {
        let file = percent_encoding::percent_decode_str(file).decode_utf8_lossy().into_owned();
        match (state.files.get(&file), range.as_deref().and_then(|r| r.strip_prefix("bytes="))) {
            (Some(data), Some(span)) => {
                let (a, b) = span.split_once('-').unwrap();
                let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                let b = b.min(data.len() - 1);
                let extra = format!("Content-Range: bytes {a}-{b}/{}\r\n", data.len());
                ("206 Partial Content", extra, data[a..=b].to_vec())
            }
            (Some(data), None) => ("200 OK", String::new(), data.clone()),
            (None, _) => ("404 Not Found", "X-Error-Code: EntryNotFound\r\n".into(), vec![]),
        }
    } else {
        ("404 Not Found", "X-Error-Code: RepoNotFound\r\n".into(), vec![])
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )?;
    stream.write_all(&body)?;
    // Drain what the client may still send, so closing does not reset the answer.
    stream.shutdown(std::net::Shutdown::Write)?;
    let _ = reader.read_to_end(&mut Vec::new());
    Ok(())
}

fn git_oid(data: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(format!("blob {}\0", data.len()).as_bytes());
    h.update(data);
    hex::encode(h.finalize())
}

/// The hostile page of the mount test, and the files it can serve. `dup.txt` is listed twice
/// with different contents; the first listing must win.
fn hostile_page() -> (Vec<u8>, BTreeMap<String, Vec<u8>>, usize) {
    let data = |s: &str| s.as_bytes().to_vec();
    let files: BTreeMap<String, Vec<u8>> = [
        ("ok.txt", data("fine\n")),
        ("d/in.txt", data("inside\n")),
        ("dup.txt", data("first\n")),
        ("clash/inner.txt", data("under the clash\n")),
        ("clash", data("clash as a file\n")),
        ("../escape.txt", data("escaped\n")),
        ("/abs.txt", data("absolute\n")),
    ]
    .into_iter()
    .map(|(p, d)| (p.to_owned(), d))
    .collect();
    let entry = |path: &str, data: &[u8]| json!({"type": "file", "path": path, "oid": git_oid(data), "size": data.len()});
    let mut page = vec![
        json!({"type": "directory", "path": "d", "oid": GIT, "size": 0}),
        json!({"type": "directory", "path": "..", "oid": GIT, "size": 0}),
    ];
    for (path, d) in &files {
        page.push(entry(path, d));
    }
    let hostile = vec![
        entry("dup.txt", b"second, longer\n"),
        entry("a/../../../etc/passwd", b"x"),
        entry("d/../../x", b"x"),
        entry("./dot", b"x"),
        entry("d//twice", b"x"),
        entry("nul\0.txt", b"x"),
        entry(&"n".repeat(256), b"x"),
        json!({"type": "file", "path": "huge", "oid": GIT, "size": MAX_FILE_SIZE + 1}),
        json!({"type": "file", "path": "neg", "oid": GIT, "size": -5}),
        json!({"type": "file", "path": "nohash", "size": 1}),
    ];
    // ../escape.txt, /abs.txt and clash (a file that is also a directory) above, plus these.
    let tried = 3 + hostile.len();
    page.extend(hostile);
    (Value::Array(page).to_string().into_bytes(), files, tried)
}

#[tokio::test]
async fn the_http_client_skips_hostile_entries() {
    let (page, _, tried) = hostile_page();
    let hub = RawHub::start(page, BTreeMap::new());
    let mut config = HubConfig::new(Url::parse(&hub.endpoint).unwrap());
    config.read_timeout = Duration::from_secs(10);
    let client = HubClient::new(config).unwrap();
    let commit = client.resolve(&repo(), "main").await.unwrap().commit;
    let listed = client.list_files(&repo(), &commit).await.unwrap();
    let mut paths: Vec<&str> = listed.iter().map(|e| e.path.as_str()).collect();
    paths.sort();
    // The list keeps the duplicate and the clash for Manifest::build to settle.
    assert_eq!(paths, vec!["clash", "clash/inner.txt", "d/in.txt", "dup.txt", "dup.txt", "ok.txt"]);
    let m = manifest(listed);
    let paths: Vec<&str> = m.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, vec!["clash/inner.txt", "d/in.txt", "dup.txt", "ok.txt"]);
    assert_eq!(m.file("dup.txt").unwrap().size, 6);
    assert!(matches!(m.file("ok.txt").unwrap().hash, FileHash::Git(_)));
    report("the_http_client_skips_hostile_entries", tried);
}

/// Every path under `dir`, relative to it, refusing to follow anything out of it.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let canonical = std::fs::canonicalize(&path).unwrap();
        assert!(canonical.starts_with(root), "{path:?} resolves to {canonical:?}");
        let rel = path.strip_prefix(root).unwrap().to_str().unwrap().to_owned();
        if entry.file_type().unwrap().is_dir() {
            out.push(format!("{rel}/"));
            walk(root, &path, out);
        } else {
            out.push(rel);
        }
    }
}

#[test]
fn a_mount_of_a_hostile_tree_shows_only_safe_paths() {
    let (page, files, tried) = hostile_page();
    let hub = RawHub::start(page, files);
    let store = temp_dir("hostile-store");
    let m = Mounted::start(&hub.endpoint, &store, &[]);
    let root = std::fs::canonicalize(m.path("o/r/all")).unwrap();
    let mut seen = Vec::new();
    walk(&root, &root, &mut seen);
    seen.sort();
    assert_eq!(
        seen,
        vec!["clash/", "clash/inner.txt", "d/", "d/in.txt", "dup.txt", "ok.txt"],
        "{}",
        m.log()
    );
    let read = |p: &str| std::fs::read_to_string(m.path(&format!("o/r/all/{p}"))).unwrap();
    assert_eq!(read("ok.txt"), "fine\n");
    assert_eq!(read("dup.txt"), "first\n");
    assert_eq!(read("clash/inner.txt"), "under the clash\n");
    // Looking the hostile names up directly finds nothing either.
    for name in ["o/r/all/../escape.txt", "o/r/all/abs.txt", "o/r/all/huge", "o/r/all/neg"] {
        let p = m.path(name);
        assert!(std::fs::metadata(&p).is_err() || !p.starts_with(m.path("o/r/all")), "{name}");
    }
    let log = m.log();
    assert!(log.contains("skipping"), "no skip was logged:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    m.stop();
    report("a_mount_of_a_hostile_tree_shows_only_safe_paths", tried);
}

/// Paths as deep as PATH_MAX allows, all different: every entry brings ~2,000 directory
/// prefixes. `Manifest::build` once collected every prefix of every path in a set (time and
/// memory in the square of the depth: 35 s and gigabytes for this input); it must now stay
/// within a few MiB of what the paths themselves take. Memory, not time, is asserted: it does
/// not depend on how busy the machine is.
#[test]
fn deep_unique_paths_stay_linear() {
    let _alone = MEMORY_MEASURED.lock().unwrap_or_else(|p| p.into_inner());
    const N: usize = 500;
    let tail = vec!["d"; 2000].join("/");
    let entries: Vec<Value> = (0..N).map(|i| file(&format!("x{i}/{tail}"), 1)).collect();
    let body = Value::Array(entries).to_string();
    let start = Instant::now();
    let parsed = parse_tree_page(body.as_bytes(), &repo()).unwrap();
    let parsed_in = start.elapsed();
    assert_eq!(parsed.len(), N);
    let before = peak_rss_mib();
    let start = Instant::now();
    let m = manifest(parsed);
    let built_in = start.elapsed();
    assert_eq!(m.files.len(), N);
    eprintln!(
        "{N} paths of 2001 components ({} MiB of JSON): parsed in {parsed_in:?}, manifest built \
         in {built_in:?}, peak RSS {before} -> {} MiB",
        body.len() >> 20,
        peak_rss_mib()
    );
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(grown < 64, "building the manifest raised peak RSS by {grown} MiB");
    report("deep_unique_paths_stay_linear", N);
}

/// The seed of the `manifest_decode` fuzz target is a record this build writes, so fuzzing
/// starts from valid archives instead of having to discover rkyv's layout. After a change of
/// the record format, rewrite it with `MODELFS_BLESS=1 cargo test --test hostile manifest_fuzz`.
#[test]
fn manifest_fuzz_seed_is_a_current_record() {
    let git =
        |p: &str, n: u8| FileEntry { path: p.into(), size: n.into(), hash: FileHash::Git([n; 20]) };
    let m = Manifest::build(
        repo(),
        "c".repeat(40),
        Some("text-generation".into()),
        vec![
            git("config.json", 1),
            FileEntry {
                path: "onnx/model_q4f16.onnx".into(),
                size: 1 << 40,
                hash: FileHash::Lfs([2; 32]),
            },
            git("日本語/モデル.bin", 3),
        ],
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/manifest_decode/sample.bin");
    if std::env::var_os("MODELFS_BLESS").is_some() {
        std::fs::write(&path, m.encode()).unwrap();
    }
    let seed = std::fs::read(&path).unwrap();
    assert_eq!(Manifest::decode(&seed).unwrap(), m);
}
