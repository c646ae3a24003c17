//! Comparing an anchor pf holds with the rules the agent rendered, by content.
//!
//! pfctl prints rules in its own normalised form, so text is never compared with text. What
//! FreeBSD 14.3's pfctl does to a rule (shared/pf-printed.jsonl records every case): ports as
//! `port = 8080`, `a:a` as the single port, `x:*` spelled out, brace lists (interfaces,
//! protocols, sources, destinations) expanded one rule each, a `/0` prefix as `any`, a `/32`
//! (`/128`) as the bare address, IPv6 compressed, quoted names unquoted, the address family
//! taken from the addresses when none is given, `flags S/SA keep state` on tcp pass rules and
//! `keep state` on the others, `tagged` moved after the labels, ` round-robin` added to a
//! translation to `(if)`. Both the text the agent loaded and what pfctl prints back (with `-P`)
//! go through the same normaliser, which undoes all of that: one key per rule pf would hold,
//! keeping everything that changes what the rule does (labels in order, `tag` and `tagged`
//! included). The sorted lists are compared.

use std::collections::BTreeSet;
use std::net::IpAddr;

use super::model::Cidr;

/// Normalised keys of rule text, sorted: of what `pfctl -P -a ANCHOR -s nat` and `-s rules`
/// printed, or of what the agent loaded. A line that is not a rule this normaliser knows (a
/// table definition, an anchor call, an option it does not model) becomes a key that matches
/// nothing, so an anchor holding foreign rules never compares equal.
pub fn readback_keys(text: &str) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match parse_line(line) {
            Some(k) if !k.is_empty() => keys.extend(k),
            _ => keys.push(format!("? {line}")),
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

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Sym(&'static str),
}

const SYMS: [&str; 11] = ["->", "!=", "{", "}", "(", ")", ",", "<", ">", "!", "="];

/// Words, quoted strings (kept whole, quotes removed) and pf's punctuation.
fn tokens(line: &str) -> Vec<Tok> {
    let chars: Vec<char> = line.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    'outer: while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '"' {
            let end = chars[i + 1..].iter().position(|&d| d == '"').map_or(chars.len(), |p| i + 1 + p);
            out.push(Tok::Quoted(chars[i + 1..end].iter().collect()));
            i = end + 1;
            continue;
        }
        for sym in SYMS {
            let n = sym.len();
            if chars[i..].iter().take(n).copied().eq(sym.chars()) {
                out.push(Tok::Sym(sym));
                i += n;
                continue 'outer;
            }
        }
        let start = i;
        let ends_word = |i: usize| {
            chars[i].is_whitespace()
                || "{}(),<>!=\"".contains(chars[i])
                || (chars[i] == '-' && chars.get(i + 1) == Some(&'>'))
        };
        while i < chars.len() && !ends_word(i) {
            i += 1;
        }
        out.push(Tok::Word(chars[start..i].iter().collect()));
    }
    out
}

