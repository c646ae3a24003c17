//! `kleene-portmap`: a chained CNI plugin that publishes a container's port mappings through the
//! agent, so that container engines on FreeBSD (Podman, Buildah, containerd's CRI plugin) get the
//! agent's conflict checks, drift repair and `rdr` + `pass` rules instead of one `rdr pass` anchor
//! per container.
//!
//! The CNI specification's plugin protocol: the operation and the container in environment
//! variables (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`; `CNI_ARGS` and
//! `CNI_PATH` are not needed here), the network configuration on stdin, a result or an error
//! object on stdout. Supported spec versions: [`SUPPORTED`] (STATUS and GC from 1.1.0).
//!
//! - `ADD` publishes every `runtimeConfig.portMappings` entry for the container in the jail
//!   `CNI_NETNS` names (on FreeBSD, the VNET jail holding the container's network), targeting the
//!   addresses of `prevResult` (the runtime is the authority on them), all or nothing, and prints
//!   `prevResult` unchanged.
//! - `DEL` removes whatever the container (on this CNI network) published; nothing published is
//!   success.
//! - `CHECK` asks the agent whether each mapping is published for the container and active.
//! - `STATUS` asks whether the agent answers; `GC` removes the publications of containers on
//!   this CNI network that the runtime no longer lists.
//!
//! Everything here is a pure function of the environment, stdin and the agent's answers
//! ([`run`]); the binary (`src/bin/kleene-portmap.rs`) only wires them to the process.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};

use crate::client::ClientError;
use crate::core::container::CniName;
use crate::core::model::JailName;
use crate::core::reach::ReachOff;
use crate::core::spec::PortSpec;
use crate::proto::{ErrorKind, PublicationView, Request, Response, State};

/// The CNI specification versions this plugin speaks.
pub const SUPPORTED: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

/// The largest network configuration read from stdin.
pub const MAX_CONFIG: usize = 1 << 20;

/// The socket used when neither the configuration nor `KLEENE_RDR_SOCKET` names one.
pub const DEFAULT_SOCKET: &str = crate::agent::config::DEFAULT_SOCKET;

/// Plugin-specific error codes (the specification leaves 100 and up to plugins).
pub mod code {
    /// Incompatible CNI version.
    pub const VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network configuration (a value the agent refused as invalid included).
    pub const CONFIG: u32 = 7;
    /// Try again later: the agent did not answer.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin is not available (the agent does not answer).
    pub const NOT_AVAILABLE: u32 = 50;
    /// A host port is held by another publication (the details name the holder).
    pub const CONFLICT: u32 = 100;
    /// The agent, or pf through it, refused or failed (pf, a limit, the state, ...).
    pub const AGENT: u32 = 101;
    /// The agent refused this caller (not root, not in its socket_group).
    pub const DENIED: u32 = 102;
    /// The agent and the plugin are of different releases.
    pub const MISMATCH: u32 = 103;
    /// CHECK: a mapping is not published for the container, or not active.
    pub const CHECK: u32 = 104;
}

/// A CNI error object: printed on stdout, with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(version: &str, code: u32, msg: &str, details: impl Into<String>) -> CniError {
        CniError { cni_version: version.to_string(), code, msg: msg.to_string(), details: details.into() }
    }

    /// The error object, as the specification shapes it.
    pub fn to_json(&self) -> String {
        json!({"cniVersion": self.cni_version, "code": self.code, "msg": self.msg, "details": self.details}).to_string()
    }
}

/// The operations of the specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

/// The network configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: CniName,
    pub mappings: Vec<PortSpec>,
    /// `prevResult`, as given.
    pub prev_result: Option<Map<String, Value>>,
    pub socket: Option<PathBuf>,
    pub anchor: Option<String>,
    /// The reaches the configuration turned off (`hairpin`, `localhost`, `networks`: false).
    pub reach_off: ReachOff,
    /// GC's `cni.dev/valid-attachments`: the container ids still attached.
    pub valid: Option<BTreeSet<String>>,
}

/// What the plugin prints and its exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub status: i32,
}

/// Talks to the agent: sends one request to the socket, returns the response.
pub type Agent<'a> = dyn FnMut(&Path, &Request) -> Result<Response, ClientError> + 'a;

