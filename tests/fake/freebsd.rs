//! Fake FreeBSD tools for the integration tests: `pfctl`, `jls`, `jexec`, `route`,
//! `ifconfig`, `sysctl` and `sockstat`, in one binary that dispatches on the name it is called by
//! (symlinks in `ROOT/bin/`).
//!
//! A fake that echoes what it was given hides real bugs, so these speak what FreeBSD 14.3
//! prints: the real tools' flags (getopt-style, as pfctl(8), jls(8), jexec(8), route(8) and
//! ifconfig(8) document them), the real messages (from pfctl.c, parse.y, pfctl_parser.c,
//! route_netlink.c, jls.c and kern_jail.c), and pf's normalised rule form. The pf rule parser and
//! printer accept, refuse and print exactly what shared/pf-printed.jsonl records for FreeBSD 14.3
//! (tests/pf_printed.rs checks every entry).
//!
//! State lives in `ROOT/state/`:
//!
//! - `jails.json`: `[{"jid": 3, "name": "web", "ip4": [..], "ip6": [..], "vnet": false,
//!   "vnet_addrs": ["10.13.37.5/24", "fd00::5"], "dying": false, "ifconfig": "..."}]`, written by
//!   the tests. `vnet_addrs` (prefix optional: /24 and /64 by default) are the addresses inside
//!   a VNET jail. A `dying` jail is one being removed: plain `jls` does not list it (`-d` does),
//!   `jls -j NAME` says `jls: jail "NAME" is dying`. `ifconfig` makes `ifconfig -j JAIL`
//!   misbehave: `"hang"` (sleeps forever, prints nothing), `"grandchild"` (prints the normal
//!   output, leaves a `sleep 3000` holding stdout open, exits 0), `"flood"` (prints without end),
//!   `"slow:MS"` (sleeps MS milliseconds first), `"fail"` (`ifconfig: ioctl (SIOCGIFCONF):
//!   Operation not permitted`, exit 1).
//! - `host_ifconfig.json`: the host's interfaces for `ifconfig -a`:
//!   `[{"name": "em0", "addrs": ["192.0.2.10/24", "2001:db8::10/64"]}]` (lo0 with 127.0.0.1 and
//!   ::1 is always printed first).
//! - `route4`, `route6`: the default route's interface (absent: no default route, and route
//!   prints `route: route has not been found: No such process` and exits 0, as 14.x does).
//!   `route4.raw`, `route6.raw`: when present, `route get` prints the file verbatim and exits 0
//!   (odd answers, such as one without an `interface:` line).
//! - `pf/`: what pf holds. `anchors/<anchor with '/' as '%'>.json` (each loaded anchor's rules
//!   and tables, in this fake's own format; `.calls` beside it lists the anchors it calls),
//!   `main.conf` (the main ruleset's text; the tests may
//!   write it), `killed` (one `label L` line per `-k label -k L`), `counters/<anchor with '/' as
//!   '%'>` (the counters `-s labels` prints: one line of eight numbers per filter rule, in the
//!   order `-s rules` lists them, optionally followed by a ninth, the states the rule holds now,
//!   which only `-v -s rules` prints; absent lines and numbers are zeros; a load or flush of the
//!   anchor and `-z` remove the file, as pf starts reloaded rules at zero). `-v -s rules` prints
//!   after each rule pfctl_print_rule_counters's two lines (FreeBSD 14: `  [ Evaluations: N
//!   Packets: N  Bytes: N  States: N ]`, `  [ Inserted: uid 0 pid 0 State Creations: N ]`), and
//!   `-s rules` follows anchor calls as pfctl.c does (a call whose last component starts with `_`,
//!   or any with `-a '*'`/`-a NAME/*`: the rule, ` {`, its counters, the called rules, `}`). `-s labels` follows anchor calls as
//!   FreeBSD main's pfctl.c does: `-a '*' -s labels` prints the main ruleset's labels and,
//!   through its `anchor "kleene/*"`, each child anchor's inside `anchor "web" all {` ... `}`.
//!   With the switch `labels-flat` it does not, as older pfctl.c (whose PFCTL_SHOW_LABELS case
//!   prints the rule and stops) does not: `-a '*'` then shows the main ruleset's labels only. Switches the tests create: `nodev`
//!   (/dev/pf missing), `disabled` (pf disabled), `refuse` (every load fails with its text, then
//!   `pfctl: Syntax error in config file: pf rules not loaded`), `refuse-kill` (every `-k` fails:
//!   its text on stderr, exit 1, nothing recorded in `killed`), `refuse-flush` (every `-F` fails
//!   likewise and removes nothing).
//! - `sysctl.json`: `{"net.pf.filter_local": "0", ...}`, the variables `sysctl` knows besides
//!   net.pf.filter_local, net.inet.ip.forwarding and net.inet6.ip6.forwarding (0 unless set
//!   here; `null` removes one: `sysctl: unknown oid 'NAME'`). Printed as sysctl(8) does:
//!   `NAME: VALUE`, or the value alone with `-n`.
//! - `sockstat.json`: the listening sockets `sockstat -l` prints, `[{"user": "root", "command":
//!   "nginx", "pid": 812, "fd": 6, "proto": "tcp4", "local": "127.0.0.1:8080"}]`, under
//!   sockstat's header, with `*:*` as the foreign address.
//! - `pfctl -s Interfaces` lists `all`, the group `lo`, lo0 and the interfaces of
//!   `host_ifconfig.json`, sorted; with `-v` a skipped one (`set skip on` in `main.conf`, an
//!   interface or the group `lo`) is followed by ` (skip)` (pfctl.c print_iface).
//! - `ifconfig-started`: one line (`JID PID`) per `ifconfig -j` as it starts, so that a test can
//!   count the reads the agent killed.
//! - `calls.log`: one JSON line per invocation: tool, argv, bytes on stdin, and the microseconds
//!   the fake itself ran (from main to exit; not written when `FAKE_FREEBSD_NORECORD` is set: the
//!   tests' own inspection calls; never written by an `ifconfig` that hangs or floods).

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::exit;

use serde::{Deserialize, Serialize};

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
        "ifconfig" => ifconfig(&state, &args),
        "sysctl" => sysctl(&state, &args),
        "sockstat" => sockstat(&state, &args),
        other => {
            eprintln!("fake-freebsd: unknown tool {other:?}");
            127
        }
    };
    let _ = std::io::stdout().flush();
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

/// Options in order (letter, argument) and the operands after them.
type Parsed = (Vec<(char, Option<String>)>, Vec<String>);

/// getopt(3): `spec` lists option letters, a ':' after a letter means it takes an argument.
/// Returns the options and operands, or the message for an illegal option.
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
            let Some(pos) = spec.find(c).filter(|_| c != ':') else { return Err(format!("illegal option -- {c}")) };
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

fn family_of(addr: &str) -> Option<&'static str> {
    let a = addr.split('/').next().unwrap();
    match a.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => Some("inet"),
        Ok(IpAddr::V6(_)) => Some("inet6"),
        Err(_) => None,
    }
}

// =============================================================================================
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

fn escaped(anchor: &str) -> String {
    anchor.replace('/', "%")
}

fn anchor_file(pf: &Path, anchor: &str) -> PathBuf {
    pf.join("anchors").join(format!("{}.json", escaped(anchor)))
}

fn counters_file(pf: &Path, anchor: &str) -> PathBuf {
    pf.join("counters").join(escaped(anchor))
}

