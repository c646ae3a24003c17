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

    /// Reads back `count` of the `loaded` anchors below `parent` (all of them for `None`), round
    /// robin. Returns the components that differ from what was loaded or cannot be read: they
    /// are to be loaded again.
    pub(super) fn verify(
        &mut self,
        pf: &dyn Pf,
        parent: &str,
        loaded: &BTreeMap<String, Arc<Loaded>>,
        count: Option<usize>,
    ) -> BTreeSet<String> {
        let mut stale = BTreeSet::new();
        let components: Vec<&String> = loaded.keys().collect();
        if components.is_empty() {
            return stale;
        }
        let count = count.unwrap_or(components.len()).min(components.len());
        for i in 0..count {
            let component = components[(self.cursor + i) % components.len()];
            let path = anchor_path(parent, component);
            let read = pf
                .show(Some(&path), Show::Nat)
                .and_then(|nat| pf.show(Some(&path), Show::Rules).map(|rules| nat + &rules));
            match read {
                Ok(text) if readback::readback_keys(&text) == readback::readback_keys(&loaded[component].text) => {}
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
        self.cursor = (self.cursor + count) % components.len();
        stale
    }
}
