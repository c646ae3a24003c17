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
use std::time::{Duration, Instant, SystemTime};

use crate::core::model::{JailName, LabelKind, is_own_label};
use crate::core::plan::{Action, Loaded};
use crate::core::publication::Publication;
use crate::core::readback;
use crate::sys::pf::{Pf, Show};
use crate::sys::runner::CmdError;

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

/// An operation on a whole anchor that pf may refuse.
#[derive(Debug, Clone, Copy)]
enum AnchorOp {
    Load,
    Flush,
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
    /// When pf last took each loaded anchor: its rules' counters run from then.
    loaded_at: BTreeMap<String, SystemTime>,
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
            loaded_at: BTreeMap::new(),
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

    /// When pf last took the anchor `component` from this agent (a load starts its rules'
    /// counters at zero); `None` when it is not loaded.
    pub(super) fn loaded_at(&self, component: &str) -> Option<SystemTime> {
        self.loaded.contains_key(component).then(|| self.loaded_at.get(component).copied()).flatten()
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
        match pf.load(&path, &loaded.text()) {
            Ok(()) => {
                log::info(&format!("loaded anchor {path} (jail {}, jid {})", loaded.jail, loaded.jid));
                self.loaded.insert(component.to_string(), Arc::clone(loaded));
                self.loaded_at.insert(component.to_string(), SystemTime::now());
                // The anchor holds these rules now, whatever pf refused to do with it before.
                self.refused_loads.remove(component);
                self.refused_flushes.remove(component);
                self.retries.remove(component);
                out.loaded.insert(component.to_string());
                true
            }
            Err(e) => {
                self.refused(AnchorOp::Load, component, &e);
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
                self.loaded_at.remove(component);
                self.refused_loads.remove(component);
                self.refused_flushes.remove(component);
                self.retries.remove(component);
                out.flushed.insert(component.to_string());
                self.kill(pf, &labels, jail.as_ref(), out);
            }
            Err(e) => {
                self.refused(AnchorOp::Flush, component, &e);
                out.refused_flushes.insert(component.to_string(), e.message());
            }
        }
    }

