//! Comparing an anchor pf holds with the rules the agent rendered, by content.
//!
//! pfctl prints rules in its own normalised form (`port = 8080`, ranges spelled out, brace lists
//! expanded one rule per element, `flags S/SA keep state` appended), so text is never compared
//! with text. Both sides become the same normalised keys, one per single-source rule, and the
//! sorted lists are compared.

use std::net::IpAddr;

use super::model::{Cidr, PortRange};
use super::render::{Dest, Rule};

/// Normalised keys of rendered rules: one per rule and source, sorted.
pub fn expected_keys<'a>(rules: impl IntoIterator<Item = &'a Rule>) -> Vec<String> {
    let mut keys = Vec::new();
    for r in rules {
        match r {
            Rule::Rdr { on, family, proto, from, to, port, target, target_port } => {
                let to = match to {
                    Dest::Interface(i) => format!("({i})"),
                    Dest::Address(a) => a.to_string(),
                };
                let on = on.as_ref().map_or(String::new(), |i| i.to_string());
                let tport = if port.is_single() {
                    *target_port
                } else {
                    let end = u32::from(target_port.start()) + u32::from(port.span());
                    PortRange::new(target_port.start(), end.min(65535) as u16).expect("start <= end")
                };
                for src in sources(from) {
                    keys.push(format!(
                        "rdr on={on} {family} {proto} from={src} to={to} port={} -> {target} port={}",
                        port.pf(),
                        tport.pf()
                    ));
                }
            }
            Rule::Pass { log, on, family, proto, from, to, port, .. } => {
                let on = on.as_ref().map_or(String::new(), |i| i.to_string());
                for src in sources(from) {
                    keys.push(format!("pass log={log} on={on} {family} {proto} from={src} to={to} port={}", port.pf()));
                }
            }
        }
    }
    keys.sort();
    keys
}

fn sources(from: &[Cidr]) -> Vec<String> {
    if from.is_empty() { vec!["any".to_string()] } else { from.iter().map(Cidr::to_string).collect() }
}

/// Normalised keys of what `pfctl -P -a ANCHOR -s nat` and `-s rules` printed, sorted. A line
/// that is not one of this project's rule forms becomes a key that matches nothing, so an
/// anchor holding foreign rules never compares equal.
pub fn readback_keys(text: &str) -> Vec<String> {
    let mut keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| parse_line(l).unwrap_or_else(|| format!("? {l}")))
        .collect();
    keys.sort();
    keys
}

fn norm_addr(s: &str) -> Option<String> {
    if s == "any" {
        return Some("any".into());
    }
    if let Some(inner) = s.strip_prefix('(').and_then(|x| x.strip_suffix(')')) {
        return Some(format!("({inner})"));
    }
    s.parse::<Cidr>().ok().map(|c| c.to_string())
}

fn norm_port(words: &mut std::iter::Peekable<std::slice::Iter<'_, &str>>) -> Option<String> {
    if words.peek() == Some(&&"=") {
        words.next();
    }
    let v = words.next()?;
    let (a, b) = match v.split_once(':') {
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = v.parse().ok()?;
            (p, p)
        }
    };
    Some(PortRange::new(a, b)?.pf())
}

