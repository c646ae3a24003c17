#!/bin/sh
# Builds kleene-rdr from the source tree given as $1 (default: the parent of
# this script's directory), installs it with its rc.d script, man page and a
# configuration, makes sure pf evaluates the kleene anchors, and starts the
# agent. Run as root on FreeBSD; used by the Vagrantfile and the FreeBSD CI.
set -eu

src=${1:-$(cd "$(dirname "$0")/.." && pwd)}
build=${KLEENE_BUILD_DIR:-/var/tmp/kleene-rdr-build}

if ! command -v cargo >/dev/null 2>&1; then
	env ASSUME_ALWAYS_YES=yes pkg install -y rust
fi

mkdir -p "$build"
(cd "$src" && CARGO_TARGET_DIR="$build" cargo build --release --locked)

install -m 555 "$build/release/kleenectl" /usr/local/bin/kleenectl
install -m 555 "$src/rc.d/kleene_rdr" /usr/local/etc/rc.d/kleene_rdr
install -m 644 "$src/docs/kleene-rdr.yml.sample" /usr/local/etc/kleene-rdr.yml.sample
install -m 444 "$src/docs/kleenectl.8" /usr/local/share/man/man8/kleenectl.8
if [ ! -e /usr/local/etc/kleene-rdr.yml ]; then
	install -m 644 "$src/docs/kleene-rdr.yml.sample" /usr/local/etc/kleene-rdr.yml
fi

# pf: a minimal ruleset that evaluates the anchors (an existing pf.conf that
# already does is kept).
if ! grep -q 'rdr-anchor "kleene/\*"' /etc/pf.conf 2>/dev/null; then
	if [ -e /etc/pf.conf ]; then
		cp /etc/pf.conf "/etc/pf.conf.before-kleene-rdr"
	fi
	cat > /etc/pf.conf <<'PF'
# Written by kleene-rdr's provision.sh.
set skip on lo0
rdr-anchor "kleene/*"
pass all
anchor "kleene/*"
PF
fi

kldload -n pf
sysrc pf_enable=YES >/dev/null
sysrc kleene_rdr_enable=YES >/dev/null
service pf status >/dev/null 2>&1 || service pf start
pfctl -f /etc/pf.conf
pfctl -e 2>/dev/null || true

service kleene_rdr restart
sleep 1
kleenectl check
