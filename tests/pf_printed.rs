//! What FreeBSD's own pfctl accepts, refuses and prints (tests/data/pf-printed.jsonl, a copy of
//! shared/pf-printed.jsonl: 66 rule sets
//! run through FreeBSD 14.3's and main's pfctl parser and printer), against the fake pfctl the
//! other integration tests rely on, and against the read-back normaliser the agent verifies
//! anchors with (`core::readback`). A fake that merely echoed its input would hide the bugs these
//! outputs exist to expose; a normaliser that disagreed with pf would make verification never
//! converge.

mod common;

use std::path::PathBuf;

use common::{Host, Out};
use kleene_rdr::core::readback::readback_keys;
use serde_json::Value;

/// What one pfctl build did with one rule set.
struct Expect {
    exit: i32,
    stderr: String,
    printed_numeric: String,
    printed_names: String,
}

struct Entry {
    name: String,
    anchor: String,
    input: String,
    freebsd_14_3: Expect,
    freebsd_main: Expect,
}

impl Entry {
    fn accepted(&self) -> bool {
        self.freebsd_14_3.exit == 0
    }
}

fn expect(v: &Value, entry: &str, build: &str) -> Expect {
    let b = &v[build];
    let text = |k: &str| {
        b[k].as_str().unwrap_or_else(|| panic!("pf-printed.jsonl: {entry}: {build}.{k} is not a string")).to_string()
    };
    Expect {
        exit: b["exit"].as_i64().unwrap_or_else(|| panic!("pf-printed.jsonl: {entry}: {build}.exit missing")) as i32,
        stderr: text("stderr"),
        printed_numeric: text("printed_numeric"),
        printed_names: text("printed_names"),
    }
}

/// Every entry of tests/data/pf-printed.jsonl (a copy of the project's shared/pf-printed.jsonl,
/// which `.ci/run` keeps identical); a missing or malformed file fails the test.
fn entries() -> Vec<Entry> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/pf-printed.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\nThese tests compare the fake pfctl with FreeBSD's own output recorded there; \
             the file is required.",
            path.display()
        )
    });
    let out: Vec<Entry> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{}:{}: not JSON: {e}", path.display(), n + 1));
            let name = v["name"].as_str().unwrap_or_else(|| panic!("{}:{}: no name", path.display(), n + 1));
            Entry {
                name: name.to_string(),
                anchor: v["anchor"].as_str().unwrap_or_default().to_string(),
                input: v["input"].as_str().unwrap_or_else(|| panic!("{name}: no input")).to_string(),
                freebsd_14_3: expect(&v, name, "freebsd-14.3"),
                freebsd_main: expect(&v, name, "freebsd-main-2024-10"),
            }
        })
        .collect();
    assert!(out.len() >= 66, "{}: only {} entries (66 expected)", path.display(), out.len());
    out
}

/// pfctl's arguments for `entry`: `-a ANCHOR` unless it is the main ruleset.
fn args<'a>(entry: &'a Entry, before: &[&'a str], after: &[&'a str]) -> Vec<&'a str> {
    let mut v = before.to_vec();
    if !entry.anchor.is_empty() {
        v.extend(["-a", entry.anchor.as_str()]);
    }
    v.extend(after);
    v
}

/// A readable account of one difference.
fn diff(entry: &str, what: &str, want: &str, got: &str) -> String {
    format!("{entry}: {what} differs\n  FreeBSD 14.3:\n{}\n  fake:\n{}", indent(want), indent(got))
}

fn indent(s: &str) -> String {
    if s.is_empty() {
        return "    (empty)".into();
    }
    s.lines().map(|l| format!("    | {l}")).collect::<Vec<_>>().join("\n")
}

