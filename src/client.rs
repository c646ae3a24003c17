//! The client side of the socket protocol.
//!
//! Requests go out with the protocol version (see [`crate::proto`]); an answer of another
//! version is an error naming both, never data read by the wrong rules.
//!
//! One request has one deadline for the whole exchange (connect, send, and the whole answer
//! line), so a busy or hung agent costs the caller at most that long; and the answer is read up to
//! a size limit, so a broken agent cannot make the client allocate without bound.

use std::io::{Read as _, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, setsockopt, socket, sockopt};
use nix::sys::time::TimeVal;

use crate::proto::{Request, Response, VERSION, encode_request};

/// The deadline of a request when the caller gives none (`kleenectl --timeout`'s default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest answer read, in bytes. The largest answers are `ls` and `rules` on a host with
/// many publications: one `ls` line is 250-400 bytes of JSON, so the default `max_publications`
/// (65536) fits about twice over; anything longer is a broken agent, not an answer.
pub const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "cannot reach the agent at {socket}: {cause}; is it running? (service kleene_rdr start, or give --socket / KLEENE_RDR_SOCKET)"
    )]
    Unreachable { socket: String, cause: String },
    /// The agent did not answer within the deadline.
    #[error(
        "the agent at {socket} did not answer within {}; it may be busy or hung (try again with a longer --timeout; the agent's log is in syslog, tag kleene_rdr)",
        human(.after)
    )]
    Timeout { socket: String, after: Duration },
    /// The agent answered something that is not a response, or broke the connection.
    #[error("the agent at {socket} answered badly: {cause}")]
    Protocol { socket: String, cause: String },
    /// The agent speaks another version of the protocol.
    #[error(
        "the agent at {socket} speaks protocol version {agent} and this kleenectl version {}: use a kleenectl of the same release as the agent{}",
        VERSION,
        said(.message)
    )]
    Version { socket: String, agent: u32, message: String },
}

/// ` (the agent said: MESSAGE)`, or nothing for an empty message.
fn said(message: &str) -> String {
    if message.is_empty() { String::new() } else { format!(" (the agent said: {message})") }
}

/// `60 s`, or `1500 ms` for a deadline that is not whole seconds.
fn human(d: &Duration) -> String {
    if d.subsec_nanos() == 0 { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

/// Sends one request and waits for its response, within [`DEFAULT_TIMEOUT`].
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    request_within(socket, req, DEFAULT_TIMEOUT)
}

/// Sends one request and waits for its response; gives up with [`ClientError::Timeout`] when the
/// whole exchange (connect, send, and the answer) has taken `timeout`.
pub fn request_within(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let deadline = Instant::now() + timeout;
    let name = || socket.display().to_string();
    let late = || ClientError::Timeout { socket: name(), after: timeout };
    let protocol = |cause: String| ClientError::Protocol { socket: name(), cause };
    let stream = connect_within(socket, deadline).map_err(|e| match e {
        Failure::Late => late(),
        Failure::Io(e) => ClientError::Unreachable { socket: name(), cause: e.to_string() },
    })?;
    let mut line = encode_request(req);
    line.push('\n');
    // The agent may answer before reading the request (over max_connections, refused
    // credentials) and close: then the write fails but its answer is there to read.
    let sent = write_within(&stream, line.as_bytes(), deadline);
    let answer = match read_line_within(&stream, deadline) {
        Ok(a) => a,
        Err(Failure::Late) => return Err(late()),
        Err(Failure::Io(e)) => return Err(protocol(format!("cannot read the answer: {e}"))),
    };
    if answer.is_empty() {
        return Err(match sent {
            Err(Failure::Late) => late(),
            Err(Failure::Io(e)) => protocol(format!("cannot send the request: {e}")),
            Ok(()) => protocol("it closed the connection without answering".into()),
        });
    }
    if answer.len() > MAX_ANSWER {
        return Err(protocol(format!("its answer is larger than {} MiB", MAX_ANSWER >> 20)));
    }
    let response: Response = serde_json::from_slice(&answer).map_err(|e| protocol(e.to_string()))?;
    if response.version != VERSION {
        return Err(ClientError::Version { socket: name(), agent: response.version, message: response.message });
    }
    Ok(response)
}

/// Why one step of the exchange failed.
enum Failure {
    /// The deadline passed.
    Late,
    Io(std::io::Error),
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Failure {
        Failure::Io(e)
    }
}

/// What is left of the deadline; never zero (a zero socket timeout is refused by std).
fn left(deadline: Instant) -> Result<Duration, Failure> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(Failure::Late) } else { Ok(left) }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
}

