//! The desired publications on disk: one file per jail, `STATE_DIR/publications/<anchor
//! component>.yml`, so that a change rewrites only the jail it concerns.
//!
//! What this module guarantees:
//!
//! - Atomic writes. Each file is written to a temporary file in the same directory (created
//!   afresh with `O_EXCL|O_NOFOLLOW`, mode 0600), fsynced, renamed over the old one, and the
//!   directory is fsynced; a write that fails removes its temporary file. Every change touches
//!   one file, so a crash at any point leaves either the old or the new state.
//! - Ownership. `STATE_DIR` and `STATE_DIR/publications` must belong to the agent's effective
//!   user and be writable by no one else (`publications` must be a real directory; `STATE_DIR`
//!   may be a link to one), or the agent refuses to start and `kleenectl agent --check` fails:
//!   whoever can write there decides what pf publishes.
//! - No links followed. Every state file is opened with `O_NOFOLLOW` and must be a regular file
//!   of at most [`MAX_FILE_BYTES`]; a link, a directory or a device named `*.yml` is an error.
//! - Bounded values. Every `seq` is in `1..=`[`MAX_SEQ`], and the next one is computed with
//!   checked arithmetic, so a hand-edited number can neither wrap nor reuse a seq.
//! - No file contents in messages. An error names the file, the line and column and what is
//!   wrong, with every quoted part of the parser's message replaced by `…`, so a file that
//!   should not be there (a link to a secret, a stray copy) never ends up in a log.
//!
//! A file that does not parse stops the agent with an error naming it; the agent never
//! overwrites it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use serde::{Deserialize, Deserializer, Serialize};

use crate::core::container::Container;
use crate::core::model::{Cidr, JailName, NetworkName};
use crate::core::plan::Stored;
use crate::core::publication::Publication;
use crate::core::reach::ReachOff;
use crate::core::spec::PortSpec;

const DIR: &str = "publications";
const VERSION: u32 = 1;
const FIELDS: &str = "a state file has the fields version, jail and publications, and each publication \
                      seq, spec and optionally sources, log, network, container and reach_off";

/// The highest `seq` the agent stores or hands out: 2^53 - 1, the largest integer an IEEE 754
/// double holds exactly, so that a seq survives any JSON client that reads numbers as doubles
/// (JavaScript, jq). At a thousand publications a second it lasts 285,000 years, so a seq past
/// it can only come from a hand edit.
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// The largest state file the agent reads, and writes: 64 MiB. A publication takes about 60
/// bytes, so this holds a jail at the highest `max_publications_per_jail` the configuration
/// allows (2^20), while it bounds the memory a stray file (a log, an image) can make the agent
/// use: the YAML parser needs several times the text.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

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
    #[serde(deserialize_with = "bounded_seq")]
    seq: u64,
    spec: PortSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sources: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    log: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<NetworkName>,
    /// A container publication's owner and addresses (`kleene-portmap`); absent in the files
    /// of earlier releases, and for a jail's publications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    container: Option<Container>,
    /// The reaches turned off (`--no-hairpin`, ...); absent in earlier releases' files.
    #[serde(default, skip_serializing_if = "ReachOff::is_none")]
    reach_off: ReachOff,
}

/// Reads a `seq` in `1..=MAX_SEQ`. Checking it here, inside the parser, gives the error the
/// line, the column and the entry (`publications[N].seq`) without repeating the number.
fn bounded_seq<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct Seq;
    impl serde::de::Visitor<'_> for Seq {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a seq from 1 to {MAX_SEQ}")
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            if (1..=MAX_SEQ).contains(&v) {
                Ok(v)
            } else {
                Err(E::custom(format_args!("seq is out of range: a seq is 1 to {MAX_SEQ}")))
            }
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            self.visit_u64(u64::try_from(v).unwrap_or(0))
        }
    }
    d.deserialize_u64(Seq)
}

/// The state directory of one agent.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// What the state directory holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Every publication, in `seq` order.
    publications: Vec<Stored>,
    /// The seqs of every jail's publications, in `seq` order: a request looks at its jail's
    /// publications alone, not at every publication of the host.
    by_jail: HashMap<JailName, Vec<u64>>,
    /// The `seq` the next publication gets (one more than the highest stored); past
    /// [`MAX_SEQ`] when none is left. Take it with [`State::take_seq`].
    pub next_seq: u64,
}

impl Default for State {
    fn default() -> State {
        State::new(vec![], 1)
    }
}

impl State {
    /// The state of `publications` (sorted here by `seq`).
    pub fn new(mut publications: Vec<Stored>, next_seq: u64) -> State {
        publications.sort_by_key(|s| s.seq);
        let mut state = State { publications, by_jail: HashMap::new(), next_seq };
        state.index();
        state
    }

    fn index(&mut self) {
        self.by_jail.clear();
        for s in &self.publications {
            self.by_jail.entry(s.publication.jail.clone()).or_default().push(s.seq);
        }
    }

    /// Every publication, in `seq` order.
    pub fn publications(&self) -> &[Stored] {
        &self.publications
    }

    /// The publication `seq`, if stored.
    pub fn get(&self, seq: u64) -> Option<&Stored> {
        self.publications.binary_search_by_key(&seq, |s| s.seq).ok().map(|i| &self.publications[i])
    }