/// Paths of the anchors that hold rules or tables.
fn loaded_anchors(pf: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(pf.join("anchors"))
        .map(|d| {
            d.filter_map(|e| {
                let n = e.ok()?.file_name().into_string().ok()?;
                Some(n.strip_suffix(".json")?.replace('%', "/"))
            })
            .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// What pf holds in one anchor (or the main ruleset).
#[derive(Default, Serialize, Deserialize)]
struct Ruleset {
    rules: Vec<Rule>,
    tables: Vec<Table>,
    /// Interfaces and groups `set skip on` names (the main ruleset's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    skip: Vec<String>,
}

impl Ruleset {
    fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.tables.is_empty()
    }
}

fn read_anchor(pf: &Path, anchor: &str) -> Option<Ruleset> {
    let text = fs::read_to_string(anchor_file(pf, anchor)).ok()?;
    Some(serde_json::from_str(&text).expect("anchor file"))
}

fn write_anchor(pf: &Path, anchor: &str, rs: &Ruleset) {
    let path = anchor_file(pf, anchor);
    let calls_path = path.with_extension("calls");
    if rs.is_empty() {
        let _ = fs::remove_file(path);
        let _ = fs::remove_file(calls_path);
        return;
    }
    // Rewritten in place, under the lock every pfctl call holds: replacing it by a rename (or
    // truncating it to zero) makes ext4 flush it to disk at once, a cost no real pf load has.
    let text = serde_json::to_string(rs).unwrap();
    let mut f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f.set_len(text.len() as u64).unwrap();
    // The anchors this one calls, kept apart so that listing rulesets parses no rules.
    let calls: Vec<&str> = rs.rules.iter().filter_map(|r| r.anchor.as_deref()).collect();
    if calls.is_empty() {
        let _ = fs::remove_file(calls_path);
    } else {
        fs::write(calls_path, calls.join("\n") + "\n").unwrap();
    }
}

/// The main ruleset, parsed from `main.conf`.
fn main_ruleset(pf: &Path) -> Result<Ruleset, Vec<String>> {
    let text = fs::read_to_string(pf.join("main.conf")).unwrap_or_default();
    parse_ruleset(&text, "main.conf").result
}

/// Every ruleset pf knows: loaded anchors, the anchors the main ruleset (or a loaded anchor)
/// calls, and all their parents (pf creates the parents of an anchor with it).
fn rulesets(pf: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut add = |path: &str| {
        let path = path.trim_matches('/');
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty() && *c != "*") {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            out.insert(cur.clone());
        }
    };
    if let Ok(main) = main_ruleset(pf) {
        for a in main.rules.iter().filter_map(|r| r.anchor.as_ref()) {
            add(a);
        }
    }
    // One listing: only the anchors that call others have a `.calls` file to read.
    let calling: BTreeSet<String> = fs::read_dir(pf.join("anchors"))
        .map(|d| {
            d.filter_map(|e| Some(e.ok()?.file_name().into_string().ok()?.strip_suffix(".calls")?.replace('%', "/")))
                .collect()
        })
        .unwrap_or_default();
    for name in loaded_anchors(pf) {
        add(&name);
        if !calling.contains(&name) {
            continue;
        }
        let calls = fs::read_to_string(anchor_file(pf, &name).with_extension("calls")).unwrap_or_default();
        for a in calls.lines() {
            // An anchor call is relative to the calling anchor unless it starts with '/'.
            add(&if a.starts_with('/') { a.to_string() } else { format!("{name}/{a}") });
        }
    }
    out
}

/// Whether the kernel would accept `anchor` as a ruleset path: no component empty or longer
/// than 63 characters (pf_find_or_create_kruleset).
fn valid_path(anchor: &str) -> bool {
    anchor.trim_start_matches('/').split('/').all(|c| !c.is_empty() && c.len() < 64)
}

const SHOW: [&str; 17] = [
    "ether",
    "nat",
    "queue",
    "rules",
    "Anchors",
    "Sources",
    "states",
    "info",
    "Interfaces",
    "labels",
    "timeouts",
    "memory",
    "Tables",
    "osfp",
    "Running",
    "all",
    "creatorids",
];
const FLUSH: [&str; 11] =
    ["nat", "queue", "rules", "Sources", "states", "info", "Tables", "osfp", "all", "ethernet", "Reset"];

/// pfctl_lookup_option: the first option `word` is a prefix of.
fn lookup(word: &str, options: &[&str]) -> Option<String> {
    options.iter().find(|o| !word.is_empty() && o.starts_with(word)).map(|s| s.to_string())
}

const PFCTL_USAGE: &str = "usage: pfctl [-AdeghMmNnOPqRrvz] [-a anchor] [-D macro=value] [-F modifier]\n\t[-f file] [-i interface] [-K host | network]\n\t[-k host | network | gateway | label | id] [-o level] [-p device]\n\t[-s modifier] [-t table -T command [address ...]] [-x level]";

fn pfctl(state: &Path, args: &[String], stdin: &[u8]) -> i32 {
    let (opts, operands) = match getopt(args, "a:AdD:eqf:F:ghi:k:K:mMnNOo:Pp:rRs:t:T:vx:z") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("pfctl: {e}\n{PFCTL_USAGE}");
            return 1;
        }
    };
    if let Some(op) = operands.first() {
        eprintln!("pfctl: unknown command line argument: {op} ...\n{PFCTL_USAGE}");
        return 1;
    }
    if opts.is_empty() || opts.iter().any(|(c, _)| *c == 'h') {
        eprintln!("{PFCTL_USAGE}");
        return 1;
    }
    let get = |c: char| opts.iter().rev().find(|(o, _)| *o == c).and_then(|(_, v)| v.clone());
    let has = |c: char| opts.iter().any(|(o, _)| *o == c);
    let show = match get('s') {
        Some(m) => match lookup(&m, &SHOW) {
            Some(s) => Some(s),
            None => {
                eprintln!("pfctl: Unknown show modifier '{m}'\n{PFCTL_USAGE}");
                return 1;
            }
        },
        None => None,
    };
    let flush = match get('F') {
        Some(m) => match lookup(&m, &FLUSH) {
            Some(s) => Some(s),
            None => {
                eprintln!("pfctl: Unknown flush modifier '{m}'\n{PFCTL_USAGE}");
                return 1;
            }
        },
        None => None,
    };
    let kills: Vec<String> = opts.iter().filter(|(o, _)| *o == 'k').filter_map(|(_, v)| v.clone()).collect();
    if kills.len() > 2 {
        eprintln!("pfctl: can only specify -k twice\n{PFCTL_USAGE}");
        return 1;
    }
    let noaction = has('n');
    let quiet = has('q');
    let numeric = has('P');
    let verbose = has('v');
    // A trailing `*` asks for recursion and is not part of the name (pfctl.c): `-a '*'` is the
    // main ruleset, recursively; only an empty `-a ''` is refused.
    let mut recursive = false;
    let anchor: String = match get('a') {
        Some(a) => {
            if a.is_empty() {
                eprintln!("pfctl: anchor name must not be empty");
                return 1;
            }
            recursive = a.ends_with('*');
            a.strip_suffix("/*").or_else(|| a.strip_suffix('*')).unwrap_or(&a).to_string()
        }
        None => String::new(),
    };
    if recursive && anchor.is_empty() && !matches!(show.as_deref(), Some("labels" | "rules")) {
        eprintln!("fake pfctl: -a '*' is simulated only with -s labels and -s rules");
        return 1;
    }
    let pf = state.join("pf");
    let _lock = lock(&pf);
    if !noaction && pf.join("nodev").exists() {
        eprintln!("pfctl: /dev/pf: No such file or directory");
        return 1;
    }
    let mut exit_val = 0;
    // -n turns off -s, -F, -d and -e (pfctl.c).
    if !noaction && has('d') {
        if pf.join("disabled").exists() {
            eprintln!("pfctl: pf not enabled");
            return 1;
        }
        fs::write(pf.join("disabled"), "").unwrap();
        if !quiet {
            eprintln!("pf disabled");
        }
    }
    if let Some(m) = show.as_deref().filter(|_| !noaction) {
        match pfctl_show(&pf, m, &anchor, numeric, verbose, has('z'), recursive) {
            Ok(code) => exit_val = code,
            Err(code) => return code,
        }
    } else if has('z') && !noaction && !anchor.is_empty() {
        let _ = fs::remove_file(counters_file(&pf, &anchor));
    }
    if let Some(m) = flush.as_deref().filter(|_| !noaction) {
        if let Err(code) = pfctl_flush(&pf, m, &anchor, quiet) {
            return code;
        }
    }
    if !kills.is_empty() {
        if let Ok(msg) = fs::read_to_string(pf.join("refuse-kill")) {
            eprint!("{msg}");
            return 1;
        }
        if kills.len() != 2 || kills[0] != "label" {
            eprintln!("fake pfctl: only -k label -k LABEL is simulated");
            return 1;
        }
        if kills[1].len() >= 64 {
            eprintln!("pfctl: label too long: {}", kills[1]);
            return 1;
        }
        let mut f = fs::OpenOptions::new().create(true).append(true).open(pf.join("killed")).unwrap();
        writeln!(f, "label {}", kills[1]).unwrap();
        if !quiet {
            eprintln!("killed 0 states");
        }
    }
    if let Some(file) = get('f') {
        if let Err(code) = pfctl_load(&pf, &file, stdin, &anchor, noaction, verbose, numeric) {
            return code;
        }
    }
    if !noaction && has('e') {
        if !pf.join("disabled").exists() {
            eprintln!("pfctl: pf already enabled");
            return 1;
        }
        let _ = fs::remove_file(pf.join("disabled"));
        if !quiet {
            eprintln!("pf enabled");
        }
    }
    exit_val
}

/// `-f FILE`: parse, print with -v, and (without -n) replace the anchor or the main ruleset.
fn pfctl_load(
    pf: &Path,
    file: &str,
    stdin: &[u8],
    anchor: &str,
    noaction: bool,
    verbose: bool,
    numeric: bool,
) -> Result<(), i32> {
    if anchor.starts_with('_') || anchor.contains("/_") {
        eprintln!("pfctl: anchor names beginning with '_' cannot be modified from the command line");
        return Err(1);
    }
    // pfctl_rules copies the path into the 64-byte name of its anchor (PF_ANCHOR_NAME_SIZE).
    if anchor.len() >= 64 {
        eprintln!("pfctl: pfctl_rules: strlcpy");
        return Err(1);
    }
    if !noaction && !anchor.is_empty() && !valid_path(anchor) {
        eprintln!("pfctl: pfctl_rules");
        return Err(1);
    }
    let (text, name) = if file == "-" {
        (String::from_utf8_lossy(stdin).into_owned(), "stdin".to_string())
    } else {
        match fs::read_to_string(file) {
            Ok(t) => (t, file.to_string()),
            Err(e) => {
                eprintln!("pfctl: {file}: {}", strip_os_error(&e));
                return Err(1);
            }
        }
    };
    let parsed = parse_ruleset(&text, &name);
    if verbose {
        for l in &parsed.printed {
            println!("{l}");
        }
    }
    let rs = match parsed.result {
        Ok(rs) => rs,
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            if !noaction {
                eprintln!("pfctl: Syntax error in config file: pf rules not loaded");
            }
            return Err(1);
        }
    };
    if verbose {
        for r in rs.load_order() {
            println!("{}", r.print(numeric));
        }
    }
    if noaction {
        return Ok(());
    }
    if let Ok(msg) = fs::read_to_string(pf.join("refuse")) {
        eprint!("{msg}");
        eprintln!("pfctl: Syntax error in config file: pf rules not loaded");
        return Err(1);
    }
    if anchor.is_empty() {
        fs::write(pf.join("main.conf"), &text).unwrap();
    } else {
        let _ = fs::remove_file(counters_file(pf, anchor));
        write_anchor(pf, anchor, &rs);
    }
    Ok(())
}

