//! The desired publications on disk: `STATE_DIR/publications.yml`.
//!
//! Written atomically (temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a crash at any point leaves either the old or the new file. A file that does
//! not parse stops the agent with an error naming it; the agent never overwrites it.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::core::model::{Cidr, JailName, NetworkName};
use crate::core::plan::Stored;
use crate::core::publication::Publication;
use crate::core::spec::PortSpec;

const FILE: &str = "publications.yml";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    next_seq: u64,
    #[serde(default)]
    publications: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    seq: u64,
    jail: JailName,
    spec: PortSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<NetworkName>,
}

/// The state file of one agent.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    path: PathBuf,
}

/// What the state file holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    pub publications: Vec<Stored>,
    /// The `seq` the next publication gets.
    pub next_seq: u64,
}

impl Store {
    /// Opens (creating the directory, mode 0700, if needed) and reads the state.
    pub fn open(dir: &Path) -> anyhow::Result<(Store, State)> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        }
        let store = Store { dir: dir.to_path_buf(), path: dir.join(FILE) };
        let state = store.read()?;
        Ok((store, state))
    }

    /// Reads the state in `dir` without creating anything (for `kleenectl agent --check`).
    pub fn check(dir: &Path) -> anyhow::Result<(PathBuf, State)> {
        let store = Store { dir: dir.to_path_buf(), path: dir.join(FILE) };
        let state = store.read()?;
        Ok((store.path, state))
    }

    /// The state file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> anyhow::Result<State> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State { publications: vec![], next_seq: 1 });
            }
            Err(e) => return Err(e).with_context(|| format!("cannot read state file {}", self.path.display())),
        };
        parse(&text).with_context(|| {
            format!(
                "state file {} does not parse; it was left untouched: repair it or move it away and publish again",
                self.path.display()
            )
        })
    }

    /// Replaces the state file atomically.
    pub fn save(&self, state: &State) -> anyhow::Result<()> {
        let text = render(state);
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let _ = fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &self.path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().with_context(|| format!("cannot write state file {}", self.path.display()))
    }
}

fn render(state: &State) -> String {
    let file = StateFile {
        version: VERSION,
        next_seq: state.next_seq,
        publications: state
            .publications
            .iter()
            .map(|s| {
                let p = &s.publication;
                Entry {
                    seq: s.seq,
                    jail: p.jail.clone(),
                    spec: p.spec.clone(),
                    sources: p.sources.clone(),
                    log: p.log,
                    network: p.network.clone(),
                }
            })
            .collect(),
    };
    let body = serde_yaml::to_string(&file).expect("the state serialises");
    format!("# kleene-rdr desired publications; written by the agent (kleenectl publish/unpublish).\n{body}")
}

fn parse(text: &str) -> anyhow::Result<State> {
    let file: StateFile = serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if file.version != VERSION {
        bail!("version {} is not supported (this agent reads version {VERSION})", file.version);
    }
    let mut publications: Vec<Stored> = Vec::with_capacity(file.publications.len());
    for e in file.publications {
        if e.seq >= file.next_seq {
            bail!("publication {} {} has seq {} but next_seq is {}", e.jail, e.spec, e.seq, file.next_seq);
        }
        if publications.iter().any(|s| s.seq == e.seq) {
            bail!("seq {} is used twice", e.seq);
        }
        if publications.iter().any(|s| s.publication.jail == e.jail && s.publication.spec == e.spec) {
            bail!("jail {} has {} twice", e.jail, e.spec);
        }
        publications
            .push(Stored { seq: e.seq, publication: Publication::new(e.jail, e.spec, e.sources, e.log, e.network) });
    }
    Ok(State { publications, next_seq: file.next_seq })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, jail: &str, spec: &str) -> Stored {
        Stored { seq, publication: Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None) }
    }

    #[test]
    fn round_trip_and_atomic_replace() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("db");
        let (store, st) = Store::open(&sd).unwrap();
        assert_eq!(st, State { publications: vec![], next_seq: 1 });
        let mut p = stored(1, "web", "em1:8080:80/udp");
        p.publication = Publication::new(
            "web".parse().unwrap(),
            "em1:8080:80/udp".parse().unwrap(),
            vec!["192.0.2.0/24".parse().unwrap()],
            true,
            Some("kleenet".parse().unwrap()),
        );
        let st = State { publications: vec![p, stored(2, "db", "5432")], next_seq: 3 };
        store.save(&st).unwrap();
        let (_, back) = Store::open(&sd).unwrap();
        assert_eq!(back, st);
        let names: Vec<_> = fs::read_dir(&sd).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FILE)], "no temporary file is left");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(store.path()).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_bad_file_is_an_error_and_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        for bad in [
            "version: 1\nnext_seq: 2\npublications:\n  - {seq: 1, jail: web, spec: 'em1:8080'}\n",
            "version: 2\nnext_seq: 1\n",
            "version: 1\nnext_seq: 1\npublications:\n  - {seq: 1, jail: web, spec: '80'}\n",
            "version: 1\nnext_seq: 3\npublications:\n  - {seq: 1, jail: web, spec: '80'}\n  - {seq: 2, jail: web, spec: '80:80/tcp'}\n",
            "version: 1\nnext_seq: 3\nextra: 1\n",
            "{{{",
        ] {
            fs::write(&path, bad).unwrap();
            let e = format!("{:#}", Store::open(dir.path()).unwrap_err());
            assert!(e.contains("publications.yml") && e.contains("left untouched"), "{e}");
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
    }
}
