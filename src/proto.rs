//! The socket protocol between `kleenectl` and the agent: one JSON object per line each way (a
//! request, then its response), over the agent's Unix socket. docs/protocol.md is its reference
//! for other programs (jail managers calling the agent directly).
//!
//! The socket is an edge like the command line, and [`decode_request`] is where it is crossed:
//! a request's jail names, port specs, address prefixes and network names travel as the strings
//! users type, and become domain values there, once, so the agent past it handles only typed
//! values. Responses carry typed values too, so the client never parses text the agent wrote.
//!
//! Every request and response carries the protocol [`VERSION`]. The unversioned protocol of
//! earlier releases is version 1; an agent answers a request of any other version with an error
//! naming both versions, in words a client of that version can read.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::agent::api;
use crate::core::container::{CniName, Container};
use crate::core::model::{Cidr, InterfaceName, JailName, NetworkName, PortRange, Protocol};
use crate::core::reach::{self, ReachOff};
use crate::core::spec::{Place, PortSpec};

/// The protocol version this build speaks. Version 1 was the unversioned protocol of earlier
/// releases: the same requests without `version`, and untyped answers.
pub const VERSION: u32 = 2;

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// One request, its values validated. On the wire it is an object with `version` and `op` (see
/// [`encode_request`] and [`decode_request`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Publish `specs` of `jail` (at least one spec); `reach_off`: the reaches turned off for
    /// them (sent only when one is).
    Publish {
        jail: JailName,
        specs: Vec<PortSpec>,
        sources: Vec<Cidr>,
        log: bool,
        network: Option<NetworkName>,
        #[serde(skip_serializing_if = "ReachOff::is_none")]
        reach_off: ReachOff,
    },
    /// Remove `specs` of `jail`, or every publication of it when `all`: exactly one of the two
    /// (specs given, or `all`), as [`decode_request`] checks.
    Unpublish { jail: JailName, specs: Vec<PortSpec>, all: bool },
    /// Publish `specs` of the container `container`, attached to the CNI network `cni_network`,
    /// whose network is in `jail`, targeting `addresses` (the `kleene-portmap` plugin's ADD). On
    /// the wire, a `publish` with `container`. `anchor`, when given, must be the agent's parent
    /// anchor; `reach_off` as for a jail's publish (the plugin's `hairpin` and `host` options).
    #[serde(rename = "publish")]
    PublishContainer {
        jail: JailName,
        specs: Vec<PortSpec>,
        container: CniName,
        cni_network: CniName,
        addresses: Vec<IpAddr>,
        anchor: Option<String>,
        #[serde(skip_serializing_if = "ReachOff::is_none")]
        reach_off: ReachOff,
    },
    /// Remove every publication of the container `container` on the CNI network `cni_network`,
    /// in whichever jail; succeeds when there is none (the plugin's DEL). On the wire, an
    /// `unpublish` with `container`.
    #[serde(rename = "unpublish")]
    UnpublishContainer { container: CniName, cni_network: CniName },
    /// The publications, of one jail or all.
    List { jail: Option<JailName> },
    /// The anchors the agent loaded, of one jail or all.
    Rules { jail: Option<JailName> },
    /// What is wrong with the host's pf set-up.
    Check,
    /// Re-read jails and routes now, and read every loaded anchor back when `verify`.
    Reconcile { verify: bool },
    /// pf's traffic counters of the publications, of one jail or all.
    Stats { jail: Option<JailName> },
}

impl Request {
    /// The operation's name, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Publish { .. } | Request::PublishContainer { .. } => "publish",
            Request::Unpublish { .. } | Request::UnpublishContainer { .. } => "unpublish",
            Request::List { .. } => "ls",
            Request::Rules { .. } => "rules",
            Request::Check => "check",
            Request::Reconcile { .. } => "reconcile",
            Request::Stats { .. } => "stats",
        }
    }

    /// Whether the request changes pf or the state.
    pub fn mutates(&self) -> bool {
        matches!(
            self,
            Request::Publish { .. }
                | Request::PublishContainer { .. }
                | Request::Unpublish { .. }
                | Request::UnpublishContainer { .. }
                | Request::Reconcile { .. }
        )
    }
}

/// The request's line, without its newline: `{"version":2,"op":...}`.
pub fn encode_request(req: &Request) -> String {
    #[derive(Serialize)]
    struct Versioned<'a> {
        version: u32,
        #[serde(flatten)]
        request: &'a Request,
    }
    serde_json::to_string(&Versioned { version: VERSION, request: req }).expect("requests serialise")
}

/// Why a request line was not decoded: the kind and the message of the error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl DecodeError {
    /// Bad input: not a request, or a value that fails validation.
    pub fn invalid(message: impl Into<String>) -> DecodeError {
        DecodeError { kind: ErrorKind::Invalid, message: message.into() }
    }
}

impl From<DecodeError> for Response {
    fn from(e: DecodeError) -> Response {
        Response::err(e.kind, e.message)
    }
}