fn strip_os_error(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// `-F MODIFIER`, with or without `-a`.
fn pfctl_flush(pf: &Path, m: &str, anchor: &str, quiet: bool) -> Result<(), i32> {
    if anchor.starts_with('_') || anchor.contains("/_") {
        eprintln!("pfctl: anchor names beginning with '_' cannot be modified from the command line");
        return Err(1);
    }
    if let Ok(msg) = fs::read_to_string(pf.join("refuse-flush")) {
        eprint!("{msg}");
        return Err(1);
    }
    if anchor.is_empty() {
        eprintln!("fake pfctl: refusing to flush the main ruleset in a test");
        return Err(1);
    }
    if !valid_path(anchor) {
        // The kernel refuses to create the ruleset of the transaction.
        let what = match m {
            "all" | "ethernet" => "pfctl_clear_eth_rules",
            "nat" => "pfctl_clear_nat",
            _ => "pfctl_clear_rules",
        };
        eprintln!("pfctl: {what}: Invalid argument");
        return Err(1);
    }
    let mut rs = read_anchor(pf, anchor).unwrap_or_default();
    let say = |s: &str| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    match m {
        "all" => {
            let tables = rs.tables.len();
            rs = Ruleset::default();
            say("Ethernet rules cleared");
            say("rules cleared");
            say("nat cleared");
            say(&format!("{tables} tables deleted."));
        }
        "rules" => {
            rs.rules.retain(|r| r.ruleset() != Kind::Filter);
            say("rules cleared");
        }
        "nat" => {
            rs.rules.retain(|r| r.ruleset() == Kind::Filter);
            say("nat cleared");
        }
        "Tables" => {
            say(&format!("{} tables deleted.", rs.tables.len()));
            rs.tables.clear();
        }
        "ethernet" => say("Ethernet rules cleared"),
        "states" => say("0 states cleared"),
        other => {
            eprintln!("fake pfctl: -F {other} is not simulated");
            return Err(1);
        }
    }
    let _ = fs::remove_file(counters_file(pf, anchor));
    write_anchor(pf, anchor, &rs);
    Ok(())
}

/// `-s MODIFIER`: Ok(exit status so far) to go on, Err(status) to exit at once.
fn pfctl_show(
    pf: &Path,
    m: &str,
    anchor: &str,
    numeric: bool,
    verbose: bool,
    zero: bool,
    recursive: bool,
) -> Result<i32, i32> {
    match m {
        "info" => {
            let status = if pf.join("disabled").exists() { "Disabled" } else { "Enabled" };
            println!(
                "Status: {status} for 0 days 00:10:00           Debug: Urgent\n\nState Table                          Total             Rate\n  current entries                        0"
            );
        }
        "Running" => {
            let on = !pf.join("disabled").exists();
            println!("{}", if on { "Enabled" } else { "Disabled" });
            return Ok(if on { 0 } else { 1 });
        }
        "Anchors" => {
            let known = rulesets(pf);
            let children: Vec<&String> = known
                .iter()
                .filter(|n| match anchor {
                    "" => !n.contains('/'),
                    parent => {
                        n.strip_prefix(parent).and_then(|r| r.strip_prefix('/')).is_some_and(|r| !r.contains('/'))
                    }
                })
                .collect();
            if !anchor.is_empty() && !known.contains(anchor) {
                // pfctl_show_anchors: the ruleset lookup fails (netlink, 14.3).
                eprintln!("pfctl: DIOCGETRULESETS: No such file or directory");
                return Err(1);
            }
            // pfctl prints through stdio, which buffers fully on a pipe: the list arrives in a
            // few large writes, not in one per line.
            let mut list = String::new();
            for c in children {
                let last = c.rsplit('/').next().unwrap();
                if !last.starts_with('_') || verbose {
                    list.push_str(&format!("  {c}\n"));
                }
            }
            print!("{list}");
            // pfctl_show_eth_anchors then looks for an Ethernet anchor of that name: none.
            if !anchor.is_empty() {
                eprintln!("Anchor '{anchor}' not found.");
            }
        }
        "labels" => {
            show_labels(pf, "", anchor, recursive, false, 0, verbose)?;
            if zero {
                let _ = fs::remove_file(counters_file(pf, anchor));
            }
        }
        "rules" => {
            show_rules(pf, "", anchor, recursive, false, 0, (numeric, verbose))?;
            if zero {
                let _ = fs::remove_file(counters_file(pf, anchor));
            }
        }
        "nat" => {
            let rs = if anchor.is_empty() {
                match main_ruleset(pf) {
                    Ok(rs) => rs,
                    Err(errors) => {
                        eprintln!("fake pfctl: the main ruleset in state/pf/main.conf does not parse:");
                        for e in errors {
                            eprintln!("{e}");
                        }
                        return Err(1);
                    }
                }
            } else {
                match read_anchor(pf, anchor) {
                    Some(rs) => rs,
                    None if valid_path(anchor) && rulesets(pf).contains(anchor) => Ruleset::default(),
                    None => {
                        eprintln!("pfctl: DIOCGETRULES: Invalid argument");
                        return Ok(0);
                    }
                }
            };
            for r in rs.load_order().into_iter().filter(|r| r.ruleset() != Kind::Filter) {
                println!("{}", r.print(numeric));
            }
        }
        "Interfaces" => {
            let skip = main_ruleset(pf).map(|rs| rs.skip).unwrap_or_default();
            let state = pf.parent().expect("ROOT/state/pf");
            let mut names: Vec<String> = host_ifaces(state).into_iter().map(|i| i.name).collect();
            names.extend(["all".to_string(), "lo".to_string()]);
            names.sort();
            for n in names {
                // A skipped group skips its members (pfi_skip_if): lo0 is in the group lo.
                let skipped = skip.iter().any(|s| *s == n || (s == "lo" && n.starts_with("lo") && n != "lo"));
                println!("{n}{}", if verbose && skipped { " (skip)" } else { "" });
            }
        }
        "states" | "all" | "Tables" | "Sources" | "timeouts" | "memory" | "osfp" | "queue" | "ether" | "creatorids" => {
        }
        _ => unreachable!(),
    }
    Ok(0)
}

/// The ruleset `-s labels` and `-s rules` print for `npath` (the main ruleset for ""): `None`
/// when pf has no such anchor (pfctl says so, exit 0), `Err` when the main ruleset does not parse.
fn shown_ruleset(pf: &Path, npath: &str) -> Result<Option<Ruleset>, i32> {
    if npath.is_empty() {
        return match main_ruleset(pf) {
            Ok(rs) => Ok(Some(rs)),
            Err(errors) => {
                eprintln!("fake pfctl: the main ruleset in state/pf/main.conf does not parse:");
                for e in errors {
                    eprintln!("{e}");
                }
                Err(1)
            }
        };
    }
    match read_anchor(pf, npath) {
        Some(rs) => Ok(Some(rs)),
        None if valid_path(npath) && rulesets(pf).contains(npath) => Ok(Some(Ruleset::default())),
        None => {
            eprintln!("pfctl: DIOCGETRULES: Invalid argument");
            Ok(None)
        }
    }
}

/// The path of the ruleset `name` names below `path` (a leading `/` makes it absolute), and
/// `name` without a trailing `/*`, as pfctl_show_rules resolves them.
fn anchor_path<'a>(path: &str, name: &'a str) -> (&'a str, String) {
    let name = name.strip_suffix("/*").unwrap_or(name);
    let npath = match (name.strip_prefix('/'), path) {
        (Some(abs), _) => abs.to_string(),
        (None, "") => name.to_string(),
        (None, p) => format!("{p}/{name}"),
    };
    (name, npath)
}

/// The names of the rulesets directly below `npath`, which a wildcard call followed with
/// recursion prints one block each; `None`, after pfctl's message, when `npath` is no ruleset.
fn wildcard_children(pf: &Path, npath: &str, name: &str) -> Option<Vec<String>> {
    let known = rulesets(pf);
    if !known.contains(npath) {
        eprintln!("Anchor '{name}' not found.");
        return None;
    }
    let below = |n: &String| n.strip_prefix(npath).and_then(|r| r.strip_prefix('/')).is_some_and(|r| !r.contains('/'));
    Some(known.iter().filter(|n| below(n)).map(|c| c.rsplit('/').next().unwrap().to_string()).collect())
}

/// `-s labels` of the ruleset `name` below `path`, as pfctl_show_rules prints it in its
/// PFCTL_SHOW_LABELS format (pfctl.c): for each labelled filter rule its labels, each followed
/// by a space, then evaluations, packets, bytes, packets in, bytes in, packets out, bytes out and
/// state creations. An anchor call is followed when its name's last component starts with `_`,
/// or with recursion (`-a NAME/*`, `-a '*'`); a wildcard call (`anchor "kleene/*"`) followed
/// with recursion prints each child ruleset inside `anchor "CHILD" all {` ... `}` (indented two
/// spaces per level unless -v), the children in pf's order (by name).
fn show_labels(
    pf: &Path,
    path: &str,
    name: &str,
    recursive: bool,
    wildcard: bool,
    depth: usize,
    verbose: bool,
) -> Result<(), i32> {
    let (name, npath) = anchor_path(path, name);
    let indent = if verbose { String::new() } else { "  ".repeat(depth) };
    if wildcard && recursive {
        let Some(children) = wildcard_children(pf, &npath, name) else { return Ok(()) };
        for child in &children {
            println!("{indent}anchor \"{child}\" all {{");
            show_labels(pf, &npath, child, recursive, false, depth + 1, verbose)?;
            println!("{indent}}}");
        }
        return Ok(());
    }
    let Some(rs) = shown_ruleset(pf, &npath)? else { return Ok(()) };
    let counters = fs::read_to_string(counters_file(pf, &npath)).unwrap_or_default();
    let mut lines = counters.lines();
    for r in rs.rules.iter().filter(|r| r.ruleset() == Kind::Filter) {
        let n = rule_counters(lines.next());
        if !r.labels.is_empty() {
            let numbers: Vec<String> = n[..8].iter().map(u64::to_string).collect();
            println!("{} {}", r.labels.join(" "), numbers.join(" "));
        }
        if let Some(call) = r.anchor.as_ref().filter(|_| !pf.join("labels-flat").exists()) {
            let last = call.trim_end_matches("/*").rsplit('/').next().unwrap_or("");
            if last.starts_with('_') || recursive {
                show_labels(pf, &npath, call, recursive, call.ends_with('*'), depth, verbose)?;
            }
        }
    }
    Ok(())
}

/// One line of a counters file: its nine numbers, missing or unreadable ones as zeros.
fn rule_counters(line: Option<&str>) -> [u64; 9] {
    let mut n = [0; 9];
    for (slot, w) in n.iter_mut().zip(line.unwrap_or("").split_whitespace()) {
        *slot = w.parse().unwrap_or(0);
    }
    n
}

/// `-s rules` of the ruleset `name` below `path`, as pfctl_show_rules prints it in its
/// PFCTL_SHOW_RULES format (pfctl.c): each filter rule (indented two spaces per level unless
/// -v), then with -v its counters lines (pfctl_print_rule_counters). An anchor call is followed
/// when its last component starts with `_`, or with recursion: the rule, ` {`, its counters,
/// the called ruleset one level deeper, then `}`; a wildcard call followed with recursion prints
/// each child inside `anchor "CHILD" all {` ... `}`, as `-s labels` does.
fn show_rules(
    pf: &Path,
    path: &str,
    name: &str,
    recursive: bool,
    wildcard: bool,
    depth: usize,
    (numeric, verbose): (bool, bool),
) -> Result<(), i32> {
    let (name, npath) = anchor_path(path, name);
    let indent = if verbose { String::new() } else { "  ".repeat(depth) };
    if wildcard && recursive {
        let Some(children) = wildcard_children(pf, &npath, name) else { return Ok(()) };
        for child in &children {
            println!("{indent}anchor \"{child}\" all {{");
            show_rules(pf, &npath, child, recursive, false, depth + 1, (numeric, verbose))?;
            println!("{indent}}}");
        }
        return Ok(());
    }
    let Some(rs) = shown_ruleset(pf, &npath)? else { return Ok(()) };
    let counters = fs::read_to_string(counters_file(pf, &npath)).unwrap_or_default();
    let mut lines = counters.lines();
    let print_counters = |n: &[u64; 9]| {
        if verbose {
            println!("  [ Evaluations: {:<8}  Packets: {:<8}  Bytes: {:<10}  States: {:<6}]", n[0], n[1], n[2], n[8]);
            println!("  [ Inserted: uid 0 pid 0 State Creations: {:<6}]", n[7]);
        }
    };
    for r in rs.rules.iter().filter(|r| r.ruleset() == Kind::Filter) {
        let n = rule_counters(lines.next());
        print!("{indent}{}", r.print(numeric));
        let followed = r.anchor.as_ref().filter(|call| {
            let last = call.rsplit('/').next().unwrap_or("");
            last.starts_with('_') || recursive
        });
        match followed {
            Some(call) => {
                println!(" {{");
                print_counters(&n);
                show_rules(pf, &npath, call, recursive, call.ends_with('*'), depth + 1, (numeric, verbose))?;
                println!("{indent}}}");
            }
            None => {
                println!();
                print_counters(&n);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The pf rule model: what the kernel keeps of a rule, enough to print it back as pfctl does.

/// The ruleset a rule belongs to (pf_get_ruleset_number).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Nat,
    Rdr,
    Binat,
    Filter,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
enum Addr {
    /// An address and prefix length, host bits cleared (`any` is 0.0.0.0/0 or ::/0).
    Net(IpAddr, u8),
    /// Any address of either family.
    Any,
    /// `(ifname)`, following the interface's addresses; `noalias` for `(ifname:0)`.
    Dyn {
        ifname: String,
        noalias: bool,
    },
    /// `<table>`.
    Table(String),
    NoRoute,
}

impl Addr {
    fn af(&self) -> Option<&'static str> {
        match self {
            Addr::Net(IpAddr::V4(_), _) => Some("inet"),
            Addr::Net(IpAddr::V6(_), _) => Some("inet6"),
            _ => None,
        }
    }

    fn is_any(&self) -> bool {
        match self {
            Addr::Any => true,
            Addr::Net(ip, 0) => ip.is_unspecified(),
            _ => false,
        }
    }

    /// print_addr.
    fn print(&self) -> String {
        match self {
            _ if self.is_any() => "any".into(),
            Addr::Net(ip, prefix) => {
                let max = if ip.is_ipv4() { 32 } else { 128 };
                if *prefix == max { ip.to_string() } else { format!("{ip}/{prefix}") }
            }
            Addr::Any => unreachable!(),
            Addr::Dyn { ifname, noalias } => format!("({ifname}{})", if *noalias { ":0" } else { "" }),
            Addr::Table(t) => format!("<{t}>"),
            Addr::NoRoute => "no-route".into(),
        }
    }
}

/// A port operator and its operands, in host order.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Port {
    /// `=`, `!=`, `<`, `<=`, `>`, `>=`, `:` (inclusive range), `<>`, `><`.
    op: String,
    a: u16,
    b: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct End {
    not: bool,
    addr: Addr,
    port: Option<Port>,
}

/// A translation rule's redirection pool.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Pool {
    hosts: Vec<Addr>,
    p1: u16,
    p2: u16,
    /// `round-robin`, `random`, `bitmask`, `source-hash`, or empty.
    opts: String,
    sticky: bool,
}

/// One rule as pf keeps it: brace lists expanded, defaults filled in.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Rule {
    /// `pass`, `block`, `nat`, `rdr`, `binat`, `anchor`, `nat-anchor`, `rdr-anchor`,
    /// `binat-anchor`.
    action: String,
    /// The called anchor of an anchor rule.
    anchor: Option<String>,
    /// `rdr pass` / `nat pass`.
    natpass: bool,
    /// `drop`, `return`, `return-rst` for block rules.
    block: Option<String>,
    dir: Option<String>,
    log: bool,
    quick: bool,
    on: Option<(bool, String)>,
    af: Option<String>,
    proto: Option<String>,
    src: End,
    dst: End,
    flags: Option<String>,
    keep_state: bool,
    labels: Vec<String>,
    tag: Option<String>,
    tagged: Option<(bool, String)>,
    pool: Option<Pool>,
}

/// A table defined in a ruleset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Table {
    name: String,
    flags: Vec<String>,
    addrs: Vec<(bool, Addr)>,
    has_list: bool,
}