fn check(failures: &mut Vec<String>, entry: &str, what: &str, out: &Out, want: &Expect, stdout: &str) {
    if out.code != want.exit {
        failures.push(format!(
            "{entry}: {what}: exit status {} (FreeBSD 14.3: {})\n{}",
            out.code,
            want.exit,
            indent(&out.stderr)
        ));
    }
    if out.stderr != want.stderr {
        failures.push(diff(entry, &format!("{what}: stderr"), &want.stderr, &out.stderr));
    }
    if out.stdout != stdout {
        failures.push(diff(entry, &format!("{what}: stdout"), stdout, &out.stdout));
    }
}

fn report(failures: Vec<String>, total: usize) {
    assert!(failures.is_empty(), "{} of {total} checks failed:\n\n{}", failures.len(), failures.join("\n\n"));
}

#[test]
fn freebsd_14_3_and_main_agree_but_for_the_program_name() {
    let mut failures = Vec::new();
    let all = entries();
    for e in &all {
        let (a, b) = (&e.freebsd_14_3, &e.freebsd_main);
        let main_stderr = b.stderr.replace("pfctl-main: ", "pfctl: ");
        for (what, x, y) in [
            ("stderr", &a.stderr, &main_stderr),
            ("printed_numeric", &a.printed_numeric, &b.printed_numeric),
            ("printed_names", &a.printed_names, &b.printed_names),
        ] {
            if x != y {
                failures.push(format!(
                    "{}: {what}: 14.3 and main differ\n{}\n  main:\n{}",
                    e.name,
                    indent(x),
                    indent(y)
                ));
            }
        }
        if a.exit != b.exit {
            failures.push(format!("{}: exit: 14.3 {} and main {}", e.name, a.exit, b.exit));
        }
    }
    report(failures, all.len());
}

/// `pfctl [-a ANCHOR] [-P] -nvf -` on the fake: the exit status, stderr and printed rules of
/// FreeBSD 14.3, for every entry, with and without -P.
#[test]
fn the_fake_pfctl_parses_and_prints_as_freebsd_does() {
    let h = Host::new();
    let mut failures = Vec::new();
    let all = entries();
    for e in &all {
        let want = &e.freebsd_14_3;
        let numeric = h.run_tool("pfctl", &args(e, &["-P"], &["-nvf", "-"]), Some(&e.input));
        check(&mut failures, &e.name, "pfctl -P -nvf -", &numeric, want, &want.printed_numeric);
        let names = h.run_tool("pfctl", &args(e, &[], &["-nvf", "-"]), Some(&e.input));
        check(&mut failures, &e.name, "pfctl -nvf -", &names, want, &want.printed_names);
    }
    report(failures, all.len() * 2);
}

/// Loading for real keeps everything pf prints back: `-s nat` then `-s rules` print what
/// `-nvf` printed, minus table definitions and `set` options (which `-s Tables` and `-s info`
/// show instead). A refused rule set loads nothing and gives the same messages plus pfctl's
/// `Syntax error in config file` line.
#[test]
fn loaded_rules_print_back_as_freebsd_prints_them() {
    let mut failures = Vec::new();
    let all = entries();
    for e in &all {
        let h = Host::new();
        let want = &e.freebsd_14_3;
        let load = h.run_tool("pfctl", &args(e, &[], &["-f", "-"]), Some(&e.input));
        if !e.accepted() {
            // Anchor paths pfctl cannot copy fail before parsing; syntax errors after it.
            let stderr = if want.stderr.contains("strlcpy") {
                want.stderr.clone()
            } else {
                format!("{}pfctl: Syntax error in config file: pf rules not loaded\n", want.stderr)
            };
            if load.code != 1 || load.stderr != stderr {
                failures.push(diff(&e.name, "refused load", &stderr, &format!("exit {}\n{}", load.code, load.stderr)));
            }
            let shown = h.run_tool("pfctl", &args(e, &["-P"], &["-s", "nat"]), None);
            if !e.anchor.is_empty() && shown.stderr != "pfctl: DIOCGETRULES: Invalid argument\n" {
                failures.push(format!("{}: a refused load left an anchor behind: {shown:?}", e.name));
            }
            continue;
        }
        if load.code != 0 || !load.stderr.is_empty() {
            failures.push(format!("{}: load failed: {load:?}", e.name));
            continue;
        }
        for (flags, printed) in [(&["-P"][..], &want.printed_numeric), (&[][..], &want.printed_names)] {
            let nat = h.run_tool("pfctl", &args(e, flags, &["-s", "nat"]), None);
            let rules = h.run_tool("pfctl", &args(e, flags, &["-s", "rules"]), None);
            let wanted: String = printed
                .lines()
                .filter(|l| !l.starts_with("table ") && !l.starts_with("set "))
                .map(|l| format!("{l}\n"))
                .collect();
            let got = format!("{}{}", nat.stdout, rules.stdout);
            if got != wanted || !nat.stderr.is_empty() || !rules.stderr.is_empty() {
                failures.push(diff(
                    &e.name,
                    &format!("pfctl {} -s nat + -s rules", flags.join(" ")),
                    &wanted,
                    &format!("{got}{}{}", nat.stderr, rules.stderr),
                ));
            }
        }
    }
    report(failures, all.len());
}