/// Runs one invocation: `env` reads an environment variable, `stdin` is what the runtime wrote.
pub fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8], agent: &mut Agent) -> Outcome {
    match invoke(env, stdin, agent) {
        Ok(stdout) => Outcome { stdout, status: 0 },
        Err(e) => Outcome { stdout: e.to_json(), status: 1 },
    }
}

fn invoke(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8], agent: &mut Agent) -> Result<String, CniError> {
    let latest = SUPPORTED[SUPPORTED.len() - 1];
    let command = match env("CNI_COMMAND").as_deref() {
        Some("ADD") => Command::Add,
        Some("DEL") => Command::Del,
        Some("CHECK") => Command::Check,
        Some("VERSION") => Command::Version,
        Some("STATUS") => Command::Status,
        Some("GC") => Command::Gc,
        Some(other) => {
            return Err(CniError::new(
                latest,
                code::ENV,
                "invalid CNI_COMMAND",
                format!("CNI_COMMAND {other:?} is not ADD, DEL, CHECK, VERSION, STATUS or GC"),
            ));
        }
        None => return Err(CniError::new(latest, code::ENV, "missing CNI_COMMAND", "CNI_COMMAND is not set")),
    };
    if stdin.len() > MAX_CONFIG {
        return Err(CniError::new(
            latest,
            code::IO,
            "network configuration too large",
            format!("the configuration on stdin is larger than {MAX_CONFIG} bytes"),
        ));
    }
    if command == Command::Version {
        return Ok(version(stdin));
    }
    let conf = netconf(stdin, command)?;
    let v = conf.cni_version.as_str();
    let socket = conf
        .socket
        .clone()
        .or_else(|| env("KLEENE_RDR_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    let mut ask = |req: &Request, unreachable: u32| -> Result<Response, CniError> {
        let response = agent(&socket, req).map_err(|e| client_error(v, &e, unreachable))?;
        if response.ok { Ok(response) } else { Err(refused(v, &response)) }
    };
    match command {
        Command::Version => unreachable!("answered above"),
        Command::Add => {
            let (id, jail) = (container_id(env, v)?, netns(env, v)?);
            ifname(env, v)?;
            let prev = conf.prev_result.as_ref().ok_or_else(|| no_prev_result(v))?;
            if !conf.mappings.is_empty() {
                let addresses = addresses(prev, v)?;
                ask(
                    &Request::PublishContainer {
                        jail,
                        specs: conf.mappings.clone(),
                        container: id,
                        cni_network: conf.name.clone(),
                        addresses,
                        anchor: conf.anchor.clone(),
                        reach_off: conf.reach_off,
                    },
                    code::TRY_AGAIN,
                )?;
            }
            let mut result = prev.clone();
            result.insert("cniVersion".into(), Value::String(v.to_string()));
            Ok(Value::Object(result).to_string())
        }
        Command::Del => {
            let id = container_id(env, v)?;
            ask(&Request::UnpublishContainer { container: id, cni_network: conf.name.clone() }, code::TRY_AGAIN)?;
            Ok(String::new())
        }
        Command::Check => {
            let (id, jail) = (container_id(env, v)?, netns(env, v)?);
            ifname(env, v)?;
            let prev = conf.prev_result.as_ref().ok_or_else(|| no_prev_result(v))?;
            let addresses = if conf.mappings.is_empty() { vec![] } else { addresses(prev, v)? };
            let listed = ask(&Request::List { jail: Some(jail.clone()) }, code::TRY_AGAIN)?;
            let views: Vec<PublicationView> = listed.decode().map_err(|e| {
                CniError::new(v, code::MISMATCH, "unexpected answer from the agent", format!("its list: {e}"))
            })?;
            check(&conf, &id, &jail, &addresses, &views)
                .map_err(|details| CniError::new(v, code::CHECK, "port mapping not in place", details))?;
            Ok(String::new())
        }
        Command::Status => {
            ask(&Request::Check, code::NOT_AVAILABLE).map_err(|mut e| {
                if e.code != code::NOT_AVAILABLE {
                    e.code = code::NOT_AVAILABLE;
                    e.msg = "plugin not available".into();
                }
                e
            })?;
            Ok(String::new())
        }
        Command::Gc => {
            let valid = conf.valid.clone().unwrap_or_default();
            let listed = ask(&Request::List { jail: None }, code::TRY_AGAIN)?;
            let views: Vec<PublicationView> = listed.decode().map_err(|e| {
                CniError::new(v, code::MISMATCH, "unexpected answer from the agent", format!("its list: {e}"))
            })?;
            let stale: BTreeSet<CniName> = views
                .iter()
                .filter_map(|p| p.container.as_ref())
                .filter(|c| c.network == conf.name && !valid.contains(c.id.as_str()))
                .map(|c| c.id.clone())
                .collect();
            let mut failed = Vec::new();
            for id in stale {
                let req = Request::UnpublishContainer { container: id.clone(), cni_network: conf.name.clone() };
                if let Err(e) = ask(&req, code::TRY_AGAIN) {
                    failed.push(format!("container {id}: {}", e.details));
                }
            }
            if failed.is_empty() {
                Ok(String::new())
            } else {
                Err(CniError::new(v, code::AGENT, "garbage collection incomplete", failed.join("; ")))
            }
        }
    }
}

/// The answer to VERSION: the input's `cniVersion` (or the latest) and the supported versions.
fn version(stdin: &[u8]) -> String {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| SUPPORTED[SUPPORTED.len() - 1].to_string());
    json!({"cniVersion": asked, "supportedVersions": SUPPORTED}).to_string()
}