impl Table {
    /// print_tabledef.
    fn print(&self) -> String {
        let mut s = format!("table <{}>", self.name);
        for f in ["const", "persist", "counters"] {
            if self.flags.iter().any(|x| x == f) {
                s.push_str(&format!(" {f}"));
            }
        }
        if !self.addrs.is_empty() {
            s.push_str(" {");
            for (not, a) in &self.addrs {
                s.push_str(if *not { " !" } else { " " });
                s.push_str(&a.print());
            }
            s.push_str(" }");
        } else if self.has_list {
            s.push_str(" { }");
        }
        s
    }
}

/// /etc/services names of the ports pf prints by name without -P (getservbyport).
fn service(port: u16, proto: &str) -> Option<&'static str> {
    Some(match (port, proto) {
        (21, _) => "ftp",
        (22, _) => "ssh",
        (23, _) => "telnet",
        (25, _) => "smtp",
        (53, _) => "domain",
        (80, _) => "http",
        (110, _) => "pop3",
        (123, _) => "ntp",
        (143, _) => "imap",
        (443, _) => "https",
        (514, "tcp") => "shell",
        (514, _) => "syslog",
        (993, _) => "imaps",
        (995, _) => "pop3s",
        (3306, _) => "mysql",
        (5353, _) => "mdns",
        (5432, _) => "postgresql",
        (8080, _) => "http-alt",
        _ => return None,
    })
}

fn service_port(name: &str) -> Option<u16> {
    (1..=u16::MAX).find(|p| service(*p, "tcp") == Some(name) || service(*p, "udp") == Some(name))
}

/// /etc/protocols: the name pf prints for a protocol given by name or number.
fn protocol(p: &str) -> Option<&'static str> {
    Some(match p {
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        "sctp" | "132" => "sctp",
        "icmp" | "1" => "icmp",
        "icmp6" | "ipv6-icmp" | "58" => "ipv6-icmp",
        "gre" | "47" => "gre",
        "esp" | "50" => "esp",
        "ah" | "51" => "ah",
        "carp" | "112" => "carp",
        "pfsync" | "240" => "pfsync",
        _ => return None,
    })
}

impl Rule {
    fn ruleset(&self) -> Kind {
        match self.action.as_str() {
            "nat" | "nat-anchor" => Kind::Nat,
            "rdr" | "rdr-anchor" => Kind::Rdr,
            "binat" | "binat-anchor" => Kind::Binat,
            _ => Kind::Filter,
        }
    }

    fn print_port(&self, p: &Port, numeric: bool) -> String {
        // print_fromto looks services up as "tcp" for tcp and "udp" for everything else.
        let proto = if self.proto.as_deref() == Some("tcp") { "tcp" } else { "udp" };
        let a1 = match service(p.a, proto).filter(|_| !numeric && (p.op == "=" || p.op == "!=")) {
            Some(s) => s.to_string(),
            None => p.a.to_string(),
        };
        match p.op.as_str() {
            ":" => format!(" port {}:{}", p.a, p.b),
            "<>" | "><" => format!(" port {} {} {}", p.a, p.op, p.b),
            op => format!(" port {op} {a1}"),
        }
    }

    fn print_end(&self, e: &End, numeric: bool) -> String {
        let mut s = String::new();
        if e.not {
            s.push_str("! ");
        }
        s.push_str(&e.addr.print());
        if let Some(p) = &e.port {
            s.push_str(&self.print_port(p, numeric));
        }
        s
    }

    /// print_rule (pfctl_parser.c), as `pfctl -s nat`, `-s rules` and `-nvf` print it.
    fn print(&self, numeric: bool) -> String {
        let mut s = match &self.anchor {
            Some(a) => format!("{} \"{a}\"", self.action),
            None => {
                let mut s = self.action.clone();
                if self.natpass {
                    s.push_str(" pass");
                }
                if let Some(b) = &self.block {
                    s.push_str(&format!(" {b}"));
                }
                s
            }
        };
        if let Some(d) = &self.dir {
            s.push_str(&format!(" {d}"));
        }
        if self.log {
            s.push_str(" log");
        }
        if self.quick {
            s.push_str(" quick");
        }
        if let Some((not, i)) = &self.on {
            s.push_str(if *not { " on ! " } else { " on " });
            s.push_str(i);
        }
        if let Some(af) = &self.af {
            s.push_str(&format!(" {af}"));
        }
        if let Some(p) = &self.proto {
            s.push_str(&format!(" proto {p}"));
        }
        let plain = |e: &End| e.addr.is_any() && !e.not && e.port.is_none();
        if plain(&self.src) && plain(&self.dst) {
            s.push_str(" all");
        } else {
            s.push_str(&format!(
                " from {} to {}",
                self.print_end(&self.src, numeric),
                self.print_end(&self.dst, numeric)
            ));
        }
        let pass = self.action == "pass";
        match &self.flags {
            Some(f) => s.push_str(&format!(" flags {f}")),
            None if pass
                && matches!(self.proto.as_deref(), None | Some("tcp"))
                && self.anchor.is_none()
                && self.keep_state =>
            {
                s.push_str(" flags any")
            }
            None => {}
        }
        if !self.keep_state && pass && self.anchor.is_none() {
            s.push_str(" no state");
        } else if self.keep_state {
            s.push_str(" keep state");
        }
        for l in &self.labels {
            s.push_str(&format!(" label \"{l}\""));
        }
        if let Some(t) = &self.tag {
            s.push_str(&format!(" tag {t}"));
        }
        if let Some((not, t)) = &self.tagged {
            if *not {
                s.push_str(" !");
            }
            s.push_str(&format!(" tagged {t}"));
        }
        if let (Some(pool), None) = (&self.pool, &self.anchor) {
            s.push_str(" -> ");
            s.push_str(&self.print_pool(pool));
        }
        s
    }

    /// print_pool.
    fn print_pool(&self, p: &Pool) -> String {
        let hosts: Vec<String> = p.hosts.iter().map(Addr::print).collect();
        let mut s = if hosts.len() > 1 { format!("{{ {} }}", hosts.join(", ")) } else { hosts.join("") };
        match self.action.as_str() {
            "nat" if (p.p1, p.p2) != (PF_NAT_PROXY_PORT_LOW, PF_NAT_PROXY_PORT_HIGH) && (p.p1, p.p2) != (0, 0) => {
                if p.p1 == p.p2 {
                    s.push_str(&format!(" port {}", p.p1));
                } else {
                    s.push_str(&format!(" port {}:{}", p.p1, p.p2));
                }
            }
            "rdr" if p.p1 != 0 => {
                s.push_str(&format!(" port {}", p.p1));
                if p.p2 != 0 && p.p2 != p.p1 {
                    s.push_str(&format!(":{}", p.p2));
                }
            }
            _ => {}
        }
        if !p.opts.is_empty() {
            s.push_str(&format!(" {}", p.opts));
        }
        if p.sticky {
            s.push_str(" sticky-address");
        }
        if self.action == "nat" && p.p1 == 0 && p.p2 == 0 {
            s.push_str(" static-port");
        }
        s
    }
}

const PF_NAT_PROXY_PORT_LOW: u16 = 50001;
const PF_NAT_PROXY_PORT_HIGH: u16 = 65535;

impl Ruleset {
    /// The order pfctl loads (and, with -v, prints) rules in: nat, rdr, binat, then filter.
    fn load_order(&self) -> Vec<&Rule> {
        let mut v: Vec<&Rule> = self.rules.iter().collect();
        v.sort_by_key(|r| r.ruleset());
        v
    }
}

// ---------------------------------------------------------------------------------------------
// The pf.conf parser: the subset of parse.y this project and its tests use, with parse.y's
// messages.

/// pf's keywords in FreeBSD 14.3's parse.y: as a bare word, each is a token of its own and
/// never a name (an interface named `any` must be written `"any"`).
const KEYWORDS: &str = "all allow-opts altq anchor antispoof any bandwidth binat binat-anchor bitmask block block-policy bridge-to buckets cbq code codelq debug divert-reply divert-to dnpipe dnqueue drop dup-to ether fail-policy fairq fastroute file fingerprints flags floating flush for fragment from global group hfsc hogs hostid icmp-type icmp6-type if-bound in include inet inet6 interval keep keepcounters l3 label limit linkshare load log loginterface map-e-portset match max max-mss max-src-conn max-src-conn-rate max-src-nodes max-src-states min-ttl modulate nat nat-anchor no no-df no-route no-sync on optimization os out overload pass port prio priority priq probability proto qlimit queue quick random random-id rdr rdr-anchor realtime reassemble reply-to require-order return return-icmp return-icmp6 return-rst ridentifier round-robin route route-to rtable rule ruleset-optimization scrub set set-tos skip sloppy source-hash source-track state state-defaults state-policy static-port sticky-address syncookies synproxy table tag tagged target tbrsize timeout to tos ttl upperlimit urpf-failed user";

