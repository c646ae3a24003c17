//! `kleenectl stats`, and the per-publication counters of the metrics: pf's counters of each
//! publication's pass rules (`pfctl -s labels`) and the states they hold now (`pfctl -v -s
//! rules`).
//!
//! Reading counters is never part of a poll: only a `stats` (or `ls`) request and a metrics
//! scrape read them. The read runs without the engine's lock: under the lock the engine only
//! says which publications to report and when each anchor was loaded ([`Engine::begin_stats`]);
//! pfctl then runs with the lock free ([`StatsRead::read`]), one read at a time in the whole
//! agent, so that clients and scrapers asking together cost one pfctl each in turn, never a
//! crowd of them.
//!
//! One pfctl call reads every anchor: `pfctl -a '*' -s labels` follows the main ruleset's
//! `anchor "kleene/*"` and prints each child anchor's labelled rules inside its own block.
//! Anchors that call does not show (pf.conf lacks the anchor line, a race with a reload, or a
//! pfctl whose `-s labels` does not follow anchor calls: older pfctl.c prints only the main
//! ruleset's labels) are read one by one (`pfctl -a kleene/<jail> -s labels`). A request for one
//! jail reads its anchor alone.
//!
//! The labels output counts the states rules created, not the states they hold. A second call
//! reads those, the same way: `pfctl -a '*' -v -s rules` (each rule's `States:` on the counters
//! line pfctl prints after it), with the same fallback to one anchor at a time, the rules
//! matched to publications by their labels exactly as the counters are.
//!
//! pf starts a reloaded anchor's counters at zero. The agent reports them as pf keeps them,
//! with `since`: when the agent last loaded the anchor. It does not add up counters across
//! reloads: a total kept in the agent's memory would be lost with the agent anyway, and
//! Prometheus's `rate()` and `increase()` already handle a counter that restarts at zero.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::core::model::{JailName, LabelKind, OUTBOUND_LABEL};
use crate::sys::counters::{LabelsReader, Rule, RuleCounters, RuleReader, StatesReader};
use crate::sys::runner::CmdError;

use super::super::api::{PublicationStats, Refusal, RefusalKind, Standing};
use super::{Engine, System, lock};

/// One counter read at a time, in the whole agent.
static READING: Mutex<()> = Mutex::new(());

/// What a stats read reports, and how to read it: prepared under the engine's lock, run
/// without it.
pub struct StatsRead {
    sys: Arc<System>,
    /// One jail's anchor alone, rather than every anchor.
    one_jail: bool,
    /// The answer, every publication's counters still to read.
    stats: Vec<PublicationStats>,
    /// By the index in `stats`: what its counters are read by, when its rules are loaded.
    keys: Vec<Option<Key>>,
    /// The publications' labels, one after another (one string, not one per publication).
    labels: String,
    /// The jails with loaded rules among the publications reported.
    jails: Vec<LoadedJail>,
}

/// What a publication's counters are read by.
struct Key {
    /// Its jail, in `StatsRead::jails`.
    jail: u32,
    /// The label on its pass rules, in `StatsRead::labels`.
    label: std::ops::Range<u32>,
}

/// A jail whose rules are loaded: its anchor's path and the label on all its pass rules.
struct LoadedJail {
    anchor: String,
    label: String,
}

impl Engine {
    /// The publications `stats` reports (of `jail` when given) and when each one's anchor was
    /// loaded. Runs no process.
    pub fn begin_stats(&self, jail: Option<&JailName>) -> StatsRead {
        let states = self.states(jail);
        let n = states.size_hint().0;
        let (mut stats, mut keys, mut jails) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::new());
        let mut labels = String::new();
        let mut index: HashMap<JailName, usize> = HashMap::new();
        for state in states {
            let p = &state.publication;
            let component = || self.component(&p.jail);
            // Only an active publication has rules in pf.
            let since = match state.standing {
                Standing::Active => self.executor.loaded_at(&component()),
                _ => None,
            };
            let key = since.map(|_| {
                let jail = *index.entry(p.jail.clone()).or_insert_with(|| {
                    jails.push(LoadedJail { anchor: self.anchor_path(&component()), label: p.jail.label() });
                    jails.len() - 1
                });
                let start = labels.len();
                labels.push_str(&p.label());
                Key { jail: index_u32(jail), label: index_u32(start)..index_u32(labels.len()) }
            });
            keys.push(key);
            // What `stats` does not show of the state (its interfaces, targets, reaches) is
            // dropped here, not held for the whole read.
            let (publication, standing) = (state.publication, state.standing);
            stats.push(PublicationStats { publication, standing, since, counters: None, note: None });
        }
        // Publications being removed come after those counted in `n`.
        stats.shrink_to_fit();
        keys.shrink_to_fit();
        labels.shrink_to_fit();
        StatsRead { sys: Arc::clone(&self.sys), one_jail: jail.is_some(), stats, keys, labels, jails }
    }

    /// How many jails the last observation saw running.
    pub fn jails_seen(&self) -> usize {
        self.observer.observed().jails.len()
    }
}

