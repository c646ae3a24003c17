//! The read-only views: `kleenectl ls` (where each publication stands) and `kleenectl rules`
//! (what the agent loaded). A publication's standing is the last plan's status, corrected with
//! what pf has not done yet: pf unusable, a flush or load pf refused, a state kill pending.

use std::sync::Arc;

use crate::core::model::JailName;
use crate::core::plan::{Status, Stored};
use crate::core::publication::Publication;
use crate::core::reach::Reached;
use crate::core::render::Targets;

use super::super::api::{LoadedAnchor, PublicationState, Standing};
use super::Engine;
use super::executor::Unfinished;

impl Engine {
    /// `kleenectl ls`: every publication (of `jail` when given), by jail and spec, then those
    /// unpublished whose states pf has not killed yet.
    pub fn list(&self, jail: Option<&JailName>) -> Vec<PublicationState> {
        self.states(jail).collect()
    }

    /// [`Engine::list`], each publication's state made as it is taken (so that a caller keeping
    /// something else of each never holds the whole list too).
    pub(super) fn states<'a>(&'a self, jail: Option<&'a JailName>) -> impl Iterator<Item = PublicationState> + 'a {
        let wanted = move |j: &JailName| jail.is_none_or(|w| w == j);
        let mut pubs: Vec<&Stored> = match jail {
            Some(j) => self.state.of_jail(j).collect(),
            None => self.state.publications().iter().collect(),
        };
        pubs.sort_by(|a, b| {
            (&a.publication.jail, &a.publication.spec).cmp(&(&b.publication.jail, &b.publication.spec))
        });
        let stored = pubs.into_iter().map(move |s| {
            let planned = self.last.statuses.get(&s.seq);
            let status = planned.map_or_else(|| Status::Pending("not planned yet".into()), |st| st.status.clone());
            let (standing, reason) = standing(self.with_pf(&s.publication, status));
            let reached = match standing {
                Standing::Active => planned.map_or_else(Reached::default, |st| st.reached),
                _ => Reached::default(),
            };
            PublicationState {
                publication: s.publication.clone(),
                standing,
                reason,
                interfaces: planned.map_or_else(|| Arc::from([]), |st| Arc::clone(&st.interfaces)),
                targets: planned.map_or_else(Targets::default, |st| st.targets.clone()),
                reached,
            }
        });
        let removing = self.executor.removing().filter(move |(p, _)| wanted(&p.jail)).map(|(p, retry)| {
            let why = retry.map_or(String::new(), |r| format!(": {}; {}", r.error, r.when()));
            PublicationState {
                publication: p.clone(),
                standing: Standing::Removing,
                reason: Some(format!("unpublished, but pf has not killed its established states yet{why}")),
                interfaces: Arc::from([]),
                targets: Targets::default(),
                reached: Reached::default(),
            }
        });
        stored.chain(removing)
    }

    /// A publication's status with what pf has not done yet: pf unusable, a flush or a state
    /// kill that pf refused and that is being retried.
    fn with_pf(&self, p: &Publication, status: Status) -> Status {
        if let (Status::Active, Some(e)) = (&status, self.observer.pf_problem()) {
            return Status::Error(e.to_string());
        }
        match (self.executor.anchor_unfinished(&self.component(&p.jail)), &status) {
            (Some(Unfinished::Flush { error, retry: Some(r), .. }), _) => {
                let was = status.reason().map_or(String::new(), |r| format!("{r}; "));
                return Status::Error(format!("{was}pf did not flush the jail's anchor ({error}); {}", r.when()));
            }
            (Some(Unfinished::Load { retry: Some(r), .. }), Status::Error(why)) => {
                return Status::Error(format!("{why}; {}", r.when()));
            }
            _ => {}
        }
        for label in [p.label(), p.jail.label()] {
            if let Some(r) = self.executor.pending_kill(&label) {
                return Status::Error(format!(
                    "pf did not kill the states of {label} ({}), so old connections may still reach the jail; {}",
                    r.error,
                    r.when()
                ));
            }
        }
        status
    }

