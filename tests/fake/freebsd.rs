//! Fake FreeBSD tools for the integration tests: `pfctl`, `jls`, `jexec` and `route`, in one
//! binary that dispatches on the name it is called by (symlinks in `ROOT/bin/`).
//!
//! They accept the real tools' flags (getopt-style, as pfctl(8), jls(8), jexec(8) and route(8)
//! document them), print the real output formats (pfctl's normalised rule form as in
//! shared/pf-parser-samples.md), and keep their state in `ROOT/state/`:
//!
//! - `jails.json`: `[{"jid": 3, "name": "web", "ip4": [..], "ip6": [..], "vnet": false,
//!   "vnet_addrs": [..]}]`, written by the tests.
//! - `route4`, `route6`: the default route's interface (absent: no default route).
//! - `pf/`: `anchors/<anchor with '/' as '%'>.{nat,rules}` (what pf holds, normalised),
//!   `main.conf` (the main ruleset), `killed` (one `label L` per state kill), and switches the
//!   tests create: `nodev` (/dev/pf missing), `disabled`, `refuse` (its text is the error every
//!   load gets).
//! - `calls.log`: one JSON line per invocation: tool, argv, bytes on stdin, and the microseconds
//!   the fake itself ran (from main to exit; not written when
//!   `FAKE_FREEBSD_NORECORD` is set: the tests' own inspection calls).

use std::fs;
use std::io::{Read as _, Write as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::exit;

fn main() {
    let argv0 = std::env::args_os().next().expect("argv[0]");
    let argv0 = PathBuf::from(argv0);
    let tool = argv0.file_name().and_then(|s| s.to_str()).unwrap_or("").to_string();
    let root = argv0.parent().and_then(Path::parent).expect("called as ROOT/bin/TOOL").to_path_buf();
    let state = root.join("state");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut stdin = Vec::new();
    if tool == "pfctl" && args.iter().any(|a| a == "-") {
        std::io::stdin().read_to_end(&mut stdin).expect("read stdin");
    }
    let started = std::time::Instant::now();
    let code = match tool.as_str() {
        "pfctl" => pfctl(&state, &args, &stdin),
        "jls" => jls(&state, &args),
        "jexec" => jexec(&state, &args),
        "route" => route(&state, &args),
        other => {
            eprintln!("fake-freebsd: unknown tool {other:?}");
            127
        }
    };
    record(&state, &tool, &args, stdin.len(), started.elapsed().as_micros() as u64);
    exit(code);
}

fn record(state: &Path, tool: &str, args: &[String], stdin: usize, elapsed_us: u64) {
    if std::env::var_os("FAKE_FREEBSD_NORECORD").is_some() {
        return;
    }
    let line = serde_json::json!({"tool": tool, "argv": args, "stdin_bytes": stdin, "elapsed_us": elapsed_us})
        .to_string()
        + "\n";
    let mut f = fs::OpenOptions::new().create(true).append(true).open(state.join("calls.log")).expect("calls.log");
    f.write_all(line.as_bytes()).expect("write calls.log");
}

/// getopt(3): `spec` lists option letters, a ':' after a letter means it takes an argument.
/// Returns (options in order, operands) or the illegal option.
/// Options in order (letter, argument) and the operands after them.
type Parsed = (Vec<(char, Option<String>)>, Vec<String>);

fn getopt(args: &[String], spec: &str) -> Result<Parsed, String> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a == "-" {
            break;
        }
        let chars: Vec<char> = a[1..].chars().collect();
        let mut j = 0;
        while j < chars.len() {
            let c = chars[j];
            let Some(pos) = spec.find(c) else { return Err(format!("illegal option -- {c}")) };
            if spec[pos + 1..].starts_with(':') {
                let rest: String = chars[j + 1..].iter().collect();
                let val = if !rest.is_empty() {
                    rest
                } else {
                    i += 1;
                    args.get(i).cloned().ok_or_else(|| format!("option requires an argument -- {c}"))?
                };
                opts.push((c, Some(val)));
                break;
            }
            opts.push((c, None));
            j += 1;
        }
        i += 1;
    }
    Ok((opts, args[i..].to_vec()))
}

// ---------------------------------------------------------------------------------------------
// pfctl

/// Holds the pf state lock until dropped.
struct Lock {
    _file: fs::File,
}