/// An index into a stats read's lists (a few hundred thousand entries at most).
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).expect("a stats read's lists are far below 4 GiB")
}

impl StatsRead {
    /// The label of the publication `key` reads.
    fn label(&self, key: &Key) -> &str {
        &self.labels[key.label.start as usize..key.label.end as usize]
    }

    /// The standing of every publication reported.
    pub fn standings(&self) -> impl Iterator<Item = Standing> + '_ {
        self.stats.iter().map(|s| s.standing)
    }

    /// Reads pf's counters (one pfctl call when pf.conf calls the anchors, see the module
    /// documentation), then the states each rule holds now (one more), and pairs them with the
    /// publications. A failure of a call that reads every anchor is an error; a failure to read
    /// one anchor leaves its publications without counters and says why.
    ///
    /// pfctl's output is added up as it is read, line by line, into the publications' counters:
    /// what a read holds grows with the publications reported, not with the rules on the host.
    pub fn read(mut self) -> Result<Vec<PublicationStats>, Refusal> {
        let _one = READING.lock().unwrap_or_else(|p| p.into_inner());
        // A labels line carries every counter but the states, a rules line only the states: both
        // reads add into the same sums, the publications' own counters (no second list of
        // 10,000 sums beside them).
        let mut stats = std::mem::take(&mut self.stats);
        let labels = self.gather::<LabelsReader>("counters", |a, each| self.sys.pf.labels(a, each), &mut stats[..])?;
        let states =
            self.gather::<StatesReader>("current states", |a, each| self.sys.pf.rule_states(a, each), &mut stats[..])?;
        for (s, key) in stats.iter_mut().zip(&self.keys) {
            let Some(key) = key else { continue };
            let anchor = &self.jails[key.jail as usize].anchor;
            let sum = s.counters.take().unwrap_or_default();
            match (labels.get(anchor), states.get(anchor)) {
                (None, None) => s.counters = Some(sum),
                (Some(e), _) => s.note = Some(format!("cannot read pf's counters of {anchor}: {e}")),
                (_, Some(e)) => s.note = Some(format!("cannot read pf's current states of {anchor}: {e}")),
            }
        }
        Ok(stats)
    }

    /// One kind of read (`what`, for messages) of every loaded anchor, added into `sums`: one
    /// call for all of them (unless one jail was asked for), then the anchors it did not show one
    /// by one; each output read by an `R` as it comes. Says which anchors read alone failed, and
    /// why.
    fn gather<R: RuleReader>(
        &self,
        what: &str,
        read: impl Fn(&str, &mut dyn FnMut(&str)) -> Result<(), CmdError>,
        sums: &mut (impl Sums + ?Sized),
    ) -> Result<BTreeMap<String, String>, Refusal> {
        let loaded = || {
            self.keys
                .iter()
                .enumerate()
                .filter_map(|(k, key)| key.as_ref().map(|key| (&self.jails[key.jail as usize], key, k)))
        };
        let mut all = Tally::new(true, std::iter::empty());
        if loaded().next().is_some() && !self.one_jail {
            all = Tally::new(true, loaded().map(|(jail, key, k)| (jail.label.as_str(), self.label(key), k)));
            let mut reader = R::default();
            read("*", &mut |line: &str| {
                if let Some(rule) = reader.line(line) {
                    all.add(&rule, sums);
                }
            })
            .map_err(|e| Refusal::new(RefusalKind::Pf, format!("cannot read pf's {what}: {}", e.message())))?;
        }
        // The anchors that read did not show, in the order of their first publication.
        let mut unseen: Vec<(&str, Vec<Counted<'_>>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (jail, key, k) in loaded().filter(|(jail, ..)| !all.saw(&jail.label)) {
            let i = *index.entry(&jail.anchor).or_insert_with(|| {
                unseen.push((&jail.anchor, Vec::new()));
                unseen.len() - 1
            });
            unseen[i].1.push((&jail.label, self.label(key), k));
        }
        let mut failed = BTreeMap::new();
        for (anchor, items) in unseen {
            let mut tally = Tally::new(false, items.into_iter());
            let mut reader = R::default();
            let read = read(anchor, &mut |line: &str| {
                if let Some(rule) = reader.line(line) {
                    tally.add(&rule, sums);
                }
            });
            if let Err(e) = read {
                failed.insert(anchor.to_string(), e.message());
            }
        }
        Ok(failed)
    }
}

