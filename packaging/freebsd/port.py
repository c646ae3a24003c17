#!/usr/bin/env python3
"""Keeps the FreeBSD port (packaging/freebsd/sysutils/kleene-rdr) in step with the source tree.

    python3 packaging/freebsd/port.py update   # rewrite what is generated
    python3 packaging/freebsd/port.py check    # fail when anything disagrees (CI)

Generated (by `update`; `check` fails when they differ and says to run `update`):
- Makefile.crates: CARGO_CRATES, every crates.io package of Cargo.lock as NAME-VERSION, in
  the lock's order, the format of the ports framework's `make cargo-crates`;
- files/<rc script>.in: rc.d/<name> with the kleenectl path as %%PREFIX%%/bin/kleenectl.

Checked (what can be checked without FreeBSD's make; the FreeBSD workflow builds the port):
- DISTVERSION is Cargo.toml's version;
- USE_RC_SUBR names rc scripts that exist as rc.d/<name> in the tree and files/<name>.in in the
  port, whose `# PROVIDE:` and `name=` are that name; pkg-plist does not list them
  (bsd.port.mk's install-rc-script installs etc/rc.d/<name> and adds it to the package);
- pkg-plist lists exactly what the port installs: the binaries `cargo install` installs
  (every bin target of `cargo metadata` without required-features, into bin/), moved by
  post-install's ${MV} lines, plus each file a post-install line installs or writes; man pages
  as the .gz the framework compresses them to, `@sample X.sample` as X.sample;
- pkg-message holds the pf.conf anchor lines (nat-anchor too) and the jail.conf hooks.
Needs Python 3.11 (tomllib) and cargo.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

if sys.version_info < (3, 11):
    sys.exit(f"port.py: needs Python 3.11 or later (tomllib); this is {sys.version.split()[0]}")

import tomllib  # noqa: E402

TREE = Path(__file__).resolve().parents[2]
PORT = TREE / "packaging/freebsd/sysutils/kleene-rdr"
CRATES_IO = "registry+https://github.com/rust-lang/crates.io-index"
STAGE = "${STAGEDIR}${PREFIX}/"
UPDATE = "run `python3 packaging/freebsd/port.py update` and commit the result"


class Mismatch(Exception):
    pass


def makefile_crates() -> str:
    """Makefile.crates for the tree's Cargo.lock."""
    lock = tomllib.loads((TREE / "Cargo.lock").read_text())
    crates = []
    for p in lock["package"]:
        source = p.get("source")
        if source is None:
            continue  # a package of this workspace
        if source != CRATES_IO:
            raise Mismatch(f"Cargo.lock: {p['name']} {p['version']} comes from {source}; port.py writes "
                           "only crates.io packages into CARGO_CRATES (a git source needs GH_TUPLE)")
        crates.append(f"{p['name']}-{p['version']}")
    if not crates:
        raise Mismatch("Cargo.lock lists no crates.io package")
    lines = [f"CARGO_CRATES=\t{crates[0]}"] + [f"\t\t{c}" for c in crates[1:]]
    header = "# Written by packaging/freebsd/port.py update from Cargo.lock: do not edit.\n"
    return header + " \\\n".join(lines) + "\n"


def makefile_vars(text: str) -> dict[str, str]:
    """The port Makefile's simple `NAME=<tab>value` assignments (continuation lines joined)."""
    text = text.replace("\\\n", " ")
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Z_]+)\??=\s*(.*?)\s*(#.*)?$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def rc_script_in(name: str) -> str:
    """files/<name>.in for rc.d/<name>."""
    src = TREE / "rc.d" / name
    if not src.is_file():
        raise Mismatch(f"USE_RC_SUBR names {name}, but the tree has no rc.d/{name}")
    text = src.read_text()
    line = 'kleenectl="/usr/local/bin/kleenectl"'
    if text.count(line) != 1:
        raise Mismatch(f"rc.d/{name}: expected exactly one line {line} (port.py replaces /usr/local "
                       "by %%PREFIX%% there)")
    return text.replace(line, 'kleenectl="%%PREFIX%%/bin/kleenectl"')


def generated() -> dict[Path, str]:
    """Every generated file of the port and its content."""
    out = {PORT / "Makefile.crates": makefile_crates()}
    for name in makefile_vars((PORT / "Makefile").read_text()).get("USE_RC_SUBR", "").split():
        out[PORT / "files" / f"{name}.in"] = rc_script_in(name)
    return out


def cargo_bins() -> tuple[str, list[str]]:
    """The package version and the bin targets `cargo install` installs (no required-features)."""
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--manifest-path", str(TREE / "Cargo.toml")],
        check=True, capture_output=True, text=True).stdout)
    [pkg] = [p for p in meta["packages"] if Path(p["manifest_path"]).parent == TREE]
    bins = [t["name"] for t in pkg["targets"] if "bin" in t["kind"] and not t.get("required-features")]
    return pkg["version"], bins


def recipe(makefile: str, target: str) -> list[str]:
    """The command lines of `target:` in the Makefile, continuation lines joined."""
    lines = makefile.replace("\\\n", " ").splitlines()
    try:
        start = lines.index(f"{target}:")
    except ValueError:
        return []
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        out.append(line.strip().lstrip("@"))
    return out


