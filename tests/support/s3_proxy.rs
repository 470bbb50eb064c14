//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1, between a daemon and a real S3 server
//! (moto, [`super::tier::S3Server`]), for the tier's fault matrix (`tests/tier_faults.rs`).
//!
//! The daemon's `AWS_ENDPOINT_URL` points here; each request is forwarded to the server and
//! its answer passed back, except while a [`Fault`] is set (for every request, or for one
//! method): then the answer never comes, is an error, comes slowly, or has the wrong length.
//! The S3 server stays the real thing (its keys, listings, conditional writes, 404s); only the
//! answers on the wire between it and the daemon are changed, which is where a tier in trouble
//! shows up for a client.
//!
//! Plain threads and blocking sockets: one thread per client connection, serving the
//! keep-alive requests object_store's pooled connections send one after another. Each
//! request gets a fresh upstream connection with `Connection: close`, and the whole answer is
//! read before any of it is passed on, so a fault can change the body and its
//! `Content-Length` together, and a slow answer is slow on the client's side only.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// What goes wrong with the answers while it is set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Read the request and never answer: the connection is held, silent, until the fault is
    /// cleared (or the proxy dropped), then closed.
    Stall,
    /// This status with S3's XML error for it, without asking the server.
    Status(u16),
    /// The server's answer, asked for only after `first_byte` (so the object is looked up
    /// then: one deleted meanwhile is a 404), its body sent at `bytes_per_sec`.
    Slow { first_byte: Duration, bytes_per_sec: u64 },
    /// The server's answer to a `GET` of an object (status 200) with `delta` bytes added
    /// (zeros) to the end of its body or, if negative, removed from it, and a
    /// `Content-Length` to match: well-formed HTTP carrying an object of the wrong length.
    WrongLength(i64),
    /// 403 with S3's `SignatureDoesNotMatch`: the credentials are refused.
    Forbidden,
}

/// A fault, and the method it is limited to (`None`: every request).
#[derive(Clone, Debug)]
struct Rule {
    fault: Fault,
    method: Option<String>,
}

struct Shared {
    /// `host:port` of the S3 server.
    upstream: String,
    rule: Mutex<Option<Rule>>,
    /// Requests received, by method.
    requests: Mutex<BTreeMap<String, usize>>,
    /// Requests whose answer a fault changed, by method.
    faulted: Mutex<BTreeMap<String, usize>>,
    stop: AtomicBool,
}

/// A test never leaves shared state half-updated across a panic, so a poisoned lock is
/// still consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub struct S3Proxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
}

impl S3Proxy {
    /// Listen on an ephemeral port of 127.0.0.1 and forward to `upstream`
    /// (`http://host:port`, the S3 server's endpoint). Panics when it cannot bind.
    pub fn start(upstream: &str) -> S3Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("S3 proxy: bind 127.0.0.1");
        let addr = listener.local_addr().expect("S3 proxy: local address");
        let shared = Arc::new(Shared {
            upstream: upstream.trim_start_matches("http://").trim_end_matches('/').to_owned(),
            rule: Mutex::new(None),
            requests: Mutex::new(BTreeMap::new()),
            faulted: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        });
        let accept_shared = shared.clone();
        let accept = std::thread::Builder::new()
            .name("s3-proxy".to_owned())
            .spawn(move || {
                for conn in listener.incoming() {
                    if accept_shared.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let shared = accept_shared.clone();
                    // Detached: a connection ends when its client closes it, or at the first
                    // request after the proxy is dropped.
                    let _ = std::thread::Builder::new()
                        .name("s3-proxy-conn".to_owned())
                        .spawn(move || serve(&shared, conn));
                }
            })
            .expect("S3 proxy: spawn");
        S3Proxy { shared, addr, accept: Some(accept) }
    }

    /// `http://127.0.0.1:P`, what the daemon's `AWS_ENDPOINT_URL` should be.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Apply `fault` to every request from now on, until [`Self::clear`].
    pub fn set(&self, fault: Fault) {
        *lock(&self.shared.rule) = Some(Rule { fault, method: None });
    }

    /// Apply `fault` to requests with this method (`GET`, `PUT`, ...) only.
    pub fn set_for(&self, method: &str, fault: Fault) {
        *lock(&self.shared.rule) = Some(Rule { fault, method: Some(method.to_owned()) });
    }

    /// Forward every request as it is; stalled requests are let go (their connections closed).
    pub fn clear(&self) {
        *lock(&self.shared.rule) = None;
    }

    /// Requests received with this method so far, faulted or not.
    pub fn requests(&self, method: &str) -> usize {
        lock(&self.shared.requests).get(method).copied().unwrap_or(0)
    }

    /// Requests with this method whose answer a fault changed.
    pub fn faulted(&self, method: &str) -> usize {
        lock(&self.shared.faulted).get(method).copied().unwrap_or(0)
    }

    /// Requests received so far, by method: for a failure message.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        lock(&self.shared.requests).clone()
    }
}

