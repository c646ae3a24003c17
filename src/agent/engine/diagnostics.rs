//! `kleenectl check`: what is wrong with the host's pf set-up and with what the agent observes
//! and applies, each finding with the exact fix. It asks pf about its own state (is pfctl
//! there, is pf enabled, does the main ruleset call the anchors) and lists the problems the
//! other parts keep: sources that could not be read, pf operations not done yet, anchors
//! holding someone else's rules, VNET jails whose addresses cannot be read.

use crate::sys::pf::Show;

use super::super::api::Diagnostic;
use super::Engine;
use super::executor::Unfinished;
use super::observe::Source;

/// A finding that is not ok.
fn problem(what: String, detail: String, fix: String) -> Diagnostic {
    Diagnostic { ok: false, what, detail, fix: Some(fix) }
}

impl Engine {
    /// `kleenectl check`: every finding, the agent itself first.
    pub fn check(&self) -> Vec<Diagnostic> {
        let mut out = vec![Diagnostic { ok: true, what: "agent".into(), detail: "reachable".into(), fix: None }];
        if !self.check_pf(&mut out) {
            return out;
        }
        out.extend(self.reach_findings(&super::reach::HostReach::read(&self.sys, &self.cfg.anchor)));
        for (source, p) in self.observer.problems() {
            if *source != Source::Pf {
                let fix = format!("check tools.{} in the config, and the agent's log", source.tool());
                out.push(problem(source.what().into(), p.clone(), fix));
            }
        }
        out.extend(self.executor.unfinished().into_iter().map(|u| self.unfinished(u)));
        for c in &self.observer.observed().foreign {
            let path = self.anchor_path(c);
            out.push(problem(
                format!("anchor {path}"),
                "holds rules this agent did not write (none carries its labels); they are left alone, and a jail \
                 whose anchor this is cannot publish"
                    .into(),
                format!(
                    "if `anchor: {}` is meant for this agent alone, remove them (pfctl -a {path} -F all); else choose \
                     another `anchor` in the config",
                    self.cfg.anchor
                ),
            ));
        }
        for (jail, jid, e, kept) in self.observer.vnet().problems() {
            out.push(problem(
                format!("addresses of VNET jail {jail} (jid {jid})"),
                if kept {
                    format!("the last read failed, so the addresses read before are still used: {e}")
                } else {
                    format!("cannot be read, so its publications are not active: {e}")
                },
                "see the agent's log; the read is retried with backoff, and at once by kleenectl reconcile".into(),
            ));
        }
        out
    }

    /// pf itself: pfctl works, pf is enabled, the main ruleset calls the anchors. Returns
    /// whether pfctl works at all (nothing else is worth asking otherwise).
    fn check_pf(&self, out: &mut Vec<Diagnostic>) -> bool {
        let pfctl = self.cfg.tools.pfctl.display().to_string();
        match self.sys.pf.enabled() {
            Err(e) => {
                let fix = if e.is_missing() {
                    format!("install pfctl or set tools.pfctl in the config (now {pfctl})")
                } else {
                    "load pf: kldload pf, and set pf_enable=\"YES\" in /etc/rc.conf (service pf enable)".into()
                };
                out.push(problem("pf".into(), e.message(), fix));
                return false;
            }
            Ok(state) => {
                out.push(Diagnostic {
                    ok: true,
                    what: "pf device".into(),
                    detail: format!("{pfctl} works"),
                    fix: None,
                });
                let enabled = state == Some(true);
                out.push(Diagnostic {
                    ok: enabled,
                    what: "pf enabled".into(),
                    detail: match state {
                        Some(true) => "pf is enabled".into(),
                        Some(false) => "pf is disabled: rules are loaded but not applied".into(),
                        None => "pfctl -s info did not say whether pf is enabled".into(),
                    },
                    fix: (!enabled).then(|| "service pf enable && service pf start (or pfctl -e)".into()),
                });
            }
        }
        let a = &self.cfg.anchor;
        for (what, show, line, section) in [
            ("rdr-anchor", Show::Nat, format!("rdr-anchor \"{a}/*\""), "translation (after any nat/rdr rules)"),
            (
                "anchor",
                Show::Rules,
                format!("anchor \"{a}/*\""),
                "filter (after the block rules you want to apply first)",
            ),
        ] {
            match self.sys.pf.show(None, show) {
                Ok(text) => {
                    let ok = text.lines().any(|l| l.trim_start().starts_with(&line));
                    out.push(Diagnostic {
                        ok,
                        what: format!("main ruleset {what}"),
                        detail: if ok {
                            format!("has {line}")
                        } else {
                            format!("has no {line}: rules in {a}/* are never evaluated")
                        },
                        fix: (!ok).then(|| {
                            format!("add `{line}` to the {section} section of /etc/pf.conf, then service pf reload")
                        }),
                    });
                }
                Err(e) => out.push(problem(
                    format!("main ruleset {what}"),
                    format!("cannot read the main ruleset: {}", e.message()),
                    "run kleenectl check as root on the pf host".into(),
                )),
            }
        }
        true
    }

