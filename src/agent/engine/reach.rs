//! What the host needs for the reaches the configuration switches on (see `core::reach`), for
//! `kleenectl check` (each finding with the exact fix) and for the warnings `publish` adds to
//! its answer when a reach it was asked for cannot work:
//!
//! - the main ruleset's `nat-anchor` (the nat that brings a VNET jail's replies back);
//! - pf not skipping lo0 (`pfctl -s Interfaces -v` marks a skipped interface `(skip)`);
//! - `net.pf.filter_local=1` for the host to reach a VNET jail;
//! - `net.inet.ip.forwarding=1` / `net.inet6.ip6.forwarding=1` for traffic to VNET jails, which
//!   the host forwards;
//! - no host service listening on a published port at 127.0.0.1 / ::1 (or the wildcard): the
//!   host's own connections to it would reach the jail instead.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::core::plan::Status;
use crate::core::spec::Place;
use crate::sys::pf::Show;
use crate::sys::settings::{Listener, SYSCTLS};

use super::super::api::Diagnostic;
use super::{Engine, System};

/// What the host looked like when last asked: whether pf skips lo0, and the sysctl values.
#[derive(Debug, Clone, Default)]
pub(super) struct HostReach {
    /// Whether pf skips lo0, or why that could not be read.
    lo0_skipped: Option<Result<bool, String>>,
    /// The sysctl values the kernel has, or why they could not be read.
    sysctls: Option<Result<BTreeMap<String, String>, String>>,
    /// Whether the main ruleset calls the anchors' nat rules (`None`: not read).
    nat_anchor: Option<bool>,
}

impl HostReach {
    /// Asks pf and sysctl; `anchor` is the parent anchor.
    pub(super) fn read(sys: &System, anchor: &str) -> HostReach {
        let lo0 = sys
            .pf
            .interfaces()
            .map(|list| list.iter().any(|(name, skip)| *skip && name == "lo0"))
            .map_err(|e| e.message());
        let sysctls = sys.settings.sysctls(&SYSCTLS).map_err(|e| e.message());
        let line = format!("nat-anchor \"{anchor}/*\"");
        let nat_anchor =
            sys.pf.show(None, Show::Nat).ok().map(|t| t.lines().any(|l| l.trim_start().starts_with(&line)));
        HostReach { lo0_skipped: Some(lo0), sysctls: Some(sysctls), nat_anchor }
    }
}

fn finding(ok: bool, what: &str, detail: String, fix: Option<String>) -> Diagnostic {
    Diagnostic { ok, what: what.into(), detail, fix: if ok { None } else { fix } }
}

const FILTER_LOCAL: &str = "net.pf.filter_local";
const FORWARDING: &str = "net.inet.ip.forwarding";
const FORWARDING6: &str = "net.inet6.ip6.forwarding";

impl Engine {
    /// Whether the host's own traffic or loopback publications need lo0 (the configuration
    /// switches host, hairpin or loopback reach on).
    fn needs_lo0(&self) -> bool {
        let r = &self.cfg.reach;
        r.host || r.hairpin || r.loopback
    }

    /// Whether a running VNET jail has an address of IPv4 (`false`) or IPv6 (`true`).
    fn vnet_family(&self, v6: bool) -> bool {
        self.observer.observed().jails.iter().filter(|j| j.vnet).any(|j| match &j.addrs {
            Ok(a) => a.iter().any(|a| a.is_ipv6() == v6),
            Err(_) => !v6,
        })
    }