/// Whether `w` is one of pf.conf's keywords: a binary search, as parse.y's `kw_cmp` does with
/// bsearch(3) (a scan of the list for every word made this fake's parsing the slowest step of a
/// publish in the benchmark, which the real pfctl's is not).
fn is_keyword(w: &str) -> bool {
    static SORTED: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let sorted = SORTED.get_or_init(|| {
        let mut v: Vec<&str> = KEYWORDS.split(' ').collect();
        v.sort_unstable();
        v
    });
    sorted.binary_search(&w).is_ok()
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    /// An unquoted word: a keyword or a name.
    Word(String),
    /// A double-quoted string: always a name.
    Quoted(String),
    Sym(&'static str),
}

const SYMS: [&str; 15] = ["->", "!=", "<=", ">=", "<>", "><", "{", "}", "(", ")", ",", "<", ">", "!", "="];

fn lex(line: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    let chars: Vec<char> = line.chars().collect();
    let mut i = 0;
    'outer: while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '"' {
            let mut s = String::new();
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                s.push(chars[i]);
                i += 1;
            }
            i += 1;
            out.push(Tok::Quoted(s));
            continue;
        }
        for sym in SYMS {
            let n = sym.chars().count();
            if chars[i..].iter().take(n).copied().eq(sym.chars()) {
                out.push(Tok::Sym(sym));
                i += n;
                continue 'outer;
            }
        }
        let mut w = String::new();
        while i < chars.len() {
            let c = chars[i];
            if c.is_whitespace() || "{}(),<>!=\"".contains(c) || (c == '-' && chars.get(i + 1) == Some(&'>')) {
                break;
            }
            w.push(c);
            i += 1;
        }
        out.push(Tok::Word(w));
    }
    out
}

/// Why a line was refused.
enum PErr {
    /// `syntax error`.
    Syntax,
    /// yyerror's message.
    Msg(String),
    /// host() found no address for a bare name: its own line, then a yyerror.
    NoHost(String),
}

impl PErr {
    fn lines(&self, file: &str, n: usize) -> Vec<String> {
        match self {
            PErr::Syntax => vec![format!("{file}:{n}: syntax error")],
            PErr::Msg(m) => vec![format!("{file}:{n}: {m}")],
            PErr::NoHost(h) => {
                vec![format!("no IP address found for {h}"), format!("{file}:{n}: could not parse host specification")]
            }
        }
    }
}

type PResult<T> = Result<T, PErr>;

struct Cursor<'a> {
    t: &'a [Tok],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<&'a Tok> {
        self.t.get(self.i)
    }

    fn next(&mut self) -> PResult<&'a Tok> {
        let t = self.t.get(self.i).ok_or(PErr::Syntax)?;
        self.i += 1;
        Ok(t)
    }

    fn at_kw(&self, k: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w == k)
    }

    fn kw(&mut self, k: &str) -> bool {
        let hit = self.at_kw(k);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn expect_kw(&mut self, k: &str) -> PResult<()> {
        if self.kw(k) { Ok(()) } else { Err(PErr::Syntax) }
    }

    fn at_sym(&self, s: &str) -> bool {
        matches!(self.peek(), Some(Tok::Sym(x)) if *x == s)
    }

    fn sym(&mut self, s: &str) -> bool {
        let hit = self.at_sym(s);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn expect_sym(&mut self, s: &str) -> PResult<()> {
        if self.sym(s) { Ok(()) } else { Err(PErr::Syntax) }
    }

    /// A STRING token: a quoted string, or a bare word that is not a keyword.
    fn string(&mut self) -> PResult<String> {
        match self.next()? {
            Tok::Quoted(s) => Ok(s.clone()),
            Tok::Word(w) if !is_keyword(w) => Ok(w.clone()),
            _ => Err(PErr::Syntax),
        }
    }

    fn done(&self) -> bool {
        self.i >= self.t.len()
    }
}

/// A redirection's `port a`, `port a:b` (b 0 for one port) or `port a:*` (the flag).
type RedirectPort = (u16, u16, bool);

/// A rule as written, before the checks and the expansion of its lists (parse.y's `$N`s).
#[derive(Default)]
struct RawRule {
    action: String,
    anchor: Option<String>,
    natpass: bool,
    block: Option<String>,
    dir: Option<String>,
    log: bool,
    quick: bool,
    ifaces: Vec<(bool, String)>,
    af: Option<String>,
    protos: Vec<String>,
    src_hosts: Vec<(bool, Addr)>,
    src_ports: Vec<Port>,
    dst_hosts: Vec<(bool, Addr)>,
    dst_ports: Vec<Port>,
    flags: Option<Option<String>>,
    keep_state: Option<bool>,
    labels: Vec<String>,
    tag: Option<String>,
    tagged: Option<(bool, String)>,
    redirect: Option<(Vec<Addr>, Option<RedirectPort>)>,
    pool_opts: String,
    sticky: bool,
}

enum Stmt {
    Table(Table),
    /// A `set` option, what pfctl -v prints for it at parse time, and the interfaces it skips.
    Set(Option<String>, Vec<String>),
    Rule(Box<RawRule>),
}

/// What parsing a file gave: lines pfctl -v prints while it parses (tables, `set skip`), and
/// the ruleset or the error lines.
struct ParseOutcome {
    printed: Vec<String>,
    result: Result<Ruleset, Vec<String>>,
}

/// Lines of `text` with comments removed and `\` continuations joined, numbered from 1.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (n, raw) in text.lines().enumerate() {
        let mut line = String::new();
        let mut quoted = false;
        for c in raw.chars() {
            if c == '"' {
                quoted = !quoted;
            }
            if c == '#' && !quoted {
                break;
            }
            line.push(c);
        }
        let cont = line.trim_end().ends_with('\\');
        let body = if cont { line.trim_end().trim_end_matches('\\').to_string() } else { line };
        let (start, mut acc) = pending.take().unwrap_or((n + 1, String::new()));
        acc.push(' ');
        acc.push_str(&body);
        if cont {
            pending = Some((start, acc));
        } else {
            out.push((start, acc));
        }
    }
    if let Some(p) = pending {
        out.push(p);
    }
    out
}

/// parse_config: every line is parsed; errors are collected (one per line) and the rules kept
/// only when there are none. `file` names the input in the messages (`stdin` for `-f -`).
fn parse_ruleset(text: &str, file: &str) -> ParseOutcome {
    let mut printed = Vec::new();
    let mut errors = Vec::new();
    let mut rs = Ruleset::default();
    // check_rulestate: options, (ethernet, normalization, queueing,) translation, filtering.
    let mut rulestate = 0;
    for (n, line) in logical_lines(text) {
        let toks = lex(&line);
        if toks.is_empty() {
            continue;
        }
        let stmt = match parse_stmt(&toks) {
            Ok(s) => s,
            Err(e) => {
                errors.extend(e.lines(file, n));
                continue;
            }
        };
        let want = match &stmt {
            Stmt::Table(_) => None,
            Stmt::Set(..) => Some(0),
            Stmt::Rule(r) => Some(if matches!(r.action.as_str(), "pass" | "block" | "anchor") { 5 } else { 4 }),
        };
        if let Some(w) = want {
            if rulestate > w {
                errors.push(format!(
                    "{file}:{n}: Rules must be in order: options, ethernet, normalization, queueing, translation, filtering"
                ));
                continue;
            }
            rulestate = w;
        }
        match stmt {
            Stmt::Table(t) => {
                printed.push(t.print());
                rs.tables.push(t);
            }
            Stmt::Set(p, skip) => {
                printed.extend(p);
                rs.skip.extend(skip);
            }
            Stmt::Rule(raw) => match expand(*raw) {
                Ok(rules) => rs.rules.extend(rules),
                Err(e) => errors.extend(e.lines(file, n)),
            },
        }
    }
    ParseOutcome { printed, result: if errors.is_empty() { Ok(rs) } else { Err(errors) } }
}

fn parse_stmt(toks: &[Tok]) -> PResult<Stmt> {
    let mut c = Cursor { t: toks, i: 0 };
    let Tok::Word(first) = c.next()? else { return Err(PErr::Syntax) };
    let stmt = match first.as_str() {
        "table" => Stmt::Table(parse_table(&mut c)?),
        "set" => {
            if c.kw("skip") {
                c.expect_kw("on")?;
                let ifs = parse_iflist(&mut c)?;
                let names: Vec<String> = ifs.into_iter().map(|(_, n)| n).collect();
                Stmt::Set(Some(format!("set skip on {{ {} }}", names.join(" "))), names)
            } else {
                // Other options change nothing this fake models.
                c.i = c.t.len();
                Stmt::Set(None, vec![])
            }
        }
        "pass" | "block" => Stmt::Rule(Box::new(parse_filter(&mut c, first)?)),
        "nat" | "rdr" | "binat" => Stmt::Rule(Box::new(parse_nat(&mut c, first)?)),
        "anchor" | "nat-anchor" | "rdr-anchor" | "binat-anchor" => {
            Stmt::Rule(Box::new(parse_anchor_rule(&mut c, first)?))
        }
        _ => return Err(PErr::Syntax),
    };
    if !c.done() {
        return Err(PErr::Syntax);
    }
    Ok(stmt)
}

fn parse_table(c: &mut Cursor) -> PResult<Table> {
    c.expect_sym("<")?;
    let name = c.string()?;
    c.expect_sym(">")?;
    let mut t = Table { name, flags: vec![], addrs: vec![], has_list: false };
    loop {
        if c.sym("{") {
            t.has_list = true;
            loop {
                if c.sym("}") {
                    break;
                }
                if c.sym(",") {
                    continue;
                }
                let not = c.sym("!");
                let a = parse_host(c)?;
                t.addrs.push((not, a));
            }
            continue;
        }
        match c.peek() {
            None => break,
            Some(Tok::Word(w)) if matches!(w.as_str(), "persist" | "const" | "counters") => {
                t.flags.push(w.clone());
                c.i += 1;
            }
            _ => return Err(PErr::Syntax),
        }
    }
    Ok(t)
}

/// `IF`, `! IF` or `{ IF IF ... }`.
fn parse_iflist(c: &mut Cursor) -> PResult<Vec<(bool, String)>> {
    let one = |c: &mut Cursor| -> PResult<(bool, String)> {
        let not = c.sym("!");
        let name = c.string()?;
        if name.len() >= 16 {
            return Err(PErr::Msg("interface name too long".into()));
        }
        Ok((not, name))
    };
    if c.sym("{") {
        let mut out = Vec::new();
        loop {
            if c.sym("}") {
                break;
            }
            if c.sym(",") {
                continue;
            }
            out.push(one(c)?);
        }
        if out.is_empty() {
            return Err(PErr::Syntax);
        }
        Ok(out)
    } else {
        Ok(vec![one(c)?])
    }
}