impl Drop for S3Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// One request or answer as read off the wire: the first line, the headers as sent, the body
/// (de-chunked if it came chunked).
struct Message {
    first_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Headers about one connection rather than the message: never passed on as received.
fn hop_by_hop(name: &str) -> bool {
    ["connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"]
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h))
}

/// Serve one client connection: its requests one after another, until it closes.
fn serve(shared: &Shared, client: TcpStream) {
    let Ok(read_half) = client.try_clone() else { return };
    let mut reader = BufReader::new(read_half);
    let mut writer = client;
    loop {
        let request = match read_message(&mut reader, false) {
            Ok(Some(request)) => request,
            // Closed by the client, or not HTTP: either way this connection is over.
            Ok(None) | Err(_) => return,
        };
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let method = request.first_line.split(' ').next().unwrap_or("").to_owned();
        *lock(&shared.requests).entry(method.clone()).or_default() += 1;
        let fault = lock(&shared.rule)
            .clone()
            .filter(|r| r.method.as_deref().is_none_or(|m| m == method))
            .map(|r| r.fault);
        let count_fault = || *lock(&shared.faulted).entry(method.clone()).or_default() += 1;
        let answered = match fault {
            Some(Fault::Stall) => {
                count_fault();
                while lock(&shared.rule).as_ref().is_some_and(|r| r.fault == Fault::Stall)
                    && !shared.stop.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                return;
            }
            Some(Fault::Status(status)) => {
                count_fault();
                let (code, message) = match status {
                    500 => ("InternalError", "We encountered an internal error. Please try again."),
                    503 => ("SlowDown", "Please reduce your request rate."),
                    _ => ("ServiceUnavailable", "The service is unavailable."),
                };
                write_message(&mut writer, &s3_error(status, code, message), &method, None)
            }
            Some(Fault::Forbidden) => {
                count_fault();
                let message = "The request signature we calculated does not match the \
                               signature you provided. Check your key and signing method.";
                write_message(
                    &mut writer,
                    &s3_error(403, "SignatureDoesNotMatch", message),
                    &method,
                    None,
                )
            }
            Some(Fault::Slow { first_byte, bytes_per_sec }) => {
                count_fault();
                std::thread::sleep(first_byte);
                match forward(&shared.upstream, &request) {
                    Ok(answer) => write_message(&mut writer, &answer, &method, Some(bytes_per_sec)),
                    Err(_) => return,
                }
            }
            Some(Fault::WrongLength(delta)) => match forward(&shared.upstream, &request) {
                Ok(mut answer) => {
                    if method == "GET" && answer.first_line.split(' ').nth(1) == Some("200") {
                        count_fault();
                        let len = answer.body.len() as i64 + delta;
                        answer.body.resize(len.max(0) as usize, 0);
                    }
                    write_message(&mut writer, &answer, &method, None)
                }
                Err(_) => return,
            },
            None => match forward(&shared.upstream, &request) {
                Ok(answer) => write_message(&mut writer, &answer, &method, None),
                Err(_) => return,
            },
        };
        if answered.is_err() {
            return;
        }
    }
}