    /// `kleenectl rules`: the anchors the agent loaded (of `jail` when given).
    pub fn rules(&self, jail: Option<&JailName>) -> Vec<LoadedAnchor> {
        self.executor
            .loaded()
            .iter()
            .filter(|(_, l)| jail.is_none_or(|j| &l.jail == j))
            .map(|(c, l)| LoadedAnchor { anchor: self.anchor_path(c), jail: l.jail.clone(), text: l.text() })
            .collect()
    }
}

/// The standing and reason of a planned status.
fn standing(status: Status) -> (Standing, Option<String>) {
    match status {
        Status::Active => (Standing::Active, None),
        Status::Pending(r) => (Standing::Pending, Some(r)),
        Status::Conflict(r) => (Standing::Conflict, Some(r)),
        Status::Error(r) => (Standing::Error, Some(r)),
    }
}

#[cfg(test)]
mod tests {
    use crate::agent::api::Standing;
    use crate::agent::engine::testing::{Harness, PfOp, jail};

    #[test]
    fn ls_goes_by_jail_and_spec_and_says_why_a_publication_is_not_active() {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2", "fd00::2"])]);
        h.publish("web", &["8081:81", "em1:8080:80"]).unwrap();
        h.publish("db", &["5432"]).unwrap();
        let ls = h.list();
        let rows: Vec<(String, String, Standing)> =
            ls.iter().map(|s| (s.publication.jail.to_string(), s.publication.spec.to_string(), s.standing)).collect();
        assert_eq!(
            rows,
            [
                ("db".into(), "5432:5432/tcp".into(), Standing::Pending),
                ("web".into(), "8081:81/tcp".into(), Standing::Active),
                ("web".into(), "em1:8080:80/tcp".into(), Standing::Active),
            ]
        );
        assert_eq!(ls[0].reason.as_deref(), Some("jail db is not running"));
        assert_eq!(ls[1].reason, None);
        assert_eq!(ls[2].interfaces[..], ["em1".parse().unwrap()]);
        assert_eq!(ls[2].targets.inet, Some("10.13.37.2".parse().unwrap()));
        assert_eq!(ls[2].targets.inet6, Some("fd00::2".parse().unwrap()));
        assert_eq!(h.engine().list(Some(&"db".parse().unwrap())).len(), 1);
    }

    #[test]
    fn pf_unusable_or_failing_shows_on_the_publications() {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"])]);
        h.publish("web", &["8080:80"]).unwrap();
        h.pf().refuse(PfOp::Anchors, "pfctl: /dev/pf: No such file or directory");
        h.tick();
        let (standing, reason) = h.standing("web", "8080:80/tcp").unwrap();
        assert_eq!(
            (standing, reason.as_deref()),
            ("error", Some("pf is not usable: pfctl: /dev/pf: No such file or directory"))
        );

        h.pf().allow(PfOp::Anchors);
        h.pf().refuse(PfOp::Flush, "pfctl: DIOCXBEGIN: Device busy");
        h.fakes.jails.set(vec![]);
        h.tick();
        let (standing, reason) = h.standing("web", "8080:80/tcp").unwrap();
        assert_eq!(standing, "error");
        let reason = reason.unwrap();
        let flushing = "jail web is not running; pf did not flush the jail's anchor (pfctl: DIOCXBEGIN: Device busy)";
        assert!(reason.starts_with(&format!("{flushing}; retrying in")), "{reason}");
    }

    #[test]
    fn rules_are_what_the_agent_loaded() {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])]);
        h.publish("web", &["8080:80"]).unwrap();
        h.publish("db", &["5432"]).unwrap();
        let all = h.engine().rules(None);
        let anchors: Vec<&str> = all.iter().map(|a| a.anchor.as_str()).collect();
        assert_eq!(anchors, ["kleene/db", "kleene/web"]);
        let web = h.engine().rules(Some(&"web".parse().unwrap()));
        assert_eq!(web.len(), 1);
        assert_eq!(Some(&web[0].text), h.pf().anchor("kleene/web").as_ref());
    }
}
