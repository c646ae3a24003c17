//! Golden-file tests for `kleenectl render`: each `tests/golden/render/NAME.args` holds the
//! arguments (split on white space); `NAME.golden` holds the exit status, stdout and stderr the
//! real binary must print. `UPDATE_GOLDEN=1 cargo test --test render` rewrites the golden files
//! (review the diff before committing).

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_kleenectl")).args(args).output().expect("run kleenectl");
    format!(
        "# exit {}\n# stdout\n{}# stderr\n{}",
        out.status.code().expect("exit status"),
        String::from_utf8(out.stdout).expect("utf-8 stdout"),
        String::from_utf8(out.stderr).expect("utf-8 stderr"),
    )
}

#[test]
fn golden_render_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/render");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "args"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "golden cases missing from {}", dir.display());
    let mut failures = Vec::new();
    for case in &cases {
        let args = std::fs::read_to_string(case).unwrap();
        let args: Vec<&str> = std::iter::once("render").chain(args.split_whitespace()).collect();
        let got = run(&args);
        let golden = case.with_extension("golden");
        if update {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", golden.display()));
        if got != want {
            failures.push(format!("{}:\n--- want\n{want}--- got\n{got}", case.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn issue_done_criterion() {
    let out = Command::new(env!("CARGO_BIN_EXE_kleenectl"))
        .args(["render", "-j", "web", "--ip", "10.13.37.2", "--gateway", "em0", "em1:8080:80/udp"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    let tag = "\"kleene:web:em1:8080:80/udp\"";
    assert_eq!(
        lines[0],
        format!("rdr on em1 inet proto udp from any to (em1) port 8080 tag {tag} -> 10.13.37.2 port 80")
    );
    assert_eq!(
        lines[1],
        format!("rdr on lo0 inet proto udp from any to (em1) port 8080 tag {tag} -> 10.13.37.2 port 80")
    );
    let pass = lines[2].split(" label ").next().unwrap();
    assert_eq!(pass, format!("pass in quick inet proto udp from any to 10.13.37.2 port 80 tagged {tag}"));
}

#[test]
fn the_reach_issue_example() {
    let out = Command::new(env!("CARGO_BIN_EXE_kleenectl"))
        .args(["render", "-j", "web", "--ip", "10.13.37.2", "--gateway", "em0", "8080:80"])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let rules: Vec<&str> = stdout.lines().map(|l| l.split(" tag").next().unwrap()).collect();
    assert_eq!(
        rules,
        [
            "rdr on em0 inet proto tcp from any to (em0) port 8080",
            "rdr on lo0 inet proto tcp from any to (em0) port 8080",
            "rdr on lo0 inet proto tcp from any to 127.0.0.1 port 8080",
            "pass in quick inet proto tcp from any to 10.13.37.2 port 80",
        ],
        "outside, the host and its non-VNET jails through lo0; only what the rdr tagged passes"
    );
}

#[test]
fn bad_input_prints_nothing_on_stdout_and_exits_2() {
    for args in [
        &["render", "-j", "web", "--ip", "10.13.37.2", "70000"][..],
        &["render", "-j", "web", "--ip", "10.13.37.2", "8080:80/icmp"],
        &["render", "-j", "web", "--ip", "not-an-ip", "8080"],
        &["render", "-j", "web", "8080"],
        &["render", "-j", "we b", "--ip", "10.13.37.2", "8080"],
        &["render", "-j", "web", "--ip", "10.13.37.2", "--gateway", "em0\nrdr", "8080"],
        &["render", "-j", "web", "--ip", "10.13.37.2", "--link", "bridge0=x", "8080"],
        &["render", "-j", "web", "--ip", "10.13.37.2", "--network", "10.13.37.1/24", "8080"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_kleenectl")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
}