/// Parses and validates the network configuration.
pub fn netconf(stdin: &[u8], command: Command) -> Result<NetConf, CniError> {
    let latest = SUPPORTED[SUPPORTED.len() - 1];
    let decode =
        |details: String| CniError::new(latest, code::DECODE, "cannot decode the network configuration", details);
    let text = std::str::from_utf8(stdin).map_err(|e| decode(format!("stdin is not UTF-8: {e}")))?;
    let value: Value = serde_json::from_str(text).map_err(|e| decode(format!("stdin is not JSON: {e}")))?;
    let Value::Object(mut conf) = value else { return Err(decode("stdin is not a JSON object".into())) };
    let v = match conf.get("cniVersion") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(CniError::new(
                latest,
                code::CONFIG,
                "invalid network configuration",
                "cniVersion is missing or not a string",
            ));
        }
    };
    if !SUPPORTED.contains(&v.as_str()) {
        return Err(CniError::new(
            &v,
            code::VERSION,
            "incompatible CNI version",
            format!("kleene-portmap supports cniVersion {}; the configuration says {v:?}", SUPPORTED.join(", ")),
        ));
    }
    if matches!(command, Command::Status | Command::Gc) && v != "1.1.0" {
        return Err(CniError::new(
            &v,
            code::VERSION,
            "incompatible CNI version",
            format!(
                "{} needs cniVersion 1.1.0; the configuration says {v}",
                if command == Command::Status { "STATUS" } else { "GC" }
            ),
        ));
    }
    let invalid = |details: String| CniError::new(&v, code::CONFIG, "invalid network configuration", details);
    let name = match conf.get("name") {
        Some(Value::String(s)) => CniName::parse_as("CNI network name", s).map_err(|e| invalid(e.to_string()))?,
        _ => return Err(invalid("name is missing or not a string".into())),
    };
    // DEL must clean up after a failed ADD (and GC and STATUS use no mapping): only ADD and
    // CHECK read the mappings and the options of a publication.
    let publishing = matches!(command, Command::Add | Command::Check);
    // The reaches of issue "who can reach a published port", each on unless the configuration
    // says `false`: `hairpin` (other jails and containers through the published port),
    // `localhost` (the host itself: 127.0.0.1, [::1] and its own addresses) and `networks` (the
    // agent's configured networks straight to the container's port).
    let mut reach_off = ReachOff::default();
    for (key, off) in
        [("hairpin", &mut reach_off.hairpin), ("localhost", &mut reach_off.host), ("networks", &mut reach_off.networks)]
    {
        match conf.get(key).filter(|_| publishing) {
            None | Some(Value::Null) | Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => *off = true,
            Some(other) => return Err(invalid(format!("{key} must be true or false; it is {other}"))),
        }
    }
    let socket = match conf.get("socket") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.starts_with('/') => Some(PathBuf::from(s)),
        Some(other) => return Err(invalid(format!("socket must be an absolute path; it is {other}"))),
    };
    let anchor = match conf.get("anchor").filter(|_| publishing) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(invalid(format!("anchor must be a string; it is {other}"))),
    };
    let mappings = match conf.get("runtimeConfig").and_then(|r| r.get("portMappings")).filter(|_| publishing) {
        None | Some(Value::Null) => vec![],
        Some(Value::Array(items)) => {
            let mut specs: Vec<PortSpec> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let spec = mapping(item).map_err(|e| invalid(format!("runtimeConfig.portMappings[{i}]: {e}")))?;
                if !specs.contains(&spec) {
                    specs.push(spec);
                }
            }
            specs
        }
        Some(other) => return Err(invalid(format!("runtimeConfig.portMappings must be an array; it is {other}"))),
    };
    let prev_result = match conf.remove("prevResult") {
        None | Some(Value::Null) => None,
        Some(Value::Object(p)) => Some(p),
        Some(_) => return Err(invalid("prevResult must be an object".into())),
    };
    let valid = match (command, conf.get("cni.dev/valid-attachments")) {
        (Command::Gc, Some(Value::Array(items))) => Some(
            items
                .iter()
                .map(|a| a.get("containerID").and_then(Value::as_str).map(str::to_string))
                .collect::<Option<BTreeSet<String>>>()
                .ok_or_else(|| invalid("cni.dev/valid-attachments: every entry needs a containerID string".into()))?,
        ),
        (Command::Gc, _) => return Err(invalid("GC needs cni.dev/valid-attachments, an array".into())),
        _ => None,
    };
    Ok(NetConf { cni_version: v, name, mappings, prev_result, socket, anchor, reach_off, valid })
}

