//! The executor: applies a plan's actions to pf through the `Pf` trait, and keeps what pf has
//! not done yet.
//!
//! Nothing is reported as done that pf did not do. Every action's result, failures included,
//! is returned in an [`Outcome`] (the caller decides what a failure means for its request); a
//! load, flush or state kill that pfctl refuses is also kept and retried with exponential
//! backoff per anchor (and per label), so that `ls`, `check` and `reconcile` can say what is
//! left ([`Executor::unfinished`]). An anchor below the parent that the agent did not load
//! itself is read before it is flushed: only one whose rules carry this agent's labels is
//! flushed; one holding someone else's rules is left alone and reported as foreign.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::model::JailName;
use crate::core::plan::{Action, Loaded};
use crate::core::publication::Publication;
use crate::core::readback;
use crate::sys::pf::{Pf, Show};

use super::super::log;
use super::anchor_path;

/// The longest wait between two tries of a pf operation that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A pf operation that failed: why, how often, and when it is tried again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Retry {
    /// pf's message of the last failure.
    pub(super) error: String,
    failures: u32,
    next: Instant,
}

impl Retry {
    /// The record after one more failure: the wait doubles from one poll interval up to
    /// [`MAX_BACKOFF`].
    fn failed(previous: Option<&Retry>, error: String, poll: Duration) -> Retry {
        let failures = previous.map_or(0, |r| r.failures).saturating_add(1);
        let wait = poll.saturating_mul(1u32 << failures.saturating_sub(1).min(20)).min(MAX_BACKOFF);
        Retry { error, failures, next: Instant::now() + wait }
    }

    fn due(&self, now: Instant) -> bool {
        self.next <= now
    }

    /// "retrying in 8 s (failed 4 times)".
    pub(super) fn when(&self) -> String {
        let left = self.next.saturating_duration_since(Instant::now());
        let times = if self.failures == 1 { "once".to_string() } else { format!("{} times", self.failures) };
        format!("retrying in {} s (failed {times})", left.as_secs().max(1))
    }
}

/// A state kill pf refused, kept until it succeeds.
#[derive(Debug, Clone)]
struct PendingKill {
    /// The jail whose rules carried the label, when known.
    jail: Option<JailName>,
    retry: Retry,
}

/// Which anchors may be tried although they wait out a backoff.
#[derive(Debug, Clone, Copy)]
pub(super) enum Bypass<'a> {
    None,
    /// Every anchor, and every pending state kill.
    All,
    /// The anchor of the request being served.
    Component(&'a str),
}

impl Bypass<'_> {
    fn covers(&self, component: &str) -> bool {
        match self {
            Bypass::None => false,
            Bypass::All => true,
            Bypass::Component(c) => *c == component,
        }
    }
}

/// Whose rules an anchor holds.
enum Ownership {
    /// This agent's: the labels to kill after flushing it.
    Ours(Vec<String>),
    /// No rule at all.
    Empty,
    /// Rules without this agent's labels.
    Foreign,
}

/// Whether a label is one this agent puts on its rules: a publication's (`kleene:...`) or a
/// jail's (`kleene/...`).
fn is_own_label(label: &str) -> bool {
    label.starts_with("kleene:") || label.starts_with("kleene/")
}

/// What applying actions did, failures included. Anchors are named by component, kills by label.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Outcome {
    /// Anchors pf took new rules into.
    pub(super) loaded: BTreeSet<String>,
    /// Anchors pf flushed.
    pub(super) flushed: BTreeSet<String>,
    /// Anchors found holding rules this agent did not write: left alone.
    pub(super) foreign: BTreeSet<String>,
    /// Labels whose states pf killed.
    pub(super) killed: BTreeSet<String>,
    /// Anchors not tried because they wait out a backoff.
    pub(super) waiting: BTreeSet<String>,
    /// Loads pf refused, with its message.
    pub(super) refused_loads: BTreeMap<String, String>,
    /// Flushes pf refused, with its message.
    pub(super) refused_flushes: BTreeMap<String, String>,
    /// Anchors not flushed because pf could not show them (to tell whose they are).
    pub(super) unreadable: BTreeMap<String, String>,
    /// State kills pf refused, with its message.
    pub(super) refused_kills: BTreeMap<String, String>,
}

