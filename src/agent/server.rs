//! The agent's Unix socket: one JSON request line in, one JSON response line out.
//!
//! Every peer's credentials are checked against the access policy in the accept loop, before
//! anything is read and before it takes a connection slot: a refused peer gets its error reply at
//! once and is closed, so peers that may open the socket (its mode loosened by hand) but may not
//! use the agent can never fill the slots and lock root out. Refusals are logged at most once per
//! uid every few seconds.
//!
//! Each admitted connection has a thread of its own while it is served (one kept from an earlier
//! connection when one waits, see `workers`), a read deadline and a size limit, so a slow or
//! silent client stalls nobody; connections beyond `max_connections` get an error reply at once.
//!
//! This is the one place where the protocol meets the engine: the request's strings become the
//! engine's typed requests here (an invalid value is refused with its parser's message before
//! the engine is asked), and the engine's answers become protocol responses here.

use std::io::{Read as _, Write as _};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::core::container::{Container, Owner};
use crate::proto::{DecodeError, ErrorKind, MAX_REQUEST, Request, Response, decode_request};

use super::access::{self, Peer, Policy, RefusalLog};
use super::api::{ContainerPublishRequest, PublishRequest, Removal, UnpublishRequest};
use super::engine::{self, Engine};
use super::log;
use super::reply::Reply;
use super::workers::Workers;

/// How long a thread that served a connection waits for the next one before it ends.
const CONNECTION_LINGER: Duration = Duration::from_secs(30);

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

/// How long a reply to a turned-away peer may take to write: the accept loop waits for it, and a
/// peer that never reads must not hold the loop up.
const TURN_AWAY_WRITE: Duration = Duration::from_millis(200);

/// At most one log line per refused uid this often; the refusals in between are counted.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// How many refused uids the refusal log tracks at once.
const REFUSAL_LOG_PEERS: usize = 64;