    /// The finding for something pf has not done yet.
    fn unfinished(&self, u: Unfinished) -> Diagnostic {
        let when = |r: Option<&super::executor::Retry>| r.map_or(String::new(), |r| format!("; {}", r.when()));
        match u {
            Unfinished::Load { component, error, retry } => problem(
                format!("anchor {}", self.anchor_path(component)),
                format!("pf refused it: {error}{}", when(retry)),
                "see kleenectl rules and the agent's log; kleenectl reconcile tries at once".into(),
            ),
            Unfinished::Flush { component, error, retry } => problem(
                format!("anchor {}", self.anchor_path(component)),
                format!("pf did not flush it, so rules the agent no longer wants are loaded: {error}{}", when(retry)),
                "see the agent's log; kleenectl reconcile tries at once".into(),
            ),
            Unfinished::Kill { label, retry } => problem(
                format!("states of {label}"),
                format!(
                    "pf did not kill them, so connections through removed rules may go on: {}; {}",
                    retry.error,
                    retry.when()
                ),
                format!("kleenectl reconcile tries at once; by hand: pfctl -k label -k {label}"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::agent::api::PublishRequest;
    use crate::agent::engine::testing::{Harness, PfOp, jail};
    use crate::core::reach::ReachOff;

    #[test]
    fn a_healthy_host_is_all_ok() {
        let h = Harness::new();
        h.start();
        let what: Vec<String> = h.engine().check().into_iter().map(|d| d.what).collect();
        assert_eq!(
            what,
            [
                "agent",
                "pf device",
                "pf enabled",
                "main ruleset rdr-anchor",
                "main ruleset anchor",
                "main ruleset nat-anchor",
                "loopback",
                "net.pf.filter_local",
                "net.inet.ip.forwarding",
                "net.inet6.ip6.forwarding",
                "host services"
            ]
        );
        assert!(h.problems().is_empty());
    }

    fn only_problem(h: &Harness) -> crate::agent::api::Diagnostic {
        let problems = h.problems();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        problems.into_iter().next().unwrap()
    }

    #[test]
    fn a_main_ruleset_without_the_nat_anchor_gets_the_line() {
        let h = Harness::new();
        h.pf().set_main("rdr-anchor \"kleene/*\" all\nanchor \"kleene/*\" all\n");
        h.start();
        let p = only_problem(&h);
        assert_eq!(p.what, "main ruleset nat-anchor");
        assert_eq!(
            p.fix.as_deref(),
            Some(
                "add `nat-anchor \"kleene/*\"` to the translation section of /etc/pf.conf (beside \
                 `rdr-anchor \"kleene/*\"`), then service pf reload"
            )
        );
    }

    #[test]
    fn a_skipped_lo0_gets_the_rule_to_write_instead() {
        let h = Harness::new();
        h.pf().set_skip(&["lo", "lo0"]);
        h.start();
        let p = only_problem(&h);
        assert_eq!(p.what, "loopback");
        assert!(p.detail.starts_with("pf skips lo0"), "{p:?}");
        assert!(p.fix.as_deref().unwrap().contains("`pass quick on lo0 all no state`"), "{p:?}");
    }

    #[test]
    fn vnet_jails_need_filter_local_and_forwarding() {
        let h = Harness::new();
        h.fakes.settings.set_sysctl("net.pf.filter_local", Some("0"));
        h.fakes.settings.set_sysctl("net.inet.ip.forwarding", Some("0"));
        h.fakes.settings.set_sysctl("net.inet6.ip6.forwarding", None);
        h.start();
        assert!(h.problems().is_empty(), "no VNET jail runs: nothing is needed: {:?}", h.problems());
        let mut vnet = jail("web", 3, &[]);
        vnet.vnet = true;
        h.fakes.ifaces.set_jail(3, &["10.13.37.5"]);
        h.fakes.jails.set(vec![vnet]);
        h.engine().begin_reconcile();
        let problems = h.problems();
        let what: Vec<&str> = problems.iter().map(|d| d.what.as_str()).collect();
        assert_eq!(what, ["net.pf.filter_local", "net.inet.ip.forwarding"], "{problems:#?}");
        assert_eq!(
            problems[0].fix.as_deref(),
            Some(
                "sysctl net.pf.filter_local=1, add net.pf.filter_local=1 to /etc/sysctl.conf, then service pf \
                 restart (pf reads it when it is enabled)"
            )
        );
        assert_eq!(
            problems[1].fix.as_deref(),
            Some("sysctl net.inet.ip.forwarding=1 and sysrc gateway_enable=\"YES\" (/etc/rc.conf)")
        );
    }

    #[test]
    fn a_host_service_on_the_published_port_at_the_loopback_is_shadowed() {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"])]);
        h.fakes.settings.listen("nginx", "tcp4", "127.0.0.1:8080");
        h.fakes.settings.listen("sshd", "tcp4", "*:22");
        h.fakes.settings.listen("named", "udp4", "127.0.0.1:8080");
        h.publish("web", &["8080:80"]).unwrap();
        let p = only_problem(&h);
        assert_eq!(p.what, "host services");
        assert_eq!(
            p.detail,
            "nginx (pid 812) listens on 127.0.0.1:8080 (tcp4), but the host's own connections to that port on its \
             loopback reach jail web (8080:80/tcp) instead"
        );
        assert!(p.fix.unwrap().contains("kleenectl publish -j web --no-host 8080:80/tcp"));
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"])]);
        h.fakes.settings.listen("nginx", "tcp4", "127.0.0.1:8080");
        let request = PublishRequest {
            jail: "web".parse().unwrap(),
            specs: vec!["8080:80".parse().unwrap()],
            sources: vec![],
            log: false,
            network: None,
            reach_off: ReachOff { host: true, ..ReachOff::default() },
        };
        crate::agent::engine::publish(&h.engine, &request).unwrap();
        assert!(h.problems().is_empty(), "--no-host leaves the host's loopback alone: {:?}", h.problems());
    }

    #[test]
    fn a_main_ruleset_without_the_anchors_gets_the_line_to_add() {
        let h = Harness::new();
        h.pf().set_main("nat-anchor \"kleene/*\" all\nanchor \"kleene/*\" all\n");
        h.start();
        let problems = h.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].what, "main ruleset rdr-anchor");
        assert_eq!(problems[0].detail, "has no rdr-anchor \"kleene/*\": rules in kleene/* are never evaluated");
        assert_eq!(
            problems[0].fix.as_deref(),
            Some(
                "add `rdr-anchor \"kleene/*\"` to the translation (after any nat/rdr rules) section of /etc/pf.conf, \
                 then service pf reload"
            )
        );
    }

    #[test]
    fn everything_pf_has_not_done_is_listed_with_the_next_try() {
        let h = Harness::running(vec![jail("web", 3, &["10.13.37.2"]), jail("db", 4, &["10.13.37.3"])]);
        h.publish("web", &["8080:80"]).unwrap();
        h.publish("db", &["5432"]).unwrap();
        h.pf().refuse(PfOp::Flush, "pfctl: DIOCXBEGIN: Device busy");
        h.pf().refuse(PfOp::Load, "pfctl: DIOCADDRULENV: Invalid argument");
        h.fakes.jails.set(vec![jail("db", 5, &["10.13.37.3"])]);
        h.tick();
        let problems: Vec<(String, String)> = h.problems().into_iter().map(|d| (d.what, d.detail)).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert_eq!(problems[0].0, "anchor kleene/db");
        assert!(problems[0].1.starts_with("pf refused it: pfctl: DIOCADDRULENV: Invalid argument; retrying in"));
        assert_eq!(problems[1].0, "anchor kleene/web");
        assert!(problems[1].1.starts_with("pf did not flush it, so rules the agent no longer wants are loaded"));
    }

    #[test]
    fn pf_not_answering_is_the_only_pf_finding() {
        let h = Harness::new();
        for op in PfOp::ALL {
            h.pf().refuse(op, "pfctl: /dev/pf: Permission denied");
        }
        let check = h.engine().check();
        assert_eq!(check.len(), 2, "{check:?}");
        assert_eq!((check[1].what.as_str(), check[1].detail.as_str()), ("pf", "pfctl: /dev/pf: Permission denied"));
        assert!(check[1].fix.as_deref().unwrap().starts_with("load pf: kldload pf"));
    }
}