    /// `jail`'s publications, in `seq` order.
    pub fn of_jail<'a>(&'a self, jail: &JailName) -> impl Iterator<Item = &'a Stored> + 'a {
        self.by_jail.get(jail).into_iter().flatten().filter_map(|seq| self.get(*seq))
    }

    /// How many publications `jail` has.
    pub fn count_of(&self, jail: &JailName) -> usize {
        self.by_jail.get(jail).map_or(0, Vec::len)
    }

    /// The jails that have publications, in no particular order.
    pub fn jails(&self) -> impl Iterator<Item = &JailName> {
        self.by_jail.keys()
    }

    /// Appends a new publication, whose seq must be higher than every stored one's.
    pub fn push(&mut self, stored: Stored) {
        assert!(self.publications.last().is_none_or(|l| l.seq < stored.seq), "publications are appended in seq order");
        self.by_jail.entry(stored.publication.jail.clone()).or_default().push(stored.seq);
        self.publications.push(stored);
    }

    /// Drops the publications past the first `len` (the last ones appended).
    pub fn truncate(&mut self, len: usize) {
        let dropped: Vec<Stored> = self.publications.drain(len.min(self.publications.len())..).collect();
        self.unindex(&dropped);
    }

    /// Takes out the publications whose seq is in `seqs`. In place: the others are neither
    /// copied nor indexed again (at 10,000 publications a copy was 3 MB of the agent's peak).
    pub fn remove(&mut self, seqs: &BTreeSet<u64>) -> Vec<Stored> {
        // The kept ones move forward in order, the removed ones end up behind them.
        let mut kept = 0;
        for i in 0..self.publications.len() {
            if !seqs.contains(&self.publications[i].seq) {
                self.publications.swap(kept, i);
                kept += 1;
            }
        }
        let mut removed = self.publications.split_off(kept);
        removed.sort_by_key(|s| s.seq);
        self.unindex(&removed);
        removed
    }

    /// Puts back publications [`State::remove`] took out.
    pub fn restore(&mut self, removed: Vec<Stored>) {
        for s in removed {
            let at = self.publications.partition_point(|p| p.seq < s.seq);
            let seqs = self.by_jail.entry(s.publication.jail.clone()).or_default();
            seqs.insert(seqs.partition_point(|q| *q < s.seq), s.seq);
            self.publications.insert(at, s);
        }
    }

    /// Takes `gone`, publications no longer stored, out of the per-jail index.
    fn unindex(&mut self, gone: &[Stored]) {
        for s in gone {
            if let Some(seqs) = self.by_jail.get_mut(&s.publication.jail) {
                seqs.retain(|q| *q != s.seq);
                if seqs.is_empty() {
                    self.by_jail.remove(&s.publication.jail);
                }
            }
        }
    }

    /// Hands out `next_seq` and advances it. Fails, changing nothing, when no seq is left
    /// (every one up to [`MAX_SEQ`] is taken, which takes a hand-edited state file) or
    /// `next_seq` was set out of range.
    pub fn take_seq(&mut self) -> anyhow::Result<u64> {
        let seq = self.next_seq;
        let next = seq.checked_add(1).filter(|_| (1..=MAX_SEQ).contains(&seq));
        let Some(next) = next else {
            bail!(
                "no seq is left for a new publication: seqs run from 1 to {MAX_SEQ} and the next would be {seq}; \
                 renumber the publications in the state files with smaller seqs (they need only be unique; \
                 lower means published earlier) and restart the agent"
            );
        };
        self.next_seq = next;
        Ok(seq)
    }
}

impl Store {
    /// Opens and reads the state, creating the directories (mode 0700) if needed. Refuses a
    /// state directory, or a `publications` directory in it, that is not the agent's own (see
    /// the module documentation).
    pub fn open(state_dir: &Path) -> anyhow::Result<(Store, State)> {
        let dir = state_dir.join(DIR);
        if !present(state_dir)? {
            create_dir(state_dir, true)?;
        }
        check_state_dir(state_dir)?;
        if !present(&dir)? {
            create_dir(&dir, false)?;
        }
        check_publications_dir(&dir)?;
        let state = read_dir(&dir)?;
        Ok((Store { dir }, state))
    }

    /// Reads the state in `state_dir` without creating anything (`kleenectl agent --check`),
    /// with the checks of [`Store::open`] on whichever directories exist.
    pub fn check(state_dir: &Path) -> anyhow::Result<(PathBuf, State)> {
        let dir = state_dir.join(DIR);
        if present(state_dir)? {
            check_state_dir(state_dir)?;
        }
        let state = if present(&dir)? {
            check_publications_dir(&dir)?;
            read_dir(&dir)?
        } else {
            State::default()
        };
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

    /// Replaces `jail`'s publications atomically (removes its file when there are none). A
    /// failure leaves no temporary file behind, and the old file as it was unless the failure
    /// came after the rename (the fsync of the directory).
    pub fn save_jail(&self, jail: &JailName, publications: &[&Stored]) -> anyhow::Result<()> {
        let path = self.path_of(jail);
        let context = || format!("cannot write state file {}", path.display());
        if publications.is_empty() {
            return match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => open_dir(&self.dir).and_then(|d| d.sync_all()),
            }
            .with_context(context);
        }
        let text = render(jail, publications);
        if text.len() as u64 > MAX_FILE_BYTES {
            bail!(
                "cannot write state file {}: jail {jail}'s publications take {} bytes, more than the {} MiB the \
                 agent reads back; unpublish some of them",
                path.display(),
                text.len(),
                MAX_FILE_BYTES >> 20
            );
        }
        let tmp = self.dir.join(format!(".{}.tmp", jail.component()));
        write_temp(&tmp, text.as_bytes())
            .and_then(|()| {
                fs::rename(&tmp, &path).inspect_err(|_| {
                    let _ = fs::remove_file(&tmp);
                })
            })
            .and_then(|()| open_dir(&self.dir)?.sync_all())
            .with_context(context)
    }
}

/// Whether `path` exists, without following a final link.
fn present(path: &Path) -> anyhow::Result<bool> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot inspect state directory {}", path.display())),
    }
}

fn create_dir(path: &Path, recursive: bool) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(recursive)
        .mode(0o700)
        .create(path)
        .with_context(|| format!("cannot create state directory {}", path.display()))
}

