//! Requests that change what is published: `publish` and `unpublish`, from typed requests to
//! domain answers.
//!
//! Each is checked first against the configuration and the stored publications (pure checks
//! below, which change nothing), then applied as one transaction over pf and the state on disk,
//! in one order for both (`Engine::commit`):
//!
//! 1. pf and the disk at once: the jail's anchor is loaded (or flushed) as the new state says,
//!    and meanwhile, on the engine's disk thread, the jail's state file is replaced atomically
//!    (written and fsynced under a temporary name, renamed, the directory fsynced). The answer
//!    waits for both; neither waits for the other, so a publish costs the longer of the two, not
//!    their sum.
//! 2. When pf does not take it (a refused load or flush, an anchor it cannot show), the state in
//!    memory is undone, the jail's file is written back as it was, and the request is refused as
//!    `Pf`: pf holds what it held, and so does the disk (the answer says so if the file could not
//!    be written back).
//! 3. When the file could not be written (pf took the change), the jail's anchor is put back as
//!    the stored state says and the request is refused as `Internal` (saying so if pf would not
//!    take it back either: the executor then retries).
//! 4. Only then the rest of the plan (other jails' anchors that a new observation changed).
//!
//! A crash during 1 leaves the disk old or new (the rename is atomic) and pf old or new; the agent
//! loads every anchor from the stored state when it starts (and flushes anchors of its own that
//! the state does not know), so pf follows the disk. Either way pf and the disk end up both old
//! or both new, and an answer is sent only once they are. (A crash in 2, after pf refused and
//! before the file is back, leaves the change on disk: the agent loads it when it starts, and
//! shows its publications as `error` if pf refuses them again.) One thing is not undone: a state
//! kill pf refuses after the rules are gone (an unpublish's removed publications, a restarted
//! jail's old label). The rules are what publishes a port; the answer says which states remain,
//! and the executor kills them later.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::mpsc;

use crate::agent::state::State;
use crate::core::address::Network;
use crate::core::conflict;
use crate::core::container::Owner;
use crate::core::model::{JailName, NetworkName};
use crate::core::plan::{self, Action, Applied, Desired, JailPlan, Plan, PubStatus, Status, Stored};
use crate::core::publication::Publication;
use crate::core::reach::Reach;
use crate::core::render::Gateways;
use crate::core::spec::Place;

use super::super::api::{
    Answer, ContainerPublishRequest, PublishRequest, Refusal, RefusalKind, Removal, UnpublishRequest,
};
use super::Engine;
use super::executor::{AnchorFailure, Bypass, Outcome};

/// How a change was planned: in full, or (a publish when nothing else changed since the last
/// plan) its jail alone, against the ports the last plan held.
enum Planned {
    Full(Plan),
    Jail(JailPlan),
}

impl Planned {
    fn status(&self, seq: u64) -> &PubStatus {
        match self {
            Planned::Full(p) => &p.statuses[&seq],
            Planned::Jail(j) => &j.statuses[&seq],
        }
    }
}

/// What undoes a change to the state in memory.
enum Undo {
    /// Publications were appended: truncate to `len`, and hand out `next_seq` again.
    Appended { len: usize, next_seq: u64 },
    /// These publications were taken out: put them back.
    Removed(Vec<Stored>),
}

/// Why a change was not made.
enum Failed {
    /// pf did not take the change; it holds what it held, and the jail's state file was put
    /// back as it was, unless `restore` says why not.
    Pf { failure: AnchorFailure, restore: Option<anyhow::Error> },
    /// pf took the change but the state could not be written; pf was put back, unless
    /// `put_back` says why not.
    Persist { error: anyhow::Error, put_back: Option<AnchorFailure> },
}

impl Failed {
    /// The refusal for the user: `done` is what did not happen (`published`).
    fn refusal(&self, jail: &JailName, done: &str) -> Refusal {
        match self {
            Failed::Pf { failure, restore } => {
                let (what, e) = failure.describe(jail);
                let mut msg = format!("{what}, so nothing was {done}: {e}");
                if let Some(error) = restore {
                    msg.push_str(&format!(
                        "; and the jail's state file, written while pf loaded, could not be written back as it was \
                         ({error:#}): if the change reached it, the agent would apply it when it next starts; once \
                         the state directory is writable again, the jail's next change writes the file anew"
                    ));
                }
                msg.push_str("\nCheck that pf is loaded and pfctl works (kleenectl check).");
                Refusal::new(RefusalKind::Pf, msg)
            }
            Failed::Persist { error, put_back } => {
                let mut msg = format!("{error:#}; nothing was {done}");
                if let Some(f) = put_back {
                    let (what, e) = f.describe(jail);
                    msg.push_str(&format!(
                        "; putting pf back failed too ({what}: {e}): the agent retries with backoff until pf holds \
                         what the state says (kleenectl check)"
                    ));
                }
                Refusal::new(RefusalKind::Internal, msg)
            }
        }
    }
}

impl Engine {
    /// `kleenectl publish`: stores and applies the request's publications, all or none. The
    /// caller observed the jail first ([`super::publish`]).
    pub fn publish(&mut self, request: &PublishRequest) -> Answer {
        let PublishRequest { jail, specs, sources, log, network, reach_off } = request;
        if specs.is_empty() {
            return Err(Refusal::new(RefusalKind::Invalid, "give at least one port spec"));
        }
        configured(&self.cfg.networks, network.as_ref())?;
        let new: Vec<Publication> = specs
            .iter()
            .map(|s| {
                Publication::new(jail.clone(), s.clone(), sources.clone(), *log, network.clone())
                    .with_reach_off(*reach_off)
            })
            .collect();
        self.publish_new(jail, new, false)
    }

