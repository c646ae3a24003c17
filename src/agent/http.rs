//! The metrics endpoint: the little HTTP/1.1 that Prometheus needs to scrape `GET /metrics`,
//! when `metrics_listen` is set.
//!
//! Written here rather than taken from a crate: a scrape is one request and one response on a
//! connection that is then closed, so the whole server is a request-line and header reader with
//! limits. An HTTP crate (tiny_http, hyper) would bring a thread pool or an async runtime, its
//! own buffering and its own limits to audit, for features (keep-alive, chunked bodies, TLS)
//! that Prometheus does not need here; this keeps every limit in view and in the agent's own
//! style (the socket server's).
//!
//! The limits, against the same hostile clients as the socket:
//!
//! - at most [`MAX_CONNECTIONS`] connections are served at once, each on its own thread; one
//!   more is answered `503` at once from the accept loop (with a short write deadline) and
//!   closed, so a crowd of clients costs a bounded number of threads;
//! - the request line and headers must arrive within [`READ_DEADLINE`] in total, and fit in
//!   [`MAX_HEAD`] bytes (`408`, `431`), so a slowloris client is cut off and a huge header is
//!   never read whole; a request body is never read;
//! - the answer is written within [`WRITE_DEADLINE`], and the connection is closed.
//!
//! None of it holds the engine's lock but to list the publications, like `ls`; the counters are
//! read without it (`metrics::scrape`). The agent's own work never waits for a client.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::engine::Engine;
use super::{log, metrics};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// How long a client may take to send its request line and headers.
pub const READ_DEADLINE: Duration = Duration::from_secs(5);
/// The most a request line and its headers may hold.
pub const MAX_HEAD: usize = 8 * 1024;
/// How long writing the answer may take.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// How long the accept loop tries to tell a client over the limit.
const TURN_AWAY_WRITE: Duration = Duration::from_millis(200);

/// Binds the metrics listener (`metrics_listen`).
pub fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| format!("metrics_listen: cannot listen on {addr}"))
}

/// Serves scrapes until the process exits.
pub fn serve(listener: TcpListener, engine: Arc<Mutex<Engine>>) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn(&format!("metrics: accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(TURN_AWAY_WRITE));
            respond(&stream, 503, "Service Unavailable", "too many connections; try again\n", false);
            continue;
        }
        let (engine, active) = (Arc::clone(&engine), Arc::clone(&active));
        std::thread::spawn(move || {
            handle(&stream, &engine);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Why a request is not answered with the metrics.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Status, reason phrase and body.
    Status(u16, &'static str, &'static str),
    /// The client went away, or the connection failed: nothing to answer.
    Gone,
}

fn handle(stream: &TcpStream, engine: &Mutex<Engine>) {
    let _ = stream.set_write_timeout(Some(WRITE_DEADLINE));
    match read_head(stream, READ_DEADLINE).and_then(|head| route(&head)) {
        Ok(head_only) => {
            let body = metrics::scrape(engine);
            respond_with(stream, 200, "OK", body.body_len(), head_only, &mut |w| body.write_to(w));
            drop(body);
            crate::sys::release_memory();
        }
        Err(Refused::Status(code, reason, body)) => respond(stream, code, reason, body, false),
        Err(Refused::Gone) => {}
    }
}

/// Reads the request line and headers (up to the empty line), within `timeout` in total and
/// [`MAX_HEAD`] bytes. A read interrupted by a signal goes on with what is left of the deadline.
fn read_head(stream: &TcpStream, timeout: Duration) -> Result<String, Refused> {
    let deadline = Instant::now() + timeout;
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = find_end(&head) {
            head.truncate(end);
            return String::from_utf8(head).map_err(|_| Refused::Status(400, "Bad Request", "not a request\n"));
        }
        if head.len() > MAX_HEAD {
            return Err(Refused::Status(431, "Request Header Fields Too Large", "request headers too large\n"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Refused::Status(408, "Request Timeout", "no complete request in time\n"));
        }
        let _ = stream.set_read_timeout(Some(left));
        match (&*stream).read(&mut chunk) {
            Ok(0) => return Err(Refused::Gone),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(Refused::Status(408, "Request Timeout", "no complete request in time\n"));
            }
            Err(_) => return Err(Refused::Gone),
        }
    }
}

/// Where the head ends: the first empty line (CRLF CRLF, or LF LF from a lenient client).
fn find_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = head.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the request is `GET /metrics` (Ok(false)) or `HEAD /metrics` (Ok(true)).
fn route(head: &str) -> Result<bool, Refused> {
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refused::Status(400, "Bad Request", "expected: GET /metrics HTTP/1.1\n"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Refused::Status(505, "HTTP Version Not Supported", "HTTP/1.0 or HTTP/1.1 only\n"));
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Err(Refused::Status(404, "Not Found", "only /metrics is served here\n"));
    }
    match method {
        "GET" => Ok(false),
        "HEAD" => Ok(true),
        _ => Err(Refused::Status(405, "Method Not Allowed", "GET or HEAD only\n")),
    }
}

/// Writes a complete answer and lets the connection close.
fn respond(stream: &TcpStream, code: u16, reason: &str, body: &str, head_only: bool) {
    respond_with(stream, code, reason, body.len(), head_only, &mut |w| w.write_all(body.as_bytes()));
}

/// Writes a complete answer whose body of `len` bytes `body` writes, straight into the
/// connection's buffer (a scrape's is megabytes at thousands of publications), and lets the
/// connection close.
fn respond_with(
    stream: &TcpStream,
    code: u16,
    reason: &str,
    len: usize,
    head_only: bool,
    body: &mut dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()>,
) {
    let kind = if code == 200 { "text/plain; version=0.0.4; charset=utf-8" } else { "text/plain; charset=utf-8" };
    let allow = if code == 405 { "Allow: GET, HEAD\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n{allow}Connection: close\r\n\r\n"
    );
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, stream);
    let _ = w.write_all(head.as_bytes());
    if !head_only {
        let _ = body(&mut w);
    }
    let _ = w.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_and_head_of_metrics_are_answered() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x"), Ok(false));
        assert_eq!(route("HEAD /metrics?x=1 HTTP/1.0"), Ok(true));
        let status = |head: &str| match route(head) {
            Err(Refused::Status(code, ..)) => code,
            other => panic!("{head:?}: {other:?}"),
        };
        assert_eq!(status("POST /metrics HTTP/1.1"), 405);
        assert_eq!(status("GET / HTTP/1.1"), 404);
        assert_eq!(status("GET /metrics/x HTTP/1.1"), 404);
        assert_eq!(status("GET /metrics HTTP/2"), 505);
        assert_eq!(status("GET /metrics"), 400);
        assert_eq!(status("GET  /metrics HTTP/1.1"), 400);
        assert_eq!(status(""), 400);
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(20));
        assert_eq!(find_end(b"GET / HTTP/1.1\nA: b\n\n"), Some(19));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }
}