/// Decodes and validates one request line (without its newline). Never panics, whatever the
/// bytes.
///
/// In order: at most [`MAX_REQUEST`] bytes of UTF-8 holding one JSON object without repeated
/// keys; a `version` other than [`VERSION`] is then answered with [`ErrorKind::Version`] before
/// anything else is read, since the rest is that version's; then the fields, strictly (no
/// unknown fields, the right types), and their values, with the messages users see on the
/// command line (`invalid jail name "…": …`, `invalid port spec "…": …`). A request without
/// `version` is version 1, whose requests had these fields: once they are valid it is answered
/// with the version message, of kind [`ErrorKind::Invalid`], a kind version-1 clients know (they
/// refuse an answer with a kind they do not know, and would not show the message).
pub fn decode_request(bytes: &[u8]) -> Result<Request, DecodeError> {
    if bytes.len() > MAX_REQUEST {
        return Err(DecodeError::invalid(format!("request larger than {MAX_REQUEST} bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::invalid(format!("request is not UTF-8: {e}")))?;
    let wire::Object(mut fields) =
        serde_json::from_str(text).map_err(|e| DecodeError::invalid(format!("malformed request: {e}")))?;
    let version = fields.remove("version");
    if let Some(v) = &version {
        if v.as_u64() != Some(u64::from(VERSION)) {
            return Err(DecodeError { kind: ErrorKind::Version, message: version_mismatch(&wire::describe(v)) });
        }
    }
    let request = wire::Request::deserialize(serde_json::Value::Object(fields))
        .map_err(|e| DecodeError::invalid(format!("malformed request: {e}")))?;
    let request = request.validate().map_err(DecodeError::invalid)?;
    match version {
        Some(_) => Ok(request),
        None => Err(DecodeError::invalid(version_mismatch("1 (no version field)"))),
    }
}

/// The answer to a request of another version; `sent` is what the client sent.
fn version_mismatch(sent: &str) -> String {
    format!(
        "this agent speaks protocol version {VERSION}, the client sent version {sent}: use a kleenectl of the same \
         release as the agent"
    )
}

/// The request as it arrives, before validation: the strings and flags users gave.
mod wire {
    use std::fmt;

    use std::net::IpAddr;

    use serde::Deserialize;
    use serde::de::{Deserializer, MapAccess, Visitor};
    use serde_json::{Map, Value};

    use crate::core::container::CniName;
    use crate::core::model::{Cidr, JailName, NetworkName};
    use crate::core::reach::ReachOff;
    use crate::core::spec::PortSpec;

    /// A JSON object whose keys are all different (a repeated key is refused, not silently
    /// resolved in favour of one of its values).
    pub(super) struct Object(pub(super) Map<String, Value>);

    impl<'de> Deserialize<'de> for Object {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Keys;
            impl<'de> Visitor<'de> for Keys {
                type Value = Object;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
                    let mut out = Map::new();
                    while let Some((key, value)) = map.next_entry::<String, Value>()? {
                        if out.contains_key(&key) {
                            return Err(serde::de::Error::custom(format_args!("duplicate field `{key}`")));
                        }
                        out.insert(key, value);
                    }
                    Ok(Object(out))
                }
            }
            d.deserialize_map(Keys)
        }
    }

    /// A `version` value as the version message shows it: the number, or the JSON text (cut
    /// short) of what is not one.
    pub(super) fn describe(v: &Value) -> String {
        if let Some(n) = v.as_u64() {
            return n.to_string();
        }
        let text = v.to_string();
        let cut: String = text.chars().take(32).collect();
        let more = if cut.len() < text.len() { "…" } else { "" };
        format!("{cut}{more} (not a version number)")
    }

    #[derive(Deserialize)]
    #[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
    pub(super) enum Request {
        Publish {
            jail: String,
            specs: Vec<String>,
            #[serde(default)]
            sources: Vec<String>,
            #[serde(default)]
            log: bool,
            #[serde(default)]
            network: Option<String>,
            #[serde(default)]
            container: Option<String>,
            #[serde(default)]
            cni_network: Option<String>,
            #[serde(default)]
            addresses: Vec<String>,
            #[serde(default)]
            anchor: Option<String>,
            #[serde(default)]
            reach_off: ReachOff,
        },
        Unpublish {
            #[serde(default)]
            jail: Option<String>,
            #[serde(default)]
            specs: Vec<String>,
            #[serde(default)]
            all: bool,
            #[serde(default)]
            container: Option<String>,
            #[serde(default)]
            cni_network: Option<String>,
        },
        List {
            #[serde(default)]
            jail: Option<String>,
        },
        Rules {
            #[serde(default)]
            jail: Option<String>,
        },
        /// A struct variant, not a unit one: serde lets unknown fields through on an internally
        /// tagged unit variant.
        Check {},
        Reconcile {
            #[serde(default)]
            verify: bool,
        },
        Stats {
            #[serde(default)]
            jail: Option<String>,
        },
    }

    fn jail(s: &str) -> Result<JailName, String> {
        s.parse().map_err(|e| format!("{e}"))
    }

    fn jail_opt(s: Option<String>) -> Result<Option<JailName>, String> {
        s.as_deref().map(jail).transpose()
    }

    /// A container's owner: its id and its CNI network (required with it).
    fn owner(container: &str, network: Option<String>) -> Result<(CniName, CniName), String> {
        let id = CniName::parse_as("container id", container).map_err(|e| e.to_string())?;
        let Some(n) = network else { return Err("give the container's CNI network (cni_network)".into()) };
        Ok((id, CniName::parse_as("CNI network name", &n).map_err(|e| e.to_string())?))
    }

    fn specs(specs: &[String]) -> Result<Vec<PortSpec>, String> {
        specs.iter().map(|s| PortSpec::parse(s).map_err(|e| e.to_string())).collect()
    }

    impl Request {
        /// The typed request, or the first value that fails validation, in the order the
        /// command line checks them.
        pub(super) fn validate(self) -> Result<super::Request, String> {
            Ok(match self {
                Request::Publish {
                    jail: j,
                    specs: s,
                    container: Some(c),
                    cni_network,
                    addresses,
                    anchor,
                    sources,
                    log,
                    network,
                    reach_off,
                } => {
                    let jail = jail(&j)?;
                    if s.is_empty() {
                        return Err("give at least one port spec".into());
                    }
                    let specs = specs(&s)?;
                    if !sources.is_empty() || log || network.is_some() {
                        return Err("sources, log and network are not for a container's publications".into());
                    }
                    let (container, cni_network) = owner(&c, cni_network)?;
                    if addresses.is_empty() {
                        return Err("give the container's addresses".into());
                    }
                    let addresses = addresses
                        .iter()
                        .map(|a| a.parse::<IpAddr>().map_err(|e| format!("invalid address {a:?}: {e}")))
                        .collect::<Result<_, _>>()?;
                    super::Request::PublishContainer {
                        jail,
                        specs,
                        container,
                        cni_network,
                        addresses,
                        anchor,
                        reach_off,
                    }
                }
                Request::Publish {
                    jail: j,
                    specs: s,
                    sources,
                    log,
                    network,
                    container: None,
                    cni_network,
                    addresses,
                    anchor,
                    reach_off,
                } => {
                    if cni_network.is_some() || !addresses.is_empty() || anchor.is_some() {
                        return Err("cni_network, addresses and anchor go with container".into());
                    }
                    let jail = jail(&j)?;
                    if s.is_empty() {
                        return Err("give at least one port spec".into());
                    }
                    let specs = specs(&s)?;
                    let sources = sources
                        .iter()
                        .map(|c| c.parse::<Cidr>())
                        .collect::<Result<_, _>>()
                        .map_err(|e| e.to_string())?;
                    let network =
                        network.as_deref().map(str::parse::<NetworkName>).transpose().map_err(|e| e.to_string())?;
                    super::Request::Publish { jail, specs, sources, log, network, reach_off }
                }
                Request::Unpublish { container: Some(c), cni_network, jail: j, specs: s, all } => {
                    if j.is_some() || !s.is_empty() || all {
                        return Err("an unpublish by container takes no jail, specs or all".into());
                    }
                    let (container, cni_network) = owner(&c, cni_network)?;
                    super::Request::UnpublishContainer { container, cni_network }
                }
                Request::Unpublish { jail: j, specs: s, all, container: None, cni_network } => {
                    if cni_network.is_some() {
                        return Err("cni_network goes with container".into());
                    }
                    let Some(j) = j else { return Err("malformed request: missing field `jail`".into()) };
                    let jail = jail(&j)?;
                    if all != s.is_empty() {
                        return Err("give the specs to unpublish, or --all (\"all\": true), not both".into());
                    }
                    super::Request::Unpublish { jail, specs: specs(&s)?, all }
                }
                Request::List { jail } => super::Request::List { jail: jail_opt(jail)? },
                Request::Rules { jail } => super::Request::Rules { jail: jail_opt(jail)? },
                Request::Check {} => super::Request::Check,
                Request::Reconcile { verify } => super::Request::Reconcile { verify },
                Request::Stats { jail } => super::Request::Stats { jail: jail_opt(jail)? },
            })
        }
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
    /// The request's protocol version is not the agent's.
    Version,
}

/// One response. Its fields are those of version 1 plus `version`, so that a version-1 client
/// still reads `ok`, `error` and `message` of an answer from this agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    /// The agent's protocol version; missing in version 1's answers.
    #[serde(default = "version_1")]
    pub version: u32,
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

fn version_1() -> u32 {
    1
}

impl Response {
    /// A success with a message for people.
    pub fn ok(message: impl Into<String>) -> Response {
        Response { version: VERSION, ok: true, error: None, message: message.into(), data: None }
    }

    /// A success carrying `data`.
    pub fn with_data<T: Serialize>(data: &T) -> Response {
        let data = serde_json::value::to_raw_value(data).expect("response data serialises");
        Response { version: VERSION, ok: true, error: None, message: String::new(), data: Some(data) }
    }

    /// A failure.
    pub fn err(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response { version: VERSION, ok: false, error: Some(kind), message: message.into(), data: None }
    }

    /// The engine's answer to a publish, unpublish or reconcile.
    pub fn answer(answer: api::Answer) -> Response {
        match answer {
            Ok(message) => Response::ok(message),
            Err(refusal) => refusal.into(),
        }
    }

    /// The data, decoded.
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.data.as_ref().map_or("null", |d| d.get()))
    }
}

/// Writes the success carrying `data` exactly as `Response::with_data(data)` is written (the same
/// fields, in the same order), `data` serialised straight into `w`: a large answer is never held
/// as one JSON text.
pub fn write_with_data<W: std::io::Write, T: Serialize + ?Sized>(w: W, data: &T) -> serde_json::Result<()> {
    #[derive(Serialize)]
    struct Success<'a, T: ?Sized> {
        version: u32,
        ok: bool,
        message: &'a str,
        data: &'a T,
    }
    serde_json::to_writer(w, &Success { version: VERSION, ok: true, message: "", data })
}