    /// A container's publications (CNI `ADD`): like `publish`, and each must be active at once
    /// (its jail running, its rules loaded), else none is stored. The caller observed the jail
    /// first ([`super::publish_container`]).
    pub fn publish_container(&mut self, request: &ContainerPublishRequest) -> Answer {
        let ContainerPublishRequest { jail, specs, container, anchor, reach_off } = request;
        if let Some(a) = anchor {
            if a != &self.cfg.anchor {
                return Err(Refusal::new(
                    RefusalKind::Invalid,
                    format!(
                        "the plugin's configuration says anchor {a:?}, but this agent loads its rules below the \
                         parent anchor {:?} (anchor in its configuration): make the two agree, or leave anchor out of \
                         the plugin's configuration",
                        self.cfg.anchor
                    ),
                ));
            }
        }
        if specs.is_empty() {
            return Err(Refusal::new(RefusalKind::Invalid, "give at least one port spec"));
        }
        if container.addresses.is_empty() {
            return Err(Refusal::new(RefusalKind::Invalid, "give the container's addresses"));
        }
        let new: Vec<Publication> = specs
            .iter()
            .map(|s| {
                Publication::new(jail.clone(), s.clone(), vec![], false, None)
                    .owned(container.clone())
                    .with_reach_off(*reach_off)
            })
            .collect();
        self.publish_new(jail, new, true)
    }

    /// Stores and applies `new`, publications of `jail`, all or none; with `active`, each must be
    /// active once planned.
    fn publish_new(&mut self, jail: &JailName, new: Vec<Publication>, active: bool) -> Answer {
        apart(&new, &self.observer.observed().gateways, &self.cfg.reach)?;
        own_anchor(&self.state, jail, &self.cfg.anchor)?;
        let (fresh, already) = split_known(&self.state, new)?;
        let mut lines: Vec<String> =
            already.iter().map(|p| format!("{} {}: already published, nothing changed", p.jail, p.spec)).collect();
        if fresh.is_empty() {
            return Ok(lines.join("\n"));
        }
        within_limits(&self.state, jail, fresh.len(), self.cfg.max_publications_per_jail, self.cfg.max_publications)?;

        // The candidate state is the current one plus the new publications, appended in place
        // (cloning the whole state would cost work proportional to the host); every refusal
        // below takes them out again.
        let undo = Undo::Appended { len: self.state.publications().len(), next_seq: self.state.next_seq };
        let mut seqs = Vec::new();
        for p in fresh {
            let seq = match self.state.take_seq() {
                Ok(seq) => seq,
                Err(e) => {
                    self.abort(undo);
                    return Err(Refusal::new(RefusalKind::Limit, format!("{e:#}")));
                }
            };
            seqs.push(seq);
            self.state.push(Stored { seq, publication: p });
        }
        let planned = self.plan_publish();
        for seq in &seqs {
            let (kind, why) = match &planned.status(*seq).status {
                Status::Conflict(why) => (RefusalKind::Conflict, why),
                Status::Pending(why) | Status::Error(why) if active => (RefusalKind::Invalid, why),
                _ => continue,
            };
            let spec = &self.publication(*seq).spec;
            let msg = format!("cannot publish {spec} for jail {jail}: {why}");
            match planned {
                // The last plan is still the plan of the state once undone.
                Planned::Jail(_) => self.undo_quietly(undo),
                Planned::Full(_) => self.abort(undo),
            }
            return Err(Refusal::new(kind, msg));
        }
        self.commit(jail, planned, undo).map_err(|f| f.refusal(jail, "published"))?;
        for seq in seqs {
            lines.push(self.describe(seq));
            lines.extend(self.reach_warnings(seq).into_iter().map(|w| format!("warning: {w}")));
        }
        Ok(lines.join("\n"))
    }

    /// Removes every publication `owner` owns, in whichever jails (CNI `DEL`). Idempotent: an
    /// owner that owns nothing (never published, removed already, or a state that was lost)
    /// succeeds and says so.
    pub fn unpublish_owned(&mut self, owner: &Owner) -> Answer {
        let jails: BTreeSet<JailName> = self
            .state
            .publications()
            .iter()
            .filter(|s| s.publication.container.as_ref().is_some_and(|c| c.owned_by(owner)))
            .map(|s| s.publication.jail.clone())
            .collect();
        if jails.is_empty() {
            return Ok(format!("{owner} publishes nothing; nothing changed"));
        }
        let mut done = Vec::new();
        let mut failed: Option<Refusal> = None;
        for jail in jails {
            match self.unpublish(&UnpublishRequest { jail, removal: Removal::Owned(owner.clone()) }) {
                Ok(msg) => done.push(msg),
                Err(r) => {
                    let f = failed.get_or_insert(Refusal::new(r.kind, String::new()));
                    f.message.push_str(if f.message.is_empty() { "" } else { "\n" });
                    f.message.push_str(&r.message);
                }
            }
        }
        match failed {
            None => Ok(done.join("\n")),
            Some(mut f) => {
                if !done.is_empty() {
                    f.message = format!("{}\n{}", done.join("\n"), f.message);
                }
                Err(f)
            }
        }
    }

    /// `kleenectl unpublish`: removes the request's publications, or every one of the jail's.
    /// A state kill pf refuses once the rules are gone does not undo it: the answer says
    /// which states remain, `ls` shows them as `removing`, and the executor retries the kill.
    pub fn unpublish(&mut self, request: &UnpublishRequest) -> Answer {
        let jail = &request.jail;
        let remove = chosen(&self.state, jail, &request.removal)?;
        self.observe_jail(jail);
        let removed = self.state.remove(&remove);
        let plan = Planned::Full(self.plan_current());
        let outcome =
            self.commit(jail, plan, Undo::Removed(removed.clone())).map_err(|f| f.refusal(jail, "unpublished"))?;
        let removed: Vec<Publication> = removed.into_iter().map(|s| s.publication).collect();
        let specs: Vec<String> = removed.iter().map(|p| p.spec.to_string()).collect();
        let msg = format!("unpublished {jail} {}", specs.join(", "));
        let left: Vec<String> = unkilled(&outcome, &removed, jail).collect();
        for p in removed {
            self.executor.mark_removing(p);
        }
        if left.is_empty() {
            return Ok(msg);
        }
        Err(Refusal::new(
            RefusalKind::Pf,
            format!(
                "{msg} (the publications are removed from the state), but pf did not complete the change: {}; \
                 the agent retries with backoff until pf does (kleenectl check, kleenectl ls)",
                left.join("; ")
            ),
        ))
    }