/// Connects to `path` within the deadline. A blocking connect(2) on Linux waits while the
/// listener's backlog is full (an agent that stopped accepting) for as long as the socket's send
/// timeout allows, so that timeout is set first; FreeBSD refuses at once instead.
fn connect_within(path: &Path, deadline: Instant) -> Result<UnixStream, Failure> {
    let addr = UnixAddr::new(path).map_err(std::io::Error::from)?;
    let fd: OwnedFd =
        socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).map_err(std::io::Error::from)?;
    loop {
        setsockopt(&fd, sockopt::SendTimeout, &timeval(left(deadline)?)).map_err(std::io::Error::from)?;
        match connect(fd.as_raw_fd(), &addr) {
            Ok(()) => return Ok(UnixStream::from(fd)),
            // Interrupted, or the send timeout ran out a little before the deadline: try again
            // with what is left.
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(e) => return Err(Failure::Io(e.into())),
        }
    }
}

/// A socket timeout: at least one microsecond (zero would mean "no timeout").
fn timeval(d: Duration) -> TimeVal {
    let d = d.max(Duration::from_micros(1));
    // Microseconds are below 1_000_000, which every suseconds_t holds.
    TimeVal::new(d.as_secs().try_into().unwrap_or(libc::time_t::MAX), d.subsec_micros() as libc::suseconds_t)
}

/// Writes all of `bytes` within the deadline; a write interrupted by a signal goes on with what
/// is left of the deadline.
fn write_within(stream: &UnixStream, mut bytes: &[u8], deadline: Instant) -> Result<(), Failure> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(left(deadline)?))?;
        match (&*stream).write(bytes) {
            Ok(0) => return Err(Failure::Io(std::io::ErrorKind::WriteZero.into())),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Failure::Late),
            Err(e) => return Err(Failure::Io(e)),
        }
    }
    Ok(())
}

/// Reads up to the first newline (not included) or the end of the stream, within the deadline;
/// stops early, returning more than [`MAX_ANSWER`] bytes, when the answer is too long.
fn read_line_within(stream: &UnixStream, deadline: Instant) -> Result<Vec<u8>, Failure> {
    let mut line = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut searched = 0;
    loop {
        if let Some(end) = line[searched..].iter().position(|b| *b == b'\n') {
            line.truncate(searched + end);
            return Ok(line);
        }
        searched = line.len();
        if line.len() > MAX_ANSWER {
            return Ok(line);
        }
        stream.set_read_timeout(Some(left(deadline)?))?;
        match (&*stream).read(&mut chunk) {
            Ok(0) => return Ok(line),
            Ok(n) => line.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(Failure::Late),
            Err(e) => return Err(Failure::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_version_is_named_with_what_the_agent_said() {
        let e = ClientError::Version { socket: "/s".into(), agent: 1, message: "malformed request: x".into() };
        assert_eq!(
            e.to_string(),
            "the agent at /s speaks protocol version 1 and this kleenectl version 2: use a kleenectl of the same \
             release as the agent (the agent said: malformed request: x)"
        );
        let e = ClientError::Version { socket: "/s".into(), agent: 3, message: String::new() };
        assert!(e.to_string().ends_with("same release as the agent"), "{e}");
    }

    #[test]
    fn deadlines_read_well() {
        assert_eq!(human(&Duration::from_secs(60)), "60 s");
        assert_eq!(human(&Duration::from_millis(1500)), "1500 ms");
    }

    /// An agent that stopped accepting: its backlog is full, and a blocking connect(2) on Linux
    /// would wait for a slot without end (FreeBSD refuses at once).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_backlog_is_a_timeout() {
        use nix::sys::socket::{Backlog, bind, listen};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(&path).unwrap()).unwrap();
        listen(&listener, Backlog::new(0).unwrap()).unwrap();
        let _queued = UnixStream::connect(&path).unwrap();
        let started = Instant::now();
        let e = request_within(&path, &Request::Check, Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, ClientError::Timeout { .. }), "{e}");
        assert!(e.to_string().contains("did not answer within 300 ms"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    }

    #[test]
    fn a_zero_deadline_is_late_not_unbounded() {
        assert!(matches!(left(Instant::now()), Err(Failure::Late)));
        assert_eq!(timeval(Duration::ZERO), TimeVal::new(0, 1));
    }
}
