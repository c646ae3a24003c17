#!/bin/sh
# Builds the kleene-rdr port with the FreeBSD ports framework, packages it,
# installs the package and lists it (pkg info -l). Run as root on FreeBSD with
# rust and git installed; the FreeBSD workflow runs it in a throwaway VM.
#
#   sh packaging/freebsd/build-port.sh DIR
#
# DIR holds the distfile, kleene-rdr-<DISTVERSION>.tar.gz, a tarball of the
# source tree under the directory kleene-rdr-<DISTVERSION>/, for example:
#   git archive --format=tar.gz --prefix=kleene-rdr-0.1.0/ -o DIR/kleene-rdr-0.1.0.tar.gz HEAD
# The project has no release site yet, so the distfile is put in DISTDIR and
# distinfo (the distfile's and every crate's SHA256 and size) is written by
# `make makesum`, which fetches the crates from crates.io.
#
# Without a ports tree at PORTSDIR (default /usr/ports), it clones the
# framework only (Mk, Keywords, Templates) of the freebsd-ports branch
# PORTS_BRANCH (default: the current quarterly branch, which the release's
# packages, rust included, are built from).
set -eu

src=$(cd "$(dirname "$0")/../.." && pwd)
distfiles=${1:?usage: build-port.sh DIR-WITH-THE-DISTFILE}
portsdir=${PORTSDIR:-/usr/ports}
export BATCH=yes

if [ ! -f "$portsdir/Mk/bsd.port.mk" ]; then
	month=$(date -u +%m)
	branch=${PORTS_BRANCH:-$(date -u +%Y)Q$(((${month#0} + 2) / 3))}
	echo "build-port.sh: cloning the ports framework ($branch) into $portsdir"
	git clone --quiet --depth 1 --filter=blob:none --sparse --branch "$branch" \
		https://github.com/freebsd/freebsd-ports.git "$portsdir"
	git -C "$portsdir" sparse-checkout set Mk Keywords Templates
fi

port=$portsdir/sysutils/kleene-rdr
rm -rf "$port"
mkdir -p "$portsdir/sysutils"
cp -R "$src/packaging/freebsd/sysutils/kleene-rdr" "$port"
cd "$port"

distname=$(make -V DISTNAME)
distdir=$(make -V DISTDIR)
if [ ! -f "$distfiles/$distname.tar.gz" ]; then
	echo "build-port.sh: no $distfiles/$distname.tar.gz (the port's DISTNAME is $distname)" >&2
	exit 1
fi
mkdir -p "$distdir"
cp "$distfiles/$distname.tar.gz" "$distdir/"

make makesum
make stage
make stage-qa
make check-plist
make package
make install

pkgname=$(make -V PKGBASE)
echo "=== pkg info -l $pkgname"
pkg info -l "$pkgname"

# What an admin gets: the programs run, the sample became the configuration
# (@sample), the rc.d script is the one USE_RC_SUBR names.
prefix=$(make -V PREFIX)
"$prefix/bin/kleenectl" --version
"$prefix/bin/kleenectl" agent --config "$prefix/etc/kleene-rdr.yml" --check
test -x "$prefix/libexec/cni/kleene-portmap"
test -x "$prefix/etc/rc.d/$(make -V USE_RC_SUBR)"
pkg info -l "$pkgname" | grep -q "$prefix/etc/rc.d/kleene_rdr\$"
test ! -e "$prefix/bin/fake-freebsd"

pkg delete -y "$pkgname"
echo "build-port.sh: the port built, packaged, installed and uninstalled"
