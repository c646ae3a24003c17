//! What a request is answered with, and how the answer is written.
//!
//! An `ls` or a `stats` of thousands of publications (and `rules` of as many anchors) is
//! megabytes of JSON. Held as one text, it would sit in the agent's memory next to the data it
//! was made from, and set the agent's peak. So a [`Reply`] keeps the engine's answer as it came,
//! and [`Reply::write_to`] serialises it straight into the socket's buffered writer, each
//! publication's protocol view made as it is written and dropped after. The bytes on the wire
//! are those of `Response::with_data` of the whole list (`proto::write_with_data`).

use std::cell::RefCell;
use std::io::Write;

use serde::ser::{Error as _, Serialize, Serializer};

use crate::proto::{AnchorView, Finding, PublicationView, Response, StatsView, write_with_data};

use super::api::{Diagnostic, LoadedAnchor, PublicationState, PublicationStats};

/// The answer to one request.
pub enum Reply {
    /// A response held whole: a message, or an error.
    Whole(Response),
    /// `list`: the publications, written as [`PublicationView`]s.
    List(Vec<PublicationState>),
    /// `rules`: the anchors, written as [`AnchorView`]s.
    Rules(Vec<LoadedAnchor>),
    /// `check`: the findings, written as [`Finding`]s.
    Check(Vec<Diagnostic>),
    /// `stats`: the counters, written as [`StatsView`]s.
    Stats(Vec<PublicationStats>),
}

impl From<Response> for Reply {
    fn from(r: Response) -> Reply {
        Reply::Whole(r)
    }
}

impl Reply {
    /// Whether it carries data that grows with the publications (then worth giving the memory
    /// it used back once written).
    pub fn is_data(&self) -> bool {
        !matches!(self, Reply::Whole(_))
    }

    /// Writes its line, without the newline.
    pub fn write_to(self, w: impl Write) -> serde_json::Result<()> {
        match self {
            Reply::Whole(r) => serde_json::to_writer(w, &r),
            Reply::List(l) => write_with_data(w, &Items::new(l.into_iter().map(PublicationView::from))),
            Reply::Rules(l) => write_with_data(w, &Items::new(l.into_iter().map(AnchorView::from))),
            Reply::Check(l) => write_with_data(w, &Items::new(l.into_iter().map(Finding::from))),
            Reply::Stats(l) => write_with_data(w, &Items::new(l.into_iter().map(StatsView::from))),
        }
    }
}

/// A sequence serialised from an iterator, each item made as it is written (serialised once).
struct Items<I>(RefCell<Option<I>>);

impl<I> Items<I> {
    fn new(items: I) -> Items<I> {
        Items(RefCell::new(Some(items)))
    }
}

impl<I: Iterator<Item = T>, T: Serialize> Serialize for Items<I> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let items = self.0.borrow_mut().take().ok_or_else(|| S::Error::custom("a reply's items are written once"))?;
        s.collect_seq(items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::api::{Refusal, RefusalKind, Standing};
    use crate::core::publication::Publication;
    use crate::core::render::Targets;
    use crate::sys::counters::RuleCounters;
    use std::time::{Duration, UNIX_EPOCH};

    fn state(jail: &str, spec: &str, standing: Standing) -> PublicationState {
        PublicationState {
            publication: Publication::new(
                jail.parse().unwrap(),
                spec.parse().unwrap(),
                vec!["192.0.2.0/24".parse().unwrap()],
                true,
                None,
            ),
            standing,
            reason: (standing != Standing::Active).then(|| format!("jail {jail} is not \"running\"")),
            interfaces: vec!["em0".parse().unwrap()].into(),
            targets: Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00::2".parse().unwrap()]),
            reached: Default::default(),
        }
    }

    fn states() -> Vec<PublicationState> {
        vec![
            state("web", "8080:80", Standing::Active),
            state("web", "[2001:db8::1]:443:8443/udp", Standing::Active),
            state("db", "5432", Standing::Pending),
        ]
    }

    fn written(reply: Reply) -> Vec<u8> {
        let mut out = Vec::new();
        reply.write_to(&mut out).unwrap();
        out
    }

    /// The old encoding: the data's views collected, serialised into the response, the response
    /// serialised whole.
    fn whole<T: Serialize>(data: &T) -> Vec<u8> {
        serde_json::to_vec(&Response::with_data(data)).unwrap()
    }

    #[test]
    fn written_answers_are_byte_for_byte_the_whole_responses() {
        let views: Vec<PublicationView> = states().into_iter().map(PublicationView::from).collect();
        assert_eq!(written(Reply::List(states())), whole(&views));
        assert_eq!(written(Reply::List(vec![])), whole(&Vec::<PublicationView>::new()));

        let counters = RuleCounters { packets_in: 3, bytes_in: 300, states: 2, ..RuleCounters::default() };
        let since = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        let stats = || {
            let mut s = states().into_iter().map(|s| (s.publication, s.standing));
            let mut next = |since, counters, note| {
                let (publication, standing) = s.next().unwrap();
                PublicationStats { publication, standing, since, counters, note }
            };
            vec![
                next(since, Some(counters), None),
                next(since, None, Some("cannot read pf's counters of kleene/web: pfctl: busy".to_string())),
                next(None, None, None),
            ]
        };
        let views: Vec<StatsView> = stats().into_iter().map(StatsView::from).collect();
        assert_eq!(written(Reply::Stats(stats())), whole(&views));

        let anchors = || {
            vec![LoadedAnchor {
                anchor: "kleene/web".into(),
                jail: "web".parse().unwrap(),
                text: "pass in quick on em0 label \"kleene/web\"\n".into(),
            }]
        };
        let views: Vec<AnchorView> = anchors().into_iter().map(AnchorView::from).collect();
        assert_eq!(written(Reply::Rules(anchors())), whole(&views));

        let findings = || {
            vec![Diagnostic { ok: false, what: "pf".into(), detail: "disabled".into(), fix: Some("pfctl -e".into()) }]
        };
        let views: Vec<Finding> = findings().into_iter().map(Finding::from).collect();
        assert_eq!(written(Reply::Check(findings())), whole(&views));

        let refused: Response = Refusal::new(RefusalKind::Pf, "no").into();
        assert_eq!(written(refused.clone().into()), serde_json::to_vec(&refused).unwrap());
    }

    #[test]
    fn only_answers_with_data_are_data() {
        assert!(Reply::List(vec![]).is_data() && Reply::Stats(vec![]).is_data());
        assert!(!Reply::Whole(Response::ok("published")).is_data());
    }
}