/// `STATE_DIR` itself may be a link (to a directory on another file system, say); the
/// directory it names must pass [`check_owner`].
fn check_state_dir(path: &Path) -> anyhow::Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("cannot inspect state directory {}", path.display()))?;
    if !meta.is_dir() {
        bail!("state directory {} is not a directory: move it away, or set state_dir to a directory", path.display());
    }
    check_owner(path, &meta)
}

/// `STATE_DIR/publications` must be a directory of its own, not a link.
fn check_publications_dir(path: &Path) -> anyhow::Result<()> {
    let p = path.display();
    let meta = fs::symlink_metadata(path).with_context(|| format!("cannot inspect state directory {p}"))?;
    if meta.file_type().is_symlink() {
        bail!(
            "state directory {p} is a symbolic link, and the agent follows no links in its state directory: \
             replace the link with a directory (mode 0700) holding the files it points to"
        );
    }
    if !meta.is_dir() {
        bail!("state directory {p} is not a directory: move it away; the agent creates the directory itself");
    }
    check_owner(path, &meta)
}

/// Refuses a directory that is not owned by the agent's effective user or that its group or
/// others may write: whoever can write there decides what pf publishes.
fn check_owner(path: &Path, meta: &fs::Metadata) -> anyhow::Result<()> {
    let euid = nix::unistd::geteuid();
    let (uid, mode) = (meta.uid(), meta.mode() & 0o7777);
    let foreign = uid != euid.as_raw();
    let open = mode & 0o022 != 0;
    if !foreign && !open {
        return Ok(());
    }
    let user = match nix::unistd::User::from_uid(euid) {
        Ok(Some(u)) => u.name,
        _ => euid.to_string(),
    };
    let mut why = Vec::new();
    if foreign {
        why.push(format!("it belongs to uid {uid}, not to the agent's user {user} (uid {euid})"));
    }
    if open {
        why.push(format!("its mode {mode:04o} lets its group or others write to it"));
    }
    let q = shell_quote(&path.to_string_lossy());
    bail!(
        "refusing to use state directory {}: {}, and whoever can write there decides what pf publishes; \
         fix it with `chown {user} {q} && chmod go-w {q}`",
        path.display(),
        why.join(" and ")
    )
}

/// `s` as one shell word: as is when it has only characters no shell treats specially.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+,:@%=".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn open_dir(dir: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(dir)
}

/// Writes `bytes` to the temporary file `tmp` and fsyncs it; removes it again on failure.
fn write_temp(tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    // A leftover of a crash; removing a link removes the link, never its target.
    let _ = fs::remove_file(tmp);
    let mut f = create_temp(tmp)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    drop(f);
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

/// Creates `tmp` afresh, mode 0600: `O_EXCL` and `O_NOFOLLOW`, so that nothing planted at the
/// path (a link above all) can redirect the write.
fn create_temp(tmp: &Path) -> io::Result<File> {
    OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_NOFOLLOW).open(tmp)
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
                    container: p.container.as_deref().cloned(),
                    reach_off: p.reach_off,
                }
            })
            .collect(),
    };
    let body = serde_yaml::to_string(&file).expect("the state serialises");
    format!("# kleene-rdr: publications of one jail, written by the agent (kleenectl publish/unpublish).\n{body}")
}

