//! Comparing an anchor pf holds with the rules the agent rendered, by content.
//!
//! pfctl prints rules in its own normalised form (`port = 8080`, ranges spelled out, brace lists
//! expanded one rule per element, `flags S/SA keep state` appended), so text is never compared
//! with text. Both the text the agent loaded and what pfctl prints back go through the same
//! normaliser, which yields one key per single-source rule; the sorted lists are compared.

use std::net::IpAddr;

use std::collections::BTreeSet;

use super::model::{Cidr, PortRange};

/// Normalised keys of rule text, sorted: of what `pfctl -P -a ANCHOR -s nat` and `-s rules`
/// printed, or of what the agent loaded. A line that is not one of this project's rule forms
/// becomes a key that matches nothing, so an anchor holding foreign rules never compares equal.
pub fn readback_keys(text: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match parse_line(line) {
            Some(k) => keys.extend(k),
            None => keys.push(format!("? {line}")),
        }
    }
    keys.sort();
    keys
}

/// Every label in rule text (`label "..."`, any number per rule), sorted and de-duplicated: the
/// labels of what the agent loaded, or of what pfctl printed.
pub fn labels(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("label \"") {
            rest = &rest[i + 7..];
            let Some(end) = rest.find('"') else { break };
            out.insert(rest[..end].to_string());
            rest = &rest[end + 1..];
        }
    }
    out
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

fn parse_range(v: &str, host: Option<PortRange>) -> Option<PortRange> {
    let (a, b) = match v.split_once(':') {
        Some((a, "*")) => {
            let a: u16 = a.parse().ok()?;
            let span = host?.span();
            (a, a.checked_add(span)?)
        }
        Some((a, b)) => (a.parse().ok()?, b.parse().ok()?),
        None => {
            let p = v.parse().ok()?;
            (p, p)
        }
    };
    PortRange::new(a, b)
}

fn norm_port(
    words: &mut std::iter::Peekable<std::slice::Iter<'_, &str>>,
    host: Option<PortRange>,
) -> Option<PortRange> {
    if words.peek() == Some(&&"=") {
        words.next();
    }
    parse_range(words.next()?, host)
}

/// The sources after `from`: `any`, one address or prefix, or a brace list.
fn sources(words: &mut std::iter::Peekable<std::slice::Iter<'_, &str>>) -> Option<Vec<String>> {
    let first = *words.next()?;
    if first != "{" {
        return Some(vec![norm_addr(first)?]);
    }
    let mut out = Vec::new();
    loop {
        match *words.next()? {
            "}" => break,
            w => {
                for part in w.split(',').filter(|p| !p.is_empty()) {
                    out.push(norm_addr(part)?);
                }
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

fn parse_line(line: &str) -> Option<Vec<String>> {
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
    let froms = sources(&mut w)?;
    if w.next() != Some(&"to") {
        return None;
    }
    let to = norm_addr(w.next()?)?;
    if w.next() != Some(&"port") {
        return None;
    }
    let port = norm_port(&mut w, None)?;
    let tail = if action == "rdr" {
        if w.next() != Some(&"->") {
            return None;
        }
        let target: IpAddr = w.next()?.parse().ok()?;
        if w.next() != Some(&"port") {
            return None;
        }
        let tport = norm_port(&mut w, Some(port))?;
        format!("to={to} port={} -> {target} port={}", port.pf(), tport.pf())
    } else {
        format!("to={to} port={}", port.pf())
    };
    let head = if action == "rdr" { "rdr".to_string() } else { format!("pass log={log}") };
    Some(froms.into_iter().map(|from| format!("{head} on={on} {family} {proto} from={from} {tail}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::publication::Publication;
    use crate::core::render::{Gateways, Targets, render_uniform};

    fn anchor(specs: &[&str], sources: &[&str], log: bool) -> String {
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
        render_uniform(&pubs, &t, &g).text()
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
        assert_eq!(readback_keys(printed), readback_keys(&rules));
    }

    #[test]
    fn brace_lists_are_expanded() {
        let rules = anchor(&["8080:80"], &["192.0.2.0/24", "198.51.100.7"], true);
        let printed = "rdr on em0 inet proto tcp from 192.0.2.0/24 to (em0) port = 8080 -> 10.13.37.2 port 80\n\
            rdr on em0 inet proto tcp from 198.51.100.7 to (em0) port = 8080 -> 10.13.37.2 port 80\n\
            pass in log quick on em0 inet proto tcp from 192.0.2.0/24 to 10.13.37.2 port = 80 flags S/SA keep state label \"l\"\n\
            pass in log quick on em0 inet proto tcp from 198.51.100.7 to 10.13.37.2 port = 80 flags S/SA keep state label \"l\"\n";
        assert_eq!(readback_keys(printed), readback_keys(&rules));
    }

    #[test]
    fn labels_are_read_from_rules() {
        let text = "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port = 80 flags S/SA keep state label \"kleene:web:8080:80/tcp\" label \"kleene/web\"\n\
                    pass in quick on em0 inet proto udp from any to 10.13.37.2 port = 80 keep state\n\
                    pass in quick on em1 inet proto tcp from any to 10.13.37.2 port = 80 label \"kleene:web:em1:8080:80/tcp\" label \"kleene/web\"\n";
        let got: Vec<String> = labels(text).into_iter().collect();
        assert_eq!(got, ["kleene/web", "kleene:web:8080:80/tcp", "kleene:web:em1:8080:80/tcp"]);
    }

    #[test]
    fn differences_are_seen() {
        let rules = anchor(&["em0:8080:80/udp"], &[], false);
        let want = readback_keys(&rules);
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