/// Where a [`Tally`] adds up the counters of the publication at an index.
trait Sums {
    fn at(&mut self, k: usize) -> &mut RuleCounters;
}

impl Sums for [RuleCounters] {
    fn at(&mut self, k: usize) -> &mut RuleCounters {
        &mut self[k]
    }
}

/// The publications' own counters, zero until something is counted.
impl Sums for [PublicationStats] {
    fn at(&mut self, k: usize) -> &mut RuleCounters {
        self[k].counters.get_or_insert_with(RuleCounters::default)
    }
}

/// A publication a [`Tally`] counts for: its jail's label, its own label, and the index of its
/// sums.
type Counted<'a> = (&'a str, &'a str, usize);

/// Which publications a rule counts for, by jail label: it counts for a publication when it
/// carries both its label and its jail's label (a publication has a pass rule per family), but
/// not [`OUTBOUND_LABEL`]: a `pass out` rule counts again what a `pass in` rule counted.
struct Tally<'a> {
    /// Whether this is the read of every anchor (`-a '*'`): a rule counts only inside the blocks
    /// pf prints for the children of a wildcard anchor call, for the first agent's jail label it
    /// carries, and only in the first block that showed that label (pf.conf calling the anchors
    /// twice makes pf print each child twice). Otherwise (one anchor read alone) every rule
    /// counts.
    every: bool,
    jails: HashMap<&'a str, TallyJail<'a>>,
}

/// One jail label's publications, in a [`Tally`].
struct TallyJail<'a> {
    /// The block its rules count in (the read of every anchor), once one showed its label.
    block: Option<usize>,
    /// Its publications: label, and index of their sums.
    items: Vec<(&'a str, usize)>,
}

impl<'a> Tally<'a> {
    /// Nothing counted yet for `items`.
    fn new(every: bool, items: impl Iterator<Item = Counted<'a>>) -> Tally<'a> {
        let mut jails: HashMap<&str, TallyJail<'_>> = HashMap::new();
        for (jail, label, k) in items {
            jails.entry(jail).or_insert_with(|| TallyJail { block: None, items: Vec::new() }).items.push((label, k));
        }
        Tally { every, jails }
    }

    /// Adds one rule's counters to the sums of the publications it counts for.
    fn add(&mut self, rule: &Rule<'_>, sums: &mut (impl Sums + ?Sized)) {
        let labels = &rule.labels;
        if self.every {
            if rule.block == 0 {
                return;
            }
            let Some(jail_label) = labels.iter().find(|w| LabelKind::of(w) == Some(LabelKind::Jail)) else { return };
            let Some(jail) = self.jails.get_mut(*jail_label) else { return };
            if *jail.block.get_or_insert(rule.block) == rule.block {
                jail.count(rule, sums);
            }
            return;
        }
        for (k, w) in labels.iter().enumerate() {
            if !labels[..k].contains(w) {
                if let Some(jail) = self.jails.get_mut(*w) {
                    jail.count(rule, sums);
                }
            }
        }
    }

    /// Whether the read showed `jail_label` (the read of every anchor; a read of one anchor
    /// shows none).
    fn saw(&self, jail_label: &str) -> bool {
        self.jails.get(jail_label).is_some_and(|j| j.block.is_some())
    }
}

impl TallyJail<'_> {
    /// Adds a rule that carries this jail's label to each of its publications whose label it
    /// carries.
    fn count(&self, rule: &Rule<'_>, sums: &mut (impl Sums + ?Sized)) {
        if rule.labels.contains(&OUTBOUND_LABEL) {
            return;
        }
        for (label, k) in &self.items {
            if rule.labels.contains(label) {
                sums.at(*k).add(&rule.counters);
            }
        }
    }
}

/// `kleenectl stats`, as the server runs it: prepared under the engine's lock, read without it.
pub fn stats(engine: &Mutex<Engine>, jail: Option<&JailName>) -> Result<Vec<PublicationStats>, Refusal> {
    let read = lock(engine).begin_stats(jail);
    read.read()
}

#[cfg(test)]
mod tests {
    use crate::agent::engine::testing::{Harness, PfCall, jail};
    use crate::sys::counters::RuleCounters;