fn read_dir(dir: &Path) -> anyhow::Result<State> {
    let cannot = || format!("cannot read state directory {}", dir.display());
    let mut files: Vec<(PathBuf, fs::FileType)> = Vec::new();
    for entry in fs::read_dir(dir).with_context(cannot)? {
        let entry = entry.with_context(cannot)?;
        let name = entry.file_name();
        let name = name.to_str().unwrap_or("");
        if !name.starts_with('.') && name.ends_with(".yml") {
            files.push((entry.path(), entry.file_type().with_context(cannot)?));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut publications: Vec<Stored> = Vec::new();
    let mut seqs: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for (path, kind) in files {
        let bytes = read_file(&path, kind)?;
        let pubs = parse(&bytes, &path).map_err(|e| {
            e.context(format!(
                "state file {} does not parse; it was left untouched: repair it or move it away and publish again",
                path.display()
            ))
        })?;
        for s in pubs {
            if let Some(other) = seqs.insert(s.seq, path.clone()) {
                if other == path {
                    bail!("state file {} uses seq {} twice; repair it", path.display(), s.seq);
                }
                bail!(
                    "state files {} and {} both use seq {}; repair one of them",
                    other.display(),
                    path.display(),
                    s.seq
                );
            }
            publications.push(s);
        }
    }
    publications.sort_by_key(|s| s.seq);
    // Kept for the agent's life: no spare capacity from growing it file by file.
    publications.shrink_to_fit();
    let next_seq = match publications.last() {
        None => 1,
        Some(s) => s.seq.checked_add(1).context("the highest stored seq has no successor")?,
    };
    Ok(State::new(publications, next_seq))
}

/// The bytes of the state file at `path` (`kind` is its directory entry's type): a regular
/// file of at most [`MAX_FILE_BYTES`], opened without following a link.
fn read_file(path: &Path, kind: fs::FileType) -> anyhow::Result<Vec<u8>> {
    let p = path.display();
    let link = || {
        anyhow!(
            "state file {p} is a symbolic link, which the agent does not follow: remove it; the agent writes only regular files"
        )
    };
    let special = || anyhow!("state file {p} is not a regular file: remove it; the agent writes only regular files");
    let too_big = || {
        anyhow!(
            "state file {p} is larger than {} MiB, more than the agent ever writes; it was left untouched: move it away",
            MAX_FILE_BYTES >> 20
        )
    };
    if kind.is_symlink() {
        return Err(link());
    }
    if !kind.is_file() {
        return Err(special());
    }
    // O_NONBLOCK: should the entry have become a FIFO since it was listed, opening it does
    // not wait for a writer (fstat below refuses it). It changes nothing for a regular file.
    let opened = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let f = match opened {
        Ok(f) => f,
        // O_NOFOLLOW on a link: ELOOP on Linux, EMLINK on FreeBSD.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::EMLINK)) => return Err(link()),
        Err(e) => return Err(e).with_context(|| format!("cannot read state file {p}")),
    };
    let meta = f.metadata().with_context(|| format!("cannot read state file {p}"))?;
    if !meta.is_file() {
        return Err(special());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(too_big());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).with_context(|| format!("cannot read state file {p}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    Ok(bytes)
}

/// The publications in one file. No message quotes the file: see [`yaml_error`].
fn parse(bytes: &[u8], path: &Path) -> anyhow::Result<Vec<Stored>> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| anyhow!("it is not UTF-8 text (the first bad byte is at offset {})", e.valid_up_to()))?;
    let file: JailFile = serde_yaml::from_str(text).map_err(|e| {
        let msg = yaml_error(&e);
        // The field names went with the quotes; say them again.
        if msg.contains(" field …") { anyhow!("{msg}; {FIELDS}") } else { anyhow!(msg) }
    })?;
    if file.version != VERSION {
        bail!("version {} is not supported (this agent reads version {VERSION})", file.version);
    }
    let expected = format!("{}.yml", file.jail.component());
    if path.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
        bail!("its jail is not the one its file name stands for; repair `jail:` or move the file away");
    }
    let mut out: Vec<Stored> = Vec::with_capacity(file.publications.len());
    for (i, e) in file.publications.into_iter().enumerate() {
        if let Some(j) = out.iter().position(|s| s.publication.spec == e.spec) {
            bail!("publications[{j}] and publications[{i}] publish the same spec; remove one of them");
        }
        let publication =
            Publication::new(file.jail.clone(), e.spec, e.sources, e.log, e.network).with_reach_off(e.reach_off);
        let publication = match e.container {
            Some(c) => publication.owned(c),
            None => publication,
        };
        out.push(Stored { seq: e.seq, publication });
    }
    Ok(out)
}

/// A parse error as `line L, column C: what`, with every quoted part of `what` hidden (see
/// [`redact`]): serde and the validating types quote the offending text, and that text may be
/// anything (a password hash, when the file is a copy of the wrong one).
fn yaml_error(e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    let Some(at) = e.location() else { return redact(&msg) };
    // serde_yaml says where at the end, libyaml before the context it adds (`…, while
    // scanning a quoted scalar at line 2 column 9`); the location leads instead.
    let at_text = format!(" at line {} column {}", at.line(), at.column());
    let msg = match msg.strip_suffix(at_text.as_str()) {
        Some(m) => m.to_string(),
        None => msg.replacen(&format!("{at_text},"), ",", 1),
    };
    format!("line {}, column {}: {}", at.line(), at.column(), redact(&msg))
}

/// `msg` with every quoted part (`"…"`, `'…'`, `` `…` ``) replaced by `…`.
///
/// Double- and single-quoted parts come from `{:?}` (serde's `invalid type: string "…"`, a
/// refused name or spec, a character), so a backslash escapes the next character there; a
/// `'` right after a letter or digit is an apostrophe, not a quote. Backquoted parts (serde's
/// numbers and field names) are not escaped, and the one that holds arbitrary text, an unknown
/// field's name, runs to where serde's list of expected fields begins. An unterminated quote
/// hides the rest of the message.
fn redact(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(['"', '\'', '`']) {
        let (before, quoted) = rest.split_at(i);
        out.push_str(before);
        let q = quoted.as_bytes()[0];
        let body = &quoted[1..];
        if q == b'\'' && out.ends_with(|c: char| c.is_alphanumeric()) {
            out.push('\'');
            rest = body;
            continue;
        }
        let end = match q {
            b'`' if out.ends_with("unknown field ") || out.ends_with("unknown variant ") => {
                ["`, expected", "`, there are no"].iter().filter_map(|m| body.rfind(m)).max()
            }
            b'`' => body.find('`'),
            _ => closing_quote(body, q),
        };
        out.push('…');
        rest = end.map_or("", |j| &body[j + 1..]);
    }
    out.push_str(rest);
    out
}

/// Where the quote `q` closes in `body`, skipping backslash escapes.
fn closing_quote(body: &str, q: u8) -> Option<usize> {
    let mut escaped = false;
    for (j, b) in body.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if b == b'\\' {
            escaped = true;
        } else if b == q {
            return Some(j);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn stored(seq: u64, jail: &str, spec: &str) -> Stored {
        Stored { seq, publication: Publication::new(jail.parse().unwrap(), spec.parse().unwrap(), vec![], false, None) }
    }

    fn jail(name: &str) -> JailName {
        name.parse().unwrap()
    }

    /// The error `Store::open` gives for the state directory `dir`, in `{:#}` form.
    fn open_err(dir: &Path) -> String {
        format!("{:#}", Store::open(dir).unwrap_err())
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn round_trip_one_file_per_jail() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("db");
        let (store, st) = Store::open(&sd).unwrap();
        assert_eq!(st, State::new(vec![], 1));
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
        assert_eq!(back, State::new(vec![a.clone(), b, odd, c.clone()], 8));
        let mut names: Vec<String> =
            fs::read_dir(store.dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let odd_file = format!("{}.yml", "_odd/name".parse::<JailName>().unwrap().component());
        let mut want = vec!["db.yml".to_string(), "web.yml".to_string(), odd_file];
        want.sort();
        assert_eq!(names, want, "no temporary file is left");
        assert_eq!(fs::metadata(store.path_of(&"web".parse().unwrap())).unwrap().permissions().mode() & 0o777, 0o600);
        for d in [&sd, store.dir()] {
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
        }
        store.save_jail(&"db".parse().unwrap(), &[]).unwrap();
        assert!(!store.path_of(&"db".parse().unwrap()).exists(), "an empty jail has no file");
        let (_, back) = Store::open(&sd).unwrap();
        assert_eq!(back.publications().len(), 3);
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
            let e = open_err(dir.path());
            assert!(e.contains("web.yml") && e.contains("left untouched"), "{e}");
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
        fs::write(&path, "version: 1\njail: web\npublications:\n  - {seq: 1, spec: '80'}\n").unwrap();
        fs::write(store.dir().join("db.yml"), "version: 1\njail: db\npublications:\n  - {seq: 1, spec: '81'}\n")
            .unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("both use seq 1"), "{e}");
        fs::remove_file(store.dir().join("db.yml")).unwrap();
        fs::write(&path, "version: 1\njail: web\npublications:\n  - {seq: 3, spec: '80'}\n  - {seq: 3, spec: '81'}\n")
            .unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("web.yml uses seq 3 twice"), "{e}");
    }

    /// A file exactly as the previous release (format version 1) wrote it, and the shapes
    /// people wrote by hand, must load unchanged.
    #[test]
    fn files_of_the_previous_release_load_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let written = "\
# kleene-rdr: publications of one jail, written by the agent (kleenectl publish/unpublish).
version: 1
jail: web
publications:
- seq: 1
  spec: em1:8080:80/udp
  sources:
  - 192.0.2.0/24
  - 2001:db8::/32
  log: true
  network: kleenet
- seq: 7
  spec: 443:443/tcp
- seq: 9
  spec: '[2001:db8::10]:8000-8010:9000-9010/tcp'
";
        fs::write(store.dir().join("web.yml"), written).unwrap();
        fs::write(store.dir().join("db.yml"), "version: 1\njail: db\npublications:\n- seq: 2\n  spec: 8080:80/tcp\n")
            .unwrap();
        let (_, st) = Store::open(dir.path()).unwrap();
        let specs: Vec<(u64, String)> =
            st.publications().iter().map(|s| (s.seq, s.publication.spec.to_string())).collect();
        assert_eq!(
            specs,
            [
                (1, "em1:8080:80/udp".to_string()),
                (2, "8080:80/tcp".to_string()),
                (7, "443:443/tcp".to_string()),
                (9, "[2001:db8::10]:8000-8010:9000-9010/tcp".to_string()),
            ]
        );
        assert_eq!(st.next_seq, 10);
        let first = &st.publications()[0].publication;
        assert_eq!(first.sources.len(), 2);
        assert!(first.log);
        assert_eq!(first.network.as_ref().map(|n| n.as_str()), Some("kleenet"));
        let web: Vec<&Stored> = st.publications().iter().filter(|s| s.publication.jail.as_str() == "web").collect();
        store.save_jail(&jail("web"), &web).unwrap();
        assert_eq!(fs::read_to_string(store.dir().join("web.yml")).unwrap(), written, "written back byte for byte");
        assert!(st.publications().iter().all(|s| s.publication.container.is_none()), "no container in the old format");
        assert!(st.publications().iter().all(|s| s.publication.reach_off.is_none()), "earlier files turn nothing off");
    }

    #[test]
    fn a_container_publication_is_stored_with_its_owner_and_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let written = "\
# kleene-rdr: publications of one jail, written by the agent (kleenectl publish/unpublish).
version: 1
jail: cni-1
publications:
- seq: 3
  spec: 8080:80/tcp
  container:
    id: 3f6940ab5ab4
    network: podman
    addresses:
    - 10.88.0.5
    - fd00::5
";
        fs::write(store.dir().join("cni-1.yml"), written).unwrap();
        let (_, st) = Store::open(dir.path()).unwrap();
        let c = st.publications()[0].publication.container.clone().expect("the container is read");
        assert_eq!((c.id.as_str(), c.network.as_str(), c.addresses.len()), ("3f6940ab5ab4", "podman", 2));
        let all: Vec<&Stored> = st.publications().iter().collect();
        store.save_jail(&jail("cni-1"), &all).unwrap();
        assert_eq!(fs::read_to_string(store.dir().join("cni-1.yml")).unwrap(), written, "written back byte for byte");
        let bad = written.replace("network: podman", "network: '-podman'");
        fs::write(store.dir().join("cni-1.yml"), bad).unwrap();
        let e = format!("{:#}", Store::open(dir.path()).unwrap_err());
        assert!(e.contains("state file") && e.contains("cni-1.yml does not parse"), "{e}");
    }

    #[test]
    fn reaches_turned_off_are_stored_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let p = Publication::new(jail("web"), "8080:80".parse().unwrap(), vec![], false, None)
            .with_reach_off(ReachOff { hairpin: true, host: true, networks: false });
        store.save_jail(&jail("web"), &[&Stored { seq: 3, publication: p.clone() }]).unwrap();
        let text = fs::read_to_string(store.dir().join("web.yml")).unwrap();
        assert!(
            text.ends_with("- seq: 3\n  spec: 8080:80/tcp\n  reach_off:\n    hairpin: true\n    host: true\n"),
            "{text}"
        );
        let (_, st) = Store::open(dir.path()).unwrap();
        assert_eq!(st.publications()[0].publication, p);
    }

    #[test]
    fn seqs_out_of_range_are_refused_naming_file_and_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let path = store.dir().join("web.yml");
        for bad in ["18446744073709551615", "9007199254740992", "0", "-1", "-9223372036854775808", "1e30", "1.5"] {
            let text =
                format!("version: 1\njail: web\npublications:\n- seq: 1\n  spec: '80'\n- seq: {bad}\n  spec: '81'\n");
            fs::write(&path, &text).unwrap();
            let e = open_err(dir.path());
            assert!(e.contains("web.yml") && e.contains("publications[1].seq") && e.contains("line 6"), "{bad}: {e}");
            assert!(bad.len() < 3 || !e.contains(bad), "{bad}: {e}");
            assert_eq!(fs::read_to_string(&path).unwrap(), text, "left untouched");
        }
        let text = format!("version: 1\njail: web\npublications:\n- seq: {MAX_SEQ}\n  spec: '80'\n");
        fs::write(&path, text).unwrap();
        let (_, mut st) = Store::open(dir.path()).unwrap();
        assert_eq!(st.next_seq, MAX_SEQ + 1, "the highest seq loads; next_seq does not wrap");
        let e = format!("{:#}", st.take_seq().unwrap_err());
        assert!(e.contains("no seq is left") && e.contains("renumber"), "{e}");
        assert_eq!(st.next_seq, MAX_SEQ + 1, "a refusal changes nothing");
    }

    /// The per-jail index agrees with a scan of every publication through every change.
    #[test]
    fn a_jails_publications_are_found_without_a_scan_through_every_change() {
        fn agrees(st: &State) {
            for jail in ["web", "db", "mail"].map(jail) {
                let scanned: Vec<u64> =
                    st.publications().iter().filter(|s| s.publication.jail == jail).map(|s| s.seq).collect();
                let indexed: Vec<u64> = st.of_jail(&jail).map(|s| s.seq).collect();
                assert_eq!(indexed, scanned, "{jail}");
                assert_eq!(st.count_of(&jail), scanned.len());
            }
            let mut jails: Vec<String> = st.jails().map(|j| j.to_string()).collect();
            jails.sort();
            let mut scanned: Vec<String> = st.publications().iter().map(|s| s.publication.jail.to_string()).collect();
            scanned.sort();
            scanned.dedup();
            assert_eq!(jails, scanned, "a jail without publications is not listed");
            for s in st.publications() {
                assert_eq!(st.get(s.seq), Some(s));
            }
        }
        let mut st = State::new(vec![stored(3, "db", "5432"), stored(1, "web", "8080:80"), stored(2, "web", "443")], 4);
        assert_eq!(st.publications().iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3], "sorted by seq");
        agrees(&st);
        st.push(stored(4, "mail", "25"));
        st.push(stored(5, "web", "8443:443"));
        agrees(&st);
        st.truncate(3);
        agrees(&st);
        assert_eq!(st.count_of(&jail("mail")), 0);
        let removed = st.remove(&[1, 3].into());
        assert_eq!(removed.iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 3]);
        agrees(&st);
        assert_eq!(st.get(1), None);
        st.restore(removed.into_iter().rev().collect());
        agrees(&st);
        assert_eq!(st.publications().iter().map(|s| s.seq).collect::<Vec<_>>(), [1, 2, 3], "back in seq order");
    }

    #[test]
    fn take_seq_counts_up_and_stops_at_max_seq() {
        let mut st = State::default();
        assert_eq!((st.take_seq().unwrap(), st.take_seq().unwrap(), st.next_seq), (1, 2, 3));
        let mut st = State::new(vec![], MAX_SEQ);
        assert_eq!(st.take_seq().unwrap(), MAX_SEQ);
        assert!(st.take_seq().is_err());
        for next_seq in [0, MAX_SEQ + 1, u64::MAX] {
            let mut st = State::new(vec![], next_seq);
            assert!(st.take_seq().is_err(), "{next_seq}");
            assert_eq!(st.next_seq, next_seq);
        }
    }

    const SECRET: &str = "root:$6$S3cr3tSa1t$Zm9vYmFy:19000:0:99999:7:::";

    /// Whether `e` shows any part of a secret: the markers are in every secret used below.
    fn leaks(e: &str) -> bool {
        ["S3cr3t", "Zm9v", "hunter"].iter().any(|m| e.contains(m))
    }

    #[test]
    fn messages_never_quote_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let path = store.dir().join("web.yml");
        let head = "version: 1\njail: web\npublications:\n";
        // (file, the line the error must name; None when the error is not the parser's)
        let cases: Vec<(String, Option<usize>)> = vec![
            (format!("{SECRET}\n"), Some(1)),
            (format!("# shadow\n{SECRET}\nbin:*:19000:0:99999:7:::\n"), Some(2)),
            (format!("version: '{SECRET}'\njail: web\npublications: []\n"), Some(1)),
            (format!("version: 1\njail: web\npublications: []\n'{SECRET}': 1\n"), Some(4)),
            (format!("{head}- seq: 1\n  spec: '80'\n  'a`S3cr3t`, expected `b': 1\n"), Some(6)),
            (format!("{head}- seq: '{SECRET}'\n  spec: '80'\n"), Some(4)),
            (format!("{head}- seq: 1\n  spec: '{SECRET}'\n"), Some(4)),
            (format!("{head}- seq: 1\n  spec: 'hunter2'\n"), Some(4)),
            (format!("{head}- seq: 1\n  spec: '80'\n  sources: ['{SECRET}']\n"), Some(6)),
            (format!("{head}- seq: 1\n  spec: '80'\n  network: '{SECRET}'\n"), Some(4)),
            (format!("{head}- seq: 1\n  spec: '80'\n  log: '{SECRET}'\n"), Some(6)),
            (format!("{head}- seq: 1\n  spec: '80'\n  log: S3cr3t\\\"'x\n"), Some(6)),
            ("version: 1\njail: 'S3cr3t\"x'\npublications: []\n".to_string(), Some(1)),
            ("version: 1\njail: \"S3cr3t\\u0007\"\npublications: []\n".to_string(), Some(1)),
            ("version: 1\njail: \"S3cr3t'\\u0007\"\npublications: []\n".to_string(), Some(1)),
            (format!("{head}- seq: !S3cr3t '{SECRET}'\n  spec: '80'\n"), Some(4)),
            (format!("{head}- seq: 1\n  spec: !S3cr3t 80\n  log: !S3cr3t x\n"), Some(6)),
            (format!("{head}- seq: *S3cr3t\n  spec: '80'\n"), Some(4)),
            (format!("version: 1\nversion: '{SECRET}'\n"), Some(1)),
            ("version: 1\njail: web\npublications: [S3cr3t: {\n".to_string(), Some(3)),
            ("version: 1\njail: web\npublications: [{seq: 1, spec: '80'}, {\n  S3cr3t\n".to_string(), Some(4)),
            (format!("{head}- seq: 1\n  spec: '{SECRET}\n"), Some(6)),
            (format!("{head}- seq: 1\n  spec: \"80\"\n  \"{SECRET}\n"), Some(7)),
            (format!("{head}- seq: 1\n  spec: '80'\n\t{SECRET}\n"), Some(6)),
            (format!("version: 1\njail: \"{SECRET}\n"), Some(3)),
            (format!("{{{{{{{SECRET}"), Some(1)),
            (format!("version: 1\n---\n{SECRET}\n"), None),
            (format!("version: 1\njail: '{SECRET}'\npublications: []\n"), None),
        ];
        for (text, line) in &cases {
            fs::write(&path, text).unwrap();
            let e = open_err(dir.path());
            assert!(!leaks(&e), "the error quotes the file:\n{text}\n{e}");
            assert!(e.contains(&path.display().to_string()) && e.contains("does not parse"), "{text}\n{e}");
            if let Some(line) = line {
                assert!(e.contains(&format!("line {line}, column ")), "line {line}:\n{text}\n{e}");
            }
            let checked = format!("{:#}", Store::check(dir.path()).unwrap_err());
            assert!(!leaks(&checked) && checked.contains("does not parse"), "{checked}");
        }
        fs::write(&path, "version: 1\njail: web\npublications: []\nextra: 1\n").unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("line 4, column 1: unknown field …, expected one of …") && e.contains(FIELDS), "{e}");
        let mut bytes = b"version: 1\njail: web\npublications: []\n# S3cr3t ".to_vec();
        bytes.push(0xff);
        fs::write(&path, &bytes).unwrap();
        let e = open_err(dir.path());
        assert!(!leaks(&e) && e.contains("not UTF-8") && e.contains("web.yml"), "{e}");
    }

    #[test]
    fn redact_hides_every_quoted_part() {
        for (msg, want) in [
            (r#"invalid type: string "a\"b", expected u64"#, "invalid type: string …, expected u64"),
            (r#"invalid jail name "x'y": bad; found '\''"#, "invalid jail name …: bad; found …"),
            ("invalid value: integer `5`, expected a seq", "invalid value: integer …, expected a seq"),
            (
                "unknown field `a`b`, expected c`, expected one of `seq`, `spec`",
                "unknown field …, expected one of …, …",
            ),
            ("unknown field `x`, there are no fields", "unknown field …, there are no fields"),
            ("did not find expected ':' here", "did not find expected … here"),
            ("pf's keyword \"k\" isn't", "pf's keyword … isn't"),
            ("open \"never closed", "open …"),
            ("open `never closed", "open …"),
            ("plain", "plain"),
            ("", ""),
        ] {
            assert_eq!(redact(msg), want, "{msg}");
        }
    }

    #[test]
    fn links_and_special_files_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("db")).unwrap();
        let secret = dir.path().join("shadow");
        fs::write(&secret, format!("{SECRET}\n")).unwrap();
        let link = store.dir().join("web.yml");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let e = open_err(&dir.path().join("db"));
        assert!(e.contains(&link.display().to_string()) && e.contains("symbolic link"), "{e}");
        assert!(e.contains("remove it; the agent writes only regular files") && !leaks(&e), "{e}");
        let e = format!("{:#}", Store::check(&dir.path().join("db")).unwrap_err());
        assert!(e.contains("symbolic link") && !leaks(&e), "{e}");

        // The link is refused by O_NOFOLLOW too, should it appear after the directory was listed.
        let regular = fs::metadata(&secret).unwrap().file_type();
        let e = format!("{:#}", read_file(&link, regular).unwrap_err());
        assert!(e.contains("symbolic link") && !leaks(&e), "{e}");
        fs::remove_file(&link).unwrap();

        fs::create_dir(store.dir().join("db.yml")).unwrap();
        let e = open_err(&dir.path().join("db"));
        assert!(e.contains("db.yml is not a regular file: remove it; the agent writes only regular files"), "{e}");
        fs::remove_dir(store.dir().join("db.yml")).unwrap();

        // A FIFO is refused without opening it (opening would wait for a writer).
        nix::unistd::mkfifo(&store.dir().join("fifo.yml"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = open_err(&dir.path().join("db"));
        assert!(e.contains("fifo.yml is not a regular file"), "{e}");
        let e = format!("{:#}", read_file(&store.dir().join("fifo.yml"), regular).unwrap_err());
        assert!(e.contains("fifo.yml is not a regular file"), "{e}");
        fs::remove_file(store.dir().join("fifo.yml")).unwrap();

        // Hidden files and other names are not state files, links or not.
        std::os::unix::fs::symlink(&secret, store.dir().join(".web.yml")).unwrap();
        std::os::unix::fs::symlink(&secret, store.dir().join("notes")).unwrap();
        assert_eq!(Store::open(&dir.path().join("db")).unwrap().1, State::default());
    }

    #[test]
    fn a_file_past_the_size_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let f = File::create(store.dir().join("web.yml")).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let e = open_err(dir.path());
        assert!(e.contains("web.yml is larger than 64 MiB"), "{e}");
    }

    #[test]
    fn a_state_dir_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("db");
        let (store, _) = Store::open(&sd).unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::geteuid()).unwrap().unwrap().name;
        for (bad, mode) in [(&sd, 0o775), (&sd, 0o702), (&store.dir().to_path_buf(), 0o777)] {
            fs::set_permissions(bad, fs::Permissions::from_mode(mode)).unwrap();
            let fix = format!("chown {user} {p} && chmod go-w {p}", p = bad.display());
            for e in [open_err(&sd), format!("{:#}", Store::check(&sd).unwrap_err())] {
                assert!(e.contains(&fix) && e.contains(&format!("mode {mode:04o}")), "{e}");
            }
            fs::set_permissions(bad, fs::Permissions::from_mode(0o700)).unwrap();
        }
        // 0755 is fine: only writes matter.
        fs::set_permissions(&sd, fs::Permissions::from_mode(0o755)).unwrap();
        Store::open(&sd).unwrap();
        // Nothing is created inside a state directory that is refused.
        let fresh = dir.path().join("fresh");
        fs::create_dir(&fresh).unwrap();
        fs::set_permissions(&fresh, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(open_err(&fresh).contains("chmod go-w"));
        assert!(!fresh.join(DIR).exists());
    }

    #[test]
    fn a_state_dir_owned_by_someone_else_is_refused() {
        if !is_root() {
            eprintln!("SKIPPED a_state_dir_owned_by_someone_else_is_refused: needs root (to chown to uid 65534)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("db");
        let (store, _) = Store::open(&sd).unwrap();
        let nobody = Some(nix::unistd::Uid::from_raw(65534));
        for bad in [sd.clone(), store.dir().to_path_buf()] {
            nix::unistd::chown(&bad, nobody, None).unwrap();
            let fix = format!("chown root {p} && chmod go-w {p}", p = bad.display());
            for e in [open_err(&sd), format!("{:#}", Store::check(&sd).unwrap_err())] {
                assert!(e.contains("belongs to uid 65534") && e.contains(&fix), "{e}");
            }
            nix::unistd::chown(&bad, Some(nix::unistd::geteuid()), None).unwrap();
        }
        Store::open(&sd).unwrap();
    }

    #[test]
    fn a_linked_publications_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("db");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(&sd).unwrap();
        fs::create_dir(&elsewhere).unwrap();
        fs::set_permissions(&elsewhere, fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, sd.join(DIR)).unwrap();
        for e in [open_err(&sd), format!("{:#}", Store::check(&sd).unwrap_err())] {
            assert!(e.contains("publications is a symbolic link"), "{e}");
        }
        fs::remove_file(sd.join(DIR)).unwrap();
        fs::write(sd.join(DIR), "").unwrap();
        assert!(open_err(&sd).contains("publications is not a directory"));
        // STATE_DIR itself may be a link to a directory the agent owns.
        fs::remove_file(sd.join(DIR)).unwrap();
        let linked = dir.path().join("linked");
        std::os::unix::fs::symlink(&sd, &linked).unwrap();
        Store::open(&linked).unwrap();
    }

    #[test]
    fn check_reads_without_creating() {
        let dir = tempfile::tempdir().unwrap();
        let sd = dir.path().join("db");
        assert_eq!(Store::check(&sd).unwrap().1, State::default());
        assert!(!sd.exists());
        fs::create_dir(&sd).unwrap();
        assert_eq!(Store::check(&sd).unwrap().1, State::default());
        assert!(!sd.join(DIR).exists());
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let old = store.dir().join("db.yml");
        store.save_jail(&jail("db"), &[&stored(1, "db", "5432")]).unwrap();
        let before = fs::read(&old).unwrap();
        // A non-empty directory at the target: rename(2) fails (EISDIR).
        let target = store.path_of(&jail("web"));
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "kept").unwrap();
        let e = format!("{:#}", store.save_jail(&jail("web"), &[&stored(2, "web", "80")]).unwrap_err());
        assert!(e.contains("cannot write state file") && e.contains("web.yml"), "{e}");
        assert!(!store.dir().join(".web.tmp").exists(), "the temporary file is removed");
        assert_eq!(fs::read_to_string(target.join("keep")).unwrap(), "kept", "the target is untouched");
        assert_eq!(fs::read(&old).unwrap(), before, "other files are untouched");
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let path = store.path_of(&jail("web"));
        store.save_jail(&jail("web"), &[&stored(1, "web", "80")]).unwrap();
        let before = fs::read(&path).unwrap();
        // Something the agent cannot remove at the temporary path: the write is refused, and
        // what was there (not the agent's) stays.
        let tmp = store.dir().join(".web.tmp");
        fs::create_dir(&tmp).unwrap();
        fs::write(tmp.join("x"), "x").unwrap();
        assert!(store.save_jail(&jail("web"), &[&stored(1, "web", "80"), &stored(2, "web", "81")]).is_err());
        assert_eq!(fs::read(&path).unwrap(), before, "the old file is untouched");
        assert_eq!(fs::read_to_string(tmp.join("x")).unwrap(), "x");
    }

    #[test]
    fn a_link_planted_at_the_temporary_path_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("db")).unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").unwrap();
        let tmp = store.dir().join(".web.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        assert!(create_temp(&tmp).is_err(), "O_EXCL|O_NOFOLLOW: a planted link is not opened");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        // save_jail removes a leftover link (not its target) and writes its own file.
        store.save_jail(&jail("web"), &[&stored(1, "web", "80")]).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(fs::symlink_metadata(&tmp).is_err());
        assert!(fs::symlink_metadata(store.path_of(&jail("web"))).unwrap().file_type().is_file());
    }
}
