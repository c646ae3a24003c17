#!/bin/sh
# End-to-end test of kleene-rdr on a real FreeBSD kernel.
#
# Run as root on a throwaway FreeBSD 14/15 host where kleene-rdr is installed
# and its agent runs (vagrant/provision.sh does both):
#
#   sh vagrant/e2e.sh
#
# It creates a non-VNET jail `web` (path /, addresses on lo1) running tcp and
# udp listeners, a second jail `web2`, and a VNET jail `client` attached
# through an epair whose host side is the published interface (and, for the
# CNI step, a VNET jail `ctr` behind a second epair, the host forwarding
# between them, and kleene-portmap installed); then it checks
# the product step by step, printing PASS/FAIL, and exits non-zero when any
# check failed. Section 9 proves who can reach a published port, for the
# non-VNET jail web and for a VNET jail vweb on a bridge (with a VNET sibling
# vsib on the same bridge): from outside (the server sees the client's
# address), hairpin from sibling jails, direct access from another configured
# network, the host via 127.0.0.1 and via its own address, a local-only
# publication, udp, a packet routed straight to the jail's port (no longer
# admitted), and teardown. Everything it creates is removed at the end.
#
# pf must evaluate the kleene anchors. The test VM's ruleset (provision.sh with
# KLEENE_RDR_WRITE_PF_CONF=1) blocks inbound traffic by default and passes
# nothing on the epair: the client reaches a published port only through the
# agent's `pass in quick` rules. (It also works under a `pass all` ruleset.)
set -u

WORK=/var/tmp/kleene-e2e
WEB4=10.13.37.2
WEB6=fd00:13:37::2
WEB2_4=10.13.37.3
HOST4=10.77.0.1
HOST6=fd00:77::1
CLIENT4=10.77.0.2
CLIENT6=fd00:77::2
VWEB4=10.13.37.5
VSIB4=10.13.37.6
BRIDGE4=10.13.37.1
PASSED=0
FAILED=0
EP=
EPB=
BR=
EPV=
EPS=
OLD_JAIL_ENABLE=
CONFIG=
GWADDR=

say() { printf '%s\n' "$*"; }
pass() { PASSED=$((PASSED + 1)); say "PASS: $*"; }
fail() { FAILED=$((FAILED + 1)); say "FAIL: $*"; }

# check DESCRIPTION COMMAND...: PASS when the command succeeds.
check() {
	desc=$1
	shift
	if "$@" >"$WORK/out" 2>&1; then
		pass "$desc"
	else
		fail "$desc"
		sed 's/^/    /' "$WORK/out"
	fi
}

# check_not DESCRIPTION COMMAND...: PASS when the command fails.
check_not() {
	desc=$1
	shift
	if "$@" >"$WORK/out" 2>&1; then
		fail "$desc"
		sed 's/^/    /' "$WORK/out"
	else
		pass "$desc"
	fi
}

# eventually SECONDS COMMAND...: retries the command every half second.
eventually() {
	tries=$(($1 * 2))
	shift
	while [ "$tries" -gt 0 ]; do
		if "$@" >/dev/null 2>&1; then
			return 0
		fi
		sleep 0.5
		tries=$((tries - 1))
	done
	"$@"
}

