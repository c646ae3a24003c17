//! The client side of the socket protocol.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::proto::{Request, Response};

/// How long a client waits for the agent's answer (a reconcile on a large host loads many
/// anchors).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "cannot reach the agent at {socket}: {cause}; is it running? (service kleene_rdr start, or give --socket / KLEENE_RDR_SOCKET)"
    )]
    Unreachable { socket: String, cause: String },
    /// The agent answered something that is not a response.
    #[error("the agent at {socket} answered badly: {cause}")]
    Protocol { socket: String, cause: String },
}

/// Sends one request and waits for its response.
pub fn request(socket: &Path, req: &Request) -> Result<Response, ClientError> {
    let unreachable =
        |e: std::io::Error| ClientError::Unreachable { socket: socket.display().to_string(), cause: e.to_string() };
    let protocol = |cause: String| ClientError::Protocol { socket: socket.display().to_string(), cause };
    let mut stream = UnixStream::connect(socket).map_err(unreachable)?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(unreachable)?;
    let mut line = serde_json::to_string(req).expect("requests serialise");
    line.push('\n');
    // The agent may answer before reading the request (over max_connections, refused
    // credentials) and close: then the write fails but its answer is there to read.
    let sent = stream.write_all(line.as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    if answer.is_empty() {
        return Err(match (sent, read) {
            (Err(e), _) => protocol(format!("cannot send the request: {e}")),
            (_, Err(e)) => protocol(format!("cannot read the answer: {e}")),
            _ => protocol("it closed the connection without answering".into()),
        });
    }
    serde_json::from_str(answer.trim_end()).map_err(|e| protocol(e.to_string()))
}