fn parse_protos(c: &mut Cursor) -> PResult<Vec<String>> {
    let one = |c: &mut Cursor| -> PResult<String> {
        let p = c.string()?;
        protocol(&p).map(str::to_string).ok_or_else(|| PErr::Msg(format!("unknown protocol {p}")))
    };
    if c.sym("{") {
        let mut out = Vec::new();
        loop {
            if c.sym("}") {
                break;
            }
            if c.sym(",") {
                continue;
            }
            out.push(one(c)?);
        }
        Ok(out)
    } else {
        Ok(vec![one(c)?])
    }
}

/// One host: an address with an optional /prefix, `(if)`, `<table>`, `no-route`.
fn parse_host(c: &mut Cursor) -> PResult<Addr> {
    if c.sym("(") {
        let name = c.string()?;
        c.expect_sym(")")?;
        let (ifname, modifier) = match name.split_once(':') {
            Some((i, m)) => (i.to_string(), Some(m.to_string())),
            None => (name, None),
        };
        let noalias = match modifier.as_deref() {
            None => false,
            Some("0") => true,
            Some(m) => return Err(PErr::Msg(format!("interface {ifname}:{m} has bad modifier"))),
        };
        if ifname.len() >= 16 {
            return Err(PErr::Msg("interface name too long".into()));
        }
        return Ok(Addr::Dyn { ifname, noalias });
    }
    if c.sym("<") {
        let name = c.string()?;
        c.expect_sym(">")?;
        return Ok(Addr::Table(name));
    }
    if c.kw("no-route") {
        return Ok(Addr::NoRoute);
    }
    let w = c.string()?;
    let (addr, prefix) = match w.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (w.as_str(), None),
    };
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(PErr::NoHost(w.clone()));
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if n <= max => n,
            _ => return Err(PErr::Msg(format!("invalid netmask '{p}'"))),
        },
    };
    // set_ipmask clears the host bits.
    Ok(Addr::Net(mask(ip, prefix), prefix))
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
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

/// `any`, one host, or `{ host, host ... }`.
fn parse_hosts(c: &mut Cursor) -> PResult<Vec<(bool, Addr)>> {
    if c.kw("any") {
        return Ok(vec![(false, Addr::Any)]);
    }
    if c.sym("{") {
        let mut out = Vec::new();
        loop {
            if c.sym("}") {
                break;
            }
            if c.sym(",") {
                continue;
            }
            let not = c.sym("!");
            if c.kw("any") {
                out.push((not, Addr::Any));
            } else {
                out.push((not, parse_host(c)?));
            }
        }
        if out.is_empty() {
            return Err(PErr::Syntax);
        }
        return Ok(out);
    }
    let not = c.sym("!");
    Ok(vec![(not, parse_host(c)?)])
}

/// getservice: a port number or service name.
fn getservice(w: &str) -> PResult<u16> {
    if let Ok(v) = w.parse::<u64>() {
        return u16::try_from(v).map_err(|_| PErr::Msg(format!("illegal port value {v}")));
    }
    service_port(w).ok_or_else(|| PErr::Msg(format!("unknown port {w}")))
}

/// parseport with PPORT_RANGE: `a`, or `a:b` (a single port when a == b).
fn parse_portrange(w: &str) -> PResult<Port> {
    match w.split_once(':') {
        Some((a, b)) => {
            let (a, b) = (getservice(a)?, getservice(b)?);
            if a == b { Ok(Port { op: "=".into(), a, b: 0 }) } else { Ok(Port { op: ":".into(), a, b }) }
        }
        None => Ok(Port { op: "=".into(), a: getservice(w)?, b: 0 }),
    }
}

fn parse_port_item(c: &mut Cursor) -> PResult<Port> {
    for op in ["=", "!=", "<", "<=", ">", ">="] {
        if c.sym(op) {
            let w = c.string()?;
            if w.contains(':') {
                return Err(PErr::Msg("':' cannot be used with an other port operator".into()));
            }
            return Ok(Port { op: op.into(), a: getservice(&w)?, b: 0 });
        }
    }
    let w = c.string()?;
    let p = parse_portrange(&w)?;
    for op in ["<>", "><"] {
        if c.sym(op) {
            let w2 = c.string()?;
            return Ok(Port { op: op.into(), a: p.a, b: getservice(&w2)? });
        }
    }
    Ok(p)
}

fn parse_ports(c: &mut Cursor) -> PResult<Vec<Port>> {
    if c.sym("{") {
        let mut out = Vec::new();
        loop {
            if c.sym("}") {
                break;
            }
            if c.sym(",") {
                continue;
            }
            out.push(parse_port_item(c)?);
        }
        return Ok(out);
    }
    Ok(vec![parse_port_item(c)?])
}

/// `[from HOSTS [port P]] [to HOSTS [port P]]` or `all`.
fn parse_fromto(c: &mut Cursor, r: &mut RawRule) -> PResult<()> {
    let any = || vec![(false, Addr::Any)];
    r.src_hosts = any();
    r.dst_hosts = any();
    if c.kw("all") {
        return Ok(());
    }
    if c.kw("from") {
        if !c.at_kw("port") {
            r.src_hosts = parse_hosts(c)?;
        }
        if c.kw("port") {
            r.src_ports = parse_ports(c)?;
        }
    }
    if c.kw("to") {
        if !c.at_kw("port") {
            r.dst_hosts = parse_hosts(c)?;
        }
        if c.kw("port") {
            r.dst_ports = parse_ports(c)?;
        }
    }
    Ok(())
}

/// `[on IFLIST] [inet|inet6] [proto P]`.
fn parse_iface_af_proto(c: &mut Cursor, r: &mut RawRule) -> PResult<()> {
    if c.kw("on") {
        r.ifaces = parse_iflist(c)?;
    }
    if c.kw("inet") {
        r.af = Some("inet".into());
    } else if c.kw("inet6") {
        r.af = Some("inet6".into());
    }
    if c.kw("proto") {
        r.protos = parse_protos(c)?;
    }
    Ok(())
}

fn parse_label(c: &mut Cursor, r: &mut RawRule) -> PResult<()> {
    if r.labels.len() >= 5 {
        return Err(PErr::Msg("label can only be used 5 times".into()));
    }
    let l = c.string()?;
    r.labels.push(l);
    Ok(())
}

fn parse_filter(c: &mut Cursor, action: &str) -> PResult<RawRule> {
    let mut r = RawRule { action: action.into(), ..RawRule::default() };
    if action == "block" {
        r.block = Some("drop".into());
        for b in ["drop", "return", "return-rst"] {
            if c.kw(b) {
                r.block = Some(b.into());
            }
        }
    }
    if c.kw("in") {
        r.dir = Some("in".into());
    } else if c.kw("out") {
        r.dir = Some("out".into());
    }
    loop {
        if c.kw("log") {
            r.log = true;
        } else if c.kw("quick") {
            r.quick = true;
        } else {
            break;
        }
    }
    parse_iface_af_proto(c, &mut r)?;
    parse_fromto(c, &mut r)?;
    while !c.done() {
        if c.kw("flags") {
            if c.kw("any") {
                r.flags = Some(None);
            } else {
                let f = c.string()?;
                r.flags = Some(Some(f));
            }
        } else if c.kw("keep") {
            c.expect_kw("state")?;
            r.keep_state = Some(true);
        } else if c.kw("modulate") || c.kw("synproxy") {
            return Err(PErr::Msg("fake pfctl: modulate/synproxy state is not simulated".into()));
        } else if c.kw("no") {
            c.expect_kw("state")?;
            r.keep_state = Some(false);
        } else if c.kw("label") {
            parse_label(c, &mut r)?;
        } else if c.kw("tag") {
            r.tag = Some(c.string()?);
        } else if c.at_sym("!") || c.at_kw("tagged") {
            let not = c.sym("!");
            c.expect_kw("tagged")?;
            r.tagged = Some((not, c.string()?));
        } else {
            return Err(PErr::Syntax);
        }
    }
    Ok(r)
}

fn parse_nat(c: &mut Cursor, action: &str) -> PResult<RawRule> {
    let mut r = RawRule { action: action.into(), ..RawRule::default() };
    if c.kw("pass") {
        r.natpass = true;
    }
    if c.kw("log") {
        r.log = true;
    }
    parse_iface_af_proto(c, &mut r)?;
    parse_fromto(c, &mut r)?;
    if c.kw("tag") {
        r.tag = Some(c.string()?);
    }
    if c.at_sym("!") || c.at_kw("tagged") {
        let not = c.sym("!");
        c.expect_kw("tagged")?;
        r.tagged = Some((not, c.string()?));
    }
    if c.sym("->") {
        let hosts: Vec<Addr> = if c.sym("{") {
            let mut out = Vec::new();
            loop {
                if c.sym("}") {
                    break;
                }
                if c.sym(",") {
                    continue;
                }
                out.push(parse_host(c)?);
            }
            out
        } else {
            vec![parse_host(c)?]
        };
        let mut ports = None;
        if c.kw("port") {
            let w = c.string()?;
            ports = Some(match w.split_once(':') {
                Some((a, "*")) => (getservice(a)?, 0, true),
                Some((a, b)) => {
                    let (a, b) = (getservice(a)?, getservice(b)?);
                    if a == b { (a, 0, false) } else { (a, b, false) }
                }
                None => (getservice(&w)?, 0, false),
            });
        }
        r.redirect = Some((hosts, ports));
        loop {
            let opt = ["round-robin", "random", "bitmask", "source-hash"].into_iter().find(|o| c.at_kw(o));
            if let Some(o) = opt {
                c.i += 1;
                r.pool_opts = o.into();
            } else if c.kw("sticky-address") {
                r.sticky = true;
            } else if c.kw("static-port") {
                r.redirect.as_mut().unwrap().1 = Some((0, 0, false));
            } else {
                break;
            }
        }
    }
    Ok(r)
}

fn parse_anchor_rule(c: &mut Cursor, action: &str) -> PResult<RawRule> {
    let mut r = RawRule { action: action.into(), keep_state: Some(false), ..RawRule::default() };
    r.anchor = Some(c.string()?);
    if c.kw("in") {
        r.dir = Some("in".into());
    } else if c.kw("out") {
        r.dir = Some("out".into());
    }
    if c.kw("quick") {
        r.quick = true;
    }
    parse_iface_af_proto(c, &mut r)?;
    parse_fromto(c, &mut r)?;
    Ok(r)
}