    /// The reach findings of `kleenectl check`, from `host` (read now) and the listening
    /// sockets.
    pub(super) fn reach_findings(&self, host: &HostReach) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let a = &self.cfg.anchor;
        if self.cfg.reach.hairpin || self.cfg.reach.host || self.cfg.reach.loopback {
            let line = format!("nat-anchor \"{a}/*\"");
            match self.sys.pf.show(None, Show::Nat) {
                Ok(text) => {
                    let ok = text.lines().any(|l| l.trim_start().starts_with(&line));
                    out.push(finding(
                        ok,
                        "main ruleset nat-anchor",
                        if ok {
                            format!("has {line}")
                        } else {
                            format!(
                                "has no {line}: the nat that brings a VNET jail's replies to other jails of its network \
                                 and to the host back through the host is never evaluated"
                            )
                        },
                        Some(format!(
                            "add `{line}` to the translation section of /etc/pf.conf (beside `rdr-anchor \"{a}/*\"`), \
                             then service pf reload"
                        )),
                    ));
                }
                Err(e) => out.push(finding(
                    false,
                    "main ruleset nat-anchor",
                    format!("cannot read the main ruleset: {}", e.message()),
                    Some("run kleenectl check as root on the pf host".into()),
                )),
            }
        }
        if self.needs_lo0() {
            out.push(match &host.lo0_skipped {
                Some(Ok(false)) => finding(true, "loopback", "pf filters lo0".into(), None),
                Some(Ok(true)) => finding(
                    false,
                    "loopback",
                    "pf skips lo0 (`set skip on lo0`, or on the group `lo`): the host, non-VNET jails and \
                     publications on 127.0.0.1/::1/localhost never reach a published port"
                        .into(),
                    Some(
                        "in /etc/pf.conf replace `set skip on lo0` (or `set skip on lo`) with the filter rule \
                         `pass quick on lo0 all no state` placed before your other filter rules (translation \
                         still applies to lo0, filtering stays out of the way), then service pf reload"
                            .into(),
                    ),
                ),
                Some(Err(e)) => finding(
                    false,
                    "loopback",
                    format!("cannot ask pf which interfaces it skips: {e}"),
                    Some("run kleenectl check as root on the pf host".into()),
                ),
                None => finding(false, "loopback", "not read yet".into(), Some("run kleenectl check again".into())),
            });
        }
        let sysctls = match &host.sysctls {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                out.push(finding(
                    false,
                    "sysctl",
                    format!("cannot read {}: {e}", SYSCTLS.join(", ")),
                    Some(format!("check tools.sysctl in the config (now {})", self.cfg.tools.sysctl.display())),
                ));
                return out;
            }
            None => return out,
        };
        let vnet4 = self.vnet_family(false);
        let vnet6 = self.vnet_family(true);
        if self.cfg.reach.host || self.cfg.reach.loopback {
            let needed = vnet4 || vnet6;
            out.push(match sysctls.get(FILTER_LOCAL).map(String::as_str) {
                Some("1") => finding(true, FILTER_LOCAL, format!("{FILTER_LOCAL} is 1"), None),
                None => finding(
                    !needed,
                    FILTER_LOCAL,
                    format!(
                        "this kernel has no {FILTER_LOCAL}{}",
                        if needed { ": the host cannot reach a VNET jail's published port" } else { "" }
                    ),
                    Some("reach a VNET jail from the host at its own address, or upgrade FreeBSD".into()),
                ),
                Some(v) => finding(
                    !needed,
                    FILTER_LOCAL,
                    if needed {
                        format!("{FILTER_LOCAL} is {v}: the host cannot reach a VNET jail's published port")
                    } else {
                        format!("{FILTER_LOCAL} is {v} (needed only for the host to reach VNET jails; none runs)")
                    },
                    Some(format!(
                        "sysctl {FILTER_LOCAL}=1, add {FILTER_LOCAL}=1 to /etc/sysctl.conf, then service pf restart \
                         (pf reads it when it is enabled)"
                    )),
                ),
            });
        }
        for (name, needed, rc) in
            [(FORWARDING, vnet4, "gateway_enable=\"YES\""), (FORWARDING6, vnet6, "ipv6_gateway_enable=\"YES\"")]
        {
            let v = sysctls.get(name).map_or("unknown", String::as_str);
            let ok = v == "1" || !needed;
            out.push(finding(
                ok,
                name,
                if v == "1" {
                    format!("{name} is 1")
                } else if needed {
                    format!(
                        "{name} is {v}: the host does not forward to VNET jails, so their publications are unreachable"
                    )
                } else {
                    format!("{name} is {v} (needed only for VNET jails of that family; none runs)")
                },
                Some(format!("sysctl {name}=1 and sysrc {rc} (/etc/rc.conf)")),
            ));
        }
        out.extend(self.shadowed_findings());
        out
    }

    /// Host services listening where a publication takes the host's own connections.
    fn shadowed_findings(&self) -> Vec<Diagnostic> {
        let listeners = match self.sys.settings.listening() {
            Ok(l) => l,
            Err(e) => {
                return vec![finding(
                    false,
                    "host services",
                    format!("cannot list the listening sockets: {}", e.message()),
                    Some(format!("check tools.sockstat in the config (now {})", self.cfg.tools.sockstat.display())),
                )];
            }
        };
        let mut out = Vec::new();
        for s in self.state.publications() {
            let Some(st) = self.last.statuses.get(&s.seq) else { continue };
            if st.status != Status::Active || !st.reached.contains(crate::core::reach::From::Host) {
                continue;
            }
            let p = &s.publication;
            let local = |a: &Option<IpAddr>| match (&p.spec.place, a) {
                (_, None) => true,
                (Place::Address(x), Some(a)) => {
                    a == x || (x.is_loopback() && a.is_loopback() && a.is_ipv4() == x.is_ipv4())
                }
                (_, Some(a)) => a.is_loopback(),
            };
            for l in listeners.iter().filter(|l| {
                l.proto.starts_with(p.spec.proto.as_str())
                    && (p.spec.host.start()..=p.spec.host.end()).contains(&l.port)
                    && local(&l.addr)
            }) {
                out.push(shadowed(p, l));
            }
        }
        if out.is_empty() {
            out.push(finding(true, "host services", "none is shadowed by a publication".into(), None));
        }
        out
    }
}

