//! What the engine is asked and what it answers, as domain values. The requests arrive already
//! validated (the protocol decodes straight into these types); the answers are turned into
//! protocol responses by the server alone, so nothing below the server knows the wire format.

use std::sync::Arc;

use crate::core::container::{Container, Owner};
use crate::core::model::{Cidr, InterfaceName, JailName, NetworkName};
use crate::core::publication::Publication;
use crate::core::reach::{ReachOff, Reached};
use crate::core::render::Targets;
use crate::core::spec::PortSpec;

/// `kleenectl publish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishRequest {
    pub jail: JailName,
    /// At least one; the engine refuses an empty list.
    pub specs: Vec<PortSpec>,
    pub sources: Vec<Cidr>,
    pub log: bool,
    pub network: Option<NetworkName>,
    /// The reaches turned off for these publications.
    pub reach_off: ReachOff,
}

/// A container's publications, as the `kleene-portmap` CNI plugin asks for them (CNI `ADD`):
/// all or none, each active at once, targeting the container's given addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPublishRequest {
    /// The jail holding the container's network (`CNI_NETNS`); it must be running.
    pub jail: JailName,
    /// At least one.
    pub specs: Vec<PortSpec>,
    pub container: Container,
    /// The parent anchor the caller expects the agent to use, if it says.
    pub anchor: Option<String>,
    /// The reaches turned off for these publications.
    pub reach_off: ReachOff,
}

/// What `kleenectl unpublish` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// These specs (matched by their canonical form); at least one.
    Specs(Vec<PortSpec>),
    /// Every publication of the jail.
    All,
    /// Every publication of the jail that this container owns.
    Owned(Owner),
}

impl Removal {
    /// The refusal of an unpublish request that names no spec, or both specs and `--all`.
    pub fn missing() -> Refusal {
        Refusal::new(RefusalKind::Invalid, "give the specs to unpublish, or --all")
    }
}

/// `kleenectl unpublish`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpublishRequest {
    pub jail: JailName,
    pub removal: Removal,
}

/// Why a request was refused; decides the client's exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Bad input (exit 2).
    Invalid,
    /// The host port is held by another publication, or the jail's anchor name by another jail.
    Conflict,
    /// The publication does not exist.
    NotFound,
    /// pf refused, or did not complete the change.
    Pf,
    /// A limit was reached.
    Limit,
    /// Anything else (the state could not be written, ...).
    Internal,
}

/// A refused request: its kind and what to tell the user (what was wrong, what to do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal { kind, message: message.into() }
    }
}

/// A request that succeeded: what to tell the user.
pub type Answer = Result<String, Refusal>;

/// Where a publication stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its rules are loaded.
    Active,
    /// Its jail is not running, or its addresses are being read.
    Pending,
    /// Its host port is held by an older publication.
    Conflict,
    /// It cannot be applied (no usable address, pf refused, ...).
    Error,
    /// Unpublished, but pf has not finished removing it (its states are not killed yet).
    Removing,
}

impl Standing {
    /// `active`, `pending`, `conflict`, `error` or `removing`.
    pub fn word(self) -> &'static str {
        match self {
            Standing::Active => "active",
            Standing::Pending => "pending",
            Standing::Conflict => "conflict",
            Standing::Error => "error",
            Standing::Removing => "removing",
        }
    }
}

/// One publication as `kleenectl ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationState {
    pub publication: Publication,
    pub standing: Standing,
    /// Why it is not active (None when active).
    pub reason: Option<String>,
    /// The interfaces its rules are on (empty for an address publication or when none): the
    /// plan's list, shared (an `ls` of 10,000 publications holds no copy of each).
    pub interfaces: Arc<[InterfaceName]>,
    /// The jail addresses its traffic goes to.
    pub targets: Targets,
    /// Where it can be reached from (empty unless active).
    pub reached: Reached,
}

/// One anchor the agent loaded, as `kleenectl rules` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedAnchor {
    /// The full anchor path (`kleene/web`).
    pub anchor: String,
    pub jail: JailName,
    pub text: String,
}

/// One finding of `kleenectl check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub ok: bool,
    pub what: String,
    pub detail: String,
    /// What to do when not ok.
    pub fix: Option<String>,
}

/// One publication's traffic, as `kleenectl stats` shows it: pf's counters of its pass rules
/// (both families summed) since `since`, when pf last took its jail's anchor (pf starts a
/// reloaded anchor's counters at zero; the agent does not carry them across reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicationStats {
    pub publication: Publication,
    /// Where it stands, as `ls` says.
    pub standing: Standing,
    /// When the counters started: `None` when its rules are not loaded.
    pub since: Option<std::time::SystemTime>,
    /// `None` when its rules are not loaded, or pf's counters could not be read (`note` says).
    pub counters: Option<crate::sys::counters::RuleCounters>,
    /// Why counters are missing although its rules are loaded.
    pub note: Option<String>,
}
