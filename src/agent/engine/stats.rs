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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::core::model::{JailName, LabelKind, OUTBOUND_LABEL};
use crate::sys::counters::{LabelLine, Labelled, RuleCounters, parse_labels, parse_rule_states};
use crate::sys::runner::CmdError;

use super::super::api::{PublicationState, PublicationStats, Refusal, RefusalKind, Standing};
use super::{Engine, System, lock};

/// One counter read at a time, in the whole agent.
static READING: Mutex<()> = Mutex::new(());

/// What a stats read reports, and how to read it: prepared under the engine's lock, run
/// without it.
pub struct StatsRead {
    sys: Arc<System>,
    /// One jail's anchor alone, rather than every anchor.
    one_jail: bool,
    items: Vec<Item>,
}

struct Item {
    state: PublicationState,
    /// The anchor's path, when its rules are loaded, and since when.
    loaded: Option<(String, SystemTime)>,
    jail_label: String,
    label: String,
}

impl Engine {
    /// The publications `stats` reports (of `jail` when given) and when each one's anchor was
    /// loaded. Runs no process.
    pub fn begin_stats(&self, jail: Option<&JailName>) -> StatsRead {
        let items = self
            .list(jail)
            .into_iter()
            .map(|state| {
                let p = &state.publication;
                let component = self.component(&p.jail);
                // Only an active publication has rules in pf.
                let loaded = match state.standing {
                    Standing::Active => self.executor.loaded_at(&component).map(|t| (self.anchor_path(&component), t)),
                    _ => None,
                };
                Item { jail_label: p.jail.label(), label: p.label(), loaded, state }
            })
            .collect();
        StatsRead { sys: Arc::clone(&self.sys), one_jail: jail.is_some(), items }
    }

    /// How many jails the last observation saw running.
    pub fn jails_seen(&self) -> usize {
        self.observer.observed().jails.len()
    }
}

impl StatsRead {
    /// The standing of every publication reported.
    pub fn standings(&self) -> impl Iterator<Item = Standing> + '_ {
        self.items.iter().map(|i| i.state.standing)
    }

    /// Reads pf's counters (one pfctl call when pf.conf calls the anchors, see the module
    /// documentation), then the states each rule holds now (one more), and pairs them with the
    /// publications. A failure of a call that reads every anchor is an error; a failure to read
    /// one anchor leaves its publications without counters and says why.
    pub fn read(self) -> Result<Vec<PublicationStats>, Refusal> {
        let _one = READING.lock().unwrap_or_else(|p| p.into_inner());
        let labels = self.gather("counters", |a| self.sys.pf.labels(a), parse_labels)?;
        let states = self.gather("current states", |a| self.sys.pf.rule_states(a), parse_rule_states)?;
        let stats = self.items.iter().map(|i| {
            let (since, counters, note) = match &i.loaded {
                None => (None, None, None),
                Some((anchor, since)) => match (labels.of(i, anchor), states.of(i, anchor)) {
                    (Ok(lines), Ok(rules)) => {
                        let mut counters = sum(lines, &i.label, &i.jail_label);
                        counters.states =
                            matching(rules, &i.label, &i.jail_label).fold(0u64, |n, r| n.saturating_add(r.states));
                        (Some(*since), Some(counters), None)
                    }
                    (Err(e), _) => (Some(*since), None, Some(format!("cannot read pf's counters of {anchor}: {e}"))),
                    (_, Err(e)) => {
                        (Some(*since), None, Some(format!("cannot read pf's current states of {anchor}: {e}")))
                    }
                },
            };
            PublicationStats { state: i.state.clone(), since, counters, note }
        });
        Ok(stats.collect())
    }

    /// One kind of read (`what`, for messages) of every loaded anchor: one call for all of
    /// them (unless one jail was asked for), then the anchors it did not show one by one.
    fn gather<T: Labelled>(
        &self,
        what: &str,
        read: impl Fn(&str) -> Result<String, CmdError>,
        parse: fn(&str) -> Vec<T>,
    ) -> Result<Found<T>, Refusal> {
        let loaded = || self.items.iter().filter_map(|i| i.loaded.as_ref().map(|(a, _)| (a, i)));
        let mut found = Found { all: BTreeMap::new(), alone: BTreeMap::new() };
        if loaded().next().is_some() && !self.one_jail {
            let text = read("*")
                .map_err(|e| Refusal::new(RefusalKind::Pf, format!("cannot read pf's {what}: {}", e.message())))?;
            found.all = by_jail_label(parse(&text));
        }
        for (anchor, i) in loaded() {
            if !found.all.contains_key(&i.jail_label) && !found.alone.contains_key(anchor) {
                found.alone.insert(anchor.clone(), read(anchor).map(|t| parse(&t)).map_err(|e| e.message()));
            }
        }
        Ok(found)
    }
}

