//! The shared tier's test kit: a real S3 server started on 127.0.0.1, the environment a
//! daemon needs to use it, and counts of what crossed the CDN and what landed in a tier.
//!
//! The server is moto's (pinned in tests/python/requirements.txt) unless `MODELFS_TEST_S3`
//! says `s3s-fs`: the s3s project's server over a directory, a second implementation that
//! shares no code with moto (another language, another request parser and signature
//! check), so that the tier is not tested against one server's reading of S3 alone.
//! `scripts/test_s3s.sh` installs it and runs the tier suites against it (README, "Tested
//! with"). The kit's own requests are signed, as s3s-fs requires, so a test reads the same
//! against either server.

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
    /// s3s-fs's root directory (a directory per bucket), removed after the server stops.
    _root: Option<TestDir>,
}

impl S3Server {
    pub fn start(bucket: &str) -> S3Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let kind = S3Kind::from_env();
        let (child, root, what) = match kind {
            S3Kind::Moto => {
                let child = std::process::Command::new("python3")
                    .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap_or_else(|e| {
                        panic!("python3 cannot be run ({e}): run scripts/setup.sh")
                    });
                (child, None, "the S3 server (moto[server]: run scripts/setup.sh)")
            }
            S3Kind::S3sFs => {
                // s3s-fs checks signatures once it has a key pair (and refuses unsigned
                // requests then); without one it refuses signed requests. So it gets the
                // tests' pair, and every request here is signed.
                let root = temp_dir("s3s-fs");
                let bin = std::env::var("MODELFS_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
                // Its log at the root: a file there is no bucket and no object.
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
                (child, Some(root), "the S3 server (s3s-fs)")
            }
        };
        let server = S3Server { child, endpoint, kind, _root: root };
        // Creating the bucket is the readiness check: it succeeds once the server is up.
        wait_for(what, SETTLE, || {
            server.request("PUT", &format!("/{bucket}")).is_some_and(|status| status == 200)
        });
        server
    }

    /// One request with an empty body, signed (AWS Signature Version 4, the tests' key pair,
    /// `us-east-1`): the status, or `None` if nothing answered. `path` is `/bucket[/key]`
    /// with an optional `?query`, in characters that need no escaping.
    pub fn request(&self, method: &str, path: &str) -> Option<u16> {
        self.get_body(method, path).map(|(status, _)| status)
    }

    /// As [`S3Server::request`], with the whole answer (head and body).
    pub fn get_body(&self, method: &str, path: &str) -> Option<(u16, String)> {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let auth = sign_v4(method, addr, path, std::time::SystemTime::now());
        let mut s = std::net::TcpStream::connect(addr).ok()?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
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

    /// Chunk objects in `bucket`, listed through the S3 API (repo metadata, under `repos/`,
    /// is not counted): 0 if the listing fails.
    pub fn objects(&self, bucket: &str) -> usize {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let s3 = self.client(bucket);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listed = rt.block_on(s3.list(None).try_collect::<Vec<_>>());
        listed.map_or(0, |all| {
            all.iter().filter(|o| o.location.as_ref().contains("chunks/v1/")).count()
        })
    }
}

/// The headers that sign a request with an empty body (AWS Signature Version 4, as in the S3
/// API reference's "Authenticating Requests": canonical request, string to sign, key derived
/// from the secret by date, region and service), each line ending in CRLF.
fn sign_v4(method: &str, host: &str, path: &str, at: std::time::SystemTime) -> String {
    use sha2::{Digest, Sha256};
    let (uri, query) = path.split_once('?').unwrap_or((path, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| if p.contains('=') { p.to_owned() } else { format!("{p}=") })
        .collect();
    params.sort();
    let (stamp, day) = amz_date(at);
    let empty = hex::encode(Sha256::digest(b""));
    let signed = "host;x-amz-content-sha256;x-amz-date";
    let canonical = format!(
        "{method}\n{uri}\n{}\nhost:{host}\nx-amz-content-sha256:{empty}\nx-amz-date:{stamp}\n\n{signed}\n{empty}",
        params.join("&")
    );
    let scope = format!("{day}/us-east-1/s3/aws4_request");
    let to_sign =
        format!("AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}", hex::encode(Sha256::digest(canonical)));
    let mut key = hmac_sha256(format!("AWS4{S3_SECRET}").as_bytes(), day.as_bytes());
    for part in ["us-east-1", "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    format!(
        "x-amz-date: {stamp}\r\nx-amz-content-sha256: {empty}\r\nAuthorization: AWS4-HMAC-SHA256 \
         Credential={S3_ACCESS_KEY}/{scope}, SignedHeaders={signed}, Signature={signature}\r\n"
    )
}

/// HMAC-SHA256 (RFC 2104), which the signature is made of.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let inner =
        Sha256::new().chain_update(block.map(|b| b ^ 0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(block.map(|b| b ^ 0x5c)).chain_update(inner).finalize().to_vec()
}

/// `at` as the signature writes it: `YYYYMMDDTHHMMSSZ` and `YYYYMMDD`, UTC.
fn amz_date(at: std::time::SystemTime) -> (String, String) {
    let secs = at.duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970").as_secs();
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (proleptic Gregorian), by 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let date = format!("{year:04}{month:02}{day:02}");
    let time = format!("{:02}{:02}{:02}", rest / 3600, rest / 60 % 60, rest % 60);
    (format!("{date}T{time}Z"), date)
}

/// The signature's pieces against published values: RFC 4231's first HMAC-SHA256 vector, and
/// dates either side of a leap day.
#[test]
fn signature_pieces() {
    let mac = hmac_sha256(&[0x0b; 20], b"Hi There");
    assert_eq!(
        hex::encode(mac),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    let at = |s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
    assert_eq!(amz_date(at(0)), ("19700101T000000Z".into(), "19700101".into()));
    assert_eq!(amz_date(at(951_782_399)).0, "20000228T235959Z");
    assert_eq!(amz_date(at(951_782_400)).0, "20000229T000000Z");
    assert_eq!(amz_date(at(1_709_251_199)).0, "20240229T235959Z");
    assert_eq!(amz_date(at(1_709_251_200)).0, "20240301T000000Z");
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