def staged(word: str) -> str | None:
    return word[len(STAGE):] if word.startswith(STAGE) else None


def installed(makefile: str, bins: list[str]) -> set[str]:
    """What the port's install targets put under ${PREFIX}, as pkg-plist paths."""
    files = {f"bin/{b}" for b in bins}  # cargo install --root ${STAGEDIR}${PREFIX}
    if "do-install:" in makefile.splitlines():
        raise Mismatch("the Makefile defines do-install: port.py knows only cargo.mk's own (cargo install)")
    for line in recipe(makefile, "post-install"):
        words = line.split()
        targets = [staged(w) for w in words]
        if words[0] == "${MKDIR}" or words[0] == "${STRIP_CMD}":
            continue
        if words[0] in ("${INSTALL_PROGRAM}", "${INSTALL_DATA}", "${INSTALL_MAN}", "${INSTALL_SCRIPT}"):
            if len(words) != 3 or targets[2] is None or targets[2].endswith("/"):
                raise Mismatch(f"post-install: write `{words[0]} SOURCE {STAGE}FILE` (one file, its full "
                               f"name) so that port.py can check it: {line}")
            files.add(targets[2])
        elif words[0] == "${MV}":
            if len(words) != 3 or None in targets[1:]:
                raise Mismatch(f"post-install: write `${{MV}} {STAGE}FROM {STAGE}TO`: {line}")
            if targets[1] not in files:
                raise Mismatch(f"post-install moves {targets[1]}, which nothing installs before (cargo "
                               f"install installs {sorted(files)}): {line}")
            files.remove(targets[1])
            files.add(targets[2])
        elif len(words) >= 3 and words[-2] == ">" and targets[-1] is not None:
            files.add(targets[-1])
        else:
            raise Mismatch(f"post-install: port.py cannot tell what this line installs: {line}")
    return {f + ".gz" if re.match(r"share/man/man\d/", f) else f for f in files}


def plist(text: str) -> set[str]:
    out = set()
    for line in text.splitlines():
        if not line or line.startswith("@comment"):
            continue
        m = re.match(r"^@sample\s+(\S+\.sample)$", line)
        if m:
            out.add(m.group(1))
        elif line.startswith("@"):
            raise Mismatch(f"pkg-plist: port.py does not know the keyword in: {line}")
        else:
            out.add(line)
    return out


def check() -> list[str]:
    problems = []
    for path, text in generated().items():
        if not path.is_file() or path.read_text() != text:
            problems.append(f"{path.relative_to(TREE)} is not what Cargo.lock and the tree give: {UPDATE}")
    makefile = (PORT / "Makefile").read_text()
    var = makefile_vars(makefile)
    version, bins = cargo_bins()
    if var.get("DISTVERSION") != version:
        problems.append(f"Makefile: DISTVERSION={var.get('DISTVERSION')}, but Cargo.toml's version is {version}")
    rc = var.get("USE_RC_SUBR", "").split()
    if not rc:
        problems.append("Makefile: no USE_RC_SUBR (the rc.d script kleene_rdr)")
    plist_text = (PORT / "pkg-plist").read_text()
    listed = plist(plist_text)
    for name in rc:
        script = (TREE / "rc.d" / name).read_text() if (TREE / "rc.d" / name).is_file() else ""
        if not re.search(rf"^# PROVIDE: {re.escape(name)}$", script, re.M):
            problems.append(f"rc.d/{name}: no `# PROVIDE: {name}` line (USE_RC_SUBR={name})")
        if not re.search(rf'^name="{re.escape(name)}"$', script, re.M):
            problems.append(f'rc.d/{name}: no `name="{name}"` line (USE_RC_SUBR={name})')
        if f"etc/rc.d/{name}" in listed:
            problems.append(f"pkg-plist lists etc/rc.d/{name}: USE_RC_SUBR installs and lists it already")
    other_rc = sorted(p.name for p in (TREE / "rc.d").iterdir() if p.name not in rc)
    if other_rc:
        problems.append(f"rc.d/ holds {other_rc}, which USE_RC_SUBR does not install")
    have = installed(makefile, bins)
    for f in sorted(listed - have - {f"etc/rc.d/{name}" for name in rc}):
        problems.append(f"pkg-plist lists {f}, which the port's install targets do not install")
    for f in sorted(have - listed):
        problems.append(f"the port installs {f}, which pkg-plist does not list")
    message = (PORT / "files" / "pkg-message.in").read_text()
    for needed in ('nat-anchor "kleene/*"', 'rdr-anchor "kleene/*"', 'anchor "kleene/*"', "exec.poststart += ", "exec.poststop += "):
        if needed not in message:
            problems.append(f"files/pkg-message.in lacks {needed}")
    return problems


def main() -> int:
    what = sys.argv[1:] or ["check"]
    try:
        if what == ["update"]:
            for path, text in generated().items():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path.relative_to(TREE)}")
            return 0
        if what == ["check"]:
            problems = check()
            for p in problems:
                print(f"port.py: {p}", file=sys.stderr)
            if not problems:
                print("port.py: the port agrees with Cargo.lock, Cargo.toml, rc.d/ and its pkg-plist")
            return 1 if problems else 0
    except Mismatch as e:
        print(f"port.py: {e}", file=sys.stderr)
        return 1
    print("usage: port.py update|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