struct Cursor {
    t: Vec<Tok>,
    i: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }

    fn kw(&mut self, k: &str) -> bool {
        let hit = matches!(self.peek(), Some(Tok::Word(w)) if w == k);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn at_kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == k)
    }

    fn sym(&mut self, s: &str) -> bool {
        let hit = matches!(self.peek(), Some(Tok::Sym(x)) if *x == s);
        if hit {
            self.i += 1;
        }
        hit
    }

    /// A name: a bare word or a quoted string, unquoted.
    fn name(&mut self) -> Option<String> {
        let n = match self.peek()? {
            Tok::Word(w) => w.clone(),
            Tok::Quoted(q) => q.clone(),
            Tok::Sym(_) => return None,
        };
        self.i += 1;
        Some(n)
    }

    fn done(&self) -> bool {
        self.i >= self.t.len()
    }

    /// `X` or `{ X, X ... }`, each item read by `item`.
    fn list<T>(&mut self, mut item: impl FnMut(&mut Cursor) -> Option<T>) -> Option<Vec<T>> {
        if !self.sym("{") {
            return Some(vec![item(self)?]);
        }
        let mut out = Vec::new();
        loop {
            if self.sym("}") {
                break;
            }
            if self.sym(",") {
                continue;
            }
            out.push(item(self)?);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// A normalised address: `any`, an address or prefix (host bits cleared, full length bare),
/// `(if)`, `<table>`; and its family when it has one.
#[derive(Debug, Clone, PartialEq)]
struct Addr {
    text: String,
    family: Option<&'static str>,
    /// `(if)` without `:0`, or a table: pf makes a translation to it round-robin.
    multi: bool,
}

fn addr(c: &mut Cursor) -> Option<Addr> {
    if c.kw("any") {
        return Some(Addr { text: "any".into(), family: None, multi: false });
    }
    if c.kw("no-route") {
        return Some(Addr { text: "no-route".into(), family: None, multi: false });
    }
    if c.sym("(") {
        let name = c.name()?;
        if !c.sym(")") {
            return None;
        }
        let multi = !name.ends_with(":0");
        return Some(Addr { text: format!("({name})"), family: None, multi });
    }
    if c.sym("<") {
        let name = c.name()?;
        if !c.sym(">") {
            return None;
        }
        return Some(Addr { text: format!("<{name}>"), family: None, multi: true });
    }
    let w = c.name()?;
    let (a, p) = match w.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (w.as_str(), None),
    };
    let ip: IpAddr = a.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match p {
        Some(p) if p.chars().all(|d| d.is_ascii_digit()) => p.parse::<u8>().ok().filter(|n| *n <= max)?,
        Some(_) => return None,
        None => max,
    };
    let family = Some(if ip.is_ipv4() { "inet" } else { "inet6" });
    if prefix == 0 {
        // pf prints an all-zero address and mask as `any`, whatever the family.
        return Some(Addr { text: "any".into(), family: None, multi: false });
    }
    let text = Cidr::new(masked(ip, prefix), prefix)?.to_string();
    Some(Addr { text, family, multi: false })
}

/// `ip` with the bits past `prefix` cleared, as pfctl's set_ipmask does.
fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// A possibly negated host.
fn host(c: &mut Cursor) -> Option<(bool, Addr)> {
    let not = c.sym("!");
    Some((not, addr(c)?))
}

/// A port as pf keeps it: (operator, first, second); `a:a` and `= a` are the single port `a`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Port {
    range: bool,
    a: u16,
    b: u16,
    not: bool,
}

impl Port {
    fn key(self) -> String {
        match (self.not, self.range) {
            (true, _) => format!("!={}", self.a),
            (false, true) => format!("{}:{}", self.a, self.b),
            (false, false) => self.a.to_string(),
        }
    }
}

fn port_item(c: &mut Cursor) -> Option<Port> {
    let not = c.sym("!=");
    if !not {
        c.sym("=");
    }
    let w = c.name()?;
    let port = match w.split_once(':') {
        Some((a, b)) => {
            let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
            if a == b { Port { range: false, a, b: 0, not } } else { Port { range: true, a, b, not } }
        }
        None => Port { range: false, a: w.parse().ok()?, b: 0, not },
    };
    (!(port.not && port.range)).then_some(port)
}

/// The redirection target's `port x`, `port x:y` or `port x:*`, resolved against the first
/// destination port as parse.y does (u_int16_t arithmetic, a single port counting as `p:0`).
fn redirect_port(w: &str, dst: Option<Port>) -> Option<(u16, u16)> {
    match w.split_once(':') {
        Some((x, "*")) => {
            let x: u16 = x.parse().ok()?;
            match dst {
                Some(d) => Some((x, x.wrapping_add(d.b.wrapping_sub(d.a)))),
                None => Some((x, 0)),
            }
        }
        Some((x, y)) => {
            let (x, y): (u16, u16) = (x.parse().ok()?, y.parse().ok()?);
            Some(if x == y { (x, 0) } else { (x, y) })
        }
        None => Some((w.parse().ok()?, 0)),
    }
}

