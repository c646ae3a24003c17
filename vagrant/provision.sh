#!/bin/sh
# Builds kleene-rdr from the source tree given as $1 (default: the parent of
# this script's directory), installs it with its rc.d script, man page and a
# configuration, and starts the agent. Run as root on FreeBSD.
#
# pf: this script never edits an existing /etc/pf.conf and never starts,
# enables or reloads pf on its own. When pf.conf lacks the kleene anchors it
# prints the two lines to add and carries on: until they are added, pf does
# not evaluate the rules the agent loads.
#
# Only a throwaway test VM opts in with KLEENE_RDR_WRITE_PF_CONF=1 (the
# Vagrantfile and the FreeBSD CI do): then /etc/pf.conf is replaced by a
# default-deny ruleset that evaluates the anchors (the previous file is kept
# as /etc/pf.conf.before-kleene-rdr), and pf is enabled and (re)loaded.
set -eu

src=${1:-$(cd "$(dirname "$0")/.." && pwd)}
build=${KLEENE_BUILD_DIR:-/var/tmp/kleene-rdr-build}
write_pf_conf=${KLEENE_RDR_WRITE_PF_CONF:-0}
case $write_pf_conf in
0 | 1) ;;
*)
	echo "provision.sh: KLEENE_RDR_WRITE_PF_CONF must be 0 or 1" >&2
	exit 2
	;;
esac

if ! command -v cargo >/dev/null 2>&1; then
	env ASSUME_ALWAYS_YES=yes pkg install -y rust
fi

mkdir -p "$build"
(cd "$src" && CARGO_TARGET_DIR="$build" cargo build --release --locked)

install -m 555 "$build/release/kleenectl" /usr/local/bin/kleenectl
install -d -m 755 /usr/local/libexec/cni
install -m 555 "$build/release/kleene-portmap" /usr/local/libexec/cni/kleene-portmap
install -m 555 "$src/rc.d/kleene_rdr" /usr/local/etc/rc.d/kleene_rdr
install -m 644 "$src/docs/kleene-rdr.yml.sample" /usr/local/etc/kleene-rdr.yml.sample
install -m 444 "$src/docs/kleenectl.8" /usr/local/share/man/man8/kleenectl.8
if [ ! -e /usr/local/etc/kleene-rdr.yml ]; then
	install -m 644 "$src/docs/kleene-rdr.yml.sample" /usr/local/etc/kleene-rdr.yml
fi

# The parent anchor the agent uses: the configuration's `anchor:` (default kleene).
config=$(sysrc -n kleene_rdr_config 2>/dev/null || true)
config=${config:-/usr/local/etc/kleene-rdr.yml}
anchor=
if [ -r "$config" ]; then
	anchor=$(awk '$1 == "anchor:" { print $2; exit }' "$config" | tr -d "\"'")
fi
anchor=${anchor:-kleene}
nat_line="nat-anchor \"$anchor/*\""
rdr_line="rdr-anchor \"$anchor/*\""
filter_line="anchor \"$anchor/*\""
anchor_re=$(printf '%s' "$anchor" | sed 's/[][\.*^$+?(){}|]/\\&/g')

# pf_conf_has KEYWORD: /etc/pf.conf holds an uncommented `KEYWORD "<anchor>/*"` line.
pf_conf_has() {
	[ -r /etc/pf.conf ] &&
		grep -Eq "^[[:space:]]*$1[[:space:]]+\"$anchor_re/\\*\"" /etc/pf.conf
}

pf_conf_missing=
if [ "$write_pf_conf" = 1 ]; then
	# The test VM's ruleset. Translation before filtering, as pf requires.
	# Default deny in; ssh and lo0 pass without state, so that loading this
	# (and `service pf start`, which flushes the states) never cuts the ssh
	# session running this script; ICMPv6 passes for neighbour discovery (IPv6
	# publications need it), ICMP for ping. Nothing passes on the e2e's epair
	# or lo1: what vagrant/e2e.sh reaches through a published port is let in
	# only by the `pass in quick` rules the agent loads into the anchors, so
	# the e2e also proves those rules open the ports. lo0 is filtered (a pass
	# rule, not `set skip`) so that later rules for loopback traffic apply.
	if [ -e /etc/pf.conf ] && [ ! -e /etc/pf.conf.before-kleene-rdr ]; then
		cp -p /etc/pf.conf /etc/pf.conf.before-kleene-rdr
	fi
	cat >/etc/pf.conf <<PF
# Written by kleene-rdr's vagrant/provision.sh for a throwaway test VM
# (KLEENE_RDR_WRITE_PF_CONF=1). The previous file, if any, is
# /etc/pf.conf.before-kleene-rdr.
$nat_line
$rdr_line
block in all
pass on lo0 all no state
pass in quick proto tcp to port ssh no state
pass quick inet6 proto ipv6-icmp all
pass inet proto icmp all
pass out all keep state
$filter_line
PF
	kldload -n pf
	pfctl -n -f /etc/pf.conf
	sysrc pf_enable=YES >/dev/null
	# VNET jails are reached through the host: it forwards, and pf filters
	# what the host sends to its own addresses (read when pf is enabled, so
	# pf is restarted, not reloaded).
	sysrc gateway_enable=YES ipv6_gateway_enable=YES >/dev/null
	sysctl net.inet.ip.forwarding=1 net.inet6.ip6.forwarding=1 >/dev/null
	if ! grep -q '^net.pf.filter_local=1' /etc/sysctl.conf 2>/dev/null; then
		echo 'net.pf.filter_local=1' >>/etc/sysctl.conf
	fi
	sysctl net.pf.filter_local=1 >/dev/null || echo "provision.sh: this kernel has no net.pf.filter_local" >&2
	service pf restart
elif ! pf_conf_has nat-anchor || ! pf_conf_has rdr-anchor || ! pf_conf_has anchor; then
	pf_conf_missing=yes
fi

sysrc kleene_rdr_enable=YES >/dev/null
service kleene_rdr restart

# The agent creates its socket only after its first look at the host (jails,
# routes, pf): wait for it to answer, 30 seconds at most.
tries=60
until kleenectl ls >/dev/null 2>&1; do
	tries=$((tries - 1))
	if [ "$tries" -le 0 ]; then
		echo "provision.sh: the agent did not answer within 30 s (its log: syslog, tag kleene_rdr)" >&2
		kleenectl check || true
		exit 1
	fi
	sleep 0.5
done

if [ "$write_pf_conf" = 1 ]; then
	kleenectl check
	exit 0
fi

check_ok=yes
kleenectl check || check_ok=no
if [ -n "$pf_conf_missing" ]; then
	cat >&2 <<EOF

provision.sh: /etc/pf.conf was left unchanged, and it lacks the kleene anchors.
Until you add them, pf does not evaluate the rules the agent loads: published
ports do not work. Add these lines to the translation section (after your own
nat/rdr rules):

    $nat_line
    $rdr_line

and this one to the filter section (after the block rules you want applied first):

    $filter_line

then load the file: service pf reload (or, when pf is not running yet,
service pf enable && service pf start; on a remote host, make sure the ruleset
passes ssh first: starting pf flushes its states).
EOF
elif [ "$check_ok" = no ]; then
	cat >&2 <<EOF

provision.sh: kleene-rdr is installed and its agent runs, but kleenectl check
found the problems above (provision.sh does not start, enable or reload pf
outside its test VM).
EOF
fi