/// One port mapping as our port spec: `hostIP` (an address, or none for "any": empty, 0.0.0.0
/// or ::) becomes the spec's address, so `{"hostPort":8080,"containerPort":80,"hostIP":"192.0.2.10"}`
/// is `192.0.2.10:8080:80/tcp`.
pub fn mapping(item: &Value) -> Result<PortSpec, String> {
    let Value::Object(m) = item else { return Err("not an object".into()) };
    let port = |key: &str| -> Result<u64, String> {
        match m.get(key) {
            Some(Value::Number(n)) => n
                .as_u64()
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| format!("{key} {n} is not a port (1-65535)")),
            Some(other) => Err(format!("{key} must be a number; it is {other}")),
            None => Err(format!("{key} is missing")),
        }
    };
    let (host, container) = (port("hostPort")?, port("containerPort")?);
    let proto = match m.get("protocol") {
        None | Some(Value::Null) => "tcp".to_string(),
        Some(Value::String(p)) if p.is_empty() => "tcp".to_string(),
        Some(Value::String(p)) => {
            let p = p.to_ascii_lowercase();
            if !matches!(p.as_str(), "tcp" | "udp" | "sctp") {
                return Err(format!("protocol {p:?} is not tcp, udp or sctp"));
            }
            p
        }
        Some(other) => return Err(format!("protocol must be a string; it is {other}")),
    };
    let place = match m.get("hostIP") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(ip)) if ip.is_empty() => String::new(),
        Some(Value::String(ip)) => match ip.parse::<IpAddr>() {
            Ok(a) if a.is_unspecified() => String::new(),
            Ok(IpAddr::V4(a)) => format!("{a}:"),
            Ok(IpAddr::V6(a)) => format!("[{a}]:"),
            Err(_) => return Err(format!("hostIP {ip:?} is not an IP address")),
        },
        Some(other) => return Err(format!("hostIP must be a string; it is {other}")),
    };
    PortSpec::parse(&format!("{place}{host}:{container}/{proto}")).map_err(|e| e.to_string())
}

/// The container's addresses in `prevResult`: those of `ips` on an interface inside the
/// container (one with a `sandbox`), or every address when no entry says its interface.
pub fn addresses(prev: &Map<String, Value>, v: &str) -> Result<Vec<IpAddr>, CniError> {
    let invalid = |details: String| CniError::new(v, code::CONFIG, "invalid network configuration", details);
    let interfaces = prev.get("interfaces").and_then(Value::as_array).cloned().unwrap_or_default();
    let in_sandbox = |i: u64| {
        usize::try_from(i)
            .ok()
            .and_then(|i| interfaces.get(i))
            .and_then(|f| f.get("sandbox"))
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    let ips = match prev.get("ips") {
        Some(Value::Array(ips)) => ips,
        _ => return Err(invalid("prevResult has no ips: kleene-portmap needs the container's addresses".into())),
    };
    let mut all = Vec::new();
    let mut inside = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let text = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("prevResult.ips[{i}] has no address")))?;
        let addr = text
            .split_once('/')
            .map_or(text, |(a, _)| a)
            .parse::<IpAddr>()
            .map_err(|_| invalid(format!("prevResult.ips[{i}].address {text:?} is not an address in CIDR form")))?;
        all.push(addr);
        if ip.get("interface").and_then(Value::as_u64).is_some_and(in_sandbox) {
            inside.push(addr);
        }
    }
    let chosen = if inside.is_empty() { all } else { inside };
    if chosen.is_empty() {
        return Err(invalid("prevResult has no container address".into()));
    }
    Ok(chosen)
}