fn lock(pf: &Path) -> Lock {
    fs::create_dir_all(pf.join("anchors")).expect("pf dir");
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(pf.join(".lock")).expect("lock file");
    // SAFETY: flock on a file descriptor this process owns; released when the file is closed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock");
    Lock { _file: f }
}

fn anchor_file(pf: &Path, anchor: &str, kind: &str) -> PathBuf {
    pf.join("anchors").join(format!("{}.{kind}", anchor.replace('/', "%")))
}

fn anchor_names(pf: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(pf.join("anchors"))
        .map(|d| {
            d.filter_map(|e| {
                let n = e.ok()?.file_name().into_string().ok()?;
                let base = n.strip_suffix(".nat").or_else(|| n.strip_suffix(".rules"))?;
                Some(base.replace('%', "/"))
            })
            .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.dedup();
    names
}

const SHOW: [&str; 8] = ["nat", "rules", "Anchors", "info", "states", "Running", "labels", "all"];
const FLUSH: [&str; 5] = ["nat", "rules", "states", "Tables", "all"];

fn abbrev(word: &str, options: &[&str]) -> Option<String> {
    options.iter().find(|o| !word.is_empty() && o.starts_with(word)).map(|s| s.to_string())
}

fn pfctl(state: &Path, args: &[String], stdin: &[u8]) -> i32 {
    let usage = "usage: pfctl [-AdeghMmNnOPqRrvz] [-a anchor] [-D macro=value] [-F modifier]\n\t[-f file] [-i interface] [-K host | network]\n\t[-k host | network | gateway | label | id] [-o level] [-p device]\n\t[-s modifier] [-t table -T command [address ...]] [-x level]";
    let (opts, operands) = match getopt(args, "AdeghMmNnOPqRrvza:D:F:f:i:K:k:o:p:s:t:T:x:") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("pfctl: {e}\n{usage}");
            return 1;
        }
    };
    if !operands.is_empty() || opts.is_empty() {
        eprintln!("{usage}");
        return 1;
    }
    let pf = state.join("pf");
    let _lock = lock(&pf);
    if pf.join("nodev").exists() {
        eprintln!("pfctl: /dev/pf: No such file or directory");
        return 1;
    }
    let get = |c: char| opts.iter().find(|(o, _)| *o == c).and_then(|(_, v)| v.clone());
    let has = |c: char| opts.iter().any(|(o, _)| *o == c);
    let anchor = get('a');
    let numeric = has('P');
    let kills: Vec<String> = opts.iter().filter(|(o, _)| *o == 'k').filter_map(|(_, v)| v.clone()).collect();
    if let Some(a) = &anchor {
        if (has('f') || has('F')) && a.split('/').any(|c| c.starts_with('_')) {
            eprintln!("pfctl: anchor names beginning with '_' cannot be modified from the command line");
            return 1;
        }
        if a.split('/').any(|c| c.len() > 63 || c.is_empty()) {
            eprintln!("pfctl: anchor name '{a}' is too long or invalid");
            return 1;
        }
    }
    if has('e') {
        let _ = fs::remove_file(pf.join("disabled"));
        eprintln!("pf enabled");
    }
    if has('d') {
        fs::write(pf.join("disabled"), "").unwrap();
        eprintln!("pf disabled");
    }
    if let Some(m) = get('F') {
        let Some(m) = abbrev(&m, &FLUSH) else {
            eprintln!("pfctl: Unknown flush modifier '{m}'\n{usage}");
            return 1;
        };
        match &anchor {
            Some(a) => {
                if m == "nat" || m == "all" {
                    let _ = fs::remove_file(anchor_file(&pf, a, "nat"));
                    if !has('q') {
                        eprintln!("nat cleared");
                    }
                }
                if m == "rules" || m == "all" {
                    let _ = fs::remove_file(anchor_file(&pf, a, "rules"));
                    if !has('q') {
                        eprintln!("rules cleared");
                    }
                }
            }
            None => {
                eprintln!("fake pfctl: refusing to flush the main ruleset in a test");
                return 1;
            }
        }
    }
    if !kills.is_empty() {
        if kills.len() != 2 || kills[0] != "label" {
            eprintln!("fake pfctl: only -k label -k LABEL is simulated");
            return 1;
        }
        let mut f = fs::OpenOptions::new().create(true).append(true).open(pf.join("killed")).unwrap();
        writeln!(f, "label {}", kills[1]).unwrap();
        eprintln!("killed 0 states");
    }
    if let Some(file) = get('f') {
        let text = if file == "-" {
            String::from_utf8_lossy(stdin).into_owned()
        } else {
            match fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("pfctl: {file}: {e}");
                    return 1;
                }
            }
        };
        let name = if file == "-" { "stdin".to_string() } else { file.clone() };
        let parsed = match parse_ruleset(&text, &name, anchor.is_some()) {
            Ok(p) => p,
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                eprintln!("pfctl: Syntax error in config file: pf rules not loaded");
                return 1;
            }
        };
        if has('n') {
            if has('v') {
                for r in parsed.nat.iter().chain(parsed.rules.iter()) {
                    println!("{}", r.print(numeric));
                }
            }
            return 0;
        }
        if let Ok(msg) = fs::read_to_string(pf.join("refuse")) {
            eprint!("{msg}");
            eprintln!("pfctl: Syntax error in config file: pf rules not loaded");
            return 1;
        }
        match &anchor {
            Some(a) => {
                write_rules(&anchor_file(&pf, a, "nat"), &parsed.nat);
                write_rules(&anchor_file(&pf, a, "rules"), &parsed.rules);
            }
            None => fs::write(pf.join("main.conf"), &text).unwrap(),
        }
    }
    if let Some(m) = get('s') {
        let Some(m) = abbrev(&m, &SHOW) else {
            eprintln!("pfctl: Unknown show modifier '{m}'\n{usage}");
            return 1;
        };
        match m.as_str() {
            "info" => {
                let status = if pf.join("disabled").exists() { "Disabled" } else { "Enabled" };
                println!(
                    "Status: {status} for 0 days 00:10:00           Debug: Urgent\n\nState Table                          Total             Rate\n  current entries                        0"
                );
            }
            "Running" => {
                let on = !pf.join("disabled").exists();
                println!("{}", if on { "Enabled" } else { "Disabled" });
                return if on { 0 } else { 1 };
            }
            "Anchors" => {
                let names = anchor_names(&pf);
                match &anchor {
                    Some(parent) => {
                        let prefix = format!("{parent}/");
                        let children: Vec<String> = names
                            .iter()
                            .filter_map(|n| {
                                n.strip_prefix(&prefix)
                                    .map(|rest| format!("{prefix}{}", rest.split('/').next().unwrap()))
                            })
                            .collect::<std::collections::BTreeSet<_>>()
                            .into_iter()
                            .collect();
                        if children.is_empty() {
                            eprintln!("Anchor '{parent}' not found.");
                            return 0;
                        }
                        for c in children {
                            println!("  {c}");
                        }
                    }
                    None => {
                        let tops: std::collections::BTreeSet<&str> =
                            names.iter().map(|n| n.split('/').next().unwrap()).collect();
                        for t in tops {
                            println!("  {t}");
                        }
                    }
                }
            }
            "nat" | "rules" => match &anchor {
                Some(a) => {
                    let nat = anchor_file(&pf, a, "nat");
                    let rules = anchor_file(&pf, a, "rules");
                    if !nat.exists() && !rules.exists() {
                        eprintln!("pfctl: DIOCGETRULES: Invalid argument");
                        return 0;
                    }
                    let file = if m == "nat" { nat } else { rules };
                    for r in read_rules(&file) {
                        println!("{}", r.print(numeric));
                    }
                }
                None => {
                    let main = fs::read_to_string(pf.join("main.conf")).unwrap_or_default();
                    for l in main.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
                        let is_nat = ["rdr-anchor", "nat-anchor", "binat-anchor", "rdr ", "nat ", "binat "]
                            .iter()
                            .any(|p| l.starts_with(p));
                        if is_nat == (m == "nat") {
                            let l = if l.starts_with("rdr-anchor") || l.starts_with("anchor") {
                                format!("{l} all")
                            } else {
                                l.to_string()
                            };
                            println!("{l}");
                        }
                    }
                }
            },
            "labels" | "states" | "all" => {}
            _ => unreachable!(),
        }
    }
    0
}