    fn counters(packets_in: u64, bytes_in: u64, states_created: u64) -> RuleCounters {
        RuleCounters { evaluations: 1, packets_in, bytes_in, packets_out: 1, bytes_out: 10, states_created, states: 0 }
    }

    #[test]
    fn a_pass_out_rule_is_not_counted_twice() {
        use crate::sys::counters::Rule;
        let rule = |block: usize, labels: &[&'static str], bytes_in: u64| Rule {
            block,
            labels: labels.to_vec(),
            counters: counters(1, bytes_in, 1),
        };
        let (p, j) = ("kleene:web:8080:80/tcp", "kleene/web");
        let rules = [
            rule(1, &[p, j], 100),
            rule(1, &[p, j, crate::core::model::OUTBOUND_LABEL], 100),
            rule(1, &[p, j, p], 5),
            rule(1, &["kleene:web:8443:443/tcp", j], 1000),
            rule(0, &[p, j], 7),
            rule(2, &[p, j], 7),
            rule(1, &["kleene/db", p, j], 7),
            rule(1, &[j, j, p], 11),
        ];
        let mut sums = [RuleCounters::default(); 2];
        let mut every = super::Tally::new(true, [(j, p, 0)].into_iter());
        let mut alone = super::Tally::new(false, [(j, p, 1)].into_iter());
        for r in &rules {
            every.add(r, &mut sums[..]);
            alone.add(r, &mut sums[..]);
        }
        assert_eq!(
            (sums[0].bytes_in, sums[0].states_created),
            (116, 3),
            "the pass out rule's repeat is skipped, a label twice counts once; only the first block of the jail's \
             first label counts"
        );
        assert_eq!((sums[1].bytes_in, sums[1].states_created), (137, 6), "an anchor read alone: every block counts");
        assert!(every.saw(j) && !alone.saw(j));
    }

    /// web (dual-stack) publishing two ports, db not running.
    fn harness() -> Harness {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2", "fd00::2"])]);
        h.publish("web", &["8080:80", "8443:443"]).unwrap();
        h.publish("db", &["5432"]).unwrap();
        h.pf().clear_calls();
        h
    }

    fn read(h: &Harness, jail: Option<&str>) -> Vec<(String, Option<RuleCounters>, Option<String>)> {
        let jail = jail.map(|j| j.parse().unwrap());
        let read = h.engine().begin_stats(jail.as_ref());
        read.read().unwrap().into_iter().map(|s| (s.publication.spec.to_string(), s.counters, s.note)).collect()
    }

    #[test]
    fn one_call_reads_every_anchor_and_a_publication_sums_its_families() {
        let h = harness();
        h.pf().set_labels(
            "*",
            "ssh 5 5 5 5 5 5 5 5\n\
             anchor \"web\" all {\n\
             kleene:web:8080:80/tcp kleene/web 1 2 30 2 30 0 0 1\n\
             kleene:web:8080:80/tcp kleene/web 1 3 40 2 30 1 10 1\n\
             kleene:web:8443:443/tcp kleene/web 1 2 30 2 30 0 0 7\n\
             }\n\
             anchor \"web\" all {\n\
             kleene:web:8080:80/tcp kleene/web 1 2 30 2 30 0 0 1\n\
             }\n",
        );
        h.pf().set_rule_states(
            "*",
            "anchor \"kleene/*\" all {\n  [ Evaluations: 0  Packets: 0  Bytes: 0  States: 0     ]\n\
             anchor \"web\" all {\n\
             pass in quick label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n  [ Evaluations: 1  Packets: 2  Bytes: 30  States: 1     ]\n\
             pass in quick label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n  [ Evaluations: 1  Packets: 3  Bytes: 40  States: 1     ]\n\
             pass out quick label \"kleene:web:8080:80/tcp\" label \"kleene/web\" label \"kleene:outbound\"\n  [ Evaluations: 1  Packets: 3  Bytes: 40  States: 1     ]\n\
             pass in quick label \"kleene:web:8443:443/tcp\" label \"kleene/web\"\n  [ Evaluations: 1  Packets: 2  Bytes: 30  States: 4     ]\n\
             }\n}\n\
             anchor \"kleene/*\" all {\n  [ Evaluations: 0  Packets: 0  Bytes: 0  States: 0     ]\n\
             anchor \"web\" all {\n\
             pass in quick label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n  [ Evaluations: 1  Packets: 2  Bytes: 30  States: 1     ]\n\
             }\n}\n",
        );
        let stats = read(&h, None);
        assert_eq!(
            h.pf().calls(),
            [PfCall::Labels("*".into()), PfCall::RuleStates("*".into())],
            "one pfctl call for every anchor's counters, one for their current states"
        );
        assert_eq!(stats[0], ("5432:5432/tcp".into(), None, None), "db is not running: no counters");
        let web = stats[1].1.expect("web's counters");
        assert_eq!(
            (web.packets_in, web.bytes_in, web.packets_out, web.bytes_out, web.states_created),
            (4, 60, 1, 10, 2),
            "both families, and the second block (pf.conf calling the anchors twice) not counted again"
        );
        assert_eq!(web.states, 2, "both families' current states, not the pass out rule's, nor the second block's");
        assert_eq!((stats[2].1.unwrap().states_created, stats[2].1.unwrap().states), (7, 4));
    }