impl From<api::RefusalKind> for ErrorKind {
    fn from(kind: api::RefusalKind) -> ErrorKind {
        match kind {
            api::RefusalKind::Invalid => ErrorKind::Invalid,
            api::RefusalKind::Conflict => ErrorKind::Conflict,
            api::RefusalKind::NotFound => ErrorKind::NotFound,
            api::RefusalKind::Pf => ErrorKind::Pf,
            api::RefusalKind::Limit => ErrorKind::Limit,
            api::RefusalKind::Internal => ErrorKind::Internal,
        }
    }
}

impl From<api::Refusal> for Response {
    fn from(r: api::Refusal) -> Response {
        Response::err(r.kind.into(), r.message)
    }
}

/// Where a publication stands, as `ls` says it: `active`, `pending`, `conflict`, `error` or
/// `removing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its rules are loaded.
    Active,
    /// Its jail is not running, or its addresses are being read.
    Pending,
    /// Its host port is held by an older publication.
    Conflict,
    /// It cannot be applied.
    Error,
    /// Unpublished, but pf has not finished removing it.
    Removing,
}

impl State {
    /// The word `ls` and its JSON use.
    pub fn word(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Pending => "pending",
            State::Conflict => "conflict",
            State::Error => "error",
            State::Removing => "removing",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.word())
    }
}