# Probes run from the VNET client jail. -N: shut the connection down at EOF on
# stdin (at once, </dev/null), so the listener answers and closes instead of
# both sides waiting for the -w idle timeout.
tcp_reply() { # HOST PORT EXPECTED
	jexec client nc -N -w 2 "$1" "$2" </dev/null | grep -q "$3"
}
tcp_closed() { # HOST PORT
	! jexec client nc -z -w 2 "$1" "$2"
}
udp_reaches() { # HOST PORT: a fresh token sent to HOST:PORT lands in web's udp log
	token="udp-$$-$(date +%s)-$(jot -r 1 1 1000000)"
	echo "$token" | jexec client nc -u -w 1 "$1" "$2" >/dev/null 2>&1
	sleep 0.5
	grep -q "$token" "$WORK/udp.log"
}
published_state() { # SPEC STATE: kleenectl ls --json shows web's SPEC in STATE
	kleenectl ls -j web --json | tr -d ' \n' | grep -q "\"spec\":\"$1\",[^}]*\"state\":\"$2\""
}
current_states() { # SPEC: the states web's SPEC holds now, as kleenectl stats reports them
	kleenectl stats -j web --json | tr -d ' \n' | grep -o "\"spec\":\"$1\",[^}]*}" |
		sed -n 's/.*"states":\([0-9]*\).*/\1/p'
}
pf_states() { # SPEC: the States: pfctl -v -s rules prints for web's SPEC's pass rules, summed
	pfctl -a kleene/web -v -s rules | awk -v l="label \"kleene:web:$1\"" '
		index($0, l) && !index($0, "kleene:outbound") { want = 1; next }
		want && /Evaluations:/ { for (i = 1; i < NF; i++) if ($i == "States:") s += $(i + 1) + 0 }
		{ want = 0 }
		END { print s + 0 }'
}
stats_agree() { # SPEC: kleenectl stats and pfctl -v -s rules agree on SPEC's current states, at least 1
	n=$(current_states "$1") && [ -n "$n" ] && [ "$n" -ge 1 ] && [ "$n" = "$(pf_states "$1")" ]
}
hook_with_agent_down() { # what a jail.conf hook does while the agent is stopped
	service kleene_rdr stop >/dev/null || return 1
	kleenectl reconcile --quiet-if-down
	rc=$?
	service kleene_rdr start >/dev/null
	return $rc
}
client_says() { # TEXT: kleenectl ls --json for jail client holds TEXT (a state or a reason)
	kleenectl ls -j client --json | tr -d '\n' | grep -q "$1"
}
# Reach probes. from_jail JAIL HOST PORT EXPECTED: tcp from inside JAIL gets
# EXPECTED back; from_host HOST PORT EXPECTED: the same from the host itself.
from_jail() {
	jexec "$1" nc -N -w 2 "$2" "$3" </dev/null | grep -q "$4"
}
from_host() {
	nc -N -w 2 "$1" "$2" </dev/null | grep -q "$3"
}
closed_from_jail() { # JAIL HOST PORT
	! jexec "$1" nc -z -w 2 "$2" "$3"
}
udp_from() { # JAIL HOST PORT LOG: a fresh token sent from JAIL lands in LOG
	token="udp-$$-$(date +%s)-$(jot -r 1 1 1000000)"
	echo "$token" | jexec "$1" nc -u -w 1 "$2" "$3" >/dev/null 2>&1
	sleep 0.5
	grep -q "$token" "$4"
}
peer_seen() { # JAIL HOST PORT LOG ADDR: after a connection, the listener logged ADDR as its peer
	jexec "$1" nc -N -w 2 "$2" "$3" </dev/null >/dev/null 2>&1
	sleep 0.5
	grep -q "$5" "$4"
}
sysctls_on() { # forwarding and net.pf.filter_local (provision.sh sets both)
	[ "$(sysctl -n net.inet.ip.forwarding)" = 1 ] && [ "$(sysctl -n net.pf.filter_local)" = 1 ]
}
reach_of() { # JAIL SPEC WORDS: ls --json says SPEC of JAIL is reachable from WORDS
	kleenectl ls -j "$1" --json | tr -d ' \n' | grep -q "\"spec\":\"$2\",[^}]*\"reachable_from\":\[$3\]"
}
anchor_listed() {
	pfctl -a kleene -s Anchors 2>/dev/null | grep -q 'kleene/web$'
}
# service jail start/stop exit 0 even when jail(8) failed (libexec/rc/rc.d/jail
# prints "cannot start jail" and carries on): jls decides.
jails_start() { # NAME...
	service jail start "$@" || return 1
	for j in "$@"; do
		if ! jls -j "$j" jid >/dev/null 2>&1; then
			say "jls: jail $j is not running after service jail start"
			return 1
		fi
	done
}
jails_stop() { # NAME...: gone, or dying (jls -j fails for both)
	service jail stop "$@" || return 1
	for j in "$@"; do
		if jls -j "$j" jid >/dev/null 2>&1; then
			say "jls: jail $j still runs after service jail stop"
			return 1
		fi
	done
}

