//! The desired publications on disk: one file per jail, `STATE_DIR/publications/<anchor
//! component>.yml`, so that a change rewrites only the jail it concerns.
//!
//! Each file is written atomically (temporary file in the same directory, fsync, rename, fsync of
//! the directory) and every change touches one file, so a crash at any point leaves either the
//! old or the new state. A file that does not parse stops the agent with an error naming it;
//! the agent never overwrites it.

use std::collections::BTreeMap;
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

const DIR: &str = "publications";
const VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JailFile {
    version: u32,
    jail: JailName,
    publications: Vec<Entry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    seq: u64,
    spec: PortSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<NetworkName>,
}

/// The state directory of one agent.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
}

/// What the state directory holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct State {
    /// Every publication, in `seq` order.
    pub publications: Vec<Stored>,
    /// The `seq` the next publication gets (one more than the highest stored).
    pub next_seq: u64,
}

impl Store {
    /// Opens (creating the directories, mode 0700, if needed) and reads the state.
    pub fn open(state_dir: &Path) -> anyhow::Result<(Store, State)> {
        let dir = state_dir.join(DIR);
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("cannot create state directory {}", dir.display()))?;
        }
        let state = read_dir(&dir)?;
        Ok((Store { dir }, state))
    }

    /// Reads the state in `state_dir` without creating anything (`kleenectl agent --check`).
    pub fn check(state_dir: &Path) -> anyhow::Result<(PathBuf, State)> {
        let dir = state_dir.join(DIR);
        let state = if dir.exists() { read_dir(&dir)? } else { State { publications: vec![], next_seq: 1 } };
        Ok((dir, state))
    }

    /// The directory holding the per-jail files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `jail`.
    pub fn path_of(&self, jail: &JailName) -> PathBuf {
        self.dir.join(format!("{}.yml", jail.component()))
    }

    /// Replaces `jail`'s publications atomically (removes its file when there are none).
    pub fn save_jail(&self, jail: &JailName, publications: &[&Stored]) -> anyhow::Result<()> {
        let path = self.path_of(jail);
        let write = || -> std::io::Result<()> {
            if publications.is_empty() {
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            } else {
                let tmp = self.dir.join(format!(".{}.tmp", jail.component()));
                let _ = fs::remove_file(&tmp);
                let mut f = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
                f.write_all(render(jail, publications).as_bytes())?;
                f.sync_all()?;
                drop(f);
                fs::rename(&tmp, &path)?;
            }
            File::open(&self.dir)?.sync_all()
        };
        write().with_context(|| format!("cannot write state file {}", path.display()))
    }
}

fn render(jail: &JailName, publications: &[&Stored]) -> String {
    let file = JailFile {
        version: VERSION,
        jail: jail.clone(),
        publications: publications
            .iter()
            .map(|s| {
                let p = &s.publication;
                Entry {
                    seq: s.seq,
                    spec: p.spec.clone(),
                    sources: p.sources.clone(),
                    log: p.log,
                    network: p.network.clone(),
                }
            })
            .collect(),
    };
    let body = serde_yaml::to_string(&file).expect("the state serialises");
    format!("# kleene-rdr: publications of one jail, written by the agent (kleenectl publish/unpublish).\n{body}")
}

fn read_dir(dir: &Path) -> anyhow::Result<State> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot read state directory {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot read state directory {}", dir.display()))?;
    files.retain(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        !name.starts_with('.') && name.ends_with(".yml")
    });
    files.sort();
    let mut publications: Vec<Stored> = Vec::new();
    let mut seqs: BTreeMap<u64, String> = BTreeMap::new();
    for path in files {
        let bad = |e: anyhow::Error| {
            e.context(format!(
                "state file {} does not parse; it was left untouched: repair it or move it away and publish again",
                path.display()
            ))
        };
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read state file {}", path.display()))?;
        let pubs = parse(&text, &path).map_err(bad)?;
        for s in pubs {
            if let Some(other) = seqs.insert(s.seq, path.display().to_string()) {
                bail!("state files {} and {} both use seq {}; repair one of them", other, path.display(), s.seq);
            }
            publications.push(s);
        }
    }
    publications.sort_by_key(|s| s.seq);
    let next_seq = publications.last().map_or(1, |s| s.seq + 1);
    Ok(State { publications, next_seq })
}