/// An S3 error answer, as S3 sends it: the status and an XML `<Error>` body.
fn s3_error(status: u16, code: &str, message: &str) -> Message {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><RequestId>s3-proxy</RequestId></Error>"
    );
    Message {
        first_line: format!("HTTP/1.1 {status} {code}"),
        headers: vec![("Content-Type".to_owned(), "application/xml".to_owned())],
        body: body.into_bytes(),
    }
}

/// Send `request` to the server on a connection of its own, and read its whole answer.
fn forward(upstream: &str, request: &Message) -> io::Result<Message> {
    let mut conn = TcpStream::connect(upstream)?;
    let mut head = format!("{}\r\n", request.first_line);
    for (name, value) in request.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\nConnection: close\r\n\r\n", request.body.len()));
    conn.write_all(head.as_bytes())?;
    conn.write_all(&request.body)?;
    let head_request = request.first_line.starts_with("HEAD ");
    read_message(&mut BufReader::new(conn), head_request)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer from the server"))
}

/// Write `message` (an answer) with a `Content-Length` of its body; at `pace` bytes per
/// second if given. The answer to a `HEAD` keeps the length the server gave, with no body.
fn write_message(
    out: &mut TcpStream,
    message: &Message,
    method: &str,
    pace: Option<u64>,
) -> io::Result<()> {
    // Always 1.1: an answer passed on as HTTP/1.0 would end the client's keep-alive.
    let status = message.first_line.split_once(' ').map_or("502 Bad Gateway", |(_, s)| s);
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (name, value) in message.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let length = match (method, message.header("content-length")) {
        ("HEAD", Some(length)) => length.to_owned(),
        _ => message.body.len().to_string(),
    };
    head.push_str(&format!("Content-Length: {length}\r\n\r\n"));
    out.write_all(head.as_bytes())?;
    if method == "HEAD" {
        return out.flush();
    }
    match pace {
        None => out.write_all(&message.body)?,
        Some(rate) => {
            // Twenty pieces a second: smooth enough for a rate, few enough to cost nothing.
            let piece = (rate / 20).max(1) as usize;
            for part in message.body.chunks(piece) {
                out.write_all(part)?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    out.flush()
}

/// Read one HTTP/1.1 message: `None` if the connection closed before its first byte. The
/// body is as long as `Content-Length` says, de-chunked if chunked, or (an answer with
/// neither) everything up to the close. `no_body`: the answer to a `HEAD`.
fn read_message(r: &mut impl BufRead, no_body: bool) -> io::Result<Option<Message>> {
    let mut first_line = String::new();
    if r.read_line(&mut first_line)? == 0 {
        return Ok(None);
    }
    let first_line = first_line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "cut in the headers"));
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "a header without ':'"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut message = Message { first_line, headers, body: Vec::new() };
    let is_request = !message.first_line.starts_with("HTTP/");
    let status = if is_request { "" } else { message.first_line.split(' ').nth(1).unwrap_or("") };
    let bodiless_status = ["204", "304"].contains(&status) || status.starts_with('1');
    if no_body || bodiless_status {
        return Ok(Some(message));
    }
    let chunked = message.header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
    let length = message.header("content-length").map(str::parse::<usize>).transpose();
    let length =
        length.map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
    message.body = match (chunked, length) {
        (true, _) => read_chunked(r)?,
        (false, Some(n)) => {
            let mut body = vec![0; n];
            r.read_exact(&mut body)?;
            body
        }
        // A request without either has no body; an answer without either ends at the close.
        (false, None) if is_request => Vec::new(),
        (false, None) => {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            body
        }
    };
    Ok(Some(message))
}

/// A chunked body, de-chunked (trailers are read and dropped).
fn read_chunked(r: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "bad chunked body");
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size)?;
        let size = size.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size.trim(), 16).map_err(|_| bad())?;
        if size == 0 {
            loop {
                let mut trailer = String::new();
                if r.read_line(&mut trailer)? == 0 || trailer.trim_end().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        r.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(bad());
        }
    }
}