# --- CNI (kleene-portmap run as a container runtime runs it): step 10 ---
PORTMAP=${KLEENE_PORTMAP:-/usr/local/libexec/cni/kleene-portmap}
CTR4=10.88.0.5
CTRGW4=10.88.0.1
EPC=
OLD_FORWARDING=

cni_conf() { # the network configuration a runtime passes: bridge's prevResult gave the container $CTR4
	cat <<EOF
{"cniVersion": "1.0.0", "name": "e2e", "type": "kleene-portmap",
 "runtimeConfig": {"portMappings": [{"hostPort": 8088, "containerPort": 80, "protocol": "tcp", "hostIP": "$HOST4"}]},
 "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "ctr"}],
  "ips": [{"address": "$CTR4/24", "gateway": "$CTRGW4", "interface": 0}]}}
EOF
}
cni() { # COMMAND: the plugin for container e2e-ctr, whose network is the VNET jail ctr
	cni_conf | env CNI_COMMAND="$1" CNI_CONTAINERID=e2e-ctr CNI_NETNS=ctr CNI_IFNAME=eth0 \
		CNI_PATH=/usr/local/libexec/cni "$PORTMAP"
}
cni_setup() { # the VNET jail ctr on $CTR4 behind its own epair, serving tcp port 80; the host forwards
	jail -c name=ctr path=/ host.hostname=ctr vnet persist || return 1
	EPC=$(ifconfig epair create) || return 1
	ifconfig "$EPC" inet "$CTRGW4/24" up
	ifconfig "${EPC%a}b" vnet ctr
	jexec ctr ifconfig lo0 up
	jexec ctr ifconfig "${EPC%a}b" inet "$CTR4/24" up
	jexec ctr route -q add -inet default "$CTRGW4"
	OLD_FORWARDING=$(sysctl -n net.inet.ip.forwarding)
	sysctl net.inet.ip.forwarding=1 >/dev/null
	jexec ctr /usr/sbin/daemon -f /bin/sh -c \
		'while :; do echo ctr-tcp | nc -N -l 80 >/dev/null 2>&1 || sleep 0.2; done'
}
ctr_active() {
	kleenectl ls -j ctr --json | tr -d ' \n' | grep -q '"state":"active".*"id":"e2e-ctr"'
}
ctr_anchor_gone() {
	! pfctl -a kleene -s Anchors 2>/dev/null | grep -q 'kleene/ctr$'
}
cni_step() {
	say "== 10. CNI: kleene-portmap publishes a VNET jail's port (ADD), then removes it (DEL)"
	check "kleene-portmap is installed at $PORTMAP" test -x "$PORTMAP"
	check "a VNET jail ctr on $CTR4 serves tcp port 80" cni_setup
	check_not "before ADD, $HOST4:8088 is closed" tcp_reply "$HOST4" 8088 ctr-tcp
	check "CNI ADD publishes $HOST4:8088:80 for container e2e-ctr in jail ctr" cni ADD
	check "ls --json: the container's publication is active" eventually 5 ctr_active
	check "tcp to $HOST4:8088 reaches the container's port 80" eventually 5 tcp_reply "$HOST4" 8088 ctr-tcp
	check "CNI CHECK passes" cni CHECK
	check "CNI DEL removes it" cni DEL
	check "tcp to $HOST4:8088 is closed again" eventually 5 tcp_closed "$HOST4" 8088
	check "kleene/ctr is gone" eventually 5 ctr_anchor_gone
	check "a second CNI DEL succeeds" cni DEL
}
cni_cleanup() {
	if [ -x "$PORTMAP" ]; then
		cni DEL >/dev/null 2>&1
	fi
	jail -r ctr >/dev/null 2>&1
	if [ -n "$EPC" ]; then
		ifconfig "$EPC" destroy >/dev/null 2>&1
	fi
	if [ -n "$OLD_FORWARDING" ]; then
		sysctl net.inet.ip.forwarding="$OLD_FORWARDING" >/dev/null
	fi
}
# --- end of CNI ---