/// One parsed rule: the normalised, expanded form pf keeps.
#[derive(Clone)]
struct Rule {
    rdr: bool,
    log: bool,
    on: Option<String>,
    family: Option<String>,
    proto: String,
    from: String,
    to: String,
    port: (u32, u32),
    target: Option<(String, (u32, u32))>,
    labels: Vec<String>,
}

fn service(port: u32) -> Option<&'static str> {
    Some(match port {
        21 => "ftp",
        22 => "ssh",
        25 => "smtp",
        53 => "domain",
        80 => "http",
        110 => "pop3",
        143 => "imap",
        443 => "https",
        993 => "imaps",
        3306 => "mysql",
        5432 => "postgresql",
        8080 => "http-alt",
        _ => return None,
    })
}

impl Rule {
    fn print(&self, numeric: bool) -> String {
        let port = |p: (u32, u32)| {
            if p.0 == p.1 {
                match service(p.0).filter(|_| !numeric) {
                    Some(s) => format!("port = {s}"),
                    None => format!("port = {}", p.0),
                }
            } else {
                format!("port {}:{}", p.0, p.1)
            }
        };
        let mut s = String::new();
        if self.rdr {
            s.push_str("rdr");
        } else {
            s.push_str(if self.log { "pass in log quick" } else { "pass in quick" });
        }
        if let Some(i) = &self.on {
            s.push_str(&format!(" on {i}"));
        }
        if let Some(f) = &self.family {
            s.push_str(&format!(" {f}"));
        }
        s.push_str(&format!(" proto {} from {} to {} {}", self.proto, self.from, self.to, port(self.port)));
        if let Some((addr, tp)) = &self.target {
            let tp = if tp.0 == tp.1 { tp.0.to_string() } else { format!("{}:{}", tp.0, tp.1) };
            s.push_str(&format!(" -> {addr} port {tp}"));
        } else {
            s.push_str(if self.proto == "tcp" { " flags S/SA keep state" } else { " keep state" });
            for l in &self.labels {
                s.push_str(&format!(" label \"{l}\""));
            }
        }
        s
    }