/// The checks of parse.y's rule actions, then expand_rule: one rule per interface, protocol,
/// source host and port, destination host and port, in that nesting.
fn expand(mut r: RawRule) -> PResult<Vec<Rule>> {
    for l in &r.labels {
        if l.len() > 63 {
            return Err(PErr::Msg("rule label too long (max 63 chars)".into()));
        }
    }
    for t in r.tag.iter().chain(r.tagged.iter().map(|(_, t)| t)) {
        if t.len() > 63 {
            return Err(PErr::Msg("tag too long, max 63 chars".into()));
        }
    }
    let translation = matches!(r.action.as_str(), "nat" | "rdr" | "binat");
    let mut pool = None;
    if translation {
        let Some((mut hosts, ports)) = r.redirect.take() else {
            return Err(PErr::Msg("translation rule requires '-> address'".into()));
        };
        if r.af.is_none() {
            if let Some(af) = hosts.first().and_then(Addr::af) {
                r.af = Some(af.into());
            }
        }
        // remove_invalid_hosts
        if let Some(af) = r.af.clone() {
            hosts.retain(|h| h.af().is_none_or(|a| a == af));
            if hosts.is_empty() {
                return Err(PErr::Msg("no translation address with matching address family found.".into()));
            }
        }
        let (a, b, star) = ports.unwrap_or((0, 0, false));
        let (p1, p2) = match r.action.as_str() {
            // `port x:*` maps the destination range one to one (parse.y, u_int16_t arithmetic).
            "rdr" if star && !r.dst_ports.is_empty() => {
                let d = &r.dst_ports[0];
                (a, a.wrapping_add(d.b.wrapping_sub(d.a)))
            }
            "nat" if (a, b) == (0, 0) && ports.is_none() => (PF_NAT_PROXY_PORT_LOW, PF_NAT_PROXY_PORT_HIGH),
            "nat" if b == 0 => (a, a),
            _ => (a, b),
        };
        let multi =
            hosts.len() > 1 || hosts.iter().any(|h| matches!(h, Addr::Table(_) | Addr::Dyn { noalias: false, .. }));
        let opts = if r.pool_opts.is_empty() && multi { "round-robin".to_string() } else { r.pool_opts.clone() };
        pool = Some(Pool { hosts, p1, p2, opts, sticky: r.sticky });
    }
    let pass = r.action == "pass";
    let keep_state = r.keep_state.unwrap_or(pass);
    let ifaces: Vec<Option<(bool, String)>> =
        if r.ifaces.is_empty() { vec![None] } else { r.ifaces.iter().cloned().map(Some).collect() };
    let protos: Vec<Option<String>> =
        if r.protos.is_empty() { vec![None] } else { r.protos.iter().cloned().map(Some).collect() };
    let sports: Vec<Option<Port>> =
        if r.src_ports.is_empty() { vec![None] } else { r.src_ports.iter().cloned().map(Some).collect() };
    let dports: Vec<Option<Port>> =
        if r.dst_ports.is_empty() { vec![None] } else { r.dst_ports.iter().cloned().map(Some).collect() };
    let mut out = Vec::new();
    for on in &ifaces {
        for proto in &protos {
            for (snot, shost) in &r.src_hosts {
                for sport in &sports {
                    for (dnot, dhost) in &r.dst_hosts {
                        for dport in &dports {
                            let (saf, daf) = (shost.af(), dhost.af());
                            if let Some(af) = r.af.as_deref() {
                                if saf.is_some_and(|a| a != af) || daf.is_some_and(|a| a != af) {
                                    continue;
                                }
                            }
                            if let (Some(a), Some(b)) = (saf, daf) {
                                if a != b {
                                    continue;
                                }
                            }
                            let af = r.af.clone().or(saf.or(daf).map(str::to_string));
                            let flags = match &r.flags {
                                Some(f) => f.clone(),
                                None if pass && keep_state => Some("S/SA".to_string()),
                                None => None,
                            };
                            // expand_rule clears the flags of every protocol but tcp.
                            let flags = flags.filter(|_| matches!(proto.as_deref(), None | Some("tcp")));
                            out.push(Rule {
                                action: r.action.clone(),
                                anchor: r.anchor.clone(),
                                natpass: r.natpass,
                                block: r.block.clone(),
                                dir: r.dir.clone(),
                                log: r.log,
                                quick: r.quick,
                                on: on.clone(),
                                af,
                                proto: proto.clone(),
                                src: End { not: *snot, addr: shost.clone(), port: sport.clone() },
                                dst: End { not: *dnot, addr: dhost.clone(), port: dport.clone() },
                                flags,
                                keep_state,
                                labels: r.labels.clone(),
                                tag: r.tag.clone(),
                                tagged: r.tagged.clone(),
                                pool: pool.clone(),
                            });
                        }
                    }
                }
            }
        }
    }
    if out.is_empty() {
        return Err(PErr::Msg("rule expands to no valid combination".into()));
    }
    Ok(out)
}

// =============================================================================================
// jls, jexec, route, ifconfig

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
    #[serde(default)]
    dying: bool,
    #[serde(default)]
    ifconfig: Option<String>,
}

fn jails(state: &Path) -> Vec<FakeJail> {
    match fs::read_to_string(state.join("jails.json")) {
        Ok(t) => serde_json::from_str(&t).expect("jails.json"),
        Err(_) => vec![],
    }
}

/// jail_getid / the kernel's lookup: a jid when the argument is a number, else a name; the
/// message is jail_errmsg as kern_jail.c words it.
fn find_jail(list: &[FakeJail], which: &str, dying_ok: bool) -> Result<usize, String> {
    let by_jid = which.parse::<u32>().ok().filter(|n| *n != 0);
    let found = list.iter().position(|j| match by_jid {
        Some(jid) => j.jid == jid,
        None => j.name == which,
    });
    let shown = match by_jid {
        Some(jid) => jid.to_string(),
        None => format!("\"{which}\""),
    };
    match found {
        Some(i) if list[i].dying && !dying_ok => Err(format!("jail {shown} is dying")),
        Some(i) => Ok(i),
        None => Err(format!("jail {shown} not found")),
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
    let (opts, params) = match getopt(&rest, "adj:hNnqsv") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("jls: {e}\njls: usage: jls [-dhNnqv] [-j jail] [param ...]");
            return 1;
        }
    };
    let only = opts.iter().rev().find(|(c, _)| *c == 'j').and_then(|(_, v)| v.clone());
    let dying_ok = opts.iter().any(|(c, _)| *c == 'd' || *c == 'a');
    const KNOWN: [&str; 8] = ["jid", "name", "ip4.addr", "ip6.addr", "vnet", "host.hostname", "path", "dying"];
    if let Some(p) = params.iter().find(|p| !KNOWN.contains(&p.as_str())) {
        eprintln!("jls: unknown parameter: {p}");
        return 1;
    }
    let json = match libxo.as_deref() {
        Some(fmt) if fmt.split(',').any(|f| f == "json") => true,
        Some(other) => {
            eprintln!("jls: fake libxo supports json only, not {other:?}");
            return 1;
        }
        None => false,
    };
    let all = jails(state);
    let list: Vec<&FakeJail> = match &only {
        None => all.iter().filter(|j| dying_ok || !j.dying).collect(),
        Some(which) => match find_jail(&all, which, dying_ok) {
            Ok(i) => vec![&all[i]],
            Err(msg) => {
                // xo_errx after the document was opened: the empty list still goes out.
                if json {
                    println!("{}", serde_json::json!({"__version": "2", "jail-information": {"jail": []}}));
                }
                eprintln!("jls: {msg}");
                return 1;
            }
        },
    };
    let value = |j: &FakeJail, p: &str| -> serde_json::Value {
        match p {
            "jid" => j.jid.to_string().into(),
            "name" | "host.hostname" => j.name.clone().into(),
            "path" => format!("/jails/{}", j.name).into(),
            "ip4.addr" => j.ip4.clone().into(),
            "ip6.addr" => j.ip6.clone().into(),
            "vnet" => (if j.vnet { "new" } else { "inherit" }).into(),
            "dying" => (if j.dying { "true" } else { "false" }).into(),
            _ => unreachable!(),
        }
    };
    if json {
        let arr: Vec<serde_json::Value> = list
            .iter()
            .map(|j| serde_json::Value::Object(params.iter().map(|p| (p.clone(), value(j, p))).collect()))
            .collect();
        let doc = serde_json::json!({"__version": "2", "jail-information": {"jail": arr}});
        let mut out = std::io::stdout().lock();
        let _ = out.write_all((doc.to_string() + "\n").as_bytes());
    } else {
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
    while let Some(w) = words.first().filter(|w| w.starts_with('-')) {
        match *w {
            "-n" | "-q" | "-v" | "-4" | "-6" => {}
            other => {
                eprintln!("route: illegal option {other}");
                return 1;
            }
        }
        words.remove(0);
    }
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
    if let Ok(raw) = fs::read_to_string(state.join(format!("{file}.raw"))) {
        print!("{raw}");
        return 0;
    }
    let Ok(iface) = fs::read_to_string(state.join(file)) else {
        // route_netlink.c (14.x): warn("route has not been found"); return (0);
        eprintln!("route: route has not been found: No such process");
        return 0;
    };
    let (dest, gw) = if family == "inet" { ("default", "10.0.2.2") } else { ("::", "fe80::1%em0") };
    print!(
        "   route to: {dest}\ndestination: {dest}\n       mask: default\n    gateway: {gw}\n        fib: 0\n  interface: {}\n      flags: <UP,GATEWAY,DONE,STATIC>\n recvpipe  sendpipe  ssthresh  rtt,msec    mtu        weight    expire\n       0         0         0         0      1500         1         0 \n",
        iface.trim()
    );
    0
}

/// One interface as ifconfig prints it.
struct Iface {
    name: String,
    index: u32,
    loopback: bool,
    addrs: Vec<(IpAddr, u8)>,
    /// Whether the interface has its automatic fe80:: address (IPv6 enabled).
    link_local: bool,
}

impl Iface {
    fn print(&self) -> String {
        let mut s = if self.loopback {
            format!("{}: flags=1008049<UP,LOOPBACK,RUNNING,MULTICAST,LOWER_UP> metric 0 mtu 16384\n", self.name)
        } else {
            format!(
                "{}: flags=1008843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST,LOWER_UP> metric 0 mtu 1500\n\tether 02:00:00:00:{:02x}:{:02x}\n",
                self.name,
                self.index / 256,
                self.index % 256
            )
        };
        for (ip, prefix) in &self.addrs {
            match ip {
                IpAddr::V4(a) => {
                    let m = if *prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(*prefix)) };
                    s.push_str(&format!("\tinet {a} netmask 0x{m:08x}"));
                    if !self.loopback {
                        let b = std::net::Ipv4Addr::from(u32::from(*a) | !m);
                        s.push_str(&format!(" broadcast {b}"));
                    }
                    s.push('\n');
                }
                IpAddr::V6(a) => s.push_str(&format!("\tinet6 {a} prefixlen {prefix}\n")),
            }
        }
        if self.link_local {
            s.push_str(&format!(
                "\tinet6 fe80::{:x}%{} prefixlen 64 scopeid 0x{:x}\n",
                self.index, self.name, self.index
            ));
        }
        if !self.loopback {
            s.push_str("\tmedia: Ethernet autoselect (1000baseT <full-duplex>)\n\tstatus: active\n");
        }
        s.push_str(if self.link_local {
            "\tnd6 options=21<PERFORMNUD,AUTO_LINKLOCAL>\n"
        } else {
            "\tnd6 options=29<PERFORMNUD,IFDISABLED,AUTO_LINKLOCAL>\n"
        });
        s
    }
}