cleanup() {
	cni_cleanup
	kleenectl unpublish -j web --all >/dev/null 2>&1
	kleenectl unpublish -j web2 --all >/dev/null 2>&1
	kleenectl unpublish -j client --all >/dev/null 2>&1
	kleenectl unpublish -j vweb --all >/dev/null 2>&1
	for j in vsib vweb client web2 web; do
		jail -r "$j" >/dev/null 2>&1
		rm -f "/etc/jail.conf.d/$j.conf"
	done
	for i in "$EP" "$EPV" "$EPS" "$BR"; do
		if [ -n "$i" ]; then
			ifconfig "$i" destroy >/dev/null 2>&1
		fi
	done
	if [ -n "$CONFIG" ] && [ -f "$WORK/config.before" ]; then
		cp "$WORK/config.before" "$CONFIG"
		service kleene_rdr reload >/dev/null 2>&1
	fi
	ifconfig lo1 inet "$WEB4" -alias >/dev/null 2>&1
	ifconfig lo1 inet "$WEB2_4" -alias >/dev/null 2>&1
	ifconfig lo1 inet6 "$WEB6" -alias >/dev/null 2>&1
	if [ -n "$OLD_JAIL_ENABLE" ]; then
		sysrc jail_enable="$OLD_JAIL_ENABLE" >/dev/null
	fi
}

if [ "$(uname -s)" != FreeBSD ]; then
	say "e2e.sh runs on FreeBSD only"
	exit 2
fi
if [ "$(id -u)" != 0 ]; then
	say "e2e.sh must run as root"
	exit 2
fi
if ! command -v kleenectl >/dev/null 2>&1; then
	say "kleenectl is not installed: run vagrant/provision.sh first"
	exit 2
fi
trap cleanup EXIT
trap 'exit 1' INT TERM
mkdir -p "$WORK" /etc/jail.conf.d
: >"$WORK/udp.log"
: >"$WORK/vudp.log"
: >"$WORK/peer.log"
: >"$WORK/vpeer.log"

say "== set-up"
check "kleenectl check: agent, pf and the pf.conf anchors are ready" kleenectl check

# Listeners run inside jail web (started by its exec.start): tcp replies name
# the port and family; udp datagrams are appended to udp.log.
cat >"$WORK/listeners.sh" <<EOF
#!/bin/sh
serve_tcp() { while :; do echo "\$3" | nc -N -l "\$1" "\$2" >/dev/null 2>&1 || sleep 0.2; done; }
serve_udp() { while :; do timeout 3 nc -u -l "\$1" "\$2" >>"$WORK/udp.log" 2>/dev/null; done; }
serve_tcp $WEB4 80 web-tcp &
serve_tcp $WEB6 80 web-tcp6 &
serve_tcp $WEB4 81 web-81 &
serve_tcp $WEB4 82 web-82 &
serve_tcp $WEB4 84 web-84 &
serve_udp $WEB4 80 &
# Port 83 logs who connected (nc -v), to see the client's address.
while :; do echo web-83 | nc -v -N -l $WEB4 83 >/dev/null 2>>"$WORK/peer.log" || sleep 0.2; done &
wait
EOF
# The VNET jail vweb's listeners (its address is set after it starts: they
# bind to every address).
cat >"$WORK/vlisteners.sh" <<EOF
#!/bin/sh
serve_tcp() { while :; do echo "\$2" | nc -N -l "\$1" >/dev/null 2>&1 || sleep 0.2; done; }
serve_tcp 80 vweb-tcp &
serve_tcp 84 vweb-84 &
while :; do timeout 3 nc -u -l 80 >>"$WORK/vudp.log" 2>/dev/null; done &
while :; do echo vweb-83 | nc -v -N -l 83 >/dev/null 2>>"$WORK/vpeer.log" || sleep 0.2; done &
wait
EOF

