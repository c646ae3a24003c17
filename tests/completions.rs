//! `kleenectl completions bash|zsh|fish`: each script parses in its shell, and after `-j` /
//! `--jail` it offers the names of the running jails, read from a fake `jls` on PATH that
//! answers `jls name` as jls(8) does (one name per line).
//!
//! bash and fish are driven through their own completion entry points (bash: the function
//! `complete -p` registered, with COMP_WORDS set as readline sets them; fish: `complete -C`);
//! zsh through a real interactive shell on a pseudo-terminal (zsh/zpty), tab included.
//! A shell that is not installed makes its test print SKIPPED, unless KLEENE_RDR_REQUIRE_SHELLS=1
//! (set by .ci/run, which installs bash, zsh and fish), which makes it a failure.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const KLEENECTL: &str = env!("CARGO_BIN_EXE_kleenectl");

/// The jails the fake jls reports, in its order.
const JAILS: [&str; 3] = ["web", "wiki", "db"];

/// Whether `shell` can run here; a missing shell is a loud skip, or a failure in CI.
fn have(shell: &str, test: &str) -> bool {
    let found = Command::new(shell).arg("-c").arg("exit 0").output().is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("KLEENE_RDR_REQUIRE_SHELLS").as_deref() == Ok("1") {
            panic!("{shell} is not installed, and KLEENE_RDR_REQUIRE_SHELLS=1: apt-get install {shell}");
        }
        eprintln!("\n*** SKIPPED {test}: {shell} is not installed ***\n");
    }
    found
}

/// A temporary directory holding the script for `shell` and a `bin/` with a fake jls.
struct Setup {
    dir: tempfile::TempDir,
    script: PathBuf,
}

impl Setup {
    fn new(shell: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(KLEENECTL).args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "kleenectl completions {shell}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
        let script = dir.path().join(format!("kleenectl.{shell}"));
        fs::write(&script, &out.stdout).unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        // jls(8): with parameters, one line per running jail holding their values; `jls name`
        // prints the names. Anything else is not what the scripts may ask.
        let jls = bin.join("jls");
        fs::write(
            &jls,
            format!(
                "#!/bin/sh\nif [ \"$#\" -ne 1 ] || [ \"$1\" != name ]; then\n\techo \"jls: unexpected arguments: $*\" >&2\n\texit 1\nfi\nprintf '%s\\n' {}\n",
                JAILS.join(" ")
            ),
        )
        .unwrap();
        fs::set_permissions(&jls, fs::Permissions::from_mode(0o755)).unwrap();
        Setup { dir, script }
    }

    /// PATH with the fake jls first.
    fn path(&self) -> String {
        format!("{}:{}", self.dir.path().join("bin").display(), std::env::var("PATH").unwrap_or_default())
    }

    /// PATH without any jls (the host's own, if it has one, is not on it).
    fn path_without_jls(&self) -> String {
        let empty = self.dir.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        let shell_dirs: Vec<String> = ["bash", "zsh", "fish", "sh"]
            .iter()
            .filter_map(|s| which(s))
            .map(|p| p.parent().unwrap().display().to_string())
            .collect();
        format!("{}:{}", empty.display(), shell_dirs.join(":"))
    }
}

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").ok()?;
    path.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

/// Runs `program args` with PATH set; returns stdout, asserting success.
fn run(program: &str, args: &[&str], path: &str) -> String {
    let out = Command::new(program).args(args).env("PATH", path).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// bash: what the registered completion function puts in COMPREPLY for `words` (the last one is
/// the word under the cursor, split as readline splits, `=` being a word of its own).
fn bash_complete(setup: &Setup, path: &str, words: &[&str]) -> Vec<String> {
    let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
    let program = format!(
        r#"set -u
source '{script}'
spec=$(complete -p kleenectl)
fn=${{spec#*-F }}
fn=${{fn%% *}}
COMP_WORDS=({words})
COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
prev=""
(( COMP_CWORD > 0 )) && prev=${{COMP_WORDS[COMP_CWORD - 1]}}
COMPREPLY=()
"$fn" kleenectl "${{COMP_WORDS[COMP_CWORD]}}" "$prev"
printf '%s\n' "${{COMPREPLY[@]}}"
"#,
        script = setup.script.display(),
        words = quoted.join(" "),
    );
    run("bash", &["--norc", "--noprofile", "-c", &program], path)
        .lines()
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}

#[test]
fn bash_script_parses_and_completes_running_jails_after_j() {
    if !have("bash", "bash_script_parses_and_completes_running_jails_after_j") {
        return;
    }
    let s = Setup::new("bash");
    run("bash", &["-n", s.script.to_str().unwrap()], &s.path());
    let path = s.path();
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "ls", "-j", ""]), JAILS);
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "publish", "--jail", "w"]), ["web", "wiki"]);
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "unpublish", "--jail", "=", "d"]), ["db"]);
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "rules", "--jail", "="]), JAILS);
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "render", "-j", "wi"]), ["wiki"]);
    // Everything else is clap's: subcommands and options, never jail names.
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "l"]), ["ls"]);
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "ls", "--js"]), ["--json"]);
    assert_eq!(bash_complete(&s, &path, &["kleenectl", "completions", "z"]), ["zsh"]);
    assert!(!bash_complete(&s, &path, &["kleenectl", "ls", "--socket", ""]).iter().any(|w| w == "web"));
    // No jls at all (Linux, a jail without jls): nothing, and no error.
    let bare = s.path_without_jls();
    if !Path::new("/usr/sbin/jls").exists() {
        assert!(bash_complete(&s, &bare, &["kleenectl", "ls", "-j", ""]).is_empty());
    }
}