/// Serves connections until the process exits.
pub fn serve(listener: UnixListener, engine: Arc<Mutex<Engine>>, policy: Policy, limits: Limits) {
    let active = Arc::new(AtomicUsize::new(0));
    let workers = Workers::new("connection", CONNECTION_LINGER);
    let mut refusals = RefusalLog::new(REFUSAL_LOG_EVERY, REFUSAL_LOG_PEERS);
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn(&format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        // Credentials first: a refused peer never takes a slot, and nothing of it is read.
        if let Err(rejection) = admit(&stream, &policy) {
            if let Some(unlogged) = refusals.refused(rejection.peer.map(|p| p.uid), Instant::now()) {
                log::warn(&rejection.log_line(unlogged));
            }
            turn_away(&stream, rejection.reply);
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= limits.max_connections {
            active.fetch_sub(1, Ordering::SeqCst);
            turn_away(
                &stream,
                Response::err(
                    ErrorKind::Limit,
                    format!(
                        "the agent is serving {} connections already (max_connections); try again",
                        limits.max_connections
                    ),
                ),
            );
            continue;
        }
        let (engine, active_now, timeout) = (Arc::clone(&engine), Arc::clone(&active), limits.request_timeout);
        let served = workers.run(move || {
            handle(&stream, &engine, timeout);
            active_now.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = served {
            // The connection is closed unanswered (the client says so); the agent goes on.
            active.fetch_sub(1, Ordering::SeqCst);
            log::warn(&format!("cannot start a thread to serve a connection: {e}"));
        }
    }
}

/// Why a peer was turned away before its request was read.
struct Rejection {
    /// None when its credentials could not be read.
    peer: Option<Peer>,
    /// What the peer is told.
    reply: Response,
}

impl Rejection {
    /// The log line, with what the rate limit kept out of the log since the last one.
    fn log_line(&self, unlogged: access::Unlogged) -> String {
        let mut line = match self.peer {
            Some(p) => format!("permission denied: refused a connection from uid {} gid {}", p.uid, p.gid),
            None => "refused a connection whose credentials cannot be read".to_string(),
        };
        let mut counts = Vec::new();
        if unlogged.same > 0 {
            let whom = self.peer.map_or("such peers".to_string(), |p| format!("uid {}", p.uid));
            counts.push(format!("{} more refusals from {whom} since the last message", unlogged.same));
        }
        if unlogged.others > 0 {
            counts.push(format!("{} more refusals from other uids", unlogged.others));
        }
        if !counts.is_empty() {
            line.push_str(&format!(" (and {})", counts.join("; and ")));
        }
        line
    }
}

/// Checks the peer's credentials against the policy (getgrouplist(3) may be called).
fn admit(stream: &UnixStream, policy: &Policy) -> Result<(), Rejection> {
    match access::peer(stream) {
        Ok(peer) if policy.allows(peer) => Ok(()),
        Ok(peer) => Err(Rejection {
            peer: Some(peer),
            reply: Response::err(
                ErrorKind::Denied,
                format!("permission denied: {} (you are uid {})", policy.describe(), peer.uid),
            ),
        }),
        Err(e) => Err(Rejection {
            peer: None,
            reply: Response::err(ErrorKind::Denied, format!("permission denied: cannot read your credentials ({e})")),
        }),
    }
}

/// Answers a peer that is not served, from the accept loop, and closes the connection.
fn turn_away(stream: &UnixStream, response: Response) {
    let _ = stream.set_write_timeout(Some(TURN_AWAY_WRITE));
    reply(stream, response.into());
}

/// Writes `reply` and its newline, serialised straight into a small buffer: an `ls` of 10,000
/// publications is megabytes of JSON, which a whole-line string would hold next to the data it
/// was made from at the agent's peak memory (measured with massif). An answer carrying data
/// gives the memory it used back afterwards (`sys::release_memory`).
fn reply(stream: &UnixStream, reply: Reply) {
    let large = reply.is_data();
    let mut w = std::io::BufWriter::with_capacity(64 * 1024, stream);
    if reply.write_to(&mut w).is_ok() {
        let _ = w.write_all(b"\n");
        let _ = w.flush();
    }
    drop(w);
    if large {
        crate::sys::release_memory();
    }
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

fn handle(stream: &UnixStream, engine: &Mutex<Engine>, timeout: Duration) {
    let _ = stream.set_write_timeout(Some(timeout));
    let mut replanned = false;
    let answer = match read_request(stream, timeout).map_err(DecodeError::invalid).and_then(|b| decode_request(&b)) {
        Err(e) => Response::from(e).into(),
        Ok(req) => {
            replanned = plans_everything(&req);
            dispatch(req, engine)
        }
    };
    reply(stream, answer);
    if replanned {
        crate::sys::release_memory();
    }
}

/// Whether `req` plans every publication anew (a publish plans its jail alone): the old plan
/// and the new one's scratch are megabytes at 10,000 publications, freed in pieces that glibc
/// keeps, so the memory is given back afterwards (`sys::release_memory`), as after a large
/// answer.
fn plans_everything(req: &Request) -> bool {
    matches!(req, Request::Unpublish { .. } | Request::UnpublishContainer { .. } | Request::Reconcile { .. })
}

/// Runs one request against the engine. The engine's lock is let go of before the answer is
/// written.
pub fn dispatch(req: Request, engine: &Mutex<Engine>) -> Reply {
    // publish and reconcile may wait for background reads of VNET jails' addresses: they take
    // the engine's lock themselves and let go of it while they wait.
    let lock = || engine.lock().unwrap_or_else(|p| p.into_inner());
    let reply = match req {
        Request::Publish { jail, specs, sources, log, network, reach_off } => {
            Response::answer(engine::publish(engine, &PublishRequest { jail, specs, sources, log, network, reach_off }))
        }
        Request::PublishContainer { jail, specs, container, cni_network, addresses, anchor, reach_off } => {
            let container = Container { id: container, network: cni_network, addresses };
            let request = ContainerPublishRequest { jail, specs, container, anchor, reach_off };
            Response::answer(engine::publish_container(engine, &request))
        }
        Request::UnpublishContainer { container, cni_network } => {
            Response::answer(lock().unpublish_owned(&Owner { id: container, network: cni_network }))
        }
        Request::Unpublish { jail, specs, all } => {
            let removal = if all { Removal::All } else { Removal::Specs(specs) };
            Response::answer(lock().unpublish(&UnpublishRequest { jail, removal }))
        }
        Request::List { jail } => return Reply::List(lock().list(jail.as_ref())),
        Request::Rules { jail } => return Reply::Rules(lock().rules(jail.as_ref())),
        Request::Check => return Reply::Check(lock().check()),
        Request::Reconcile { verify } => Response::answer(engine::reconcile(engine, verify)),
        // pf's counters are read without the engine's lock (engine::stats).
        Request::Stats { jail } => match engine::stats(engine, jail.as_ref()) {
            Ok(stats) => return Reply::Stats(stats),
            Err(refusal) => refusal.into(),
        },
    };
    reply.into()
}