ifconfig lo1 >/dev/null 2>&1 || ifconfig lo1 create
cat >/etc/jail.conf.d/web.conf <<EOF
web {
	path = "/";
	host.hostname = "web";
	ip4.addr = "lo1|$WEB4/32";
	ip6.addr = "lo1|$WEB6/128";
	exec.start = "/usr/sbin/daemon -f /bin/sh $WORK/listeners.sh";
	persist;
}
EOF
cat >/etc/jail.conf.d/web2.conf <<EOF
web2 {
	path = "/";
	host.hostname = "web2";
	ip4.addr = "lo1|$WEB2_4/32";
	persist;
}
EOF
cat >/etc/jail.conf.d/vweb.conf <<EOF
vweb {
	path = "/";
	host.hostname = "vweb";
	vnet;
	exec.start = "/usr/sbin/daemon -f /bin/sh $WORK/vlisteners.sh";
	persist;
}
EOF
cat >/etc/jail.conf.d/vsib.conf <<EOF
vsib {
	path = "/";
	host.hostname = "vsib";
	vnet;
	persist;
}
EOF
cat >/etc/jail.conf.d/client.conf <<EOF
client {
	path = "/";
	host.hostname = "client";
	vnet;
	allow.raw_sockets;
	persist;
}
EOF

OLD_JAIL_ENABLE=$(sysrc -n jail_enable 2>/dev/null || echo NO)
sysrc jail_enable=YES >/dev/null
check "service jail start web web2 client (jls: all three run)" jails_start web web2 client

EP=$(ifconfig epair create)
EPB="${EP%a}b"
ifconfig "$EP" inet "$HOST4/24" up
ifconfig "$EP" inet6 -ifdisabled no_dad
ifconfig "$EP" inet6 "$HOST6/64"
ifconfig "$EPB" vnet client
jexec client ifconfig lo0 up
jexec client ifconfig "$EPB" inet "$CLIENT4/24" up
jexec client ifconfig "$EPB" inet6 -ifdisabled no_dad
jexec client ifconfig "$EPB" inet6 "$CLIENT6/64"
jexec client route -q add -inet default "$HOST4"
jexec client route -q add -inet6 default "$HOST6"
say "published interface: $EP (host $HOST4, $HOST6); client $CLIENT4, $CLIENT6"
check "the client reaches the host" jexec client ping -c 1 -t 2 "$HOST4"
check_not "before publishing, $HOST4:8080 is closed" tcp_reply "$HOST4" 8080 web-tcp

say "== 1. publish tcp and udp"
check "kleenectl publish -j web $EP:8080:80" kleenectl publish -j web "$EP:8080:80"
check "kleenectl publish -j web $EP:8080:80/udp" kleenectl publish -j web "$EP:8080:80/udp"
check "tcp to $HOST4:8080 reaches web port 80" eventually 5 tcp_reply "$HOST4" 8080 web-tcp
check "udp to $HOST4:8080 reaches web port 80" eventually 10 udp_reaches "$HOST4" 8080

say "== 2. ls and pfctl agree"
check "ls --json: tcp active" published_state "$EP:8080:80/tcp" active
check "ls --json: udp active" published_state "$EP:8080:80/udp" active
check "pfctl -a kleene/web -s nat shows the rdr rules" \
	sh -c "pfctl -a kleene/web -s nat | grep -q 'rdr on $EP inet proto tcp .* -> $WEB4 port 80'"