/// Why pf did not change one anchor as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum AnchorFailure {
    /// pf refused the new rules; it holds the ones it had.
    Load(String),
    /// pf did not flush it; it holds the rules it had.
    Flush(String),
    /// pf could not show it, so it was not flushed.
    Read(String),
}

impl AnchorFailure {
    /// "pf refused the rules for jail web: MESSAGE"-style words: what pf did not do (without
    /// its message), and its message.
    pub(super) fn describe(&self, jail: &JailName) -> (String, &str) {
        match self {
            AnchorFailure::Load(e) => (format!("pf refused the rules for jail {jail}"), e),
            AnchorFailure::Flush(e) => (format!("pf did not flush the anchor of jail {jail}"), e),
            AnchorFailure::Read(e) => (format!("pf could not show the anchor of jail {jail} to flush it"), e),
        }
    }
}

impl Outcome {
    /// Adds what `other` did.
    pub(super) fn merge(&mut self, other: Outcome) {
        self.loaded.extend(other.loaded);
        self.flushed.extend(other.flushed);
        self.foreign.extend(other.foreign);
        self.killed.extend(other.killed);
        self.waiting.extend(other.waiting);
        self.refused_loads.extend(other.refused_loads);
        self.refused_flushes.extend(other.refused_flushes);
        self.unreadable.extend(other.unreadable);
        self.refused_kills.extend(other.refused_kills);
    }

    /// Why the anchor `component` was not changed as asked, if it was not.
    pub(super) fn anchor_failure(&self, component: &str) -> Option<AnchorFailure> {
        let get = |m: &BTreeMap<String, String>| m.get(component).cloned();
        get(&self.refused_loads)
            .map(AnchorFailure::Load)
            .or_else(|| get(&self.refused_flushes).map(AnchorFailure::Flush))
            .or_else(|| get(&self.unreadable).map(AnchorFailure::Read))
    }
}