fn parse_line(line: &str) -> Option<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let mut w = words.iter().peekable();
    let action = *w.next()?;
    let mut log = false;
    if action == "pass" {
        if w.next() != Some(&"in") {
            return None;
        }
        if w.peek() == Some(&&"log") {
            log = true;
            w.next();
        }
        if w.next() != Some(&"quick") {
            return None;
        }
    } else if action != "rdr" {
        return None;
    }
    let mut on = String::new();
    if w.peek() == Some(&&"on") {
        w.next();
        on = w.next()?.to_string();
    }
    let family = *w.next()?;
    if family != "inet" && family != "inet6" {
        return None;
    }
    if w.next() != Some(&"proto") {
        return None;
    }
    let proto = *w.next()?;
    if w.next() != Some(&"from") {
        return None;
    }
    let from = norm_addr(w.next()?)?;
    if w.next() != Some(&"to") {
        return None;
    }
    let to = norm_addr(w.next()?)?;
    if w.next() != Some(&"port") {
        return None;
    }
    let port = norm_port(&mut w)?;
    if action == "rdr" {
        if w.next() != Some(&"->") {
            return None;
        }
        let target: IpAddr = w.next()?.parse().ok()?;
        if w.next() != Some(&"port") {
            return None;
        }
        let tport = norm_port(&mut w)?;
        Some(format!("rdr on={on} {family} {proto} from={from} to={to} port={port} -> {target} port={tport}"))
    } else {
        Some(format!("pass log={log} on={on} {family} {proto} from={from} to={to} port={port}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::publication::Publication;
    use crate::core::render::{Gateways, Targets, render_uniform};

    fn anchor(specs: &[&str], sources: &[&str], log: bool) -> Vec<Rule> {
        let pubs: Vec<Publication> = specs
            .iter()
            .map(|s| {
                Publication::new(
                    "web".parse().unwrap(),
                    s.parse().unwrap(),
                    sources.iter().map(|c| c.parse().unwrap()).collect(),
                    log,
                    None,
                )
            })
            .collect();
        let t = Targets::from_addrs(["10.13.37.2".parse().unwrap(), "fd00:13:37::2".parse().unwrap()]);
        let g = Gateways { inet: Some("em0".parse().unwrap()), inet6: Some("em0".parse().unwrap()) };
        render_uniform(&pubs, &t, &g).rules().cloned().collect()
    }

    /// The normalised forms FreeBSD 14.3's pfctl printed (shared/pf-parser-samples.md), with -P.
    #[test]
    fn matches_what_pfctl_prints() {
        let rules = anchor(&["em0:8000-8010:9000", "em0:8080:80/udp"], &[], false);
        let printed = "rdr on em0 inet proto tcp from any to (em0) port 8000:8010 -> 10.13.37.2 port 9000:9010\n\
            rdr on em0 inet proto udp from any to (em0) port = 8080 -> 10.13.37.2 port 80\n\
            rdr on em0 inet6 proto tcp from any to (em0) port 8000:8010 -> fd00:13:37::2 port 9000:9010\n\
            rdr on em0 inet6 proto udp from any to (em0) port = 8080 -> fd00:13:37::2 port 80\n\
            pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 9000:9010 flags S/SA keep state label \"kleene:web:em0:8000-8010:9000-9010/tcp\"\n\
            pass in quick on em0 inet proto udp from any to 10.13.37.2 port = 80 keep state label \"x\"\n\
            pass in quick on em0 inet6 proto tcp from any to fd00:13:37::2 port 9000:9010 flags S/SA keep state\n\
            pass in quick on em0 inet6 proto udp from any to fd00:13:37::2 port = 80 keep state\n";
        assert_eq!(readback_keys(printed), expected_keys(&rules));
    }

    #[test]
    fn brace_lists_are_expanded() {
        let rules = anchor(&["8080:80"], &["192.0.2.0/24", "198.51.100.7"], true);
        let printed = "rdr on em0 inet proto tcp from 192.0.2.0/24 to (em0) port = 8080 -> 10.13.37.2 port 80\n\
            rdr on em0 inet proto tcp from 198.51.100.7 to (em0) port = 8080 -> 10.13.37.2 port 80\n\
            pass in log quick on em0 inet proto tcp from 192.0.2.0/24 to 10.13.37.2 port = 80 flags S/SA keep state label \"l\"\n\
            pass in log quick on em0 inet proto tcp from 198.51.100.7 to 10.13.37.2 port = 80 flags S/SA keep state label \"l\"\n";
        assert_eq!(readback_keys(printed), expected_keys(&rules));
    }

    #[test]
    fn differences_are_seen() {
        let rules = anchor(&["em0:8080:80/udp"], &[], false);
        let want = expected_keys(&rules);
        let changed = "rdr on em0 inet proto udp from any to (em0) port = 8080 -> 10.13.37.3 port 80\n\
            rdr on em0 inet6 proto udp from any to (em0) port = 8080 -> fd00:13:37::2 port 80\n\
            pass in quick on em0 inet proto udp from any to 10.13.37.2 port = 80 keep state\n\
            pass in quick on em0 inet6 proto udp from any to fd00:13:37::2 port = 80 keep state\n";
        assert_ne!(readback_keys(changed), want);
        assert_ne!(readback_keys(""), want);
        let extra = format!("{changed}block drop all\n");
        assert!(readback_keys(&extra).iter().any(|k| k.starts_with("? ")));
    }
}
