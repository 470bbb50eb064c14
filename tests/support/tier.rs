//! The shared tier's test kit: a real S3 server started on 127.0.0.1, the environment a
//! daemon needs to use it, and counts of what crossed the CDN and what landed in a tier.
//!
//! The server is moto's (pinned in tests/python/requirements.txt) unless `MODELFS_TEST_S3`
//! says `s3s-fs`: the s3s project's server over a directory, a second implementation that
//! shares no code with moto (another language, another request parser and signature
//! check), so that the tier is not tested against one server's reading of S3 alone.
//! `scripts/test_s3s.sh` installs it and runs the tier suites against it (README, "Tested with").

use std::path::Path;

use super::mock_hub::{MockHub, Origin};
use super::mount::{temp_dir, wait_for, TestDir, SETTLE};

/// Bytes the CDN sent in answer to range requests for LFS files (every fetch of file bytes).
pub fn cdn_bytes(hub: &MockHub) -> u64 {
    hub.requests()
        .iter()
        .filter(|r| r.origin == Origin::Cdn && r.status == 206)
        .filter_map(|r| {
            let (first, last) = r.range.as_deref()?.strip_prefix("bytes=")?.split_once('-')?;
            Some(last.parse::<u64>().ok()? - first.parse::<u64>().ok()? + 1)
        })
        .sum()
}

/// Chunk objects in a `file://` tier.
pub fn objects(dir: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

/// The AWS environment that points a daemon at the S3 server at `endpoint`. The secret is
/// a value tests look for in logs: it must never appear there.
pub fn s3_env(endpoint: &str) -> [(&'static str, &str); 5] {
    [
        ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
}

pub const S3_ACCESS_KEY: &str = "modelfs-test";
pub const S3_SECRET: &str = "modelfs-test-secret";

/// Which S3 implementation [`S3Server::start`] runs, from `MODELFS_TEST_S3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Kind {
    /// moto's server (Python): the default, installed by scripts/setup.sh.
    Moto,
    /// s3s-fs (Rust, objects as files under a directory): `MODELFS_TEST_S3=s3s-fs`, the binary
    /// from `MODELFS_S3S_FS` or `PATH` (scripts/test_s3s.sh installs it).
    S3sFs,
}

impl S3Kind {
    pub fn from_env() -> S3Kind {
        match std::env::var("MODELFS_TEST_S3").as_deref() {
            Err(_) | Ok("") | Ok("moto") => S3Kind::Moto,
            Ok("s3s-fs") => S3Kind::S3sFs,
            Ok(other) => panic!("MODELFS_TEST_S3={other:?}: expected moto or s3s-fs"),
        }
    }
}

/// A real S3 implementation, started here on 127.0.0.1 with one bucket: path-style requests,
/// the credentials of [`s3_env`].
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
    pub kind: S3Kind,
    /// s3s-fs's root directory (one directory per bucket), removed after the server stops.
    _root: Option<TestDir>,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        match S3Kind::from_env() {
            S3Kind::Moto => {
                let child = std::process::Command::new("python3")
                    .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("python3 cannot be run ({e}): run scripts/setup.sh")
                    });
                let server = S3Server { child, endpoint, kind: S3Kind::Moto, _root: None };
                // Creating the bucket is the readiness check: moto answers once it is up, and
                // takes unsigned requests.
                wait_for("the S3 server (moto[server]: run scripts/setup.sh)", SETTLE, || {
                    server.request("PUT", &format!("/{bucket}")).is_some_and(|status| status == 200)
                });
                server
            }
            S3Kind::S3sFs => {
                // s3s-fs checks signatures once it has a key pair, and refuses unsigned
                // requests then; without one it refuses signed requests. So it gets the
                // tests' pair, and the bucket is made the way s3s-fs stores one: a directory
                // under its root.
                let root = temp_dir("s3s-fs");
                std::fs::create_dir(root.join(bucket)).expect("create the bucket's directory");
                let bin = std::env::var("MODELFS_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
                // Its log beside the bucket: a file at the root is no bucket and no object.
                let log = std::fs::File::create(root.join("s3s-fs.log")).expect("s3s-fs log");
                let child = std::process::Command::new(&bin)
                    .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                    .args(["--access-key", S3_ACCESS_KEY, "--secret-key", S3_SECRET])
                    .arg(&*root)
                    .stdout(std::process::Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("{bin} cannot be run ({e}): scripts/test_s3s.sh installs it")
                    });
                let server = S3Server { child, endpoint, kind: S3Kind::S3sFs, _root: Some(root) };
                // Up once it answers at all (an unsigned request is refused, with a status).
                wait_for("the S3 server (s3s-fs)", SETTLE, || server.request("GET", "/").is_some());
                server
            }
        }
    }

    /// One unsigned request; the status, or `None` if nothing answered. moto takes unsigned
    /// requests; s3s-fs answers them 403.
    pub fn request(&self, method: &str, path: &str) -> Option<u16> {
        self.get_body(method, path).map(|(status, _)| status)
    }

    pub fn get_body(&self, method: &str, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        Some((status, out))
    }

    /// A client of `bucket` on this server with the tests' credentials, as the daemon builds
    /// one (object_store's, signed requests, which every server takes).
    pub fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_bucket_name(bucket)
            .with_access_key_id(S3_ACCESS_KEY)
            .with_secret_access_key(S3_SECRET)
            .with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch)
            .build()
            .expect("an S3 client for the test server")
    }

    /// Objects in `bucket`, listed through the S3 API: 0 if the listing fails.
    pub fn objects(&self, bucket: &str) -> usize {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let s3 = self.client(bucket);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(s3.list(None).try_collect::<Vec<_>>()).map_or(0, |listed| listed.len())
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