/// `a.b.c.d/len` (default `default` bits) as an address and prefix.
fn addr_prefix(s: &str, default4: u8, default6: u8) -> Option<(IpAddr, u8)> {
    let (a, p) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let ip: IpAddr = a.parse().ok()?;
    let prefix = match p {
        Some(p) => p.parse().ok()?,
        None if ip.is_ipv4() => default4,
        None => default6,
    };
    Some((ip, prefix))
}

fn lo0(index: u32) -> Iface {
    Iface {
        name: "lo0".into(),
        index,
        loopback: true,
        addrs: vec![("127.0.0.1".parse().unwrap(), 8), ("::1".parse().unwrap(), 128)],
        link_local: true,
    }
}

#[derive(serde::Deserialize)]
struct HostIface {
    name: String,
    #[serde(default)]
    addrs: Vec<String>,
}

/// The host's interfaces: lo0, then those of `host_ifconfig.json`.
fn host_ifaces(state: &Path) -> Vec<Iface> {
    let list: Vec<HostIface> = match fs::read_to_string(state.join("host_ifconfig.json")) {
        Ok(t) => serde_json::from_str(&t).expect("host_ifconfig.json"),
        Err(_) => vec![],
    };
    let mut out = vec![lo0(1)];
    for (i, h) in list.into_iter().filter(|h| h.name != "lo0").enumerate() {
        let addrs: Vec<(IpAddr, u8)> = h.addrs.iter().filter_map(|a| addr_prefix(a, 32, 128)).collect();
        let link_local = addrs.iter().any(|(a, _)| a.is_ipv6());
        out.push(Iface { name: h.name, index: i as u32 + 2, loopback: false, addrs, link_local });
    }
    out
}

/// What `ifconfig` shows inside a jail: a VNET jail's own stack, or for a jail that shares the
/// host's stack, the host's interfaces with only the jail's addresses.
fn jail_ifaces(state: &Path, j: &FakeJail) -> Vec<Iface> {
    if j.vnet {
        let epair = Iface {
            name: format!("epair{}b", j.jid),
            index: 2,
            loopback: false,
            addrs: j.vnet_addrs.iter().filter_map(|a| addr_prefix(a, 24, 64)).collect(),
            link_local: true,
        };
        return vec![lo0(1), epair];
    }
    let mine: Vec<IpAddr> = j.ip4.iter().chain(&j.ip6).filter_map(|a| a.parse().ok()).collect();
    let mut out = host_ifaces(state);
    let mut shown = Vec::new();
    for i in &mut out {
        i.addrs.retain(|(a, _)| mine.contains(a));
        i.link_local = false;
        shown.extend(i.addrs.iter().map(|(a, _)| *a));
    }
    let rest: Vec<(IpAddr, u8)> =
        mine.iter().filter(|a| !shown.contains(a)).map(|a| (*a, if a.is_ipv4() { 32 } else { 128 })).collect();
    if !rest.is_empty() {
        let index = out.len() as u32 + 1;
        out.push(Iface { name: "lo1".into(), index, loopback: true, addrs: rest, link_local: false });
    }
    out
}

fn ifconfig(state: &Path, args: &[String]) -> i32 {
    let usage = "usage: ifconfig [-j jail] [-f type:format] [-L] [-C] [-g groupname] interface address_family\n                [address [dest_address]] [parameters]\n       ifconfig [-j jail] interface create\n       ifconfig [-j jail] -a [-L] [-C] [-g groupname] [-d] [-m] [-u] [-v] [address_family]\n       ifconfig [-j jail] -l [-d] [-u] [address_family]\n       ifconfig [-j jail] [-L] [-C] [-g groupname] [-d] [-m] [-u] [-v]";
    // ifconfig collects its options with getopt first, wherever -j appears among them.
    let (opts, operands) = match getopt(args, "aCdf:g:G:j:klmnuv") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("ifconfig: {e}\n{usage}");
            return 1;
        }
    };
    let all = opts.iter().any(|(c, _)| *c == 'a');
    let names_only = opts.iter().any(|(c, _)| *c == 'l');
    let jail = opts.iter().rev().find(|(c, _)| *c == 'j').and_then(|(_, v)| v.clone());
    let ifaces = match &jail {
        None => host_ifaces(state),
        Some(which) => {
            let list = jails(state);
            let j = match find_jail(&list, which, false) {
                Ok(i) => &list[i],
                Err(msg) => {
                    eprintln!("ifconfig: {msg}");
                    return 1;
                }
            };
            // Every read of a jail leaves a line here as it starts: a read the agent kills never
            // reaches calls.log, which is written at exit.
            if let Ok(mut f) = fs::OpenOptions::new().create(true).append(true).open(state.join("ifconfig-started")) {
                let _ = writeln!(f, "{} {}", j.jid, std::process::id());
            }
            match j.ifconfig.as_deref() {
                Some("hang") => loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                },
                Some("fail") => {
                    eprintln!("ifconfig: ioctl (SIOCGIFCONF): Operation not permitted");
                    return 1;
                }
                Some("flood") => {
                    let mut out = std::io::stdout().lock();
                    let line = format!(
                        "epair{}b: flags=8843<UP,BROADCAST,RUNNING,SIMPLEX,MULTICAST> metric 0 mtu 1500\n",
                        j.jid
                    );
                    while out.write_all(line.as_bytes()).is_ok() {}
                    return 1;
                }
                Some(s) if s.starts_with("slow:") => {
                    let ms: u64 = s["slow:".len()..].parse().expect("slow:MS in jails.json");
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                Some("grandchild") | None => {}
                Some(other) => panic!("unknown ifconfig behaviour {other:?} in jails.json"),
            }
            let ifaces = jail_ifaces(state, j);
            if j.ifconfig.as_deref() == Some("grandchild") {
                for i in &ifaces {
                    print!("{}", i.print());
                }
                let _ = std::io::stdout().flush();
                // A descendant that keeps stdout open long after ifconfig itself exits.
                let _ = std::process::Command::new("sleep").arg("3000").spawn();
                return 0;
            }
            ifaces
        }
    };
    if names_only {
        println!("{}", ifaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(" "));
        return 0;
    }
    if all || operands.is_empty() {
        if !operands.is_empty() {
            eprintln!("{usage}");
            return 1;
        }
        for i in &ifaces {
            print!("{}", i.print());
        }
        return 0;
    }
    let name = &operands[0];
    if operands.len() > 1 {
        eprintln!("fake ifconfig: only showing interfaces is simulated");
        return 1;
    }
    match ifaces.iter().find(|i| i.name == *name) {
        Some(i) => {
            print!("{}", i.print());
            0
        }
        None => {
            eprintln!("ifconfig: interface {name} does not exist");
            1
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sysctl, sockstat

/// sysctl(8): `sysctl [-n] NAME...` prints `NAME: VALUE` (the value alone with -n) for each
/// variable it knows; for another, `sysctl: unknown oid 'NAME'` on stderr, and exit 1 at the end
/// (it goes on with the rest). Setting (`NAME=VALUE`) is not simulated.
fn sysctl(state: &Path, args: &[String]) -> i32 {
    let (opts, names) = match getopt(args, "AabB:deFhiJlNnoqTtWxf:") {
        Ok(v) => v,
        Err(e) => {
            eprintln!(
                "sysctl: {e}\nusage: sysctl [-bdeFhiJlNnoqTtWx]  [ -B <bufsize> ] [-f filename] name[=value] ..."
            );
            return 1;
        }
    };
    let has = |c: char| opts.iter().any(|(o, _)| *o == c);
    if names.is_empty() {
        eprintln!("fake sysctl: listing every variable is not simulated");
        return 1;
    }
    let mut known: std::collections::BTreeMap<String, Option<String>> =
        ["net.pf.filter_local", "net.inet.ip.forwarding", "net.inet6.ip6.forwarding"]
            .into_iter()
            .map(|n| (n.to_string(), Some("0".to_string())))
            .collect();
    if let Ok(t) = fs::read_to_string(state.join("sysctl.json")) {
        let set: std::collections::BTreeMap<String, Option<String>> = serde_json::from_str(&t).expect("sysctl.json");
        known.extend(set);
    }
    let mut code = 0;
    for name in &names {
        if name.contains('=') {
            eprintln!("fake sysctl: setting {name} is not simulated");
            return 1;
        }
        match known.get(name.as_str()).cloned().flatten() {
            Some(v) if has('n') => println!("{v}"),
            Some(v) => println!("{name}: {v}"),
            None if has('i') => {}
            None => {
                if !has('q') {
                    eprintln!("sysctl: unknown oid '{name}'");
                }
                code = 1;
            }
        }
    }
    code
}

#[derive(serde::Deserialize)]
struct Socket {
    #[serde(default = "root")]
    user: String,
    command: String,
    pid: u32,
    #[serde(default)]
    fd: u32,
    proto: String,
    local: String,
}

fn root() -> String {
    "root".into()
}

/// sockstat(1): `-4`, `-6` (the families; both when neither is given), `-l` (listening sockets:
/// the only ones this fake has), `-c` (connected: none), `-L`, `-n`; one line per socket under
/// the header, in sockstat's column widths.
fn sockstat(state: &Path, args: &[String]) -> i32 {
    let usage = "usage: sockstat [-46ACcfIiLlnqSsUuvw] [-j jid] [-p ports] [-P protocols]";
    let (opts, operands) = match getopt(args, "46ACcfIij:LlnP:p:qSsUuvw") {
        Ok(v) => v,
        Err(e) => {
            eprintln!("sockstat: {e}\n{usage}");
            return 1;
        }
    };
    if !operands.is_empty() {
        eprintln!("{usage}");
        return 1;
    }
    let has = |c: char| opts.iter().any(|(o, _)| *o == c);
    let (v4, v6) = if has('4') || has('6') { (has('4'), has('6')) } else { (true, true) };
    let connected_only = has('c') && !has('l');
    let list: Vec<Socket> = match fs::read_to_string(state.join("sockstat.json")) {
        Ok(t) => serde_json::from_str(&t).expect("sockstat.json"),
        Err(_) => vec![],
    };
    if !has('q') {
        println!(
            "{:<8} {:<10} {:<5} {:<2} {:<6} {:<21} {:<21}",
            "USER", "COMMAND", "PID", "FD", "PROTO", "LOCAL ADDRESS", "FOREIGN ADDRESS"
        );
    }
    for s in list.iter().filter(|_| !connected_only) {
        let fam4 = s.proto.ends_with('4') || s.proto.ends_with("46");
        let fam6 = s.proto.ends_with('6');
        if !((v4 && fam4) || (v6 && fam6)) {
            continue;
        }
        println!(
            "{:<8} {:<10} {:<5} {:<2} {:<6} {:<21} {:<21}",
            s.user, s.command, s.pid, s.fd, s.proto, s.local, "*:*"
        );
    }
    0
}
