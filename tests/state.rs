//! The state directory seen from outside: the real `kleenectl agent` (and `agent --check`)
//! refuses a state directory others can write and a state file that is a link, and what it
//! prints (what reaches the log) never quotes a state file.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Output};

use common::Host;

const SECRET: &str = "root:$6$S3cr3tSa1t$Zm9vYmFy:19000:0:99999:7:::";

fn agent(args: &[&str], h: &Host) -> Output {
    let cfg = h.config("");
    Command::new(common::KLEENECTL).arg("agent").args(args).arg("--config").arg(cfg).output().unwrap()
}

#[test]
fn a_linked_state_file_is_refused_without_showing_it() {
    let h = Host::new();
    let shadow = h.root().join("shadow");
    std::fs::write(&shadow, format!("{SECRET}\n")).unwrap();
    std::fs::create_dir_all(h.root().join("db/publications")).unwrap();
    std::os::unix::fs::symlink(&shadow, h.root().join("db/publications/web.yml")).unwrap();
    for args in [&[][..], &["--check"][..]] {
        let out = agent(args, &h);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains("publications/web.yml is a symbolic link"), "{args:?}: {err}");
        assert!(err.contains("remove it; the agent writes only regular files"), "{args:?}: {err}");
        assert!(!err.contains("S3cr3t") && !String::from_utf8_lossy(&out.stdout).contains("S3cr3t"), "{err}");
    }
    // The same text in a regular file: it does not parse, and is not quoted either.
    std::fs::remove_file(h.root().join("db/publications/web.yml")).unwrap();
    std::fs::copy(&shadow, h.root().join("db/publications/web.yml")).unwrap();
    let out = agent(&[], &h);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("publications/web.yml does not parse") && err.contains("line 1, column 1"), "{err}");
    assert!(!err.contains("S3cr3t"), "{err}");
}

#[test]
fn a_state_dir_others_can_write_is_refused() {
    let h = Host::new();
    let db = h.root().join("db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o777)).unwrap();
    for args in [&[][..], &["--check"][..]] {
        let out = agent(args, &h);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("chmod go-w {}", db.display())), "{args:?}: {err}");
    }
    assert!(!db.join("publications").exists(), "nothing is created in a refused directory");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = agent(&["--check"], &h);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

#[test]
fn a_seq_that_would_wrap_stops_the_agent_instead_of_reassigning_publications() {
    let h = Host::new();
    std::fs::create_dir_all(h.root().join("db/publications")).unwrap();
    std::fs::write(
        h.root().join("db/publications/web.yml"),
        "version: 1\njail: web\npublications:\n- seq: 18446744073709551615\n  spec: 8080:80/tcp\n",
    )
    .unwrap();
    std::fs::write(
        h.root().join("db/publications/db.yml"),
        "version: 1\njail: db\npublications:\n- seq: 1\n  spec: 5432:5432/tcp\n",
    )
    .unwrap();
    let out = agent(&[], &h);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("publications/web.yml") && err.contains("seq is out of range"), "{err}");
    assert!(!err.contains("18446744073709551615"), "the number is not echoed: {err}");
    assert_eq!(
        std::fs::read_to_string(h.root().join("db/publications/db.yml")).unwrap(),
        "version: 1\njail: db\npublications:\n- seq: 1\n  spec: 5432:5432/tcp\n",
        "nothing was rewritten"
    );
}