/// One end of `from ... to ...`: its hosts and ports.
type EndSpec = (Vec<(bool, Addr)>, Vec<Option<Port>>);

fn end(c: &mut Cursor) -> Option<EndSpec> {
    let any = vec![(false, Addr { text: "any".into(), family: None, multi: false })];
    let hosts = if c.at_kw("port") { any } else { c.list(host)? };
    let ports = if c.kw("port") { c.list(port_item)?.into_iter().map(Some).collect() } else { vec![None] };
    Some((hosts, ports))
}

/// The keys of one rule line; `None` when it is not a rule this normaliser knows.
fn parse_line(line: &str) -> Option<Vec<String>> {
    let mut c = Cursor { t: tokens(line), i: 0 };
    let Some(Tok::Word(action)) = c.peek().cloned() else { return None };
    c.i += 1;
    let translation = matches!(action.as_str(), "rdr" | "nat" | "binat");
    if !translation && action != "pass" && action != "block" {
        return None;
    }
    let mut head = action.clone();
    if translation && c.kw("pass") {
        head.push_str(" pass");
    }
    if action == "block" {
        let how = ["drop", "return", "return-rst"].into_iter().find(|h| c.kw(h)).unwrap_or("drop");
        head.push_str(&format!(" {how}"));
    }
    let dir = if c.kw("in") {
        "in"
    } else if c.kw("out") {
        "out"
    } else {
        "-"
    };
    let (mut log, mut quick) = (false, false);
    loop {
        if c.kw("log") {
            log = true;
        } else if c.kw("quick") {
            quick = true;
        } else {
            break;
        }
    }
    let ifaces: Vec<Option<String>> = if c.kw("on") {
        c.list(|c| {
            let not = c.sym("!");
            Some(format!("{}{}", if not { "!" } else { "" }, c.name()?))
        })?
        .into_iter()
        .map(Some)
        .collect()
    } else {
        vec![None]
    };
    let mut family = ["inet", "inet6"].into_iter().find(|f| c.kw(f));
    let protos: Vec<Option<String>> =
        if c.kw("proto") { c.list(Cursor::name)?.into_iter().map(Some).collect() } else { vec![None] };
    let any = || (vec![(false, Addr { text: "any".into(), family: None, multi: false })], vec![None]);
    let (mut src, mut dst) = (any(), any());
    if !c.kw("all") {
        if c.kw("from") {
            src = end(&mut c)?;
        }
        if c.kw("to") {
            dst = end(&mut c)?;
        }
    }
    let mut flags: Option<Option<String>> = None;
    let mut state: Option<bool> = None;
    let mut rule_labels = Vec::new();
    let (mut tag, mut tagged) = (None, None);
    let mut pool = None;
    while !c.done() {
        if c.kw("flags") {
            flags = Some(if c.kw("any") { None } else { Some(c.name()?) });
        } else if c.kw("keep") {
            c.kw("state").then_some(())?;
            state = Some(true);
        } else if c.kw("no") {
            c.kw("state").then_some(())?;
            state = Some(false);
        } else if c.kw("label") {
            rule_labels.push(c.name()?);
        } else if c.kw("tag") {
            tag = Some(c.name()?);
        } else if c.sym("!") {
            c.kw("tagged").then_some(())?;
            tagged = Some(format!("!{}", c.name()?));
        } else if c.kw("tagged") {
            tagged = Some(c.name()?);
        } else if translation && c.sym("->") {
            let hosts = c.list(addr)?;
            let mut ports = (0, 0);
            if c.kw("port") {
                ports = redirect_port(&c.name()?, dst.1[0])?;
            }
            let mut opts = None;
            let mut sticky = false;
            loop {
                if let Some(o) = ["round-robin", "random", "bitmask", "source-hash"].into_iter().find(|o| c.kw(o)) {
                    opts = Some(o);
                } else if c.kw("sticky-address") {
                    sticky = true;
                } else if c.kw("static-port") {
                    ports = (0, 0);
                } else {
                    break;
                }
            }
            // pf makes a pool of several addresses, a table or an `(if)` round-robin.
            let opts =
                opts.or((hosts.len() > 1 || hosts.iter().any(|h| h.multi)).then_some("round-robin")).unwrap_or("");
            pool = Some((hosts, ports, opts, sticky));
        } else {
            return None;
        }
    }
    if translation && pool.is_none() {
        return None;
    }
    // The family of a translation follows its target when none is given (parse.y).
    if let (None, Some((hosts, ..))) = (family, &pool) {
        family = hosts.first().and_then(|h| h.family);
    }
    let pass = action == "pass";
    let keep_state = state.unwrap_or(pass);
    let pool_key = pool.map(|(hosts, (p1, p2), opts, sticky)| {
        let texts: Vec<String> =
            hosts.iter().filter(|h| h.family.is_none() || h.family == family).map(|h| h.text.clone()).collect();
        let ports = match (p1, p2) {
            (0, _) => String::new(),
            (p, 0) => format!(" port={p}"),
            (p, q) if p == q => format!(" port={p}"),
            (p, q) => format!(" port={p}:{q}"),
        };
        format!(" -> {}{ports} {opts}{}", texts.join(","), if sticky { " sticky" } else { "" })
    });
    let tail = format!(
        "labels={rule_labels:?} tag={} tagged={}{}",
        tag.as_deref().unwrap_or("-"),
        tagged.as_deref().unwrap_or("-"),
        pool_key.unwrap_or_default()
    );
    let mut keys = Vec::new();
    // expand_rule: interface, protocol, source host and port, destination host and port.
    for on in &ifaces {
        for proto in &protos {
            for (snot, shost) in &src.0 {
                for sport in &src.1 {
                    for (dnot, dhost) in &dst.0 {
                        for dport in &dst.1 {
                            if let Some(f) = family {
                                if [shost.family, dhost.family].iter().any(|a| a.is_some_and(|a| a != f)) {
                                    continue;
                                }
                            }
                            if let (Some(a), Some(b)) = (shost.family, dhost.family) {
                                if a != b {
                                    continue;
                                }
                            }
                            let af = family.or(shost.family).or(dhost.family).unwrap_or("-");
                            let tcpish = matches!(proto.as_deref(), None | Some("tcp"));
                            let f = match &flags {
                                Some(f) => f.clone(),
                                None if pass && keep_state => Some("S/SA".to_string()),
                                None => None,
                            }
                            .filter(|_| tcpish);
                            let port = |p: &Option<Port>| p.map_or("-".to_string(), |p| p.key());
                            keys.push(format!(
                                "{head} dir={dir} log={log} quick={quick} on={} {af} proto={} from={}{} port={} to={}{} port={} state={} flags={} {tail}",
                                on.as_deref().unwrap_or("-"),
                                proto.as_deref().unwrap_or("-"),
                                if *snot { "!" } else { "" },
                                shost.text,
                                port(sport),
                                if *dnot { "!" } else { "" },
                                dhost.text,
                                port(dport),
                                if keep_state { "keep" } else { "none" },
                                f.as_deref().unwrap_or("-"),
                            ));
                        }
                    }
                }
            }
        }
    }
    Some(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::publication::Publication;
    use crate::core::reach::Reach;
    use crate::core::render::{Gateways, HostView, Targets, render_uniform};

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
        let outside = Reach { hairpin: false, networks: false, host: false, loopback: true };
        render_uniform(&pubs, &t, &HostView { reach: outside, ..HostView::new(g) }, false).text()
    }

    fn same(a: &str, b: &str) {
        let (ka, kb) = (readback_keys(a), readback_keys(b));
        assert!(!ka.iter().any(|k| k.starts_with("? ")), "not understood: {ka:#?}");
        assert_eq!(ka, kb, "\n{a}\n--- versus ---\n{b}");
    }

    fn differ(a: &str, b: &str) {
        assert_ne!(readback_keys(a), readback_keys(b), "\n{a}\n--- versus ---\n{b}");
    }

    /// The normalised forms FreeBSD 14.3's pfctl printed (shared/pf-printed.jsonl), with -P,
    /// for what the renderer emits.
    #[test]
    fn matches_what_pfctl_prints() {
        let rules = anchor(&["em0:8000-8010:9000", "em0:8080:80/udp"], &[], false);
        let printed: String = rules
            .lines()
            .map(|l| {
                let pf = l
                    .replace("port 8000:8010 -> 10.13.37.2 port 9000:*", "port 8000:8010 -> 10.13.37.2 port 9000:9010")
                    .replace(
                        "port 8000:8010 -> fd00:13:37::2 port 9000:*",
                        "port 8000:8010 -> fd00:13:37::2 port 9000:9010",
                    )
                    .replace("port 8080 tag", "port = 8080 tag")
                    .replace(
                        "proto tcp from any to 10.13.37.2 port 9000:9010",
                        "proto tcp from any to 10.13.37.2 port 9000:9010 flags S/SA keep state",
                    )
                    .replace(
                        "proto tcp from any to fd00:13:37::2 port 9000:9010",
                        "proto tcp from any to fd00:13:37::2 port 9000:9010 flags S/SA keep state",
                    )
                    .replace(
                        "proto udp from any to 10.13.37.2 port 80",
                        "proto udp from any to 10.13.37.2 port = 80 keep state",
                    )
                    .replace(
                        "proto udp from any to fd00:13:37::2 port 80",
                        "proto udp from any to fd00:13:37::2 port = 80 keep state",
                    );
                // pfctl prints tags bare, and `tagged` last.
                let pf = match pf.split_once(" tagged \"") {
                    Some((head, rest)) => {
                        let (tag, labels) = rest.split_once("\" ").unwrap();
                        format!("{head} {labels} tagged {tag}")
                    }
                    None => pf,
                };
                let pf = match pf.split_once(" tag \"") {
                    Some((head, rest)) => {
                        let (tag, after) = rest.split_once('"').unwrap();
                        format!("{head} tag {tag}{after}")
                    }
                    None => pf,
                };
                pf + "\n"
            })
            .collect();
        assert!(printed.contains("flags S/SA keep state label"), "{printed}");
        assert!(printed.contains("label \"kleene/web\" tagged kleene:web:em0:8080:80/udp\n"), "{printed}");
        same(&rules, &printed);
    }

    #[test]
    fn brace_lists_are_expanded() {
        let rules = anchor(&["8080:80"], &["192.0.2.0/24", "198.51.100.7"], true);
        let (nat, filter): (Vec<&str>, Vec<&str>) = rules.lines().partition(|l| l.starts_with("rdr"));
        let label = filter[0].split_once(" label ").unwrap().1;
        let label = label.replace(" tagged \"kleene:web:8080:80/tcp\"", "");
        let label = label.strip_prefix("tagged \"kleene:web:8080:80/tcp\" label ").unwrap_or(&label);
        let printed = format!(
            "rdr on em0 inet proto tcp from 192.0.2.0/24 to (em0) port = 8080 tag kleene:web:8080:80/tcp -> 10.13.37.2 port 80\n\
             rdr on em0 inet proto tcp from 198.51.100.7 to (em0) port = 8080 tag kleene:web:8080:80/tcp -> 10.13.37.2 port 80\n\
             pass in log quick inet proto tcp from 192.0.2.0/24 to 10.13.37.2 port = 80 flags S/SA keep state label {label} tagged kleene:web:8080:80/tcp\n\
             pass in log quick inet proto tcp from 198.51.100.7 to 10.13.37.2 port = 80 flags S/SA keep state label {label} tagged kleene:web:8080:80/tcp\n"
        );
        let v4: String = nat.iter().chain(&filter).filter(|l| l.contains(" inet ")).map(|l| format!("{l}\n")).collect();
        same(&v4, &printed);
    }

    /// The reach rules as FreeBSD's pfctl prints them back (pf-printed.jsonl "reach/": `tag`
    /// bare before `->`, `tagged` last, a brace list one rule each, no `round-robin` for a
    /// single address).
    #[test]
    fn the_reach_rules_round_trip() {
        let p = Publication::new("web".parse().unwrap(), "8080:80".parse().unwrap(), vec![], false, None);
        let host = HostView {
            networks: vec!["10.13.37.0/24".parse().unwrap(), "10.13.38.0/24".parse().unwrap()],
            links: vec![("bridge0".parse().unwrap(), "10.13.37.1".parse().unwrap())],
            ..HostView::new(Gateways { inet: Some("em0".parse().unwrap()), inet6: None })
        };
        let t = Targets::from_addrs(["10.13.37.5".parse().unwrap()]);
        let rules = render_uniform([&p], &t, &host, true).text();
        let l = "label \"kleene:web:8080:80/tcp\" label \"kleene/web\"";
        let o = "label \"kleene:outbound\"";
        let tag = "kleene:web:8080:80/tcp";
        let printed = format!(
            "nat on bridge0 inet proto tcp from 10.13.37.0/24 to 10.13.37.5 port = 80 tagged {tag} -> 10.13.37.1\n\
             nat on bridge0 inet proto tcp from 127.0.0.1 to 10.13.37.5 port = 80 tagged {tag} -> 10.13.37.1\n\
             rdr on em0 inet proto tcp from any to (em0) port = 8080 tag {tag} -> 10.13.37.5 port 80\n\
             rdr on lo0 inet proto tcp from any to (em0) port = 8080 tag {tag} -> 10.13.37.5 port 80\n\
             rdr on lo0 inet proto tcp from any to 127.0.0.1 port = 8080 tag {tag} -> 10.13.37.5 port 80\n\
             rdr on bridge0 inet proto tcp from any to (em0) port = 8080 tag {tag} -> 10.13.37.5 port 80\n\
             pass in quick inet proto tcp from any to 10.13.37.5 port = 80 flags S/SA keep state {l} tagged {tag}\n\
             pass out quick inet proto tcp from any to 10.13.37.5 port = 80 flags S/SA keep state {l} {o} tagged {tag}\n\
             pass in quick inet proto tcp from 10.13.37.0/24 to 10.13.37.5 port = 80 flags S/SA keep state {l}\n\
             pass in quick inet proto tcp from 10.13.38.0/24 to 10.13.37.5 port = 80 flags S/SA keep state {l}\n\
             pass out quick inet proto tcp from 10.13.37.0/24 to 10.13.37.5 port = 80 flags S/SA keep state {l} {o}\n\
             pass out quick inet proto tcp from 10.13.38.0/24 to 10.13.37.5 port = 80 flags S/SA keep state {l} {o}\n"
        );
        same(&rules, &printed);
        differ(&rules, &printed.replace("tagged kleene:web:8080:80/tcp\npass out", "\npass out"));
        differ(&rules, &printed.replace("-> 10.13.37.1", "-> 10.13.37.9"));
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
        let extra = format!("{changed}table <t> {{ 192.0.2.1 }}\n");
        assert!(readback_keys(&extra).iter().any(|k| k.starts_with("? ")));
        assert!(readback_keys("scrub in all\n").iter().any(|k| k.starts_with("? ")));
    }

    #[test]
    fn prefix_zero_is_any_in_both_families() {
        same(
            "rdr on em0 inet proto tcp from 0.0.0.0/0 to (em0) port 8080 -> 10.13.37.2 port 80",
            "rdr on em0 inet proto tcp from any to (em0) port = 8080 -> 10.13.37.2 port 80",
        );
        same(
            "pass in quick on em0 inet6 proto tcp from ::/0 to fd00:13:37::2 port 80",
            "pass in quick on em0 inet6 proto tcp from any to fd00:13:37::2 port = 80 flags S/SA keep state",
        );
        // pf masks the host bits first: any address with /0 is `any`.
        same(
            "pass in quick inet proto udp from 10.1.2.3/0 to 10.13.37.2 port 53",
            "pass in quick inet proto udp from any to 10.13.37.2 port = 53 keep state",
        );
    }

    #[test]
    fn full_length_prefixes_are_bare_addresses() {
        same(
            "pass in quick on em0 inet proto tcp from 198.51.100.7/32 to 10.13.37.2 port 80",
            "pass in quick on em0 inet proto tcp from 198.51.100.7 to 10.13.37.2 port = 80 flags S/SA keep state",
        );
        same(
            "pass in quick on em0 inet6 proto tcp from 2001:db8::7/128 to fd00:13:37::2/128 port 80",
            "pass in quick on em0 inet6 proto tcp from 2001:db8::7 to fd00:13:37::2 port = 80 flags S/SA keep state",
        );
        same(
            "pass in quick on em0 inet6 proto tcp from 2001:0db8:0000::0001 to fd00:13:37:0:0:0:0:2 port 80",
            "pass in quick on em0 inet6 proto tcp from 2001:db8::1 to fd00:13:37::2 port = 80 flags S/SA keep state",
        );
        differ(
            "pass in quick inet proto tcp from 192.0.2.0/24 to 10.13.37.2 port 80",
            "pass in quick inet proto tcp from 192.0.2.0 to 10.13.37.2 port 80",
        );
    }

    #[test]
    fn quoted_interface_names_equal_the_printed_bare_ones() {
        same(
            "rdr on \"any\" inet proto tcp from any to (\"any\") port 8080 -> 10.13.37.2 port 80",
            "rdr on any inet proto tcp from any to (any) port = 8080 -> 10.13.37.2 port 80",
        );
        same(
            "pass in quick on \"inet6\" inet proto tcp from any to 10.13.37.2 port 80",
            "pass in quick on inet6 inet proto tcp from any to 10.13.37.2 port = 80 flags S/SA keep state",
        );
        differ(
            "rdr on \"any\" inet proto tcp from any to (\"any\") port 8080 -> 10.13.37.2 port 80",
            "rdr on all inet proto tcp from any to (all) port = 8080 -> 10.13.37.2 port 80",
        );
    }

    #[test]
    fn tag_and_tagged_are_kept() {
        same(
            "rdr on em0 inet proto tcp from any to (em0) port 8080 tag KLEENE -> 10.13.37.2 port 80\n\
             pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 tagged KLEENE label \"a\"",
            "rdr on em0 inet proto tcp from any to (em0) port = 8080 tag KLEENE -> 10.13.37.2 port 80\n\
             pass in quick on em0 inet proto tcp from any to 10.13.37.2 port = 80 flags S/SA keep state label \"a\" tagged KLEENE",
        );
        differ(
            "rdr on em0 inet proto tcp from any to (em0) port 8080 tag KLEENE -> 10.13.37.2 port 80",
            "rdr on em0 inet proto tcp from any to (em0) port = 8080 -> 10.13.37.2 port 80",
        );
        differ(
            "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 tagged KLEENE",
            "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 tagged OTHER",
        );
        differ(
            "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 tagged KLEENE",
            "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 ! tagged KLEENE",
        );
    }

    #[test]
    fn labels_count_in_order() {
        let a = "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 label \"x\" label \"y\"";
        same(
            a,
            "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port = 80 flags S/SA keep state label \"x\" label \"y\"",
        );
        differ(a, "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 label \"y\" label \"x\"");
        differ(a, "pass in quick on em0 inet proto tcp from any to 10.13.37.2 port 80 label \"x\"");
    }

    #[test]
    fn ranges_and_star_targets_as_pf_computes_them() {
        same(
            "rdr on em0 inet proto tcp from any to (em0) port 8000:8010 -> 10.13.37.2 port 9000:*",
            "rdr on em0 inet proto tcp from any to (em0) port 8000:8010 -> 10.13.37.2 port 9000:9010",
        );
        // A one-port range is a single port, and `x:*` then spans u_int16_t arithmetic.
        same(
            "rdr on em0 inet proto tcp from any to (em0) port 8080:8080 -> 10.13.37.2 port 80:*",
            "rdr on em0 inet proto tcp from any to (em0) port = 8080 -> 10.13.37.2 port 80:57536",
        );
        same(
            "rdr on em0 inet proto udp from any to (em0) port 8080 -> 10.13.37.2 port 80:80",
            "rdr on em0 inet proto udp from any to (em0) port = 8080 -> 10.13.37.2 port 80",
        );
    }

    #[test]
    fn state_and_flags_defaults() {
        differ(
            "pass in quick inet proto tcp from any to 10.13.37.2 port 80",
            "pass in quick inet proto tcp from any to 10.13.37.2 port 80 no state",
        );
        same(
            "pass in quick inet proto sctp from any to 10.13.37.2 port 9999",
            "pass in quick inet proto sctp from any to 10.13.37.2 port = 9999 keep state",
        );
        differ(
            "pass in quick inet proto tcp from any to 10.13.37.2 port 80",
            "pass in quick inet proto tcp from any to 10.13.37.2 port 80 flags any",
        );
    }

    #[test]
    fn forms_beyond_the_renderer_converge_too() {
        // An interface list and a destination list expand one rule each.
        same(
            "rdr on { bridge0 lo0 } inet proto tcp from any to { (em0) 127.0.0.1 } port 8080 -> 10.13.37.5 port 80",
            "rdr on bridge0 inet proto tcp from any to (em0) port = 8080 -> 10.13.37.5 port 80\n\
             rdr on bridge0 inet proto tcp from any to 127.0.0.1 port = 8080 -> 10.13.37.5 port 80\n\
             rdr on lo0 inet proto tcp from any to (em0) port = 8080 -> 10.13.37.5 port 80\n\
             rdr on lo0 inet proto tcp from any to 127.0.0.1 port = 8080 -> 10.13.37.5 port 80",
        );
        // nat to an interface is round-robin; pass out; rdr pass; a family from the target.
        same(
            "nat on bridge0 inet proto tcp from (lo0) to 10.13.37.5 port 80 tagged T -> (bridge0)\n\
             pass out quick on bridge0 inet proto tcp from any to 10.13.37.5 port 80\n\
             rdr pass on em0 proto tcp from any to (em0) port 8080 -> 10.13.37.2 port 80",
            "nat on bridge0 inet proto tcp from (lo0) to 10.13.37.5 port = 80 tagged T -> (bridge0) round-robin\n\
             pass out quick on bridge0 inet proto tcp from any to 10.13.37.5 port = 80 flags S/SA keep state\n\
             rdr pass on em0 inet proto tcp from any to (em0) port = 8080 -> 10.13.37.2 port 80",
        );
        differ(
            "rdr pass on em0 inet proto tcp from any to (em0) port 8080 -> 10.13.37.2 port 80",
            "rdr on em0 inet proto tcp from any to (em0) port 8080 -> 10.13.37.2 port 80",
        );
        // Sources of the other family are dropped by pf's expansion.
        same(
            "pass in quick inet proto udp from { 10.13.37.0/24 2001:db8::/32 } to 10.13.37.2 port 53",
            "pass in quick inet proto udp from 10.13.37.0/24 to 10.13.37.2 port = 53 keep state",
        );
    }
}