    fn store(&self) -> serde_json::Value {
        serde_json::json!({
            "rdr": self.rdr, "log": self.log, "on": self.on, "family": self.family, "proto": self.proto,
            "from": self.from, "to": self.to, "port": [self.port.0, self.port.1],
            "target": self.target.as_ref().map(|(a, p)| serde_json::json!([a, p.0, p.1])), "labels": self.labels,
        })
    }

    fn load(v: &serde_json::Value) -> Rule {
        let s = |k: &str| v[k].as_str().map(str::to_string);
        let pair = |x: &serde_json::Value, i: usize| x[i].as_u64().unwrap() as u32;
        Rule {
            rdr: v["rdr"].as_bool().unwrap(),
            log: v["log"].as_bool().unwrap(),
            on: s("on"),
            family: s("family"),
            proto: s("proto").unwrap(),
            from: s("from").unwrap(),
            to: s("to").unwrap(),
            port: (pair(&v["port"], 0), pair(&v["port"], 1)),
            target: v["target"].as_array().map(|t| {
                (t[0].as_str().unwrap().to_string(), (t[1].as_u64().unwrap() as u32, t[2].as_u64().unwrap() as u32))
            }),
            labels: v["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_string()).collect(),
        }
    }
}

fn write_rules(path: &Path, rules: &[Rule]) {
    if rules.is_empty() {
        let _ = fs::remove_file(path);
        return;
    }
    let v: Vec<serde_json::Value> = rules.iter().map(Rule::store).collect();
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, serde_json::to_string(&v).unwrap()).unwrap();
    fs::rename(tmp, path).unwrap();
}

fn read_rules(path: &Path) -> Vec<Rule> {
    let Ok(text) = fs::read_to_string(path) else { return vec![] };
    let v: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    v.iter().map(Rule::load).collect()
}

struct Ruleset {
    nat: Vec<Rule>,
    rules: Vec<Rule>,
}