impl From<api::Standing> for State {
    fn from(s: api::Standing) -> State {
        match s {
            api::Standing::Active => State::Active,
            api::Standing::Pending => State::Pending,
            api::Standing::Conflict => State::Conflict,
            api::Standing::Error => State::Error,
            api::Standing::Removing => State::Removing,
        }
    }
}

/// One publication, as `list` answers and `kleenectl ls --json` prints it. `protocol`,
/// `host_ports`, `jail_ports` and `address` repeat parts of `spec`, for callers that do not
/// parse specs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationView {
    pub jail: JailName,
    /// The canonical spec.
    pub spec: PortSpec,
    pub protocol: Protocol,
    pub host_ports: PortRange,
    pub jail_ports: PortRange,
    /// The interfaces its rules are on (empty for an address publication, or when none).
    pub interfaces: Vec<InterfaceName>,
    /// The host address of an address publication.
    pub address: Option<IpAddr>,
    /// The jail's IPv4 target.
    pub ipv4: Option<IpAddr>,
    /// The jail's IPv6 target.
    pub ipv6: Option<IpAddr>,
    pub state: State,
    /// Why it is not active (None when active).
    pub reason: Option<String>,
    pub sources: Vec<Cidr>,
    pub log: bool,
    pub network: Option<NetworkName>,
    /// The owner and addresses of a container publication; absent for a jail's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Container>,
    /// Where it can be reached from now: `outside`, `jails` (through the published port),
    /// `networks` (the configured networks, at the jail's own address), `host`. Empty unless
    /// active.
    #[serde(default)]
    pub reachable_from: Vec<reach::From>,
    /// The reaches the publication turned off for itself.
    #[serde(default)]
    pub reach_off: ReachOff,
    /// pf's counters, when `kleenectl ls` asked for them too (`stats`); never in a `list`
    /// answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
}

/// pf's counters of one publication's pass rules (its IPv4 and IPv6 rules summed), since the
/// agent last loaded its jail's anchor (pf starts them at zero then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Traffic {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    /// States its rules created.
    pub states_created: u64,
    /// States its rules hold now. `None` only from an agent older than this field, which does
    /// not send it (and then it is not printed either).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<u64>,
    /// Times its rules were evaluated.
    pub evaluations: u64,
    /// When the counters started (Unix time, seconds): when the agent last loaded the anchor.
    pub since: u64,
}

/// One publication of a `stats` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub jail: JailName,
    /// The canonical spec.
    pub spec: PortSpec,
    pub protocol: Protocol,
    pub state: State,
    /// None when its rules are not loaded, or pf's counters could not be read (`note`).
    pub traffic: Option<Traffic>,
    /// Why the counters are missing although its rules are loaded.
    pub note: Option<String>,
}

impl From<api::PublicationStats> for StatsView {
    fn from(s: api::PublicationStats) -> StatsView {
        let since = s.since.map_or(0, |t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
        let p = s.publication;
        StatsView {
            traffic: s.counters.map(|c| Traffic {
                packets_in: c.packets_in,
                bytes_in: c.bytes_in,
                packets_out: c.packets_out,
                bytes_out: c.bytes_out,
                states_created: c.states_created,
                states: Some(c.states),
                evaluations: c.evaluations,
                since,
            }),
            protocol: p.spec.proto,
            jail: p.jail,
            spec: p.spec,
            state: s.standing.into(),
            note: s.note,
        }
    }
}

impl From<api::PublicationState> for PublicationView {
    fn from(s: api::PublicationState) -> PublicationView {
        let p = s.publication;
        PublicationView {
            protocol: p.spec.proto,
            host_ports: p.spec.host,
            jail_ports: p.spec.jail,
            address: match p.spec.place {
                Place::Address(a) => Some(a),
                Place::Gateway | Place::Interface(_) | Place::Localhost => None,
            },
            jail: p.jail,
            spec: p.spec,
            interfaces: s.interfaces.to_vec(),
            ipv4: s.targets.inet,
            ipv6: s.targets.inet6,
            state: s.standing.into(),
            reason: s.reason,
            sources: p.sources,
            log: p.log,
            network: p.network,
            container: p.container.map(|c| *c),
            reachable_from: s.reached.to_vec(),
            reach_off: p.reach_off,
            traffic: None,
        }
    }
}

/// One finding of `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub ok: bool,
    /// What was checked.
    pub what: String,
    pub detail: String,
    /// What to do when not ok.
    pub fix: Option<String>,
}