check "stats: the udp publication's current states, as pfctl -v -s rules counts them" \
	eventually 3 stats_agree "$EP:8080:80/udp"

say "== 3. a port range and IPv6"
check "kleenectl publish -j web $EP:9000-9001:81" kleenectl publish -j web "$EP:9000-9001:81"
check "tcp to $HOST4:9000 reaches web port 81" eventually 5 tcp_reply "$HOST4" 9000 web-81
check "tcp to $HOST4:9001 reaches web port 82" eventually 5 tcp_reply "$HOST4" 9001 web-82
check "tcp to [$HOST6]:8080 reaches web [$WEB6]:80" eventually 5 tcp_reply "$HOST6" 8080 web-tcp6

say "== 4. conflicts"
check_not "web2 publishing $EP:8080:80 is refused" kleenectl publish -j web2 "$EP:8080:80"
check "the refusal names the owner" sh -c "kleenectl publish -j web2 '$EP:8080:80' 2>&1 | grep -q 'already published by jail web'"

say "== 5. the jail stops and starts"
check "service jail stop web (jls: gone)" jails_stop web
check "pfctl -a kleene -s Anchors no longer lists kleene/web" eventually 5 sh -c '! pfctl -a kleene -s Anchors 2>/dev/null | grep -q "kleene/web$"'
check "the client's connection fails" tcp_closed "$HOST4" 8080
check "ls --json: pending" published_state "$EP:8080:80/tcp" pending
check "service jail start web (jls: runs)" jails_start web
check "kleene/web is back without any kleenectl call" eventually 10 anchor_listed
check "tcp works again" eventually 10 tcp_reply "$HOST4" 8080 web-tcp
check "udp works again" eventually 10 udp_reaches "$HOST4" 8080

say "== 6. agent restart and pf reload"
check "service kleene_rdr restart" service kleene_rdr restart
check "tcp works after the agent restarted" eventually 10 tcp_reply "$HOST4" 8080 web-tcp
check "pfctl -f /etc/pf.conf" pfctl -f /etc/pf.conf
check "tcp works after the main ruleset was reloaded" eventually 10 tcp_reply "$HOST4" 8080 web-tcp
check "udp works after the main ruleset was reloaded" eventually 10 udp_reaches "$HOST4" 8080
check "kleenectl reconcile --quiet-if-down exits 0 with the agent down" hook_with_agent_down
check "the agent is back" eventually 10 kleenectl ls

say "== 7. unpublish"
check "kleenectl unpublish -j web $EP:8080:80" kleenectl unpublish -j web "$EP:8080:80"
check "tcp to $HOST4:8080 is closed" eventually 5 tcp_closed "$HOST4" 8080
check "the range still works" tcp_reply "$HOST4" 9000 web-81
check "kleenectl unpublish -j web --all" kleenectl unpublish -j web --all
check "kleene/web is gone" eventually 5 sh -c '! pfctl -a kleene -s Anchors 2>/dev/null | grep -q "kleene/web$"'

say "== 8. a VNET jail's addresses: read with the host's ifconfig -j, validated"
# The client's own addresses ($CLIENT4, $CLIENT6) are outside the configured
# networks (the sample config's kleenet, 10.13.37.0/24): nothing is loaded,
# and the reason lists what the host's ifconfig -j read inside the jail.
check "kleenectl publish -j client 7070:7070 is stored" kleenectl publish -j client 7070:7070
check "ls: client is error, naming its address read inside the jail" \
	eventually 10 sh -c "kleenectl ls -j client --json | tr -d '\n' | grep -q '\"state\": *\"error\"' && kleenectl ls -j client --json | grep -q '$CLIENT4'"