/// Tokens of one line: words, with `{`, `}` and `,` split off, and quoted strings kept whole.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut q = String::from("\"");
                for d in chars.by_ref() {
                    q.push(d);
                    if d == '"' {
                        break;
                    }
                }
                out.push(q);
            }
            '{' | '}' | ',' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_ruleset(text: &str, name: &str, in_anchor: bool) -> Result<Ruleset, Vec<String>> {
    let mut set = Ruleset { nat: vec![], rules: vec![] };
    let mut errors = Vec::new();
    let mut seen_filter = false;
    for (n, raw) in text.lines().enumerate() {
        let n = n + 1;
        let line = raw.split('#').next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        if !in_anchor
            && (line.starts_with("rdr-anchor")
                || line.starts_with("anchor")
                || line.starts_with("set ")
                || line.starts_with("pass")
                || line.starts_with("block"))
        {
            // The main ruleset is stored verbatim; only anchors are parsed rule by rule.
            continue;
        }
        match parse_rule(&tokens(line)) {
            Ok(rules) => {
                let rdr = rules[0].rdr;
                if rdr && seen_filter {
                    errors.push(format!("{name}:{n}: Rules must be in order: options, ethernet, normalization, queueing, translation, filtering"));
                    continue;
                }
                seen_filter |= !rdr;
                if rdr { set.nat.extend(rules) } else { set.rules.extend(rules) }
            }
            Err(e) => errors.extend(
                e.lines().map(|l| if l.starts_with("no IP") { l.to_string() } else { format!("{name}:{n}: {l}") }),
            ),
        }
    }
    if errors.is_empty() { Ok(set) } else { Err(errors) }
}

fn parse_port(s: &str) -> Result<(u32, u32), String> {
    let one = |p: &str| -> Result<u32, String> {
        let v: u32 = p.parse().map_err(|_| "syntax error".to_string())?;
        if v > 65535 { Err(format!("illegal port value {v}")) } else { Ok(v) }
    };
    match s.split_once(':') {
        Some((a, "*")) => Ok((one(a)?, u32::MAX)),
        Some((a, b)) => Ok((one(a)?, one(b)?)),
        None => {
            let p = one(s)?;
            Ok((p, p))
        }
    }
}

fn family_of(addr: &str) -> Option<&'static str> {
    let a = addr.split('/').next().unwrap();
    match a.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => Some("inet"),
        Ok(std::net::IpAddr::V6(_)) => Some("inet6"),
        Err(_) => None,
    }
}