impl Engine {
    /// What `publish` warns about for the publication `seq`: reaches it asks for that cannot
    /// work on this host (from the last [`HostReach`] read, at start and on reconcile, and
    /// from what its rules could not cover).
    pub(super) fn reach_warnings(&self, seq: u64) -> Vec<String> {
        let Some(st) = self.last.statuses.get(&seq) else { return vec![] };
        let Some(s) = self.state.get(seq) else { return vec![] };
        let p = &s.publication;
        let mut out: Vec<String> = st.notes.clone();
        if st.status != Status::Active {
            return out;
        }
        let reach = self.cfg.reach.for_publication(&p.reach_off);
        let uses_lo0 = p.spec.place.is_loopback() || reach.host || reach.hairpin;
        if uses_lo0 && matches!(self.host_reach.lo0_skipped, Some(Ok(true))) {
            out.push(format!(
                "{} {}: pf skips lo0 (set skip on lo0), so the host and non-VNET jails do not reach it; see kleenectl check",
                p.jail, p.spec
            ));
        }
        let vnet = self.observer.observed().jails.iter().any(|j| j.name == p.jail && j.vnet);
        let nats = (reach.hairpin && !p.spec.place.is_loopback()) || reach.host || p.spec.place.is_loopback();
        if vnet && nats && self.host_reach.nat_anchor == Some(false) {
            out.push(format!(
                "{} {}: the main ruleset has no nat-anchor \"{}/*\", so jails of its network and the host's \
                 loopback do not reach this VNET jail through it; see kleenectl check",
                p.jail, p.spec, self.cfg.anchor
            ));
        }
        if let (true, Some(Ok(sysctls))) = (vnet, &self.host_reach.sysctls) {
            if (reach.host || p.spec.place.is_loopback()) && sysctls.get(FILTER_LOCAL).map(String::as_str) != Some("1")
            {
                out.push(format!(
                    "{} {}: {FILTER_LOCAL} is not 1, so the host does not reach this VNET jail through it; see kleenectl check",
                    p.jail, p.spec
                ));
            }
            for (name, family) in [(FORWARDING, st.targets.inet), (FORWARDING6, st.targets.inet6)] {
                if family.is_some() && sysctls.get(name).map(String::as_str) != Some("1") {
                    out.push(format!(
                        "{} {}: {name} is not 1, so the host does not forward to this VNET jail; see kleenectl check",
                        p.jail, p.spec
                    ));
                }
            }
        }
        out
    }
}

fn shadowed(p: &crate::core::publication::Publication, l: &Listener) -> Diagnostic {
    let at = match l.addr {
        None => format!("*:{}", l.port),
        Some(IpAddr::V6(a)) => format!("[{a}]:{}", l.port),
        Some(a) => format!("{a}:{}", l.port),
    };
    finding(
        false,
        "host services",
        format!(
            "{} (pid {}) listens on {at} ({}), but the host's own connections to that port on its loopback reach \
             jail {} ({}) instead",
            l.command, l.pid, l.proto, p.jail, p.spec
        ),
        Some(format!(
            "move the service to another port, or publish another host port, or publish with --no-host \
             (kleenectl unpublish -j {} {} && kleenectl publish -j {} --no-host {})",
            p.jail, p.spec, p.jail, p.spec
        )),
    )
}

#[cfg(test)]
mod tests {
    use crate::agent::api::Standing;
    use crate::agent::engine::testing::{Harness, jail};
    use crate::core::address::Network;
    use crate::core::reach::From;

    /// A host with the jail network kleenet (10.13.37.0/24) on bridge0, the host at .1.
    fn bridged() -> Harness {
        let h = Harness::new();
        h.fakes.ifaces.set_host(&["lo0", "em0", "bridge0", "epair0a"], &["em0=192.0.2.10", "bridge0=10.13.37.1"]);
        let mut cfg = h.engine().config().clone();
        cfg.networks = vec![Network {
            name: "kleenet".parse().unwrap(),
            subnet: Some("10.13.37.0/24".parse().unwrap()),
            subnet6: None,
        }];
        h.engine().reconfigure(cfg, h.fakes.system());
        h
    }