check_not "no anchor was loaded for client" sh -c 'pfctl -a kleene -s Anchors 2>/dev/null | grep -q "kleene/client$"'
# The jail's root takes web2's address: neither jail may have it.
check "the client's root adds web2's address $WEB2_4 inside the jail" \
	jexec client ifconfig "$EPB" inet "$WEB2_4/24" alias
check "kleenectl reconcile reads the jail again" kleenectl reconcile
check "ls: the address is refused as claimed by jail web2" eventually 10 client_says "also claimed by jail web2"
check_not "still no anchor for client" sh -c 'pfctl -a kleene -s Anchors 2>/dev/null | grep -q "kleene/client$"'
check "kleenectl unpublish -j client --all" kleenectl unpublish -j client --all

say "== 9. who can reach a published port"
# kleenet (10.13.37.0/24, the sample configuration's) is the jails' network;
# the client's 10.77.0.0/24 becomes a second configured network, e2e.
CONFIG=$(sysrc -n kleene_rdr_config 2>/dev/null || true)
CONFIG=${CONFIG:-/usr/local/etc/kleene-rdr.yml}
cp "$CONFIG" "$WORK/config.before"
awk '{ print } $1 == "networks:" { print "  - name: e2e"; print "    subnet: 10.77.0.0/24" }' \
	"$WORK/config.before" >"$CONFIG"
check "the configuration names the networks e2e and kleenet (service kleene_rdr reload)" \
	sh -c "grep -q 'name: e2e' '$CONFIG' && service kleene_rdr reload"
# The VNET jails vweb and vsib on a bridge, the host at $BRIDGE4 on it.
BR=$(ifconfig bridge create)
ifconfig "$BR" inet "$BRIDGE4/24" up
EPV=$(ifconfig epair create)
EPS=$(ifconfig epair create)
ifconfig "$BR" addm "$EPV" addm "$EPS"
ifconfig "$EPV" up
ifconfig "$EPS" up
check "service jail start vweb vsib (jls: both run)" jails_start vweb vsib
ifconfig "${EPV%a}b" vnet vweb
ifconfig "${EPS%a}b" vnet vsib
jexec vweb ifconfig "${EPV%a}b" inet "$VWEB4/24" up
jexec vsib ifconfig "${EPS%a}b" inet "$VSIB4/24" up
jexec vweb route -q add -inet default "$BRIDGE4"
jexec vsib route -q add -inet default "$BRIDGE4"
GWIF=$(route -n get default 2>/dev/null | awk '/interface:/ { print $2 }')
GWADDR=$(ifconfig "$GWIF" inet 2>/dev/null | awk '$1 == "inet" { print $2; exit }')
say "bridge $BR ($BRIDGE4): vweb $VWEB4, vsib $VSIB4; the gateway $GWIF is $GWADDR"
check "sysctl: net.inet.ip.forwarding and net.pf.filter_local are 1" sysctls_on
check "kleenectl reconcile (reads the host's interfaces: the bridge)" kleenectl reconcile
check "kleenectl check: the host offers every reach" kleenectl check

