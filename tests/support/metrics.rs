//! Reading a mount's `--metrics-addr` endpoint from a test: one plain HTTP GET, the address
//! the daemon logged, and a sample out of the text exposition.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::mount::Mounted;

pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.1 GET on a fresh connection.
pub fn get(addr: &str, path: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").expect("a response head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    Ok(Answer { status, head: head.to_owned(), body: body.to_owned() })
}

/// The address the daemon logged: `metrics listening on http://ADDR`.
pub fn metrics_addr(m: &Mounted) -> String {
    let log = m.log();
    let rest = log
        .split("metrics listening on http://")
        .nth(1)
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    rest.chars().take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c)).collect()
}

/// The value of `series` (`name` or `name{label="value"}`, as exposed) in `/metrics` now.
pub fn sample(addr: &str, series: &str) -> f64 {
    let answer = get(addr, "/metrics").expect("GET /metrics");
    answer
        .body
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from:\n{}", answer.body))
}