/// One thing pf has not done yet, which the executor keeps trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unfinished<'a> {
    /// pf refused the rules of the anchor `component`.
    Load { component: &'a str, error: &'a str, retry: Option<&'a Retry> },
    /// pf did not flush the anchor `component`.
    Flush { component: &'a str, error: &'a str, retry: Option<&'a Retry> },
    /// pf did not kill the states of `label`.
    Kill { label: &'a str, retry: &'a Retry },
}

/// See the module documentation.
pub(super) struct Executor {
    /// The parent anchor the components are below (`kleene`).
    parent: String,
    /// The poll interval: the first wait after a failure.
    poll: Duration,
    /// What the agent loaded, by component.
    loaded: BTreeMap<String, Arc<Loaded>>,
    /// Loads pf refused, by component (the planner reports them on the publications).
    refused_loads: BTreeMap<String, String>,
    /// Flushes pf refused, by component.
    refused_flushes: BTreeMap<String, String>,
    /// When a failed load or flush of an anchor is tried again, by component.
    retries: BTreeMap<String, Retry>,
    /// State kills pf refused, by label.
    pending_kills: BTreeMap<String, PendingKill>,
    /// Unpublished publications whose states pf has not killed yet, by label (shown by `ls`).
    removing: BTreeMap<String, Publication>,
}

impl Executor {
    /// Nothing loaded yet.
    pub(super) fn new(parent: &str, poll: Duration) -> Executor {
        Executor {
            parent: parent.to_string(),
            poll,
            loaded: BTreeMap::new(),
            refused_loads: BTreeMap::new(),
            refused_flushes: BTreeMap::new(),
            retries: BTreeMap::new(),
            pending_kills: BTreeMap::new(),
            removing: BTreeMap::new(),
        }
    }

    /// What the agent loaded, by component.
    pub(super) fn loaded(&self) -> &BTreeMap<String, Arc<Loaded>> {
        &self.loaded
    }

    /// Loads pf refused and that are retried, by component.
    pub(super) fn refused_loads(&self) -> &BTreeMap<String, String> {
        &self.refused_loads
    }

    /// A new poll interval (SIGHUP): the first wait after the next failure.
    pub(super) fn set_poll(&mut self, poll: Duration) {
        self.poll = poll;
    }

    fn path(&self, component: &str) -> String {
        anchor_path(&self.parent, component)
    }

    /// Applies `actions` in order, skipping the anchors that wait out a backoff unless `bypass`
    /// covers them.
    pub(super) fn apply(&mut self, pf: &dyn Pf, actions: &[Action], bypass: Bypass) -> Outcome {
        let mut out = Outcome::default();
        let now = Instant::now();
        for a in actions {
            let component = a.component();
            let waiting = self.retries.get(component).is_some_and(|r| !r.due(now));
            if waiting && !bypass.covers(component) {
                out.waiting.insert(component.to_string());
                continue;
            }
            match a {
                Action::Load { component, loaded, kill_before, kill_after } => {
                    self.kill(pf, kill_before, Some(&loaded.jail), &mut out);
                    if self.load(pf, component, loaded, &mut out) {
                        self.kill(pf, kill_after, Some(&loaded.jail), &mut out);
                    }
                }
                Action::Flush { component, kill } => self.flush(pf, component, kill.clone(), &mut out),
            }
        }
        out
    }

    /// Loads `loaded` into the anchor `component`; returns whether pf took it.
    fn load(&mut self, pf: &dyn Pf, component: &str, loaded: &Arc<Loaded>, out: &mut Outcome) -> bool {
        let path = self.path(component);
        match pf.load(&path, &loaded.text) {
            Ok(()) => {
                log::info(&format!("loaded anchor {path} (jail {}, jid {})", loaded.jail, loaded.jid));
                self.loaded.insert(component.to_string(), Arc::clone(loaded));
                self.refused_loads.remove(component);
                self.retries.remove(component);
                out.loaded.insert(component.to_string());
                true
            }
            Err(e) => {
                let retry = Retry::failed(self.retries.get(component), e.message(), self.poll);
                if self.refused_loads.get(component) != Some(&e.message()) {
                    log::warn(&format!("pf refused anchor {path}: {e} ({})", retry.when()));
                }
                self.refused_loads.insert(component.to_string(), e.message());
                self.retries.insert(component.to_string(), retry);
                out.refused_loads.insert(component.to_string(), e.message());
                false
            }
        }
    }

    /// Flushes an anchor and kills its states. An anchor the agent did not load itself (`kill`
    /// is `None`: left by an earlier run, or by someone else) is read first: only an anchor whose
    /// rules carry this agent's labels is the agent's; any other is left alone.
    fn flush(&mut self, pf: &dyn Pf, component: &str, kill: Option<Vec<String>>, out: &mut Outcome) {
        let path = self.path(component);
        let (labels, jail) = match kill {
            Some(k) => (k, self.loaded.get(component).map(|l| l.jail.clone())),
            None => match ownership(pf, &path) {
                Ok(Ownership::Ours(labels)) => (labels, None),
                Ok(Ownership::Empty) => return,
                Ok(Ownership::Foreign) => {
                    log::warn(&format!(
                        "anchor {path} holds rules this agent did not write (none carries its labels); it is left \
                         alone (is `anchor: {}` in the config meant for this agent alone?)",
                        self.parent
                    ));
                    out.foreign.insert(component.to_string());
                    return;
                }
                Err(e) => {
                    let retry = Retry::failed(self.retries.get(component), e.clone(), self.poll);
                    log::warn(&format!("cannot read anchor {path} before flushing it: {e} ({})", retry.when()));
                    self.retries.insert(component.to_string(), retry);
                    out.unreadable.insert(component.to_string(), e);
                    return;
                }
            },
        };
        match pf.flush(&path) {
            Ok(()) => {
                log::info(&format!("flushed anchor {path}"));
                self.loaded.remove(component);
                self.refused_loads.remove(component);
                self.refused_flushes.remove(component);
                self.retries.remove(component);
                out.flushed.insert(component.to_string());
                self.kill(pf, &labels, jail.as_ref(), out);
            }
            Err(e) => {
                let retry = Retry::failed(self.retries.get(component), e.message(), self.poll);
                if self.refused_flushes.get(component) != Some(&e.message()) {
                    log::warn(&format!("cannot flush anchor {path}: {e} ({})", retry.when()));
                }
                self.refused_flushes.insert(component.to_string(), e.message());
                self.retries.insert(component.to_string(), retry);
                out.refused_flushes.insert(component.to_string(), e.message());
            }
        }
    }

    /// Kills the states of `labels` (of `jail`'s rules); a kill pf refuses is kept and retried.
    fn kill(&mut self, pf: &dyn Pf, labels: &[String], jail: Option<&JailName>, out: &mut Outcome) {
        for l in labels {
            match pf.kill_label(l) {
                Ok(()) => {
                    self.pending_kills.remove(l);
                    self.removing.remove(l);
                    out.killed.insert(l.clone());
                }
                Err(e) => {
                    let retry = Retry::failed(self.pending_kills.get(l).map(|k| &k.retry), e.message(), self.poll);
                    log::warn(&format!("cannot kill the states of label {l}: {e} ({})", retry.when()));
                    self.pending_kills.insert(l.clone(), PendingKill { jail: jail.cloned(), retry });
                    out.refused_kills.insert(l.clone(), e.message());
                }
            }
        }
    }

    /// Tries again the state kills that are due (all of them when `now`).
    pub(super) fn retry_kills(&mut self, pf: &dyn Pf, now: bool) -> Outcome {
        let mut out = Outcome::default();
        let t = Instant::now();
        let due: Vec<(String, Option<JailName>)> = self
            .pending_kills
            .iter()
            .filter(|(_, k)| now || k.retry.due(t))
            .map(|(l, k)| (l.clone(), k.jail.clone()))
            .collect();
        for (label, jail) in due {
            self.kill(pf, std::slice::from_ref(&label), jail.as_ref(), &mut out);
            if !self.pending_kills.contains_key(&label) {
                log::info(&format!("killed the states of label {label} (after an earlier failure)"));
            }
        }
        out
    }

    /// Whether a failed pf operation is due for another try (any, when `now`).
    pub(super) fn retries_due(&self, now: bool) -> bool {
        let t = Instant::now();
        let anchors = self.retries.values().any(|r| now || r.due(t));
        anchors || self.pending_kills.values().any(|k| now || k.retry.due(t))
    }

    /// Forgets the failures of anchors for which `relevant` is false and that the agent has not
    /// loaded: a failure of an anchor that is neither wanted, loaded nor in pf any more is moot.
    pub(super) fn forget_moot(&mut self, relevant: impl Fn(&str) -> bool) {
        let loaded = &self.loaded;
        let keep = |c: &String| loaded.contains_key(c) || relevant(c);
        self.refused_loads.retain(|c, _| keep(c));
        self.retries.retain(|c, _| keep(c));
        self.refused_flushes.retain(|c, _| keep(c));
    }

    /// Forgets the failure of the anchor `component` (a request that failed put it back as it
    /// was: pf holds what the state says, nothing is left to retry).
    pub(super) fn forget_anchor_failure(&mut self, component: &str) {
        self.refused_loads.remove(component);
        self.refused_flushes.remove(component);
        self.retries.remove(component);
    }

    /// Forgets the pending kills of `labels` (their rules are back, and their states are wanted).
    pub(super) fn forget_kills<'a>(&mut self, labels: impl IntoIterator<Item = &'a String>) {
        for l in labels {
            self.pending_kills.remove(l);
        }
    }

    /// Flushes every anchor the agent loaded (on exit with `flush_on_exit`).
    pub(super) fn flush_all(&mut self, pf: &dyn Pf) -> Outcome {
        let mut out = Outcome::default();
        let all: Vec<(String, String)> = self.loaded.iter().map(|(c, l)| (c.clone(), l.jail.label())).collect();
        for (component, label) in all {
            self.flush(pf, &component, Some(vec![label]), &mut out);
        }
        out
    }

    /// Moves below a new parent anchor (SIGHUP): flushes every anchor the agent loaded below the
    /// old one and forgets what failed there.
    pub(super) fn reparent(&mut self, pf: &dyn Pf, parent: &str) -> Outcome {
        let out = self.flush_all(pf);
        self.loaded.clear();
        self.refused_loads.clear();
        self.refused_flushes.clear();
        self.retries.clear();
        self.parent = parent.to_string();
        out
    }

    /// Shows `publication` as `removing` while pf has not killed its states.
    pub(super) fn mark_removing(&mut self, publication: Publication) {
        let label = publication.label();
        if self.pending_kills.contains_key(&label) {
            self.removing.insert(label, publication);
        }
    }

    /// Unpublished publications whose states pf has not killed yet, with pf's last refusal.
    pub(super) fn removing(&self) -> impl Iterator<Item = (&Publication, Option<&Retry>)> {
        self.removing.iter().map(|(label, p)| (p, self.pending_kills.get(label).map(|k| &k.retry)))
    }

    /// Everything pf has not done yet: refused loads, then refused flushes, then state kills.
    pub(super) fn unfinished(&self) -> Vec<Unfinished<'_>> {
        let loads = self.refused_loads.iter().map(|(c, e)| Unfinished::Load {
            component: c,
            error: e,
            retry: self.retries.get(c),
        });
        let flushes = self.refused_flushes.iter().map(|(c, e)| Unfinished::Flush {
            component: c,
            error: e,
            retry: self.retries.get(c),
        });
        let kills = self.pending_kills.iter().map(|(l, k)| Unfinished::Kill { label: l, retry: &k.retry });
        loads.chain(flushes).chain(kills).collect()
    }

    /// What pf has not done for the anchor `component`: its refused load or flush, with the
    /// next try.
    pub(super) fn anchor_unfinished(&self, component: &str) -> Option<Unfinished<'_>> {
        let retry = self.retries.get(component);
        if let Some((c, e)) = self.refused_flushes.get_key_value(component) {
            return Some(Unfinished::Flush { component: c, error: e, retry });
        }
        let (c, e) = self.refused_loads.get_key_value(component)?;
        Some(Unfinished::Load { component: c, error: e, retry })
    }

    /// The state kill of `label` pf has not done yet.
    pub(super) fn pending_kill(&self, label: &str) -> Option<&Retry> {
        self.pending_kills.get(label).map(|k| &k.retry)
    }
}

/// Whose rules `path` holds, read from pf.
fn ownership(pf: &dyn Pf, path: &str) -> Result<Ownership, String> {
    let nat = pf.show(Some(path), Show::Nat).map_err(|e| e.message())?;
    let rules = pf.show(Some(path), Show::Rules).map_err(|e| e.message())?;
    let ours: Vec<String> = readback::labels(&rules).into_iter().filter(|l| is_own_label(l)).collect();
    Ok(if !ours.is_empty() {
        // One kill per jail label is enough: every pass rule of an anchor carries it.
        let jail: Vec<String> = ours.iter().filter(|l| l.starts_with("kleene/")).cloned().collect();
        Ownership::Ours(if jail.is_empty() { ours } else { jail })
    } else if nat.trim().is_empty() && rules.trim().is_empty() {
        Ownership::Empty
    } else {
        Ownership::Foreign
    })
}
