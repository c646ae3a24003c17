//! The agent's Unix socket: one JSON request line in, one JSON response line out.
//!
//! Each connection has its own thread, a read deadline and a size limit, so a slow or silent
//! client stalls nobody; connections beyond `max_connections` get an error reply at once. Every
//! peer's credentials are checked against the access policy before its request is read.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::proto::{ErrorKind, MAX_REQUEST, Request, Response, decode_request};

use super::access::{self, Policy};
use super::engine::Engine;
use super::log;

/// Limits of the server, fixed at start.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub request_timeout: Duration,
}

/// Binds the socket at `path`: mode 0600, or 0660 with the policy's group. An existing socket
/// that a live agent answers on is an error; a stale one is removed; anything that is not a
/// socket is left alone (and is an error), and symlinks are never followed.
pub fn bind(path: &Path, policy: &Policy) -> anyhow::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                bail!("another agent is already serving {}; stop it first (service kleene_rdr stop)", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        Ok(_) => bail!("{} exists and is not a socket; refusing to replace it", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    }
    if let Some(dir) = path.parent() {
        if !dir.is_dir() {
            bail!("the socket's directory {} does not exist", dir.display());
        }
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.with_context(|| format!("cannot bind the socket {}", path.display()))?;
    if let Some((name, gid)) = &policy.group {
        nix::unistd::chown(path, None, Some(*gid))
            .with_context(|| format!("cannot give the socket {} to group {name}", path.display()))?;
        // The socket was just created in a directory only root writes (or the operator's own).
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o660))
            .with_context(|| format!("cannot set the mode of the socket {}", path.display()))?;
    }
    Ok(listener)
}

/// Serves connections until the process exits.
pub fn serve(listener: UnixListener, engine: Arc<Mutex<Engine>>, policy: Policy, limits: Limits) {
    let active = Arc::new(AtomicUsize::new(0));
    let policy = Arc::new(policy);
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn(&format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            reply(
                &stream,
                &Response::err(
                    ErrorKind::Limit,
                    format!(
                        "the agent is serving {} connections already (max_connections); try again",
                        limits.max_connections
                    ),
                ),
            );
            continue;
        }
        let (engine, policy, active, timeout) =
            (Arc::clone(&engine), Arc::clone(&policy), Arc::clone(&active), limits.request_timeout);
        std::thread::spawn(move || {
            handle(&stream, &engine, &policy, timeout);
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

fn reply(stream: &UnixStream, response: &Response) {
    let mut text = serde_json::to_string(response).expect("responses serialise");
    text.push('\n');
    let _ = (&*stream).write_all(text.as_bytes());
}

/// Reads one line, within the deadline and the size limit. A read interrupted by a signal (the
/// agent's tools exiting send SIGCHLD) goes on with what is left of the deadline: std's
/// line readers would retry with the full socket timeout each time, and a client could then stay
/// connected for as long as signals keep coming.
fn read_request(stream: &UnixStream, timeout: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + timeout;
    let late = || format!("no complete request within {} ms", timeout.as_millis());
    let mut line = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = line.iter().position(|b| *b == b'\n') {
            line.truncate(end);
            return Ok(line);
        }
        if line.len() > MAX_REQUEST {
            return Ok(line);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(late());
        }
        let _ = stream.set_read_timeout(Some(left));
        match (&*stream).read(&mut chunk) {
            Ok(0) => return Ok(line),
            Ok(n) => line.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(late());
            }
            Err(e) => return Err(format!("cannot read the request: {e}")),
        }
    }
}

fn handle(stream: &UnixStream, engine: &Mutex<Engine>, policy: &Policy, timeout: Duration) {
    let _ = stream.set_write_timeout(Some(timeout));
    let peer = match access::peer(stream) {
        Ok(p) => p,
        Err(e) => {
            log::warn(&format!("refused a connection whose credentials cannot be read: {e}"));
            return reply(stream, &Response::err(ErrorKind::Denied, "permission denied: cannot read your credentials"));
        }
    };
    let request = read_request(stream, timeout).and_then(|bytes| decode_request(&bytes));
    if !policy.allows(peer) {
        let op = request.as_ref().map_or("unreadable request", Request::op);
        log::warn(&format!("permission denied: {op} from uid {} gid {}", peer.uid, peer.gid));
        return reply(
            stream,
            &Response::err(
                ErrorKind::Denied,
                format!("permission denied: {} (you are uid {})", policy.describe(), peer.uid),
            ),
        );
    }
    let response = match request {
        Err(e) => Response::err(ErrorKind::Invalid, e),
        Ok(req) => dispatch(req, engine),
    };
    reply(stream, &response);
}

/// Runs one request against the engine.
pub fn dispatch(req: Request, engine: &Mutex<Engine>) -> Response {
    let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
    let result = match req {
        Request::Publish { jail, specs, sources, log, network } => {
            e.publish(&jail, &specs, &sources, log, network.as_deref())
        }
        Request::Unpublish { jail, specs, all } => e.unpublish(&jail, &specs, all),
        Request::List { jail } => e.list(jail.as_deref()).map(|v| Response::with_data(&v)),
        Request::Rules { jail } => e.rules(jail.as_deref()).map(|v| Response::with_data(&v)),
        Request::Check => {
            let findings = e.check();
            Ok(Response::with_data(&findings))
        }
        Request::Reconcile { verify } => Ok(e.reconcile_now(verify)),
    };
    result.unwrap_or_else(Engine::refused)
}