/// Whether readback must converge on `e`. Every accepted anchor entry of the render/ group (what
/// kleenectl renders) and the edge/ group (limits, keywords, /0, quoting, ranges), and also the
/// reach/ group (candidate forms: tag/tagged, nat, pass out, interface and address lists, rdr
/// pass) so that adopting one of them cannot silently break verification. Not edge/table-source:
/// a table definition is not a rule and never comes back from `-s nat` / `-s rules` (pf shows it
/// with `-s Tables`), so an anchor with one cannot be verified this way. Not main/: the main
/// ruleset is checked for its hooks, not compared.
fn converges(e: &Entry) -> bool {
    e.accepted()
        && !e.anchor.is_empty()
        && ["render/", "edge/", "reach/"].iter().any(|g| e.name.starts_with(g))
        && e.name != "edge/table-source"
}

/// The agent's verification: the keys of the text it loaded equal the keys of what pfctl -P
/// prints back, both for FreeBSD's recorded output and for what the fake holds after a load.
#[test]
fn readback_of_what_was_loaded_equals_readback_of_what_pf_prints() {
    let mut failures = Vec::new();
    let all = entries();
    let checked: Vec<&Entry> = all.iter().filter(|e| converges(e)).collect();
    assert!(checked.len() >= 30, "only {} entries qualify: the jsonl changed?", checked.len());
    let h = Host::new();
    for e in &checked {
        let loaded = readback_keys(&e.input);
        if let Some(k) = loaded.iter().find(|k| k.starts_with("? ")) {
            failures.push(format!("{}: readback does not understand the input line {k:?}", e.name));
            continue;
        }
        let printed = readback_keys(&e.freebsd_14_3.printed_numeric);
        if printed != loaded {
            failures.push(format!(
                "{}: readback keys of the input and of FreeBSD 14.3's -P output differ\n  input:\n{}\n  printed:\n{}",
                e.name,
                indent(&loaded.join("\n")),
                indent(&printed.join("\n"))
            ));
        }
        let load = h.run_tool("pfctl", &args(e, &[], &["-f", "-"]), Some(&e.input));
        if load.code != 0 {
            failures.push(format!("{}: load failed: {load:?}", e.name));
            continue;
        }
        let nat = h.run_tool("pfctl", &args(e, &["-P"], &["-s", "nat"]), None);
        let rules = h.run_tool("pfctl", &args(e, &["-P"], &["-s", "rules"]), None);
        let back = readback_keys(&(nat.stdout.clone() + &rules.stdout));
        if back != loaded {
            failures.push(format!(
                "{}: readback keys of the input and of the fake's -s nat + -s rules differ\n  input:\n{}\n  read back:\n{}",
                e.name,
                indent(&loaded.join("\n")),
                indent(&back.join("\n"))
            ));
        }
    }
    report(failures, checked.len());
}