# reach_suite NAME ADDR UDPLOG PEERLOG BASE: publishes jail NAME (at ADDR) on
# $EP (where the client, outside, comes in), on the gateway (the host's way
# in), on 127.0.0.1 (local only), and tries every way in. Host ports BASE to
# BASE+4.
reach_suite() {
	name=$1 addr=$2 log=$3 peers=$4 base=$5
	ext=$base gw=$((base + 1)) lo=$((base + 2)) peer=$((base + 3)) raw=$((base + 4))
	check "kleenectl publish -j $name $EP:$ext:80 $EP:$ext:80/udp $gw:80 $EP:$peer:83 127.0.0.1:$lo:80" \
		kleenectl publish -j "$name" "$EP:$ext:80" "$EP:$ext:80/udp" "$gw:80" "$EP:$peer:83" "127.0.0.1:$lo:80"
	check "kleenectl publish -j $name --no-networks $EP:$raw:84" kleenectl publish -j "$name" --no-networks "$EP:$raw:84"
	check "outside: the client's tcp to $HOST4:$ext reaches $name:80" \
		eventually 5 from_jail client "$HOST4" "$ext" "$name-tcp"
	check "outside: $name:83 logs the client's own address $CLIENT4 as its peer (tcp to $HOST4:$peer)" \
		eventually 5 peer_seen client "$HOST4" "$peer" "$peers" "$CLIENT4"
	check "outside: the client's udp to $HOST4:$ext reaches $name:80" \
		eventually 10 udp_from client "$HOST4" "$ext" "$log"
	check "hairpin: non-VNET jail web2 reaches $name through $HOST4:$ext" \
		eventually 5 from_jail web2 "$HOST4" "$ext" "$name-tcp"
	check "hairpin: VNET jail vsib (on $BR) reaches $name through $HOST4:$ext" \
		eventually 5 from_jail vsib "$HOST4" "$ext" "$name-tcp"
	check "hairpin: vsib's udp to $HOST4:$ext reaches $name:80" \
		eventually 10 udp_from vsib "$HOST4" "$ext" "$log"
	check "direct: the client (network e2e) reaches $addr:80 under the default-deny ruleset" \
		eventually 5 from_jail client "$addr" 80 "$name-tcp"
	check "direct: the client's udp to $addr:80 reaches $name" \
		eventually 10 udp_from client "$addr" 80 "$log"
	check "host: 127.0.0.1:$gw reaches $name:80" eventually 5 from_host 127.0.0.1 "$gw" "$name-tcp"
	check "host: its own address $GWADDR:$gw reaches $name:80" eventually 5 from_host "$GWADDR" "$gw" "$name-tcp"
	check "host: 127.0.0.1:$lo (local only) reaches $name:80" eventually 5 from_host 127.0.0.1 "$lo" "$name-tcp"
	check "local only: the client's $HOST4:$lo is closed" closed_from_jail client "$HOST4" "$lo"
	check "local only: the client's $GWADDR:$lo is closed" closed_from_jail client "$GWADDR" "$lo"
	check "published: the client's $HOST4:$raw reaches $name:84" \
		eventually 5 from_jail client "$HOST4" "$raw" "$name-84"
	check "not admitted: the client's packet routed straight to $addr:84 (published with --no-networks)" \
		closed_from_jail client "$addr" 84
	check "ls --json: $EP:$ext:80/tcp is reachable from outside, jails, networks, host" \
		reach_of "$name" "$EP:$ext:80/tcp" '"outside","jails","networks","host"'
	check "ls --json: 127.0.0.1:$lo:80/tcp is reachable from the host only" \
		reach_of "$name" "127.0.0.1:$lo:80/tcp" '"host"'
	check "kleenectl unpublish -j $name --all" kleenectl unpublish -j "$name" --all
	check "teardown: kleene/$name is gone" \
		eventually 5 sh -c "! pfctl -a kleene -s Anchors 2>/dev/null | grep -q 'kleene/$name\$'"
	check "teardown: 127.0.0.1:$gw is closed" eventually 5 sh -c "! nc -z -w 2 127.0.0.1 $gw"
	check "teardown: the client's $HOST4:$ext is closed" eventually 5 closed_from_jail client "$HOST4" "$ext"
	check "teardown: the client's direct $addr:80 is closed again" eventually 5 closed_from_jail client "$addr" 80
}

say "-- 9a. non-VNET jail web ($WEB4 on lo1)"
reach_suite web "$WEB4" "$WORK/udp.log" "$WORK/peer.log" 8100
say "-- 9b. VNET jail vweb ($VWEB4 on the bridge)"
reach_suite vweb "$VWEB4" "$WORK/vudp.log" "$WORK/vpeer.log" 8200
cni_step

say ""
say "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
