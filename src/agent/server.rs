//! The agent's Unix socket: one JSON request line in, one JSON response line out.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::FileTypeExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::proto::{ErrorKind, Request, Response};

use super::engine::Engine;
use super::log;

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// Binds the socket at `path`, mode 0600. An existing socket that a live agent answers on is
/// an error; a stale one is removed; anything that is not a socket is left alone (and is an
/// error), and symlinks are never followed.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
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
    bound.with_context(|| format!("cannot bind the socket {}", path.display()))
}

/// Serves connections until the process exits.
pub fn serve(listener: UnixListener, engine: Arc<Mutex<Engine>>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let engine = Arc::clone(&engine);
                std::thread::spawn(move || handle(stream, &engine));
            }
            Err(e) => {
                log::warn(&format!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn handle(stream: UnixStream, engine: &Mutex<Engine>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let read = BufReader::new((&stream).take(MAX_REQUEST + 1)).read_line(&mut line);
    let response = match read {
        Err(e) => Response::err(ErrorKind::Invalid, format!("cannot read the request: {e}")),
        Ok(_) if line.len() as u64 > MAX_REQUEST => {
            Response::err(ErrorKind::Invalid, format!("request larger than {MAX_REQUEST} bytes"))
        }
        Ok(_) => match serde_json::from_str::<Request>(line.trim_end()) {
            Err(e) => Response::err(ErrorKind::Invalid, format!("malformed request: {e}")),
            Ok(req) => dispatch(req, engine),
        },
    };
    let mut text = serde_json::to_string(&response).expect("responses serialise");
    text.push('\n');
    let _ = (&stream).write_all(text.as_bytes());
}

/// Runs one request against the engine.
pub fn dispatch(req: Request, engine: &Mutex<Engine>) -> Response {
    let mut e = engine.lock().unwrap_or_else(|p| p.into_inner());
    let result = match req {
        Request::Publish { jail, specs, sources, log, network } => {
            e.publish(&jail, &specs, &sources, log, network.as_deref())
        }
        Request::Unpublish { jail, specs, all } => e.unpublish(&jail, &specs, all),
        Request::List { jail } => {
            e.list(jail.as_deref()).map(|v| Response::ok("", serde_json::to_value(v).expect("views serialise")))
        }
        Request::Rules { jail } => {
            e.rules(jail.as_deref()).map(|v| Response::ok("", serde_json::to_value(v).expect("views serialise")))
        }
        Request::Check => {
            let findings = e.check();
            Ok(Response::ok("", serde_json::to_value(findings).expect("findings serialise")))
        }
        Request::Reconcile { verify } => Ok(e.reconcile_now(verify)),
    };
    result.unwrap_or_else(Engine::refused)
}