#[test]
fn fish_script_parses_and_completes_running_jails_after_j() {
    if !have("fish", "fish_script_parses_and_completes_running_jails_after_j") {
        return;
    }
    let s = Setup::new("fish");
    let script = s.script.to_str().unwrap();
    run("fish", &["--no-execute", script], &s.path());
    // `complete -C LINE` prints what fish offers at the end of LINE: candidate, tab, description.
    let complete = |path: &str, line: &str| -> Vec<String> {
        let program = format!("source '{script}'; complete -C '{line}'");
        run("fish", &["--no-config", "-c", &program], path)
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect()
    };
    let path = s.path();
    let mut sorted = JAILS.to_vec();
    sorted.sort();
    assert_eq!(complete(&path, "kleenectl ls -j "), sorted);
    assert_eq!(complete(&path, "kleenectl publish --jail w"), ["web", "wiki"]);
    assert_eq!(complete(&path, "kleenectl unpublish --jail=d"), ["--jail=db"]);
    assert_eq!(complete(&path, "kleenectl render -jwi"), ["-jwiki"]);
    assert_eq!(complete(&path, "kleenectl l"), ["ls"]);
    let bare = s.path_without_jls();
    if !Path::new("/usr/sbin/jls").exists() {
        assert!(complete(&bare, "kleenectl ls -j ").is_empty());
    }
}

#[test]
fn zsh_script_parses_and_completes_running_jails_after_j() {
    if !have("zsh", "zsh_script_parses_and_completes_running_jails_after_j") {
        return;
    }
    let s = Setup::new("zsh");
    run("zsh", &["-n", s.script.to_str().unwrap()], &s.path());
    // compinit finds completion functions on fpath by their file name: _kleenectl.
    let fpath = s.dir.path().join("site-functions");
    fs::create_dir(&fpath).unwrap();
    fs::copy(&s.script, fpath.join("_kleenectl")).unwrap();
    // An interactive zsh on a pseudo-terminal, where `kleenectl` is a function that prints its
    // arguments: once zle shows a prompt, type `typed` (tabs included) and read what the terminal
    // shows until it matches `until` (a zsh pattern). zle shows no listing while typeahead is
    // pending, so a listing is read before anything else is typed.
    let session = |path: &str, typed: &str, until: &str| -> String {
        let driver = s.dir.path().join("drive.zsh");
        fs::write(
            &driver,
            format!(
                r#"zmodload zsh/zpty
zpty z 'TERM=dumb PATH={path} zsh -f -i'
zpty -w z 'PS1="> "; fpath=({fpath} $fpath); autoload -U compinit; compinit -u -D; setopt nobeep; LISTMAX=1000'
zpty -w z 'kleenectl() {{ print -r -- "RAN:<$*>"; }}; print READY-$((40 + 2))'
zpty -r z out '*READY-42*> *'
zpty -w -n z $'{typed}'
zpty -r z out '{until}'
print -r -- "$out"
zpty -d z
"#,
                fpath = fpath.display()
            ),
        )
        .unwrap();
        // timeout(1) bounds a session whose expected output never comes.
        run("timeout", &["60", "zsh", "-f", driver.to_str().unwrap()], path)
    };
    let path = s.path();
    // An ambiguous word lists every running jail.
    let listed = session(&path, "kleenectl ls -j \\t", "*wiki*");
    let listing = listed.lines().find(|l| l.contains("wiki")).unwrap();
    let mut offered: Vec<&str> = listing.split_whitespace().collect();
    offered.sort();
    let mut expected = JAILS.to_vec();
    expected.sort();
    assert_eq!(offered, expected, "{listed}");
    // A unique prefix is completed in place: the line that runs holds the whole name.
    let ran = session(&path, "kleenectl publish --jail wi\\t8080\\n", "*RAN:<*>*");
    assert!(ran.contains("RAN:<publish --jail wiki 8080>"), "{ran}");
    let ran = session(&path, "kleenectl rules -j d\\t\\n", "*RAN:<*>*");
    assert!(ran.contains("RAN:<rules -j db>"), "{ran}");
    // Subcommands still come from clap's specs.
    let ran = session(&path, "kleenectl reconc\\t\\n", "*RAN:<*>*");
    assert!(ran.contains("RAN:<reconcile>"), "{ran}");
}

#[test]
fn an_unknown_shell_is_a_usage_error() {
    let out = Command::new(KLEENECTL).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tcsh") && err.contains("bash") && err.contains("zsh") && err.contains("fish"), "{err}");
}
