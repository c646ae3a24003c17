//! Verification: reading the loaded anchors back from pf and comparing them, by content, with
//! what the agent loaded, so that an anchor changed or emptied behind the agent's back is
//! reloaded. Every loaded anchor is read once per `verify_interval_ms`, spread evenly over the
//! polls (a share per poll, round robin) rather than all at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::core::plan::Loaded;
use crate::core::readback;
use crate::sys::pf::{Pf, Show};

use super::super::log;
use super::anchor_path;

/// Which anchor is read back next, and how much reading back the polls so far owe.
#[derive(Debug, Default)]
pub(super) struct Verifier {
    cursor: usize,
    /// Anchors owed but not read yet (a fraction when polls are many per interval).
    budget: f64,
}

impl Verifier {
    /// One poll's share of reading back `anchors` anchors once per `verify_ms`, polling every
    /// `poll_ms`: how many to read now.
    pub(super) fn share(&mut self, anchors: usize, poll_ms: u64, verify_ms: u64) -> usize {
        self.budget += anchors as f64 * poll_ms as f64 / verify_ms as f64;
        let n = self.budget.floor() as usize;
        self.budget -= n as f64;
        n
    }

    /// The next `count` of the `loaded` anchors to read back (all of them for `None`), round
    /// robin, with what was loaded into each.
    pub(super) fn pick(
        &mut self,
        loaded: &BTreeMap<String, Arc<Loaded>>,
        count: Option<usize>,
    ) -> Vec<(String, Arc<Loaded>)> {
        // Most polls read nothing back (a share of one anchor every few polls).
        if count == Some(0) {
            return vec![];
        }
        let all: Vec<(&String, &Arc<Loaded>)> = loaded.iter().collect();
        if all.is_empty() {
            return vec![];
        }
        let count = count.unwrap_or(all.len()).min(all.len());
        let picked = (0..count)
            .map(|i| {
                let (c, l) = all[(self.cursor + i) % all.len()];
                (c.clone(), Arc::clone(l))
            })
            .collect();
        self.cursor = (self.cursor + count) % all.len();
        picked
    }
}

/// Reads back the `picked` anchors below `parent` and returns those that differ from what was
/// loaded, or cannot be read: they are to be loaded again. Needs no lock.
pub(super) fn compare(pf: &dyn Pf, parent: &str, picked: &[(String, Arc<Loaded>)]) -> BTreeSet<String> {
    let mut stale = BTreeSet::new();
    for (component, loaded) in picked {
        let path = anchor_path(parent, component);
        let read =
            pf.show(Some(&path), Show::Nat).and_then(|nat| pf.show(Some(&path), Show::Rules).map(|rules| nat + &rules));
        match read {
            Ok(text) if readback::readback_keys(&text) == readback::readback_keys(&loaded.text()) => {}
            Ok(_) => {
                log::warn(&format!("anchor {path} was changed behind the agent's back; reloading it"));
                stale.insert(component.clone());
            }
            Err(e) => {
                log::warn(&format!("cannot read anchor {path} back ({}); reloading it", e.message()));
                stale.insert(component.clone());
            }
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::engine::testing::{FakePf, PfOp};

    fn loaded(pf: &FakePf, components: &[&str]) -> BTreeMap<String, Arc<Loaded>> {
        components
            .iter()
            .map(|c| {
                let text = format!(
                    "rdr on em0 inet proto tcp from any to (em0) port 8080 -> 10.13.37.2 port 80\n\
                     pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 label \"kleene/{c}\"\n"
                );
                pf.set_anchor(&format!("kleene/{c}"), &text);
                (c.to_string(), Arc::new(Loaded::new(c.parse().unwrap(), 1, &text)))
            })
            .collect()
    }

    #[test]
    fn each_anchor_is_read_once_per_interval_spread_over_the_polls() {
        let mut v = Verifier::default();
        let per_poll: Vec<usize> = (0..12).map(|_| v.share(10, 1000, 6000)).collect();
        assert_eq!(per_poll.iter().sum::<usize>(), 20, "ten anchors, twice in twelve polls");
        assert!(per_poll.iter().all(|n| (1..=2).contains(n)), "spread: {per_poll:?}");
        let mut v = Verifier::default();
        let few: usize = (0..60).map(|_| v.share(1, 1000, 60_000)).sum();
        assert_eq!(few, 1, "one anchor, once a minute");
    }

    #[test]
    fn reading_back_goes_round_robin_and_finds_what_changed_or_went() {
        let pf = FakePf::default();
        let all = loaded(&pf, &["a", "b", "c"]);
        let mut v = Verifier::default();
        assert!(compare(&pf, "kleene", &v.pick(&all, Some(2))).is_empty());
        pf.clear_calls();
        compare(&pf, "kleene", &v.pick(&all, Some(2)));
        let read: Vec<String> = pf
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                crate::agent::engine::testing::PfCall::Show(Some(a), Show::Nat) => Some(a),
                _ => None,
            })
            .collect();
        assert_eq!(read, ["kleene/c", "kleene/a"], "where the last round stopped");

        // pfctl prints `port = 8080`: the same rules, by content.
        let b = pf.anchor("kleene/b").unwrap().replace("port 8080", "port = 8080");
        pf.set_anchor("kleene/b", &b);
        assert!(compare(&pf, "kleene", &v.pick(&all, None)).is_empty());
        pf.set_anchor("kleene/b", "pass in all\n");
        pf.set_anchor("kleene/c", "");
        assert_eq!(compare(&pf, "kleene", &v.pick(&all, None)), ["b".to_string(), "c".to_string()].into());
        pf.refuse(PfOp::Show, "pfctl: DIOCGETRULES: Device busy");
        assert_eq!(compare(&pf, "kleene", &v.pick(&all, None)).len(), 3, "unreadable: loaded again");
    }
}