/// What one kind of read found: by jail label, what the read of every anchor showed; by anchor
/// path, what the anchors it did not show read alone gave.
struct Found<T> {
    all: BTreeMap<String, Vec<T>>,
    alone: BTreeMap<String, Result<Vec<T>, String>>,
}

impl<T> Found<T> {
    /// The lines of `i`'s anchor (`anchor`), or why they could not be read.
    fn of(&self, i: &Item, anchor: &str) -> Result<&[T], &str> {
        match self.all.get(&i.jail_label) {
            Some(lines) => Ok(lines),
            None => match self.alone.get(anchor) {
                Some(Ok(lines)) => Ok(lines),
                Some(Err(e)) => Err(e),
                None => Ok(&[]),
            },
        }
    }
}

/// `kleenectl stats`, as the server runs it: prepared under the engine's lock, read without it.
pub fn stats(engine: &Mutex<Engine>, jail: Option<&JailName>) -> Result<Vec<PublicationStats>, Refusal> {
    let read = lock(engine).begin_stats(jail);
    read.read()
}

/// The lines of `pfctl -a '*' -s labels` (or `-v -s rules`) by the agent's jail label they
/// carry, from the blocks pf prints for the children of a wildcard anchor call. When pf.conf
/// calls the anchors twice, pf prints each child twice: only a jail label's first block counts.
fn by_jail_label<T: Labelled>(lines: Vec<T>) -> BTreeMap<String, Vec<T>> {
    let mut block_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for l in lines.into_iter().filter(|l| l.block() > 0) {
        let jail_label = l.labels().iter().find(|w| LabelKind::of(w) == Some(LabelKind::Jail)).cloned();
        let Some(jail_label) = jail_label else { continue };
        let block = l.block();
        if *block_of.entry(jail_label.clone()).or_insert(block) == block {
            out.entry(jail_label).or_default().push(l);
        }
    }
    out
}

/// The rules carrying both `label` and `jail_label` (a publication has a pass rule per family),
/// but not [`OUTBOUND_LABEL`]: a `pass out` rule counts again what a `pass in` rule counted.
fn matching<'a, T: Labelled>(lines: &'a [T], label: &'a str, jail_label: &'a str) -> impl Iterator<Item = &'a T> {
    let has = |l: &T, want: &str| l.labels().iter().any(|w| w == want);
    lines.iter().filter(move |l| has(l, label) && has(l, jail_label) && !has(l, OUTBOUND_LABEL))
}

/// The counters of the [`matching`] rules, summed.
fn sum(lines: &[LabelLine], label: &str, jail_label: &str) -> RuleCounters {
    let mut total = RuleCounters::default();
    for l in matching(lines, label, jail_label) {
        total.add(&l.counters);
    }
    total
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
        use crate::sys::counters::LabelLine;
        let line = |labels: &[&str], bytes_in: u64| LabelLine {
            block: 1,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            counters: counters(1, bytes_in, 1),
        };
        let (p, j) = ("kleene:vweb:8080:80/tcp", "kleene/vweb");
        let lines = [
            line(&[p, j], 100),
            line(&[p, j, crate::core::model::OUTBOUND_LABEL], 100),
            line(&[p, j], 5),
            line(&["kleene:vweb:9090:90/tcp", j], 1000),
        ];
        let total = super::sum(&lines, p, j);
        assert_eq!((total.bytes_in, total.states_created), (105, 2), "the pass out rule's repeat is skipped");
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
        read.read().unwrap().into_iter().map(|s| (s.state.publication.spec.to_string(), s.counters, s.note)).collect()
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
        h.pf().refuse(crate::agent::engine::testing::PfOp::Show, "pfctl: /dev/pf: Permission denied");
        let read = h.engine().begin_stats(None);
        let e = read.read().unwrap_err();
        assert!(e.message.contains("cannot read pf's counters: pfctl: /dev/pf: Permission denied"), "{e:?}");
        let web = read_one_failing(&h);
        assert!(web.contains("cannot read pf's counters of kleene/web: pfctl: /dev/pf"), "{web}");
    }

    #[test]
    fn a_failed_read_of_the_current_states_is_an_error_or_a_note() {
        let h = harness();
        h.pf().refuse(crate::agent::engine::testing::PfOp::RuleStates, "pfctl: DIOCGETRULES: Device busy");
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