    /// Applies the candidate state (already in `self.state`) for `jail`: pf and the disk at once,
    /// then the rest of the plan (see the module documentation). On failure the state in memory
    /// is undone with `undo`, and pf and the disk hold what they held.
    fn commit(&mut self, jail: &JailName, planned: Planned, undo: Undo) -> Result<Outcome, Failed> {
        let component = self.component(jail);
        let refused_before = self.executor.refused_loads().clone();
        let (mine, others): (Vec<Action>, Vec<Action>) = match &planned {
            Planned::Full(plan) => plan.actions.iter().cloned().partition(|a| a.component() == component),
            Planned::Jail(j) => (j.actions.clone(), vec![]),
        };
        // The jail's new state file is written (atomically, fsynced) while pf loads the anchor,
        // on the engine's disk thread; the answer waits for both. Should that thread not start
        // (or the write panic), the file is written here once pf is done.
        let (store, owner) = (self.store.clone(), jail.clone());
        let stored: Vec<Stored> = self.stored_of(jail).cloned().collect();
        let (done, saving) = mpsc::sync_channel(1);
        let _ = self.disk.run(move || {
            let _ = done.send(store.save_jail(&owner, &stored.iter().collect::<Vec<_>>()));
        });
        let mut outcome = self.apply(&mine, Bypass::Component(&component));
        let saved = saving.recv().unwrap_or_else(|_| self.save_jail(jail));
        if let Some(failure) = outcome.anchor_failure(&component) {
            // pf holds what it held, which is what the state says once undone; the jail's file
            // goes back to it too. Also after a failed write: one whose directory fsync failed
            // had already renamed the new file into place.
            self.executor.forget_anchor_failure(&component);
            self.abort(undo);
            drop(saved);
            let restore = self.save_jail(jail).err();
            return Err(Failed::Pf { failure, restore });
        }
        if let Err(error) = saved {
            // The states of rules about to be put back are wanted again.
            self.executor.forget_kills(outcome.refused_kills.keys());
            self.undo(undo);
            let put_back = self.put_back(&component);
            self.last = self.plan_current();
            return Err(Failed::Persist { error, put_back });
        }
        outcome.merge(self.apply(&others, Bypass::None));
        match planned {
            Planned::Full(plan) => self.settle(plan, &refused_before),
            Planned::Jail(j) => self.last.merge(j),
        }
        Ok(outcome)
    }

    /// Writes `jail`'s state file as the state in memory says.
    fn save_jail(&self, jail: &JailName) -> anyhow::Result<()> {
        self.store.save_jail(jail, &self.stored_of(jail).collect::<Vec<_>>())
    }

    /// Plans a publish whose new publications are the last of the state: its jail alone when
    /// nothing but the state changed since the last plan (the observation, the configuration
    /// and pf's refusals are what it was made from), else in full.
    fn plan_publish(&mut self) -> Planned {
        if !self.dirty {
            let desired = Desired {
                publications: self.state.publications(),
                networks: &self.cfg.networks,
                anchor: &self.cfg.anchor,
                reach: self.cfg.reach,
            };
            let applied = Applied {
                loaded: self.executor.loaded(),
                force: &self.force,
                pf_errors: self.executor.refused_loads(),
            };
            let observed = self.observer.observed();
            if let Some(j) = plan::plan_publish(&desired, observed, &applied, &self.last.held, &mut self.renderer) {
                return Planned::Jail(j);
            }
        }
        Planned::Full(self.plan_current())
    }

    /// Loads the anchor `component` as the state says again, after pf took a change the disk
    /// did not; says why pf did not take it back, if it did not.
    fn put_back(&mut self, component: &str) -> Option<AnchorFailure> {
        let plan = self.plan_current();
        let mine: Vec<Action> = plan.actions.into_iter().filter(|a| a.component() == component).collect();
        self.apply(&mine, Bypass::Component(component)).anchor_failure(component)
    }

    /// Undoes a change to the state in memory; what the rest of the plan would have done is
    /// left to the next reconcile.
    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Appended { len, next_seq } => {
                self.state.truncate(len);
                self.state.next_seq = next_seq;
            }
            Undo::Removed(removed) => {
                self.state.restore(removed);
            }
        }
        self.dirty = true;
    }

    /// Undoes a change that pf was not asked to make (or did not make), and plans again.
    fn abort(&mut self, undo: Undo) {
        self.undo(undo);
        self.last = self.plan_current();
    }

    /// Undoes appended publications that were planned alone and refused before pf was asked:
    /// the last plan is the plan of the state as it is again.
    fn undo_quietly(&mut self, undo: Undo) {
        let dirty = self.dirty;
        self.undo(undo);
        self.dirty = dirty;
    }

    fn publication(&self, seq: u64) -> &Publication {
        &self.state.get(seq).expect("stored").publication
    }

    /// What became of the publication `seq`: where it is published, or why it is not.
    fn describe(&self, seq: u64) -> String {
        let p = self.publication(seq);
        let st = &self.last.statuses[&seq];
        match &st.status {
            Status::Active => {
                let on = match &p.spec.place {
                    Place::Address(a) => format!("address {a}"),
                    Place::Localhost => "the host's loopback (127.0.0.1, ::1)".to_string(),
                    _ => {
                        let i: Vec<String> = st.interfaces.iter().map(|i| i.to_string()).collect();
                        i.join(", ")
                    }
                };
                let to: Vec<String> =
                    [st.targets.inet, st.targets.inet6].iter().flatten().map(IpAddr::to_string).collect();
                format!("published {} {} on {on} -> {}", p.jail, p.spec, to.join(", "))
            }
            other => format!("stored {} {}: {}: {}", p.jail, p.spec, other.word(), other.reason().unwrap_or_default()),
        }
    }
}