    /// Keeps a load or flush of the anchor `component` that pf refused, with its next try; logs
    /// it unless pf said the same last time.
    fn refused(&mut self, op: AnchorOp, component: &str, e: &CmdError) {
        let path = self.path(component);
        let retry = Retry::failed(self.retries.get(component), e.message(), self.poll);
        let (refused, what) = match op {
            AnchorOp::Load => (&mut self.refused_loads, "pf refused anchor"),
            AnchorOp::Flush => (&mut self.refused_flushes, "cannot flush anchor"),
        };
        if refused.get(component) != Some(&e.message()) {
            log::warn(&format!("{what} {path}: {e} ({})", retry.when()));
        }
        refused.insert(component.to_string(), e.message());
        self.retries.insert(component.to_string(), retry);
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
        self.loaded_at.clear();
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
        let jail: Vec<String> = ours.iter().filter(|l| LabelKind::of(l) == Some(LabelKind::Jail)).cloned().collect();
        Ownership::Ours(if jail.is_empty() { ours } else { jail })
    } else if nat.trim().is_empty() && rules.trim().is_empty() {
        Ownership::Empty
    } else {
        Ownership::Foreign
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::engine::testing::{FakePf, PfOp};

    const POLL: Duration = Duration::from_secs(1);

    fn loaded(jail: &str, jid: u32, specs: &[&str]) -> Arc<Loaded> {
        let text: String = specs
            .iter()
            .map(|s| format!("pass in quick on em0 all label \"kleene:{jail}:{s}\" label \"kleene/{jail}\"\n"))
            .collect();
        Arc::new(Loaded::new(jail.parse().unwrap(), jid, &text))
    }

    fn load(l: &Arc<Loaded>, kill_before: &[&str], kill_after: &[&str]) -> Action {
        let labels = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Action::Load {
            component: l.jail.component(),
            loaded: Arc::clone(l),
            kill_before: labels(kill_before),
            kill_after: labels(kill_after),
        }
    }

    fn flush(component: &str, kill: Option<&[&str]>) -> Action {
        Action::Flush { component: component.into(), kill: kill.map(|k| k.iter().map(|s| s.to_string()).collect()) }
    }

    #[test]
    fn kills_before_a_load_come_first_and_kills_after_it_only_when_pf_took_it() {
        let (pf, mut x) = (FakePf::default(), Executor::new("kleene", POLL));
        let web = loaded("web", 4, &["8080:80/tcp"]);
        let out = x.apply(&pf, &[load(&web, &["kleene/web"], &["kleene:web:8081:81/tcp"])], Bypass::None);
        assert_eq!(pf.changes(), ["kill kleene/web", "load kleene/web", "kill kleene:web:8081:81/tcp"]);
        assert_eq!(out.loaded, ["web".to_string()].into());
        assert_eq!(out.killed.len(), 2);
        assert!(x.loaded().contains_key("web"));

        pf.clear_calls();
        pf.refuse(PfOp::Load, "stdin:1: syntax error");
        let out = x.apply(&pf, &[load(&loaded("web", 4, &[]), &[], &["kleene:web:8080:80/tcp"])], Bypass::None);
        assert_eq!(pf.changes(), ["load kleene/web"], "no kill for rules pf still holds");
        assert_eq!(out.anchor_failure("web"), Some(AnchorFailure::Load("stdin:1: syntax error".into())));
        assert_eq!(x.loaded()["web"], web, "what pf holds is what it held");
    }

    #[test]
    fn a_refused_load_is_returned_kept_and_backed_off_unless_bypassed() {
        let (pf, mut x) = (FakePf::default(), Executor::new("kleene", POLL));
        pf.refuse(PfOp::Load, "pfctl: DIOCADDRULENV: Device busy");
        let action = [load(&loaded("web", 3, &["8080:80/tcp"]), &[], &[])];
        let out = x.apply(&pf, &action, Bypass::None);
        assert_eq!(out.refused_loads["web"], "pfctl: DIOCADDRULENV: Device busy");
        assert_eq!(x.refused_loads()["web"], "pfctl: DIOCADDRULENV: Device busy");
        assert!(matches!(x.unfinished()[..], [Unfinished::Load { component: "web", retry: Some(_), .. }]));
        assert!(!x.retries_due(false) && x.retries_due(true));

        pf.clear_calls();
        let out = x.apply(&pf, &action, Bypass::None);
        assert!(pf.calls().is_empty() && out.waiting.contains("web"), "waits out its backoff");
        x.apply(&pf, &action, Bypass::Component("other"));
        assert!(pf.calls().is_empty());
        x.apply(&pf, &action, Bypass::Component("web"));
        assert_eq!(pf.changes(), ["load kleene/web"], "the request's own anchor is tried at once");

        pf.allow(PfOp::Load);
        let out = x.apply(&pf, &action, Bypass::All);
        assert!(out.refused_loads.is_empty() && x.unfinished().is_empty());
    }

    #[test]
    fn a_refused_kill_is_kept_shown_as_removing_and_retried_until_pf_does_it() {
        let (pf, mut x) = (FakePf::default(), Executor::new("kleene", POLL));
        let web = loaded("web", 3, &["8080:80/tcp", "8081:81/tcp"]);
        x.apply(&pf, &[load(&web, &[], &[])], Bypass::None);
        pf.refuse(PfOp::Kill, "pfctl: DIOCKILLSTATES: Operation not permitted");
        let out =
            x.apply(&pf, &[load(&loaded("web", 3, &["8080:80/tcp"]), &[], &["kleene:web:8081:81/tcp"])], Bypass::None);
        assert!(out.anchor_failure("web").is_none(), "the rules are gone");
        assert_eq!(out.refused_kills["kleene:web:8081:81/tcp"], "pfctl: DIOCKILLSTATES: Operation not permitted");
        let gone = Publication::new("web".parse().unwrap(), "8081:81".parse().unwrap(), vec![], false, None);
        x.mark_removing(gone.clone());
        let kept = Publication::new("web".parse().unwrap(), "8080:80".parse().unwrap(), vec![], false, None);
        x.mark_removing(kept);
        let removing: Vec<&Publication> = x.removing().map(|(p, _)| p).collect();
        assert_eq!(removing, [&gone], "only what pf has not finished");
        assert!(matches!(x.unfinished()[..], [Unfinished::Kill { label: "kleene:web:8081:81/tcp", .. }]));

        pf.clear_calls();
        let out = x.retry_kills(&pf, false);
        assert!(pf.calls().is_empty() && out.refused_kills.is_empty(), "not due yet");
        let out = x.retry_kills(&pf, true);
        assert_eq!(pf.changes(), ["kill kleene:web:8081:81/tcp"]);
        assert!(out.refused_kills.contains_key("kleene:web:8081:81/tcp"), "still refused, and said so");
        pf.allow(PfOp::Kill);
        let out = x.retry_kills(&pf, true);
        assert!(out.killed.contains("kleene:web:8081:81/tcp"));
        assert!(x.unfinished().is_empty() && x.removing().next().is_none());
    }

    #[test]
    fn an_anchor_it_did_not_load_is_flushed_only_when_its_rules_carry_its_labels() {
        let (pf, mut x) = (FakePf::default(), Executor::new("kleene", POLL));
        pf.set_anchor("kleene/old", &loaded("old", 9, &["8080:80/tcp"]).text());
        pf.set_anchor("kleene/theirs", "rdr on em0 proto tcp to port 22 -> 10.0.0.1\npass in all label \"ssh\"\n");
        let out = x.apply(&pf, &[flush("old", None), flush("theirs", None)], Bypass::None);
        assert_eq!(pf.changes(), ["flush kleene/old", "kill kleene/old"], "one kill: the jail's label");
        assert_eq!(out.flushed, ["old".to_string()].into());
        assert_eq!(out.foreign, ["theirs".to_string()].into());
        assert!(pf.anchor("kleene/theirs").is_some());

        pf.clear_calls();
        pf.refuse(PfOp::Show, "pfctl: DIOCGETRULES: Device busy");
        pf.set_anchor("kleene/stale", "pass in all label \"kleene/stale\"\n");
        let out = x.apply(&pf, &[flush("stale", None)], Bypass::None);
        assert!(pf.changes().is_empty(), "not flushed unread");
        assert_eq!(out.anchor_failure("stale"), Some(AnchorFailure::Read("pfctl: DIOCGETRULES: Device busy".into())));
    }

    #[test]
    fn a_refused_flush_is_kept_and_reported_until_pf_flushes() {
        let (pf, mut x) = (FakePf::default(), Executor::new("kleene", POLL));
        x.apply(&pf, &[load(&loaded("web", 3, &["8080:80/tcp"]), &[], &[])], Bypass::None);
        pf.refuse(PfOp::Flush, "pfctl: DIOCXBEGIN: Device busy");
        let out = x.apply(&pf, &[flush("web", Some(&["kleene/web"]))], Bypass::None);
        assert_eq!(out.anchor_failure("web"), Some(AnchorFailure::Flush("pfctl: DIOCXBEGIN: Device busy".into())));
        assert!(!pf.changes().contains(&"kill kleene/web".to_string()), "no kill while the rules are loaded");
        assert!(matches!(x.anchor_unfinished("web"), Some(Unfinished::Flush { retry: Some(_), .. })));
        pf.allow(PfOp::Flush);
        let out = x.apply(&pf, &[flush("web", Some(&["kleene/web"]))], Bypass::All);
        assert!(out.flushed.contains("web") && out.killed.contains("kleene/web"));
        assert!(x.unfinished().is_empty() && x.loaded().is_empty());
    }

    #[test]
    fn a_load_pf_takes_supersedes_a_flush_it_refused() {
        let (pf, mut x) = (FakePf::default(), Executor::new("kleene", POLL));
        x.apply(&pf, &[load(&loaded("web", 3, &["8080:80/tcp"]), &[], &[])], Bypass::None);
        pf.refuse(PfOp::Flush, "pfctl: DIOCXBEGIN: Device busy");
        x.apply(&pf, &[flush("web", Some(&["kleene/web"]))], Bypass::None);
        // The jail is back before pf flushed its anchor: its new rules replace the old ones.
        let out = x.apply(&pf, &[load(&loaded("web", 4, &["8080:80/tcp"]), &["kleene/web"], &[])], Bypass::All);
        assert!(out.loaded.contains("web"));
        assert!(x.unfinished().is_empty(), "nothing left to flush: {:?}", x.unfinished());
    }

    #[test]
    fn reparenting_flushes_below_the_old_parent_and_forgets_its_failures() {
        let (pf, mut x) = (FakePf::default(), Executor::new("kleene", POLL));
        x.apply(&pf, &[load(&loaded("web", 3, &["8080:80/tcp"]), &[], &[])], Bypass::None);
        pf.refuse(PfOp::Load, "busy");
        x.apply(&pf, &[load(&loaded("db", 4, &["5432/tcp"]), &[], &[])], Bypass::None);
        pf.allow(PfOp::Load);
        pf.clear_calls();
        x.reparent(&pf, "rdr");
        assert_eq!(pf.changes(), ["flush kleene/web", "kill kleene/web"]);
        assert!(x.loaded().is_empty() && x.unfinished().is_empty());
        x.apply(&pf, &[load(&loaded("web", 3, &["8080:80/tcp"]), &[], &[])], Bypass::None);
        assert!(pf.anchor("rdr/web").is_some());
    }
}