fn parse(text: &str, path: &Path) -> anyhow::Result<Vec<Stored>> {
    let file: JailFile = serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
    if file.version != VERSION {
        bail!("version {} is not supported (this agent reads version {VERSION})", file.version);
    }
    let expected = format!("{}.yml", file.jail.component());
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        bail!("it holds jail {} whose file would be {expected}", file.jail);
    }
    let mut out: Vec<Stored> = Vec::with_capacity(file.publications.len());
    for e in file.publications {
        if out.iter().any(|s| s.publication.spec == e.spec) {
            bail!("jail {} has {} twice", file.jail, e.spec);
        }
        out.push(Stored {
            seq: e.seq,
            publication: Publication::new(file.jail.clone(), e.spec, e.sources, e.log, e.network),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(seq: u64, jail: &str, spec: &str) -> Stored {
        Stored { seq, publication: Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None) }
    }

    #[test]
    fn round_trip_one_file_per_jail() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("db");
        let (store, st) = Store::open(&sd).unwrap();
        assert_eq!(st, State { publications: vec![], next_seq: 1 });
        let mut a = stored(1, "web", "em1:8080:80/udp");
        a.publication = Publication::new(
            "web".parse().unwrap(),
            "em1:8080:80/udp".parse().unwrap(),
            vec!["192.0.2.0/24".parse().unwrap()],
            true,
            Some("kleenet".parse().unwrap()),
        );
        let b = stored(2, "db", "5432");
        let c = stored(7, "web", "443");
        let odd = stored(5, "_odd/name", "22");
        store.save_jail(&"web".parse().unwrap(), &[&a, &c]).unwrap();
        store.save_jail(&"db".parse().unwrap(), &[&b]).unwrap();
        store.save_jail(&"_odd/name".parse().unwrap(), &[&odd]).unwrap();
        let (_, back) = Store::open(&sd).unwrap();
        assert_eq!(back, State { publications: vec![a.clone(), b, odd, c.clone()], next_seq: 8 });
        let mut names: Vec<String> =
            fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let odd_file = format!("{}.yml", "_odd/name".parse::<JailName>().unwrap().component());
        let mut want = vec!["db.yml".to_string(), "web.yml".to_string(), odd_file];
        want.sort();
        assert_eq!(names, want, "no temporary file is left");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(fs::metadata(store.path_of(&"web".parse().unwrap())).unwrap().permissions().mode() & 0o777, 0o600);
        store.save_jail(&"db".parse().unwrap(), &[]).unwrap();
        assert!(!store.path_of(&"db".parse().unwrap()).exists(), "an empty jail has no file");
        let (_, back) = Store::open(&sd).unwrap();
        assert_eq!(back.publications.len(), 3);
    }

    #[test]
    fn a_bad_file_is_an_error_and_is_not_touched() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let path = store.dir().join("web.yml");
        for bad in [
            "version: 1\njail: web\npublications:\n  - {seq: 1, spec: 'em1:8080'}\n",
            "version: 2\njail: web\npublications: []\n",
            "version: 1\njail: db\npublications: []\n",
            "version: 1\njail: web\npublications:\n  - {seq: 1, spec: '80'}\n  - {seq: 2, spec: '80:80/tcp'}\n",
            "version: 1\njail: web\npublications: []\nextra: 1\n",
            "{{{",
        ] {
            fs::write(&path, bad).unwrap();
            let e = format!("{:#}", Store::open(dir.path()).unwrap_err());
            assert!(e.contains("web.yml") && e.contains("left untouched"), "{e}");
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
        fs::write(&path, "version: 1\njail: web\npublications:\n  - {seq: 1, spec: '80'}\n").unwrap();
        fs::write(store.dir().join("db.yml"), "version: 1\njail: db\npublications:\n  - {seq: 1, spec: '81'}\n")
            .unwrap();
        let e = format!("{:#}", Store::open(dir.path()).unwrap_err());
        assert!(e.contains("both use seq 1"), "{e}");
    }
}