fn parse_rule(t: &[String]) -> Result<Vec<Rule>, String> {
    let syntax = || "syntax error".to_string();
    let mut i = 0;
    let next = |i: &mut usize| -> Result<&str, String> {
        let v = t.get(*i).ok_or_else(syntax)?;
        *i += 1;
        Ok(v.as_str())
    };
    let action = next(&mut i)?;
    let rdr = match action {
        "rdr" => true,
        "pass" => false,
        _ => return Err(syntax()),
    };
    let mut log = false;
    if !rdr {
        if next(&mut i)? != "in" {
            return Err(syntax());
        }
        if t.get(i).map(String::as_str) == Some("log") {
            log = true;
            i += 1;
        }
        if next(&mut i)? != "quick" {
            return Err(syntax());
        }
    }
    let mut on = None;
    if t.get(i).map(String::as_str) == Some("on") {
        i += 1;
        on = Some(next(&mut i)?.to_string());
    }
    let mut family = None;
    if let Some(f) = t.get(i).filter(|f| *f == "inet" || *f == "inet6") {
        family = Some(f.clone());
        i += 1;
    }
    if next(&mut i)? != "proto" {
        return Err(syntax());
    }
    let proto = next(&mut i)?.to_string();
    if !["tcp", "udp", "sctp"].contains(&proto.as_str()) {
        return Err(syntax());
    }
    if next(&mut i)? != "from" {
        return Err(syntax());
    }
    let mut froms = Vec::new();
    if t.get(i).map(String::as_str) == Some("{") {
        i += 1;
        loop {
            let w = next(&mut i)?;
            match w {
                "}" => break,
                "," => continue,
                a => {
                    family_of(a).ok_or_else(syntax)?;
                    froms.push(a.to_string());
                }
            }
        }
    } else {
        let a = next(&mut i)?;
        if a != "any" {
            family_of(a).ok_or_else(syntax)?;
        }
        froms.push(a.to_string());
    }
    if next(&mut i)? != "to" {
        return Err(syntax());
    }
    let to = next(&mut i)?.to_string();
    if !(to.starts_with('(') && to.ends_with(')')) && family_of(&to).is_none() {
        return Err(format!("no IP address found for {to}\ncould not parse host specification"));
    }
    if next(&mut i)? != "port" {
        return Err(syntax());
    }
    let port = parse_port(next(&mut i)?)?;
    if port.1 == u32::MAX || port.0 > port.1 {
        return Err(syntax());
    }
    let mut target = None;
    if rdr {
        if next(&mut i)? != "->" {
            return Err(syntax());
        }
        let addr = next(&mut i)?.to_string();
        let fam = family_of(&addr).ok_or_else(syntax)?;
        if family.as_deref().is_some_and(|f| f != fam) {
            return Err("no translation address with matching address family found.".into());
        }
        if next(&mut i)? != "port" {
            return Err(syntax());
        }
        let mut tp = parse_port(next(&mut i)?)?;
        if tp.1 == u32::MAX {
            tp.1 = tp.0 + (port.1 - port.0);
        }
        target = Some((addr, tp));
    }
    let mut labels = Vec::new();
    while t.get(i).map(String::as_str) == Some("label") {
        if rdr {
            return Err(syntax());
        }
        i += 1;
        let l = next(&mut i)?;
        let inner = l.strip_prefix('"').and_then(|x| x.strip_suffix('"')).ok_or_else(syntax)?;
        if inner.len() > 63 {
            return Err("rule label too long (max 63 chars)".to_string());
        }
        if labels.len() == 5 {
            return Err("label can only be used 5 times".to_string());
        }
        labels.push(inner.to_string());
    }
    if i != t.len() {
        return Err(syntax());
    }
    Ok(froms
        .into_iter()
        .map(|from| Rule {
            rdr,
            log,
            on: on.clone(),
            family: family.clone(),
            proto: proto.clone(),
            from,
            to: to.clone(),
            port,
            target: target.clone(),
            labels: labels.clone(),
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// jls, jexec, route

#[derive(serde::Deserialize)]
struct FakeJail {
    jid: u32,
    name: String,
    #[serde(default)]
    ip4: Vec<String>,
    #[serde(default)]
    ip6: Vec<String>,
    #[serde(default)]
    vnet: bool,
    #[serde(default)]
    vnet_addrs: Vec<String>,
}

fn jails(state: &Path) -> Vec<FakeJail> {
    match fs::read_to_string(state.join("jails.json")) {
        Ok(t) => serde_json::from_str(&t).expect("jails.json"),
        Err(_) => vec![],
    }
}

fn jls(state: &Path, args: &[String]) -> i32 {
    let mut libxo = None;
    let mut rest = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(v) = a.strip_prefix("--libxo=") {
            libxo = Some(v.to_string());
        } else if a == "--libxo" {
            i += 1;
            libxo = args.get(i).cloned();
        } else {
            rest.push(a.clone());
        }
        i += 1;
    }
    let (opts, params) = match getopt(&rest, "dhNnqsvj:") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("jls: {e}\nusage: jls [-dhNnqv] [-j jail] [param ...]");
            return 1;
        }
    };
    let only = opts.iter().find(|(c, _)| *c == 'j').and_then(|(_, v)| v.clone());
    const KNOWN: [&str; 7] = ["jid", "name", "ip4.addr", "ip6.addr", "vnet", "host.hostname", "path"];
    if let Some(p) = params.iter().find(|p| !KNOWN.contains(&p.as_str())) {
        eprintln!("jls: unknown parameter: {p}");
        return 1;
    }
    // -j takes a jid when the argument is a number, else a name (jls.c).
    let by_jid = only.as_ref().and_then(|o| o.parse::<u32>().ok().filter(|n| *n != 0));
    let list: Vec<FakeJail> = jails(state)
        .into_iter()
        .filter(|j| match (&only, by_jid) {
            (None, _) => true,
            (Some(_), Some(jid)) => j.jid == jid,
            (Some(name), None) => j.name == *name,
        })
        .collect();
    if let (Some(o), true) = (&only, list.is_empty()) {
        if by_jid.is_some() {
            eprintln!("jls: jail {o} not found");
        } else {
            eprintln!("jls: jail \"{o}\" not found");
        }
        return 1;
    }
    let value = |j: &FakeJail, p: &str| -> serde_json::Value {
        match p {
            "jid" => j.jid.to_string().into(),
            "name" | "host.hostname" => j.name.clone().into(),
            "path" => format!("/jails/{}", j.name).into(),
            "ip4.addr" => j.ip4.clone().into(),
            "ip6.addr" => j.ip6.clone().into(),
            "vnet" => (if j.vnet { "new" } else { "inherit" }).into(),
            _ => unreachable!(),
        }
    };
    match libxo.as_deref() {
        Some(fmt) if fmt.split(',').any(|f| f == "json") => {
            let arr: Vec<serde_json::Value> = list
                .iter()
                .map(|j| serde_json::Value::Object(params.iter().map(|p| (p.clone(), value(j, p))).collect()))
                .collect();
            let doc = serde_json::json!({"__version": "2", "jail-information": {"jail": arr}});
            println!("{doc}");
        }
        Some(other) => {
            eprintln!("jls: fake libxo supports json only, not {other:?}");
            return 1;
        }
        None => {
            for j in &list {
                let words: Vec<String> = params
                    .iter()
                    .map(|p| match value(j, p) {
                        serde_json::Value::Array(a) => {
                            a.iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>().join(",")
                        }
                        v => v.as_str().unwrap().to_string(),
                    })
                    .collect();
                println!("{}", words.join(" "));
            }
        }
    }
    0
}

fn jexec(state: &Path, args: &[String]) -> i32 {
    let (_, operands) = match getopt(args, "lu:U:") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("jexec: {e}\nusage: jexec [-l] [-u username | -U username] jail [command ...]");
            return 1;
        }
    };
    let Some(jail) = operands.first() else {
        eprintln!("usage: jexec [-l] [-u username | -U username] jail [command ...]");
        return 1;
    };
    let list = jails(state);
    let Some(j) = list.iter().find(|j| j.jid.to_string() == *jail || j.name == *jail) else {
        eprintln!("jexec: jail \"{jail}\" not found");
        return 1;
    };
    let cmd: Vec<&str> = operands[1..].iter().map(String::as_str).collect();
    if cmd.first() != Some(&"/sbin/ifconfig") || !(cmd.len() == 1 || cmd[1..] == ["-a"]) {
        eprintln!("jexec: execvp: {}: No such file or directory", cmd.first().unwrap_or(&""));
        return 1;
    }
    println!(
        "lo0: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 16384\n\tinet 127.0.0.1 netmask 0xff000000\n\tinet6 ::1 prefixlen 128"
    );
    println!(
        "epair{}b: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500\n\tether 02:00:00:00:00:0b",
        j.jid
    );
    for a in &j.vnet_addrs {
        if family_of(a) == Some("inet") {
            println!("\tinet {a} netmask 0xffffff00 broadcast 255.255.255.255");
        } else {
            println!("\tinet6 {a} prefixlen 64");
        }
    }
    println!("\tinet6 fe80::1%epair{}b prefixlen 64 scopeid 0x2", j.jid);
    0
}