/// Whether every mapping of `conf` is published for the container `id` in `jail` and active,
/// targeting one of its `addresses`; `Err` says which is not and why.
fn check(
    conf: &NetConf,
    id: &CniName,
    jail: &JailName,
    addresses: &[IpAddr],
    views: &[PublicationView],
) -> Result<(), String> {
    let mut wrong = Vec::new();
    for spec in &conf.mappings {
        let found = views.iter().find(|p| {
            &p.jail == jail
                && &p.spec == spec
                && p.container.as_ref().is_some_and(|c| &c.id == id && c.network == conf.name)
        });
        match found {
            None => wrong.push(format!("{spec} is not published for container {id} in jail {jail}")),
            Some(p) if p.state != State::Active => {
                wrong.push(format!("{spec} is {}: {}", p.state, p.reason.as_deref().unwrap_or("no reason given")))
            }
            Some(p) if ![p.ipv4, p.ipv6].iter().flatten().any(|t| addresses.contains(t)) => {
                wrong.push(format!("{spec} does not target the container's addresses"))
            }
            Some(_) => {}
        }
    }
    if wrong.is_empty() { Ok(()) } else { Err(wrong.join("; ")) }
}

fn no_prev_result(v: &str) -> CniError {
    CniError::new(
        v,
        code::CONFIG,
        "invalid network configuration",
        "no prevResult: kleene-portmap is a chained plugin; list it after the plugin that gives the container its \
         addresses (bridge) in a conflist",
    )
}

fn container_id(env: &dyn Fn(&str) -> Option<String>, v: &str) -> Result<CniName, CniError> {
    let id = env("CNI_CONTAINERID").unwrap_or_default();
    CniName::parse_as("container id", &id)
        .map_err(|e| CniError::new(v, code::ENV, "invalid CNI_CONTAINERID", format!("CNI_CONTAINERID: {e}")))
}

/// `CNI_NETNS`: on FreeBSD, the name of the jail holding the container's network.
fn netns(env: &dyn Fn(&str) -> Option<String>, v: &str) -> Result<JailName, CniError> {
    let ns = env("CNI_NETNS").unwrap_or_default();
    ns.parse::<JailName>().map_err(|e| {
        CniError::new(
            v,
            code::ENV,
            "invalid CNI_NETNS",
            format!("CNI_NETNS (the jail of the container's network): {e}"),
        )
    })
}

fn ifname(env: &dyn Fn(&str) -> Option<String>, v: &str) -> Result<(), CniError> {
    match env("CNI_IFNAME") {
        Some(i) if !i.is_empty() => Ok(()),
        _ => Err(CniError::new(v, code::ENV, "missing CNI_IFNAME", "CNI_IFNAME is not set")),
    }
}

/// No answer from the agent: `unreachable` (try again later, or not available for STATUS).
fn client_error(v: &str, e: &ClientError, unreachable: u32) -> CniError {
    match e {
        ClientError::Unreachable { .. } | ClientError::Timeout { .. } => {
            let msg = if unreachable == code::NOT_AVAILABLE { "plugin not available" } else { "try again later" };
            CniError::new(v, unreachable, msg, e.to_string())
        }
        ClientError::Protocol { .. } | ClientError::Version { .. } => {
            CniError::new(v, code::MISMATCH, "the agent speaks another protocol", e.to_string())
        }
    }
}

