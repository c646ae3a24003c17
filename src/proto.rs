//! The socket protocol between `kleenectl` and the agent: one JSON object per line each way
//! (a request, then its response), over the agent's Unix socket.
//!
//! Requests carry the user's words as strings; the agent validates them itself, because the
//! socket is an edge like the command line.

use serde::{Deserialize, Serialize};

/// One request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Publish {
        jail: String,
        specs: Vec<String>,
        #[serde(default)]
        sources: Vec<String>,
        #[serde(default)]
        log: bool,
        #[serde(default)]
        network: Option<String>,
    },
    Unpublish {
        jail: String,
        #[serde(default)]
        specs: Vec<String>,
        #[serde(default)]
        all: bool,
    },
    List {
        #[serde(default)]
        jail: Option<String>,
    },
    Rules {
        #[serde(default)]
        jail: Option<String>,
    },
    Check,
    Reconcile {
        #[serde(default)]
        verify: bool,
    },
}

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Decodes one request line (without its newline). Never panics, whatever the bytes.
pub fn decode_request(bytes: &[u8]) -> Result<Request, String> {
    if bytes.len() > MAX_REQUEST {
        return Err(format!("request larger than {MAX_REQUEST} bytes"));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| format!("request is not UTF-8: {e}"))?;
    serde_json::from_str(text).map_err(|e| format!("malformed request: {e}"))
}

impl Request {
    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Publish { .. } => "publish",
            Request::Unpublish { .. } => "unpublish",
            Request::List { .. } => "ls",
            Request::Rules { .. } => "rules",
            Request::Check => "check",
            Request::Reconcile { .. } => "reconcile",
        }
    }

    /// Whether the request changes pf or the state.
    pub fn mutates(&self) -> bool {
        matches!(self, Request::Publish { .. } | Request::Unpublish { .. } | Request::Reconcile { .. })
    }
}

/// Why a request failed; decides the client's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Bad input (exit 2).
    Invalid,
    /// The port is held by another publication.
    Conflict,
    /// The publication does not exist.
    NotFound,
    /// pf refused or could not be reached.
    Pf,
    /// The caller may not do this.
    Denied,
    /// A limit was reached.
    Limit,
    /// Anything else.
    Internal,
}

/// One response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorKind>,
    /// Text for people.
    pub message: String,
    /// Structured data for `--json` and for the client's own formatting, kept as JSON text (a
    /// large `ls` is serialised once, not built as a tree of values first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<serde_json::value::RawValue>>,
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response { ok: true, error: None, message: message.into(), data: None }
    }

    /// A success carrying `data`.
    pub fn with_data<T: Serialize>(data: &T) -> Response {
        let data = serde_json::value::to_raw_value(data).expect("response data serialises");
        Response { ok: true, error: None, message: String::new(), data: Some(data) }
    }

    pub fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response { ok: false, error: Some(kind), message: message.into(), data: None }
    }

    /// The data, decoded.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.data.as_ref().map_or("null", |d| d.get()))
    }
}

/// One line of `kleenectl ls --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationView {
    pub jail: String,
    pub spec: String,
    pub protocol: String,
    pub host_ports: String,
    pub jail_ports: String,
    pub interfaces: Vec<String>,
    pub address: Option<String>,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub sources: Vec<String>,
    pub log: bool,
    pub network: Option<String>,
}

/// One finding of `kleenectl check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub ok: bool,
    pub what: String,
    pub detail: String,
    /// What to do when not ok.
    pub fix: Option<String>,
}

/// One anchor of `kleenectl rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorView {
    pub anchor: String,
    pub jail: String,
    pub text: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_strict() {
        let r: Request = serde_json::from_str(r#"{"op":"publish","jail":"web","specs":["8080"]}"#).unwrap();
        assert!(matches!(r, Request::Publish { ref sources, log: false, .. } if sources.is_empty()));
        assert!(serde_json::from_str::<Request>(r#"{"op":"publish","jail":"web","specs":["8080"],"x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"nuke"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"publish","jail":1,"specs":[]}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"check"}"#).is_ok());
        assert!(decode_request(b"\xff\xfe").unwrap_err().contains("not UTF-8"));
        assert!(decode_request(&vec![b' '; MAX_REQUEST + 1]).unwrap_err().contains("larger than"));
        let text = serde_json::to_string(&Request::Reconcile { verify: true }).unwrap();
        assert_eq!(text, r#"{"op":"reconcile","verify":true}"#);
    }
}