impl From<api::Diagnostic> for Finding {
    fn from(d: api::Diagnostic) -> Finding {
        Finding { ok: d.ok, what: d.what, detail: d.detail, fix: d.fix }
    }
}

/// One anchor of `rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnchorView {
    /// The full anchor path (`kleene/web`).
    pub anchor: String,
    pub jail: JailName,
    /// The rules, as loaded.
    pub text: String,
}

impl From<api::LoadedAnchor> for AnchorView {
    fn from(a: api::LoadedAnchor) -> AnchorView {
        AnchorView { anchor: a.anchor, jail: a.jail, text: a.text }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::publication::Publication;
    use crate::core::render::Targets;

    fn decode(text: &str) -> Result<Request, DecodeError> {
        decode_request(text.as_bytes())
    }

    fn invalid(text: &str) -> String {
        let e = decode(text).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Invalid, "{text}: {e:?}");
        e.message
    }

    #[test]
    fn requests_travel_as_versioned_lines_of_strings() {
        let req = Request::Publish {
            jail: "web".parse().unwrap(),
            specs: vec!["em1:8080:80/udp".parse().unwrap()],
            sources: vec!["192.0.2.0/24".parse().unwrap()],
            log: true,
            network: None,
            reach_off: ReachOff::default(),
        };
        let line = encode_request(&req);
        assert_eq!(
            line,
            r#"{"version":2,"op":"publish","jail":"web","specs":["em1:8080:80/udp"],"sources":["192.0.2.0/24"],"log":true,"network":null}"#
        );
        assert_eq!(decode(&line).unwrap(), req);
        assert_eq!(encode_request(&Request::Check), r#"{"version":2,"op":"check"}"#);
        assert_eq!(
            encode_request(&Request::Reconcile { verify: true }),
            r#"{"version":2,"op":"reconcile","verify":true}"#
        );
    }

    #[test]
    fn every_request_survives_the_round_trip() {
        let web: JailName = "web".parse().unwrap();
        let all = [
            Request::Publish {
                jail: web.clone(),
                specs: vec!["8080".parse().unwrap(), "[2001:db8::1]:443:8443".parse().unwrap()],
                sources: vec![],
                log: false,
                network: Some("kleenet".parse().unwrap()),
                reach_off: ReachOff { hairpin: true, host: true, networks: false },
            },
            Request::Unpublish { jail: web.clone(), specs: vec!["8000-8010:9000/udp".parse().unwrap()], all: false },
            Request::Unpublish { jail: web.clone(), specs: vec![], all: true },
            Request::List { jail: None },
            Request::List { jail: Some(web.clone()) },
            Request::Rules { jail: Some("odd{name}".parse().unwrap()) },
            Request::Check,
            Request::Reconcile { verify: false },
            Request::Stats { jail: None },
            Request::Stats { jail: Some(web.clone()) },
        ];
        for req in all {
            assert_eq!(decode(&encode_request(&req)).unwrap(), req);
        }
    }

    #[test]
    fn values_are_validated_at_decode_with_the_command_lines_messages() {
        let v = |rest: &str| format!(r#"{{"version":2,{rest}}}"#);
        let m = invalid(&v(r#""op":"publish","jail":"web\nrdr pass all","specs":["8080"]"#));
        assert!(m.starts_with(r#"invalid jail name "web\nrdr pass all": "#), "{m}");
        let m = invalid(&v(r#""op":"publish","jail":"web","specs":["em0 \n:8080:80"]"#));
        assert!(m.starts_with(r#"invalid port spec "em0 \n:8080:80": "#), "{m}");
        assert_eq!(invalid(&v(r#""op":"publish","jail":"web","specs":[]"#)), "give at least one port spec");
        let m = invalid(&v(r#""op":"publish","jail":"web","specs":["8080"],"sources":["any"]"#));
        assert!(m.starts_with(r#"invalid address prefix "any": "#), "{m}");
        let m = invalid(&v(r#""op":"publish","jail":"web","specs":["8080"],"network":"a b""#));
        assert!(m.starts_with(r#"invalid network name "a b": "#), "{m}");
        for both_or_neither in [r#""specs":["8080"],"all":true"#, r#""specs":[]"#, r#""all":false"#] {
            let m = invalid(&v(&format!(r#""op":"unpublish","jail":"web",{both_or_neither}"#)));
            assert!(m.starts_with("give the specs to unpublish, or --all"), "{m}");
        }
        let m = invalid(&v(r#""op":"list","jail":"""#));
        assert!(m.starts_with(r#"invalid jail name "": "#), "{m}");
        let m = invalid(&v(r#""op":"rules","jail":"a b""#));
        assert!(m.starts_with(r#"invalid jail name "a b": "#), "{m}");
    }

    #[test]
    fn a_container_publish_and_unpublish_are_publish_and_unpublish_with_a_container() {
        let add = Request::PublishContainer {
            jail: "cni-1".parse().unwrap(),
            specs: vec!["8080:80".parse().unwrap(), "[2001:db8::10]:53:53/udp".parse().unwrap()],
            container: "c1".parse().unwrap(),
            cni_network: "podman".parse().unwrap(),
            addresses: vec!["10.88.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            anchor: Some("kleene".into()),
            reach_off: ReachOff::default(),
        };
        let line = encode_request(&add);
        assert_eq!(
            line,
            r#"{"version":2,"op":"publish","jail":"cni-1","specs":["8080:80/tcp","[2001:db8::10]:53:53/udp"],"container":"c1","cni_network":"podman","addresses":["10.88.0.5","fd00::5"],"anchor":"kleene"}"#
        );
        assert_eq!(decode(&line).unwrap(), add);
        let del =
            Request::UnpublishContainer { container: "c1".parse().unwrap(), cni_network: "podman".parse().unwrap() };
        let line = encode_request(&del);
        assert_eq!(line, r#"{"version":2,"op":"unpublish","container":"c1","cni_network":"podman"}"#);
        assert_eq!(decode(&line).unwrap(), del);
        assert_eq!((add.op(), del.op(), add.mutates(), del.mutates()), ("publish", "unpublish", true, true));

        let v = |rest: &str| format!(r#"{{"version":2,{rest}}}"#);
        let c = r#""op":"publish","jail":"cni-1","specs":["80"],"container":"c1""#;
        for (text, want) in [
            (v(&format!(r#"{c},"addresses":["10.88.0.5"]"#)), "give the container's CNI network (cni_network)"),
            (v(&format!(r#"{c},"cni_network":"podman""#)), "give the container's addresses"),
            (
                v(&format!(r#"{c},"cni_network":"podman","addresses":["10.88.0.5/16"]"#)),
                "invalid address \"10.88.0.5/16\": ",
            ),
            (v(&format!(r#"{c},"cni_network":"p d","addresses":["10.88.0.5"]"#)), "invalid CNI network name \"p d\": "),
            (
                v(&format!(r#"{c},"cni_network":"podman","addresses":["10.88.0.5"],"log":true"#)),
                "sources, log and network are not for a container's publications",
            ),
            (
                v(
                    r#""op":"publish","jail":"cni-1","specs":["80"],"container":"-c1","cni_network":"podman","addresses":["10.88.0.5"]"#,
                ),
                "invalid container id \"-c1\": ",
            ),
            (
                v(r#""op":"publish","jail":"web","specs":["80"],"anchor":"kleene""#),
                "cni_network, addresses and anchor go with container",
            ),
            (v(r#""op":"unpublish","container":"c1""#), "give the container's CNI network (cni_network)"),
            (
                v(r#""op":"unpublish","container":"c1","cni_network":"podman","all":true"#),
                "an unpublish by container takes no jail, specs or all",
            ),
            (v(r#""op":"unpublish","all":true"#), "malformed request: missing field `jail`"),
            (
                v(r#""op":"unpublish","jail":"web","all":true,"cni_network":"podman""#),
                "cni_network goes with container",
            ),
        ] {
            let m = invalid(&text);
            assert!(m.starts_with(want), "{text}: {m}");
        }
    }

    #[test]
    fn requests_are_strict() {
        let v = |rest: &str| format!(r#"{{"version":2,{rest}}}"#);
        assert!(matches!(
            decode(&v(r#""op":"publish","jail":"web","specs":["8080"]"#)).unwrap(),
            Request::Publish { ref sources, log: false, network: None, .. } if sources.is_empty()
        ));
        for (text, want) in [
            (v(r#""op":"publish","jail":"web","specs":["8080"],"x":1"#), "unknown field `x`"),
            (v(r#""op":"publish","jail":"web","specs":["8080"],"reach_off":{"all":true}"#), "unknown field `all`"),
            (v(r#""op":"nuke""#), "unknown variant `nuke`"),
            (v(r#""op":"check","x":1"#), "unknown field `x`"),
            (v(r#""jail":"web""#), "missing field `op`"),
            (v(r#""op":"publish","jail":1,"specs":[]"#), "invalid type"),
            (v(r#""op":"reconcile","verify":"yes""#), "invalid type"),
            (v(r#""op":"list","jail":"a","jail":"b""#), "duplicate field `jail`"),
            (r#"{"version":2,"version":2,"op":"check"}"#.into(), "duplicate field `version`"),
            ("[1,2]".into(), "expected a JSON object"),
            ("".into(), "malformed request"),
            ("{".into(), "malformed request"),
        ] {
            let m = invalid(&text);
            assert!(m.starts_with("malformed request: ") && m.contains(want), "{text}: {m}");
        }
        assert!(invalid("\u{0}").contains("malformed request"));
        assert!(decode_request(b"\xff\xfe").unwrap_err().message.contains("not UTF-8"));
        assert!(decode_request(&vec![b' '; MAX_REQUEST + 1]).unwrap_err().message.contains("larger than 65536 bytes"));
    }

    #[test]
    fn another_version_is_named_before_anything_else_is_read() {
        for (version, sent) in [
            ("1", "version 1:"),
            ("3", "version 3:"),
            ("0", "version 0:"),
            ("-2", "version -2 (not a version number):"),
            ("2.0", "version 2.0 (not a version number):"),
            (r#""2""#, r#"version "2" (not a version number):"#),
            ("null", "version null (not a version number):"),
        ] {
            // Fields this version does not know, or does not accept, are that version's business.
            for rest in [r#""op":"check""#, r#""op":"teleport","to":"mars""#] {
                let text = format!(r#"{{"version":{version},{rest}}}"#);
                let e = decode(&text).unwrap_err();
                assert_eq!(e.kind, ErrorKind::Version, "{text}: {e:?}");
                assert!(e.message.starts_with("this agent speaks protocol version 2, the client sent "), "{e:?}");
                assert!(e.message.contains(sent), "{text}: {e:?}");
                assert!(e.message.ends_with(": use a kleenectl of the same release as the agent"), "{e:?}");
            }
        }
        let long = format!(r#"{{"version":"{}","op":"check"}}"#, "x".repeat(1000));
        let e = decode(&long).unwrap_err();
        assert!(e.message.len() < 200 && e.message.contains("xxx… (not a version number)"), "{e:?}");
    }

    #[test]
    fn a_version_1_request_gets_the_version_message_in_words_version_1_reads() {
        for v1 in [
            r#"{"op":"check"}"#,
            r#"{"op":"list"}"#,
            r#"{"op":"publish","jail":"web","specs":["8080"]}"#,
            r#"{"op":"unpublish","jail":"web","all":true}"#,
        ] {
            let e = decode(v1).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Invalid, "{v1}");
            assert_eq!(
                e.message,
                "this agent speaks protocol version 2, the client sent version 1 (no version field): use a kleenectl \
                 of the same release as the agent"
            );
        }
        // What is malformed in version 1 too is answered as such.
        assert!(invalid(r#"{"op":"publish","jail":"web","specs":["x"]}"#).starts_with("invalid port spec"));
    }

    /// Version 1's response and error kinds, as the clients of earlier releases decode them.
    mod v1 {
        #[derive(Debug, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[allow(dead_code)]
        pub enum ErrorKind {
            Invalid,
            Conflict,
            NotFound,
            Pf,
            Denied,
            Limit,
            Internal,
        }

        #[derive(Debug, serde::Deserialize)]
        pub struct Response {
            pub ok: bool,
            #[serde(default)]
            pub error: Option<ErrorKind>,
            pub message: String,
        }
    }

    #[test]
    fn a_version_1_client_reads_the_answer_to_its_request() {
        let answer: Response = decode(r#"{"op":"check"}"#).unwrap_err().into();
        let line = serde_json::to_string(&answer).unwrap();
        assert!(
            line.starts_with(r#"{"version":2,"ok":false,"error":"invalid","message":"this agent speaks"#),
            "{line}"
        );
        let old: v1::Response = serde_json::from_str(&line).unwrap();
        assert!(!old.ok && matches!(old.error, Some(v1::ErrorKind::Invalid)), "{old:?}");
        assert_eq!(old.message, answer.message);
        let ok: v1::Response = serde_json::from_str(&serde_json::to_string(&Response::ok("fine")).unwrap()).unwrap();
        assert!(ok.ok && ok.message == "fine");
    }

    #[test]
    fn responses_carry_the_version_and_default_to_version_1() {
        let text = serde_json::to_string(&Response::err(ErrorKind::Version, "x")).unwrap();
        assert_eq!(text, r#"{"version":2,"ok":false,"error":"version","message":"x"}"#);
        let old: Response = serde_json::from_str(r#"{"ok":true,"message":""}"#).unwrap();
        assert_eq!(old.version, 1);
    }

    fn view(spec: &str, standing: api::Standing) -> PublicationView {
        let p = Publication::new(
            "web".parse().unwrap(),
            spec.parse().unwrap(),
            vec!["198.51.100.0/24".parse().unwrap(), "192.0.2.7".parse().unwrap()],
            true,
            Some("kleenet".parse().unwrap()),
        );
        api::PublicationState {
            publication: p,
            standing,
            reason: (standing != api::Standing::Active).then(|| "jail web is not running".into()),
            interfaces: vec!["em0".parse().unwrap()].into(),
            targets: Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]),
            reached: Default::default(),
        }
        .into()
    }

    #[test]
    fn a_publication_view_keeps_the_json_of_version_1() {
        // The exact text version 1's untyped view produced for this publication, then the
        // fields added since (where it is reachable from, the reaches it turned off).
        let v = view("8000-8010:9000/udp", api::Standing::Pending);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"jail":"web","spec":"8000-8010:9000-9010/udp","protocol":"udp","host_ports":"8000-8010","jail_ports":"9000-9010","interfaces":["em0"],"address":null,"ipv4":"10.13.37.2","ipv6":"fd00::2","state":"pending","reason":"jail web is not running","sources":["192.0.2.7","198.51.100.0/24"],"log":true,"network":"kleenet","reachable_from":[],"reach_off":{}}"#
        );
        let back: PublicationView = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        let v = view("[2001:db8::10]:443:8443", api::Standing::Active);
        assert_eq!(v.address, Some("2001:db8::10".parse().unwrap()));
        let text = serde_json::to_string(&v).unwrap();
        assert!(text.contains(r#""address":"2001:db8::10""#) && text.contains(r#""state":"active","reason":null"#));
        assert!(serde_json::from_str::<PublicationView>(&text.replace("8443", "84x3")).is_err());
    }

    /// The answer written straight into the socket is, byte for byte, the whole response.
    #[test]
    fn data_written_as_it_is_serialised_is_the_responses_text() {
        let streamed = |data: &dyn Fn(&mut Vec<u8>)| {
            let mut out = Vec::new();
            data(&mut out);
            String::from_utf8(out).unwrap()
        };
        let views = vec![
            view("8000-8010:9000/udp", api::Standing::Pending),
            view("[2001:db8::10]:443:8443", api::Standing::Active),
        ];
        let whole = serde_json::to_string(&Response::with_data(&views)).unwrap();
        assert_eq!(streamed(&|w| write_with_data(w, &views).unwrap()), whole);
        let empty: Vec<PublicationView> = vec![];
        let whole = serde_json::to_string(&Response::with_data(&empty)).unwrap();
        assert_eq!(whole, r#"{"version":2,"ok":true,"message":"","data":[]}"#);
        assert_eq!(streamed(&|w| write_with_data(w, &empty).unwrap()), whole);
        let stats = vec![StatsView {
            jail: "web".parse().unwrap(),
            spec: "8080:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            state: State::Active,
            traffic: None,
            note: Some("cannot read pf's counters of kleene/web: \"x\"\n".into()),
        }];
        let whole = serde_json::to_string(&Response::with_data(&stats)).unwrap();
        assert_eq!(streamed(&|w| write_with_data(w, &stats[..]).unwrap()), whole);
    }

    #[test]
    fn states_and_kinds_are_the_documented_words() {
        for (standing, word) in [
            (api::Standing::Active, "active"),
            (api::Standing::Pending, "pending"),
            (api::Standing::Conflict, "conflict"),
            (api::Standing::Error, "error"),
            (api::Standing::Removing, "removing"),
        ] {
            let state = State::from(standing);
            assert_eq!(state.word(), word);
            assert_eq!(standing.word(), word);
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{word}\""));
            assert_eq!(serde_json::from_str::<State>(&format!("\"{word}\"")).unwrap(), state);
        }
        let refused = Response::answer(Err(api::Refusal::new(api::RefusalKind::NotFound, "gone")));
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"version":2,"ok":false,"error":"not_found","message":"gone"}"#
        );
        assert!(Response::answer(Ok("done".into())).ok);
    }

    #[test]
    fn answers_become_responses_with_the_refusals_kind() {
        use crate::agent::api::{Refusal, RefusalKind};
        let ok = Response::answer(Ok("published".into()));
        assert!(ok.ok && ok.error.is_none() && ok.message == "published");
        for (kind, wire) in [
            (RefusalKind::Invalid, ErrorKind::Invalid),
            (RefusalKind::Conflict, ErrorKind::Conflict),
            (RefusalKind::NotFound, ErrorKind::NotFound),
            (RefusalKind::Pf, ErrorKind::Pf),
            (RefusalKind::Limit, ErrorKind::Limit),
            (RefusalKind::Internal, ErrorKind::Internal),
        ] {
            let r = Response::answer(Err(Refusal::new(kind, "why")));
            assert!(!r.ok && r.error == Some(wire) && r.message == "why");
        }
    }

    #[test]
    fn port_ranges_travel_in_their_display_form() {
        for (text, ok) in [("8080", true), ("8000-8010", true), ("1-65535", true), ("0", false), ("9-8", false)] {
            let r = serde_json::from_str::<PortRange>(&format!("\"{text}\""));
            assert_eq!(r.is_ok(), ok, "{text}: {r:?}");
            if let Ok(r) = r {
                assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{text}\""));
            }
        }
        for bad in ["", "-", "80-", "+80", "65536", "8080:80", "80 "] {
            assert!(serde_json::from_str::<PortRange>(&format!("\"{bad}\"")).is_err(), "{bad}");
        }
    }

    #[test]
    fn traffic_from_an_agent_without_current_states_reads_as_unknown() {
        let old = r#"{"packets_in": 1, "bytes_in": 2, "packets_out": 3, "bytes_out": 4, "states_created": 5, "evaluations": 6, "since": 7}"#;
        let t: Traffic = serde_json::from_str(old).unwrap();
        assert_eq!((t.states_created, t.states, t.since), (5, None, 7));
        assert!(!serde_json::to_string(&t).unwrap().contains("\"states\""), "printed as it came");
        assert!(serde_json::to_string(&Traffic { states: Some(8), ..t }).unwrap().contains("\"states\":8"));
    }

    proptest::proptest! {
        /// Whatever the bytes, decoding returns; what it accepts encodes back to the same request.
        #[test]
        fn decoding_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            if let Ok(req) = decode_request(&bytes) {
                proptest::prop_assert_eq!(decode(&encode_request(&req)).unwrap(), req);
            }
        }

        #[test]
        fn decoding_json_like_text_is_total(text in r#"\{("(version|op|jail|specs|all|sources|log|network|verify)"|[0-9":,\[\]{}a-z])*\}"#) {
            if let Ok(req) = decode(&text) {
                proptest::prop_assert_eq!(decode(&encode_request(&req)).unwrap(), req);
            }
        }
    }
}