/// A refusal by the agent.
fn refused(v: &str, r: &Response) -> CniError {
    let m = r.message.clone();
    if m.contains("unknown field `container`") {
        return CniError::new(
            v,
            code::MISMATCH,
            "the agent is older than kleene-portmap",
            format!(
                "the agent does not know container publications ({m}): install kleene-portmap and kleenectl of the \
                 same release, and restart the agent"
            ),
        );
    }
    match r.error {
        Some(ErrorKind::Invalid) => CniError::new(v, code::CONFIG, "invalid network configuration", m),
        Some(ErrorKind::Conflict) => CniError::new(v, code::CONFLICT, "host port already published", m),
        Some(ErrorKind::Denied) => CniError::new(v, code::DENIED, "the agent refused this caller", m),
        Some(ErrorKind::Version) => CniError::new(v, code::MISMATCH, "the agent speaks another protocol", m),
        _ => CniError::new(v, code::AGENT, "the agent did not publish the ports", m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mappings_become_canonical_specs() {
        for (m, spec) in [
            (json!({"hostPort": 8080, "containerPort": 80}), "8080:80/tcp"),
            (json!({"hostPort": 8080, "containerPort": 80, "protocol": "UDP", "hostIP": ""}), "8080:80/udp"),
            (json!({"hostPort": 53, "containerPort": 53, "protocol": "udp", "hostIP": "::"}), "53:53/udp"),
            (json!({"hostPort": 443, "containerPort": 8443, "hostIP": "192.0.2.10"}), "192.0.2.10:443:8443/tcp"),
            (json!({"hostPort": 443, "containerPort": 8443, "hostIP": "2001:DB8::10"}), "[2001:db8::10]:443:8443/tcp"),
            (json!({"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": null}), "9:9/sctp"),
        ] {
            assert_eq!(mapping(&m).unwrap().to_string(), spec, "{m}");
        }
        for (m, why) in [
            (json!(8080), "not an object"),
            (json!({"hostPort": 65536, "containerPort": 80}), "hostPort 65536 is not a port (1-65535)"),
            (json!({"hostPort": -1, "containerPort": 80}), "hostPort -1 is not a port"),
            (json!({"hostPort": "80", "containerPort": 80}), "hostPort must be a number"),
            (json!({"hostPort": 80, "containerPort": 80, "protocol": 6}), "protocol must be a string"),
            (json!({"hostPort": 80, "containerPort": 80, "hostIP": "10.0.0.1/8"}), "is not an IP address"),
        ] {
            let e = mapping(&m).unwrap_err();
            assert!(e.contains(why), "{m}: {e}");
        }
    }

    #[test]
    fn the_containers_addresses_are_those_on_its_sandbox_interfaces() {
        let prev = |v: Value| v.as_object().unwrap().clone();
        let with_sandbox = prev(json!({
            "interfaces": [{"name": "bridge0"}, {"name": "eth0", "sandbox": "cni-1"}],
            "ips": [{"address": "10.88.0.1/16", "interface": 0}, {"address": "10.88.0.5/16", "interface": 1}]
        }));
        assert_eq!(addresses(&with_sandbox, "1.0.0").unwrap(), ["10.88.0.5".parse::<IpAddr>().unwrap()]);
        let bare = prev(json!({"ips": [{"address": "10.88.0.5/16"}, {"address": "fd00::5/64"}]}));
        assert_eq!(addresses(&bare, "1.0.0").unwrap().len(), 2);
        for (p, why) in [
            (json!({}), "prevResult has no ips"),
            (json!({"ips": []}), "prevResult has no container address"),
            (json!({"ips": [{"gateway": "10.88.0.1"}]}), "prevResult.ips[0] has no address"),
            (json!({"ips": [{"address": "bridge0"}]}), "\"bridge0\" is not an address in CIDR form"),
        ] {
            let e = addresses(&prev(p.clone()), "0.4.0").unwrap_err();
            assert_eq!((e.code, e.cni_version.as_str()), (code::CONFIG, "0.4.0"));
            assert!(e.details.contains(why), "{p}: {e:?}");
        }
    }

    #[test]
    fn errors_are_the_specs_objects() {
        let e = CniError::new("1.0.0", code::TRY_AGAIN, "try again later", "no agent");
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v, json!({"cniVersion": "1.0.0", "code": 11, "msg": "try again later", "details": "no agent"}));
        let mut never = |_: &Path, _: &Request| -> Result<Response, ClientError> { panic!("no agent is asked") };
        let out = run(&|_| None, b"", &mut never);
        assert_eq!(out.status, 1);
        assert!(out.stdout.contains(r#""code":4"#) && out.stdout.contains("CNI_COMMAND is not set"), "{out:?}");
        let env = |k: &str| (k == "CNI_COMMAND").then(|| "ADD".to_string());
        let out = run(&env, &vec![b' '; MAX_CONFIG + 1], &mut never);
        assert!(out.stdout.contains(r#""code":5"#), "{out:?}");
    }
}