    #[test]
    fn the_anchor_of_a_vnet_jail_holds_exactly_the_rules_of_its_reach() {
        let h = bridged();
        let mut web = jail("web", 3, &[]);
        web.vnet = true;
        h.fakes.ifaces.set_jail(3, &["10.13.37.5"]);
        h.fakes.jails.set(vec![web]);
        h.start();
        let answer = h.publish("web", &["8080:80/udp"]).unwrap();
        assert_eq!(answer, "published web 8080:80/udp on em0 -> 10.13.37.5", "nothing to warn about");
        let tag = "\"kleene:web:8080:80/udp\"";
        let labels = "label \"kleene:web:8080:80/udp\" label \"kleene/web\"";
        assert_eq!(
            h.pf().anchor("kleene/web").unwrap(),
            format!(
                "nat on bridge0 inet proto udp from 10.13.37.0/24 to 10.13.37.5 port 80 tagged {tag} -> 10.13.37.1\n\
                 nat on bridge0 inet proto udp from 127.0.0.1 to 10.13.37.5 port 80 tagged {tag} -> 10.13.37.1\n\
                 rdr on em0 inet proto udp from any to (em0) port 8080 tag {tag} -> 10.13.37.5 port 80\n\
                 rdr on lo0 inet proto udp from any to (em0) port 8080 tag {tag} -> 10.13.37.5 port 80\n\
                 rdr on lo0 inet proto udp from any to 127.0.0.1 port 8080 tag {tag} -> 10.13.37.5 port 80\n\
                 rdr on bridge0 inet proto udp from any to (em0) port 8080 tag {tag} -> 10.13.37.5 port 80\n\
                 pass in quick inet proto udp from any to 10.13.37.5 port 80 tagged {tag} {labels}\n\
                 pass out quick inet proto udp from any to 10.13.37.5 port 80 tagged {tag} {labels} label \"kleene:outbound\"\n\
                 pass in quick inet proto udp from 10.13.37.0/24 to 10.13.37.5 port 80 {labels}\n\
                 pass out quick inet proto udp from 10.13.37.0/24 to 10.13.37.5 port 80 {labels} label \"kleene:outbound\"\n"
            )
        );
        let ls = h.list();
        assert_eq!(ls[0].reached.to_vec(), [From::Outside, From::Jails, From::Networks, From::Host]);
        assert_eq!(h.unpublish("web", &[]).unwrap().lines().next().unwrap(), "unpublished web 8080:80/udp");
        assert!(h.pf().anchor("kleene/web").is_none(), "teardown removes every rule");
        assert_eq!(
            h.pf().changes(),
            ["load kleene/web", "flush kleene/web", "kill kleene/web"],
            "and kills its states"
        );
    }

    #[test]
    fn reach_switched_off_in_the_config_leaves_only_the_outside() {
        let h = bridged();
        let mut cfg = h.engine().config().clone();
        cfg.reach = crate::core::reach::Reach { hairpin: false, networks: false, host: false, loopback: false };
        h.engine().reconfigure(cfg, h.fakes.system());
        h.fakes.jails.set(vec![jail("web", 3, &["10.13.37.2"])]);
        h.start();
        h.publish("web", &["8080:80"]).unwrap();
        let a = h.pf().anchor("kleene/web").unwrap();
        assert_eq!(a.lines().count(), 2, "{a}");
        assert_eq!(h.list()[0].reached.to_vec(), [From::Outside]);
        let refused = h.publish("web", &["127.0.0.1:9090:90"]).unwrap();
        assert!(
            refused.contains("error: no IPv4 rules: publications on the host's loopback are switched off"),
            "{refused}"
        );
    }

    #[test]
    fn a_publication_on_an_interface_the_host_lacks_is_an_error_until_it_appears() {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"])]);
        let answer = h.publish("web", &["em7:8080:80"]).unwrap();
        assert!(answer.contains("error: the host has no interface em7"), "{answer}");
        assert_eq!(h.list()[0].standing, Standing::Error);
        assert!(h.pf().anchor("kleene/web").is_none());
        h.fakes.ifaces.set_host(&["lo0", "em0", "em7"], &[]);
        h.engine().begin_reconcile();
        h.engine().reconcile_now(false).unwrap();
        assert_eq!(h.list()[0].standing, Standing::Active);
    }

    #[test]
    fn publish_warns_when_a_reach_cannot_work() {
        let h = Harness::new();
        h.pf().set_skip(&["lo0"]);
        h.fakes.jails.set(vec![jail("web", 3, &["10.13.37.2"])]);
        h.start();
        let answer = h.publish("web", &["8080:80"]).unwrap();
        assert_eq!(
            answer,
            "published web 8080:80/tcp on em0 -> 10.13.37.2\nwarning: web 8080:80/tcp: pf skips lo0 (set skip on \
             lo0), so the host and non-VNET jails do not reach it; see kleenectl check"
        );
    }
}