/// The state kills pf refused for the `removed` publications of `jail`, for the answer.
fn unkilled<'a>(outcome: &'a Outcome, removed: &[Publication], jail: &JailName) -> impl Iterator<Item = String> + 'a {
    let labels: BTreeSet<String> = removed.iter().map(Publication::label).chain([jail.label()]).collect();
    outcome.refused_kills.iter().filter(move |(l, _)| labels.contains(*l)).map(|(label, e)| {
        format!("pf did not kill the states of {label} ({e}), so established connections still reach the jail")
    })
}

/// Refuses a network that is not configured.
fn configured(networks: &[Network], network: Option<&NetworkName>) -> Result<(), Refusal> {
    let Some(n) = network else { return Ok(()) };
    if networks.iter().any(|c| &c.name == n) {
        return Ok(());
    }
    let names: Vec<String> = networks.iter().map(|c| c.name.to_string()).collect();
    Err(Refusal::new(
        RefusalKind::Invalid,
        format!(
            "network {n} is not configured (configured: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        ),
    ))
}

/// Refuses a request whose publications repeat a spec or claim the same host port.
fn apart(new: &[Publication], gateways: &Gateways, reach: &Reach) -> Result<(), Refusal> {
    let mut taken = conflict::Index::default();
    for (i, p) in new.iter().enumerate() {
        if let Some(q) = new[..i].iter().find(|q| q.spec == p.spec) {
            return Err(Refusal::new(RefusalKind::Invalid, format!("{} is given twice (as {})", p.spec, q.spec)));
        }
        let mine = conflict::claims(p, None, gateways, reach);
        if let Some(q) = taken.owner(&mine).map(|j: usize| &new[j]) {
            return Err(Refusal::new(
                RefusalKind::Conflict,
                format!("{} and {} claim the same host port", q.spec, p.spec),
            ));
        }
        taken.hold(mine, i);
    }
    Ok(())
}

/// Refuses `jail` when another stored jail maps to the same anchor below `parent`. A jail
/// already stored was checked when its first publication was (and the planner refuses a clash
/// that a state file brings), so only a new jail's name is compared with every other.
fn own_anchor(state: &State, jail: &JailName, parent: &str) -> Result<(), Refusal> {
    if state.count_of(jail) > 0 {
        return Ok(());
    }
    match state.jails().find_map(|other| conflict::name_clash(jail, other, parent)) {
        None => Ok(()),
        Some(clash) => Err(Refusal::new(RefusalKind::Conflict, clash.to_string())),
    }
}

/// Splits `new` into the publications not stored yet and those stored as they are; refuses a
/// spec stored with other options.
fn split_known(state: &State, new: Vec<Publication>) -> Result<(Vec<Publication>, Vec<Publication>), Refusal> {
    let mut fresh = Vec::new();
    let mut already = Vec::new();
    for p in new {
        match state.of_jail(&p.jail).find(|s| s.publication.spec == p.spec) {
            Some(s) if s.publication == p => already.push(p),
            Some(s) if s.publication.container.is_some() || p.container.is_some() => {
                let held = &s.publication;
                return Err(Refusal::new(
                    RefusalKind::Conflict,
                    format!(
                        "cannot publish {} for jail {}: it is already published there by {} (kleenectl ls -j {})",
                        p.spec,
                        p.jail,
                        held.holder(),
                        p.jail
                    ),
                ));
            }
            Some(_) => {
                return Err(Refusal::new(
                    RefusalKind::Conflict,
                    format!(
                        "jail {} already publishes {} with other options; unpublish it first (kleenectl unpublish -j {} {})",
                        p.jail, p.spec, p.jail, p.spec
                    ),
                ));
            }
            None => fresh.push(p),
        }
    }
    Ok((fresh, already))
}

/// Refuses `more` publications for `jail` past either limit.
fn within_limits(
    state: &State,
    jail: &JailName,
    more: usize,
    per_jail_max: usize,
    total_max: usize,
) -> Result<(), Refusal> {
    let per_jail = state.count_of(jail) + more;
    if per_jail > per_jail_max {
        return Err(Refusal::new(
            RefusalKind::Limit,
            format!("jail {jail} would have {per_jail} publications; max_publications_per_jail is {per_jail_max}"),
        ));
    }
    let total = state.publications().len() + more;
    if total > total_max {
        return Err(Refusal::new(
            RefusalKind::Limit,
            format!("the agent would hold {total} publications; max_publications is {total_max}"),
        ));
    }
    Ok(())
}

/// The seqs of `jail`'s publications that `removal` names; refuses a spec the jail does not
/// publish, and a jail that publishes nothing.
fn chosen(state: &State, jail: &JailName, removal: &Removal) -> Result<BTreeSet<u64>, Refusal> {
    let seqs: BTreeSet<u64> = match removal {
        Removal::All => state.of_jail(jail).map(|s| s.seq).collect(),
        Removal::Owned(owner) => state
            .of_jail(jail)
            .filter(|s| s.publication.container.as_ref().is_some_and(|c| c.owned_by(owner)))
            .map(|s| s.seq)
            .collect(),
        Removal::Specs(specs) if specs.is_empty() => return Err(Removal::missing()),
        Removal::Specs(specs) => {
            let mut seqs = BTreeSet::new();
            let mut missing = Vec::new();
            for spec in specs {
                match state.of_jail(jail).find(|s| &s.publication.spec == spec) {
                    Some(s) => {
                        seqs.insert(s.seq);
                    }
                    None => missing.push(spec.to_string()),
                }
            }
            if !missing.is_empty() {
                return Err(Refusal::new(
                    RefusalKind::NotFound,
                    format!(
                        "jail {jail} does not publish {}; nothing was changed (see kleenectl ls -j {jail})",
                        missing.join(", ")
                    ),
                ));
            }
            seqs
        }
    };
    if seqs.is_empty() {
        return Err(Refusal::new(RefusalKind::NotFound, format!("jail {jail} publishes nothing; nothing was changed")));
    }
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::engine::testing::{Harness, PfOp, jail};
    use crate::core::reach::ReachOff;

    /// An engine started with `web` running on 10.13.37.2.
    fn running_web() -> Harness {
        Harness::running(vec![jail("web", 3, &["10.13.37.2"])])
    }

    fn publication(jail: &str, spec: &str) -> Publication {
        Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None)
    }

    fn stored(seq: u64, jail: &str, spec: &str) -> Stored {
        Stored { seq, publication: publication(jail, spec) }
    }

    #[test]
    fn a_publish_pf_refuses_stores_nothing_and_says_why() {
        let h = running_web();
        h.pf().refuse(PfOp::Load, "stdin:1: syntax error");
        let refused = h.publish("web", &["8080:80"]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Pf);
        assert_eq!(
            refused.message,
            "pf refused the rules for jail web, so nothing was published: stdin:1: syntax error\n\
             Check that pf is loaded and pfctl works (kleenectl check)."
        );
        assert!(h.list().is_empty() && h.stored("web").is_none());
        assert!(h.state_files().is_empty(), "the file written while pf loaded is removed: {:?}", h.state_files());
        assert!(h.problems().is_empty(), "nothing left to retry: {:?}", h.problems());
        h.pf().allow(PfOp::Load);
        assert_eq!(h.publish("web", &["8080:80"]).unwrap(), "published web 8080:80/tcp on em0 -> 10.13.37.2");
        assert!(h.stored("web").unwrap().contains("spec: 8080:80/tcp"));
    }

    #[test]
    fn a_change_pf_refuses_puts_the_jails_state_file_back_as_it_was() {
        let h = running_web();
        h.publish("web", &["8080:80"]).unwrap();
        let before = h.stored("web").unwrap();
        h.pf().refuse(PfOp::Load, "pfctl: DIOCADDRULENV: Device busy");
        assert_eq!(h.publish("web", &["8081:81"]).unwrap_err().kind, RefusalKind::Pf);
        assert_eq!(h.stored("web").unwrap(), before, "the file written while pf loaded is the old one again");
        assert_eq!(h.state_files(), ["web.yml"], "no temporary file is left");
        let reopened = h.reopen();
        let specs: Vec<String> = reopened.list().iter().map(|s| s.publication.spec.to_string()).collect();
        assert_eq!(specs, ["8080:80/tcp"], "an agent starting now loads what pf holds");
    }

    #[test]
    fn a_change_pf_refuses_on_a_broken_disk_says_the_file_could_not_be_written_back() {
        let h = running_web();
        h.publish("web", &["8080:80"]).unwrap();
        h.break_state_file("web");
        h.pf().refuse(PfOp::Load, "pfctl: DIOCADDRULENV: Device busy");
        let refused = h.publish("web", &["8081:81"]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Pf);
        assert!(
            refused.message.starts_with(
                "pf refused the rules for jail web, so nothing was published: pfctl: DIOCADDRULENV: Device busy; and \
                 the jail's state file, written while pf loaded, could not be written back as it was (cannot write \
                 state file "
            ),
            "{refused:?}"
        );
        let specs: Vec<String> = h.list().iter().map(|s| s.publication.spec.to_string()).collect();
        assert_eq!(specs, ["8080:80/tcp"], "the agent keeps what pf holds");
    }

    #[test]
    fn a_refusal_says_when_the_state_file_could_not_be_put_back() {
        let failed = Failed::Pf {
            failure: AnchorFailure::Load("stdin:1: syntax error".into()),
            restore: Some(anyhow::anyhow!("cannot write state file /var/db/kleene-rdr/publications/web.yml")),
        };
        assert_eq!(
            failed.refusal(&"web".parse().unwrap(), "published").message,
            "pf refused the rules for jail web, so nothing was published: stdin:1: syntax error; and the jail's \
             state file, written while pf loaded, could not be written back as it was (cannot write state file \
             /var/db/kleene-rdr/publications/web.yml): if the change reached it, the agent would apply it when it \
             next starts; once the state directory is writable again, the jail's next change writes the file \
             anew\nCheck that pf is loaded and pfctl works (kleenectl check)."
        );
    }

    #[test]
    fn a_publish_the_disk_refuses_after_pf_took_it_puts_pf_back() {
        let h = running_web();
        h.publish("web", &["8080:80"]).unwrap();
        let before = h.pf().anchor("kleene/web").unwrap();
        h.break_state_file("web");
        h.pf().clear_calls();
        let refused = h.publish("web", &["8081:81"]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Internal);
        assert!(
            refused.message.contains("cannot write state file") && refused.message.ends_with("; nothing was published")
        );
        assert_eq!(
            h.pf().changes(),
            ["load kleene/web", "load kleene/web", "kill kleene:web:8081:81/tcp"],
            "pf took the new rules, then the old ones back"
        );
        assert_eq!(h.pf().anchor("kleene/web").unwrap(), before);
        let specs: Vec<String> = h.list().iter().map(|s| s.publication.spec.to_string()).collect();
        assert_eq!(specs, ["8080:80/tcp"]);
        assert_eq!(h.state_files(), ["web.yml"], "no temporary file is left");
    }

    #[test]
    fn the_first_publication_of_a_jail_the_disk_refuses_is_flushed_again() {
        let h = running_web();
        h.break_state_file("web");
        assert_eq!(h.publish("web", &["8080:80"]).unwrap_err().kind, RefusalKind::Internal);
        assert_eq!(h.pf().changes(), ["load kleene/web", "flush kleene/web", "kill kleene/web"]);
        assert!(h.pf().anchor("kleene/web").is_none() && h.list().is_empty());
    }

    #[test]
    fn a_publish_that_would_take_a_held_port_is_refused_before_pf_is_asked() {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])]);
        h.publish("web", &["8080:80"]).unwrap();
        h.pf().clear_calls();
        let refused = h.publish("db", &["8080:5432"]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Conflict);
        assert!(refused.message.contains("already published by jail web as 8080:80/tcp"), "{refused:?}");
        assert!(h.pf().changes().is_empty() && h.stored("db").is_none());
        assert_eq!(h.publish("web", &["8080:80"]).unwrap(), "web 8080:80/tcp: already published, nothing changed");
    }

    #[test]
    fn a_stopped_jail_is_published_as_pending_without_pf() {
        let h = Harness::new();
        h.start();
        assert_eq!(h.publish("web", &["8080:80"]).unwrap(), "stored web 8080:80/tcp: pending: jail web is not running");
        assert!(h.pf().changes().is_empty() && h.stored("web").is_some());
    }

    #[test]
    fn unpublish_reloads_the_rest_kills_the_removed_states_and_stores() {
        let h = running_web();
        h.publish("web", &["8080:80", "8081:81"]).unwrap();
        h.pf().clear_calls();
        assert_eq!(h.unpublish("web", &["8081:81"]).unwrap(), "unpublished web 8081:81/tcp");
        assert_eq!(h.pf().changes(), ["load kleene/web", "kill kleene:web:8081:81/tcp"]);
        assert!(!h.stored("web").unwrap().contains("8081"));
        assert_eq!(h.unpublish("web", &[]).unwrap(), "unpublished web 8080:80/tcp");
        assert!(h.pf().anchor("kleene/web").is_none() && h.stored("web").is_none());
        let nothing = h.unpublish("web", &[]).unwrap_err();
        assert_eq!(
            (nothing.kind, nothing.message.as_str()),
            (RefusalKind::NotFound, "jail web publishes nothing; nothing was changed")
        );
    }

    #[test]
    fn an_unpublish_pf_refuses_removes_nothing() {
        let h = running_web();
        h.publish("web", &["8080:80", "8081:81"]).unwrap();
        let (anchor, stored) = (h.pf().anchor("kleene/web"), h.stored("web"));
        h.pf().refuse(PfOp::Load, "pfctl: DIOCADDRULENV: Device busy");
        let refused = h.unpublish("web", &["8081:81"]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Pf);
        assert_eq!(
            refused.message,
            "pf refused the rules for jail web, so nothing was unpublished: pfctl: DIOCADDRULENV: Device busy\n\
             Check that pf is loaded and pfctl works (kleenectl check)."
        );
        assert_eq!((h.pf().anchor("kleene/web"), h.stored("web")), (anchor.clone(), stored.clone()));
        assert_eq!(h.list().len(), 2);
        assert!(h.list().iter().all(|s| s.standing.word() == "active"), "{:?}", h.list());

        h.pf().allow(PfOp::Load);
        h.pf().refuse(PfOp::Flush, "pfctl: DIOCXBEGIN: Device busy");
        let refused = h.unpublish("web", &[]).unwrap_err();
        assert!(refused.message.starts_with("pf did not flush the anchor of jail web, so nothing was unpublished"));
        assert_eq!((h.pf().anchor("kleene/web"), h.stored("web")), (anchor, stored));
        assert!(h.problems().is_empty(), "nothing to retry: the state wants the rules: {:?}", h.problems());
        h.tick();
        assert_eq!(h.list().len(), 2, "and the next poll agrees");

        h.pf().allow(PfOp::Flush);
        assert_eq!(h.unpublish("web", &[]).unwrap(), "unpublished web 8080:80/tcp, 8081:81/tcp");
        assert!(h.pf().anchor("kleene/web").is_none() && h.stored("web").is_none() && h.list().is_empty());
    }

    #[test]
    fn an_unpublish_the_disk_refuses_after_pf_took_it_puts_the_rules_back() {
        let h = running_web();
        h.publish("web", &["8080:80", "8081:81"]).unwrap();
        let anchor = h.pf().anchor("kleene/web").unwrap();
        h.break_state_file("web");
        h.pf().clear_calls();
        let refused = h.unpublish("web", &["8081:81"]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Internal);
        assert!(refused.message.ends_with("; nothing was unpublished"), "{refused:?}");
        assert_eq!(h.pf().changes(), ["load kleene/web", "kill kleene:web:8081:81/tcp", "load kleene/web"]);
        assert_eq!(h.pf().anchor("kleene/web").unwrap(), anchor, "the old rules are back");
        assert_eq!(h.list().len(), 2);

        h.pf().clear_calls();
        h.pf().refuse(PfOp::Kill, "pfctl: DIOCKILLSTATES: Operation not permitted");
        let refused = h.unpublish("web", &[]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Internal);
        assert_eq!(h.pf().changes(), ["flush kleene/web", "kill kleene/web", "load kleene/web"]);
        assert!(h.problems().is_empty(), "no kill is kept for rules that are back: {:?}", h.problems());

        h.pf().refuse(PfOp::Load, "pfctl: DIOCADDRULENV: Device busy");
        let refused = h.unpublish("web", &[]).unwrap_err();
        assert!(
            refused.message.contains(
                "; nothing was unpublished; putting pf back failed too (pf refused the rules for jail web: pfctl: \
                 DIOCADDRULENV: Device busy): the agent retries"
            ),
            "{refused:?}"
        );
        assert_eq!(h.list().len(), 2, "the stored state is what the agent keeps applying");
        h.pf().allow(PfOp::Load);
        h.reconcile().unwrap();
        assert_eq!(h.pf().anchor("kleene/web").unwrap(), anchor);
    }

    #[test]
    fn a_kill_pf_refuses_after_unpublish_is_said_kept_and_shown_as_removing() {
        let h = running_web();
        h.publish("web", &["8080:80", "8081:81"]).unwrap();
        h.pf().refuse(PfOp::Kill, "pfctl: DIOCKILLSTATES: Operation not permitted");
        let refused = h.unpublish("web", &["8081:81"]).unwrap_err();
        assert_eq!(refused.kind, RefusalKind::Pf);
        assert_eq!(
            refused.message,
            "unpublished web 8081:81/tcp (the publications are removed from the state), but pf did not complete \
             the change: pf did not kill the states of kleene:web:8081:81/tcp (pfctl: DIOCKILLSTATES: Operation not \
             permitted), so established connections still reach the jail; the agent retries with backoff until pf \
             does (kleenectl check, kleenectl ls)"
        );
        assert!(!h.pf().anchor("kleene/web").unwrap().contains("8081"), "the rules are gone");
        assert!(!h.stored("web").unwrap().contains("8081"), "and so is the publication");
        let (standing, reason) = h.standing("web", "8081:81/tcp").expect("ls shows what is left to do");
        assert_eq!(standing, "removing");
        assert!(reason.unwrap().contains("Operation not permitted; retrying in"));
        let check = h.problems();
        assert_eq!(check.len(), 1, "{check:?}");
        assert_eq!(check[0].what, "states of kleene:web:8081:81/tcp");

        h.pf().allow(PfOp::Kill);
        assert_eq!(h.reconcile().unwrap(), "reconciled: 1 anchors loaded");
        assert!(h.standing("web", "8081:81/tcp").is_none() && h.problems().is_empty());
    }

    fn container(id: &str, addrs: &[&str]) -> crate::core::container::Container {
        crate::core::container::Container {
            id: id.parse().unwrap(),
            network: "podman".parse().unwrap(),
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn add(h: &Harness, jail: &str, id: &str, addrs: &[&str], specs: &[&str]) -> Answer {
        let request = ContainerPublishRequest {
            jail: jail.parse().unwrap(),
            specs: specs.iter().map(|s| s.parse().unwrap()).collect(),
            container: container(id, addrs),
            anchor: None,
            reach_off: ReachOff::default(),
        };
        crate::agent::engine::publish_container(h.engine_mutex(), &request)
    }

    fn del(h: &Harness, id: &str) -> Answer {
        h.engine().unpublish_owned(&container(id, &[]).owner())
    }

    #[test]
    fn a_container_targets_its_given_address_not_the_jails() {
        // A VNET jail with no networks configured: a jail publication could not target it.
        let h = Harness::running(vec![crate::agent::engine::testing::jail_info("cni-1", 7, &[], true)]);
        let ok = add(&h, "cni-1", "c1", &["10.88.0.5", "fd00::5"], &["8080:80", "5353/udp"]).unwrap();
        let published: Vec<&str> = ok.lines().filter(|l| !l.starts_with("warning: ")).collect();
        assert_eq!(
            published,
            [
                "published cni-1 8080:80/tcp on em0 -> 10.88.0.5, fd00::5",
                "published cni-1 5353:5353/udp on em0 -> 10.88.0.5, fd00::5"
            ]
        );
        assert!(
            ok.contains(
                "warning: 8080:80/tcp: the host has no IPv4 address on the network of VNET jail address 10.88.0.5"
            ),
            "the host has no address on the container's network, so hairpin and host access cannot work: {ok}"
        );
        let anchor = h.pf().anchor("kleene/cni-1").unwrap();
        assert!(anchor.contains("-> 10.88.0.5 port 80"), "{anchor}");
        assert!(h.stored("cni-1").unwrap().contains("container:\n    id: c1\n    network: podman"));
        assert_eq!(
            add(&h, "cni-1", "c1", &["10.88.0.5", "fd00::5"], &["8080:80"]).unwrap(),
            "cni-1 8080:80/tcp: already published, nothing changed"
        );
    }

    #[test]
    fn a_containers_port_held_by_a_jail_or_another_container_names_the_holder_and_stores_nothing() {
        let h = Harness::running(vec![
            jail("web", 3, &["10.13.37.2"]),
            crate::agent::engine::testing::jail_info("cni-1", 7, &[], true),
            crate::agent::engine::testing::jail_info("cni-2", 8, &[], true),
        ]);
        h.publish("web", &["8080:80"]).unwrap();
        let e = add(&h, "cni-1", "c1", &["10.88.0.5"], &["9090:90", "8080:80"]).unwrap_err();
        assert_eq!(e.kind, RefusalKind::Conflict);
        assert_eq!(
            e.message,
            "cannot publish 8080:80/tcp for jail cni-1: the host port is already published by jail web as 8080:80/tcp"
        );
        assert!(h.stored("cni-1").is_none() && h.pf().anchor("kleene/cni-1").is_none(), "all or nothing");
        add(&h, "cni-1", "c1aaaaaaaaaaaaaaaa", &["10.88.0.5"], &["9090:90"]).unwrap();
        let e = add(&h, "cni-2", "c2", &["10.88.0.6"], &["9090"]).unwrap_err();
        assert!(
            e.message.ends_with(
                "already published by container c1aaaaaaaaaa (CNI network podman) in jail cni-1 as 9090:90/tcp"
            ),
            "{e:?}"
        );
        let e = add(&h, "cni-1", "c3", &["10.88.0.5"], &["9090:90"]).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (
                RefusalKind::Conflict,
                "cannot publish 9090:90/tcp for jail cni-1: it is already published there by container c1aaaaaaaaaa \
                 (CNI network podman) in jail cni-1 (kleenectl ls -j cni-1)"
            )
        );
        let e = h.publish("web", &["9090"]).unwrap_err();
        assert!(e.message.contains("by container c1aaaaaaaaaa (CNI network podman) in jail cni-1"), "{e:?}");
    }

    #[test]
    fn a_container_publication_must_be_active_at_once() {
        let h = Harness::running(vec![crate::agent::engine::testing::jail_info("cni-1", 7, &[], true)]);
        let e = add(&h, "cni-9", "c9", &["10.88.0.9"], &["8080"]).unwrap_err();
        assert_eq!(
            (e.kind, e.message.as_str()),
            (RefusalKind::Invalid, "cannot publish 8080:8080/tcp for jail cni-9: jail cni-9 is not running")
        );
        let e = add(&h, "cni-1", "c1", &["127.0.0.1"], &["8080"]).unwrap_err();
        assert!(
            e.message.ends_with("the container has no usable address (refused: 127.0.0.1 is a loopback address)"),
            "{e:?}"
        );
        let e = add(&h, "cni-1", "c1", &["fd00::5"], &["192.0.2.10:8080:80"]).unwrap_err();
        assert_eq!(e.kind, RefusalKind::Invalid, "an IPv4 host address and an IPv6 container make no rule: {e:?}");
        assert!(h.list().is_empty() && h.stored("cni-1").is_none() && h.stored("cni-9").is_none());
    }

    #[test]
    fn unpublishing_a_container_removes_what_it_owns_and_is_idempotent() {
        let h = Harness::running(vec![
            jail("web", 3, &["10.13.37.2"]),
            crate::agent::engine::testing::jail_info("cni-1", 7, &[], true),
        ]);
        add(&h, "cni-1", "c1", &["10.88.0.5"], &["8080:80", "8081:81/udp"]).unwrap();
        assert_eq!(del(&h, "c2").unwrap(), "container c2 (CNI network podman) publishes nothing; nothing changed");
        h.pf().clear_calls();
        assert_eq!(del(&h, "c1").unwrap(), "unpublished cni-1 8080:80/tcp, 8081:81/udp");
        assert_eq!(h.pf().changes(), ["flush kleene/cni-1", "kill kleene/cni-1"]);
        assert!(h.stored("cni-1").is_none() && h.list().is_empty());
        assert_eq!(del(&h, "c1").unwrap(), "container c1 (CNI network podman) publishes nothing; nothing changed");
    }

    #[test]
    fn container_publications_survive_a_restart() {
        let h = Harness::running(vec![crate::agent::engine::testing::jail_info("cni-1", 7, &[], true)]);
        add(&h, "cni-1", "c1", &["10.88.0.5"], &["8080:80"]).unwrap();
        let h = h.reopen();
        h.start();
        let list = h.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].standing.word(), "active", "{:?}", list[0].reason);
        assert_eq!(list[0].publication.container.as_deref(), Some(&container("c1", &["10.88.0.5"])));
        assert_eq!(del(&h, "c1").unwrap(), "unpublished cni-1 8080:80/tcp");
    }

    #[test]
    fn the_plugins_anchor_must_be_the_agents() {
        let h = Harness::running(vec![crate::agent::engine::testing::jail_info("cni-1", 7, &[], true)]);
        let request = ContainerPublishRequest {
            jail: "cni-1".parse().unwrap(),
            specs: vec!["8080".parse().unwrap()],
            container: container("c1", &["10.88.0.5"]),
            anchor: Some("podman".into()),
            reach_off: ReachOff::default(),
        };
        let e = h.engine().publish_container(&request).unwrap_err();
        assert_eq!(e.kind, RefusalKind::Invalid);
        assert!(e.message.starts_with("the plugin's configuration says anchor \"podman\", but this agent loads its rules below the parent anchor \"kleene\""), "{e:?}");
        let request = ContainerPublishRequest { anchor: Some("kleene".into()), ..request };
        assert!(h.engine().publish_container(&request).is_ok());
    }

    #[test]
    fn a_request_must_not_repeat_a_spec_nor_claim_a_port_twice() {
        let gateways = Gateways { inet: Some("em0".parse().unwrap()), inet6: None };
        let twice = [publication("web", "8080:80"), publication("web", "8080:80/tcp")];
        let e = apart(&twice, &gateways, &Reach::default()).unwrap_err();
        assert_eq!((e.kind, e.message.as_str()), (RefusalKind::Invalid, "8080:80/tcp is given twice (as 8080:80/tcp)"));
        let overlap = [publication("web", "8000-8010:9000"), publication("web", "em0:8005:80")];
        let e = apart(&overlap, &gateways, &Reach::default()).unwrap_err();
        assert_eq!(e.kind, RefusalKind::Conflict);
        assert!(
            apart(&[publication("web", "8080"), publication("web", "8080/udp")], &gateways, &Reach::default()).is_ok()
        );
    }

    #[test]
    fn stored_publications_decide_what_is_new_what_is_known_and_what_is_refused() {
        let state = State::new(vec![stored(2, "db", "5432"), stored(1, "web", "8080:80")], 3);
        let (fresh, already) =
            split_known(&state, vec![publication("web", "8080:80"), publication("web", "8081:81")]).unwrap();
        assert_eq!((fresh.len(), already.len()), (1, 1));
        let logged = Publication { log: true, ..publication("web", "8080:80") };
        assert_eq!(split_known(&state, vec![logged]).unwrap_err().kind, RefusalKind::Conflict);
        let web: JailName = "web".parse().unwrap();
        assert!(within_limits(&state, &web, 1, 2, 3).is_ok());
        assert_eq!(within_limits(&state, &web, 2, 2, 9).unwrap_err().kind, RefusalKind::Limit);
        assert_eq!(within_limits(&state, &web, 2, 9, 3).unwrap_err().kind, RefusalKind::Limit);
        assert!(own_anchor(&state, &web, "kleene").is_ok());
        let specs = Removal::Specs(vec!["8080:80".parse().unwrap(), "9999".parse().unwrap()]);
        let e = chosen(&state, &web, &specs).unwrap_err();
        assert_eq!(e.message, "jail web does not publish 9999:9999/tcp; nothing was changed (see kleenectl ls -j web)");
        assert_eq!(chosen(&state, &web, &Removal::All).unwrap(), [1].into());
        assert_eq!(chosen(&state, &web, &Removal::Specs(vec![])).unwrap_err(), Removal::missing());
        assert_eq!(
            configured(&[], Some(&"kleenet".parse().unwrap())).unwrap_err().message,
            "network kleenet is not configured (configured: none)"
        );
    }
}