fn route(state: &Path, args: &[String]) -> i32 {
    let mut words: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut numeric = false;
    while let Some(w) = words.first().filter(|w| w.starts_with('-')) {
        match *w {
            "-n" => numeric = true,
            "-q" | "-v" => {}
            other => {
                eprintln!("route: illegal option {other}");
                return 1;
            }
        }
        words.remove(0);
    }
    let _ = numeric;
    if words.first() != Some(&"get") {
        eprintln!("fake route: only `route [-n] get [-inet|-inet6] default` is simulated");
        return 1;
    }
    let mut family = "inet";
    let rest: Vec<&str> = words[1..]
        .iter()
        .copied()
        .filter(|w| match *w {
            "-inet" | "-4" => {
                family = "inet";
                false
            }
            "-inet6" | "-6" => {
                family = "inet6";
                false
            }
            _ => true,
        })
        .collect();
    if rest != ["default"] {
        eprintln!("fake route: only the default route is simulated");
        return 1;
    }
    let file = if family == "inet" { "route4" } else { "route6" };
    let Ok(iface) = fs::read_to_string(state.join(file)) else {
        eprintln!("route: route has not been found");
        return 1;
    };
    let (dest, gw) = if family == "inet" { ("default", "10.0.2.2") } else { ("::", "fe80::1%em0") };
    print!(
        "   route to: {dest}\ndestination: {dest}\n       mask: default\n    gateway: {gw}\n        fib: 0\n  interface: {}\n      flags: <UP,GATEWAY,DONE,STATIC>\n recvpipe  sendpipe  ssthresh  rtt,msec    mtu        weight    expire\n       0         0         0         0      1500         1         0 \n",
        iface.trim()
    );
    0
}
