//! The shared tier's test kit: a real S3 server started on 127.0.0.1 (moto's, pinned in
//! tests/python/requirements.txt), the environment a daemon needs to use it, and counts of
//! what crossed the CDN and what landed in a tier.

use std::path::Path;

use super::mock_hub::{MockHub, Origin};
use super::mount::{wait_for, SETTLE};

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

/// Chunk objects in a `file://` tier (repo metadata, under `repos/`, is not counted).
pub fn objects(dir: &Path) -> usize {
    fn walk(p: &Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum()
            })
            .unwrap_or(0)
    }
    walk(&dir.join("chunks"))
}

/// The AWS environment that points a daemon at the S3 server at `endpoint`. The secret is
/// a value tests look for in logs: it must never appear there.
pub fn s3_env(endpoint: &str) -> [(&'static str, &str); 5] {
    [
        ("AWS_ACCESS_KEY_ID", "modelfs-test"),
        ("AWS_SECRET_ACCESS_KEY", S3_SECRET),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
}

pub const S3_SECRET: &str = "modelfs-test-secret";

/// A real S3 implementation, started here on 127.0.0.1: moto's server (tests/python/
/// requirements.txt pins it), path-style requests, any credentials.
pub struct S3Server {
    child: std::process::Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 cannot be run ({e}): run scripts/setup.sh"));
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = S3Server { child, endpoint };
        // Creating the bucket is the readiness check: moto answers once it is up.
        wait_for("the S3 server (moto[server]: run scripts/setup.sh)", SETTLE, || {
            server.request("PUT", &format!("/{bucket}")).is_some_and(|status| status == 200)
        });
        server
    }

    /// One request, with a made-up signature (moto does not check signatures, but takes a
    /// request without one for an anonymous user's, who may not delete objects); the status,
    /// or `None` if nothing answered.
    pub fn request(&self, method: &str, path: &str) -> Option<u16> {
        self.get_body(method, path).map(|(status, _)| status)
    }

    pub fn get_body(&self, method: &str, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        let auth = "AWS4-HMAC-SHA256 Credential=modelfs-test/20250101/us-east-1/s3/aws4_request, \
                    SignedHeaders=host, Signature=0";
        write!(s, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {auth}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        Some((status, out))
    }

    /// Chunk objects in `bucket` (one listing page: these tests write fewer than 1000; repo
    /// metadata, under `repos/`, is not counted).
    pub fn objects(&self, bucket: &str) -> usize {
        self.get_body("GET", &format!("/{bucket}?list-type=2")).map_or(0, |(_, body)| {
            body.split("<Key>").skip(1).filter(|k| k.contains("chunks/v1/")).count()
        })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