    #[test]
    fn an_anchor_the_recursive_read_does_not_show_is_read_alone() {
        let h = harness();
        h.pf().set_labels("*", "ssh 5 5 5 5 5 5 5 5\n");
        h.pf().set_labels("kleene/web", "kleene:web:8080:80/tcp kleene/web 9 9 900 5 500 4 400 3\n");
        h.pf().set_rule_states(
            "*",
            "pass in quick label \"ssh\"\n  [ Evaluations: 5  Packets: 5  Bytes: 5  States: 5     ]\n",
        );
        h.pf().set_rule_states(
            "kleene/web",
            "pass in quick label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n  [ Evaluations: 9  Packets: 9  Bytes: 900  States: 2     ]\n",
        );
        let stats = read(&h, None);
        assert_eq!(
            h.pf().calls(),
            [
                PfCall::Labels("*".into()),
                PfCall::Labels("kleene/web".into()),
                PfCall::RuleStates("*".into()),
                PfCall::RuleStates("kleene/web".into())
            ]
        );
        assert_eq!(
            stats[1].1,
            Some(RuleCounters { evaluations: 9, states: 2, ..counters(5, 500, 3) }.with_out(4, 400))
        );
        assert_eq!(stats[2].1, Some(RuleCounters::default()), "loaded, and nothing counted yet");
    }

    #[test]
    fn one_jail_is_read_alone_and_no_read_without_loaded_rules() {
        let h = harness();
        h.pf().set_labels("kleene/web", "kleene:web:8443:443/tcp kleene/web 1 1 1 1 1 1 1 1\n");
        let stats = read(&h, Some("web"));
        assert_eq!(h.pf().calls(), [PfCall::Labels("kleene/web".into()), PfCall::RuleStates("kleene/web".into())]);
        assert_eq!(stats.len(), 2);
        h.pf().clear_calls();
        assert_eq!(read(&h, Some("db")).len(), 1);
        assert!(h.pf().calls().is_empty(), "db has nothing loaded: pf is not asked");
        h.tick();
        assert!(
            !h.pf().calls().iter().any(|c| matches!(c, PfCall::Labels(_) | PfCall::RuleStates(_))),
            "a poll never reads counters"
        );
    }

    #[test]
    fn a_failed_read_is_an_error_or_a_note() {
        let h = harness();
        h.pf().refuse(crate::agent::engine::testing::PfOp::Labels, "pfctl: /dev/pf: Permission denied");
        let read = h.engine().begin_stats(None);
        let e = read.read().unwrap_err();
        assert!(e.message.contains("cannot read pf's counters: pfctl: /dev/pf: Permission denied"), "{e:?}");
        let web = read_one_failing(&h);
        assert!(web.contains("cannot read pf's counters of kleene/web: pfctl: /dev/pf"), "{web}");
    }

    #[test]
    fn a_failed_read_of_the_current_states_is_an_error_or_a_note() {
        let h = harness();
        h.pf().refuse(crate::agent::engine::testing::PfOp::States, "pfctl: DIOCGETRULES: Device busy");
        let e = h.engine().begin_stats(None).read().unwrap_err();
        assert!(e.message.contains("cannot read pf's current states: pfctl: DIOCGETRULES: Device busy"), "{e:?}");
        let web = read_one_failing(&h);
        assert!(web.contains("cannot read pf's current states of kleene/web: pfctl: DIOCGETRULES"), "{web}");
    }

    fn read_one_failing(h: &Harness) -> String {
        let jail = "web".parse().unwrap();
        let read = h.engine().begin_stats(Some(&jail));
        let stats = read.read().unwrap();
        assert!(stats[0].since.is_some() && stats[0].counters.is_none());
        stats[0].note.clone().unwrap()
    }

    impl RuleCounters {
        fn with_out(mut self, packets_out: u64, bytes_out: u64) -> RuleCounters {
            self.packets_out = packets_out;
            self.bytes_out = bytes_out;
            self
        }
    }
}
