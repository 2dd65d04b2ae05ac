# shellcheck shell=bash
# Shared by scripts/test.sh, scripts/demo.sh and bench/*: installs what a
# fresh Debian 12 machine with only postgresql-15 lacks, builds and installs
# the extension, and runs throwaway servers owned by "postgres".
# Run as root.

# HASHTREE_PG_BIN: another (relocated) copy of the server, so that several
# builds can be installed and tested side by side on one machine
PG_BIN=${HASHTREE_PG_BIN:-/usr/lib/postgresql/15/bin}
PG_CONFIG=$PG_BIN/pg_config
export PG_CONFIG

die() { echo "error: $*" >&2; exit 1; }

require_root() {
	[ "$(id -u)" = 0 ] || die "run this as root (it installs packages and runs servers as postgres)"
	[ -x "$PG_BIN/postgres" ] || die "Debian's postgresql-15 server is not installed"
}

# apt-get install, pinned to the installed server/libpq version when the
# archive still has it (otherwise apt would upgrade the server and libpq)
apt_install_pinned() {
	local pkg=$1 ref=$2 ver
	ver=$(dpkg-query -W -f='${Version}' "$ref" 2>/dev/null || true)
	if [ -n "$ver" ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg=$ver" >/dev/null 2>&1; then
		return 0
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null
}

install_deps() {
	local need=0
	[ -f "$($PG_CONFIG --pgxs 2>/dev/null)" ] || need=1
	[ -f /usr/include/postgresql/15/server/postgres.h ] || need=1
	[ -f /usr/include/postgresql/libpq-fe.h ] || need=1
	perl -MIPC::Run -e1 2>/dev/null || need=1
	[ $need = 0 ] && return 0
	echo "== installing build and test dependencies"
	apt-get update -q >/dev/null
	apt_install_pinned libpq-dev libpq5
	apt_install_pinned postgresql-server-dev-15 postgresql-15
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q libipc-run-perl make gcc >/dev/null
	[ -f "$($PG_CONFIG --pgxs)" ] || die "PGXS is still missing after installing postgresql-server-dev-15"
}

# build and install from the directory given (default: the repository)
build_install() {
	local dir=${1:-$REPO}
	echo "== building and installing hashtree"
	local llvm=
	command -v clang-14 >/dev/null 2>&1 || llvm="with_llvm=no"
	make -s -C "$dir" PG_CONFIG=$PG_CONFIG $llvm >/dev/null
	make -s -C "$dir" PG_CONFIG=$PG_CONFIG $llvm install >/dev/null
}

# pg_start DIR PORT [postgresql.conf lines...]: a throwaway cluster in DIR,
# listening on a Unix socket in DIR only
pg_start() {
	local dir=$1 port=$2
	shift 2
	mkdir -p "$dir"
	chown postgres "$dir"
	runuser -u postgres -- $PG_BIN/initdb -D "$dir/data" -A trust -U postgres --no-sync >/dev/null
	{
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$dir'"
		echo "port = $port"
		echo "fsync = off"
		for line in "$@"; do echo "$line"; done
	} >>"$dir/data/postgresql.conf"
	runuser -u postgres -- $PG_BIN/pg_ctl -D "$dir/data" -l "$dir/log" -w start >/dev/null ||
		{ cat "$dir/log"; die "could not start a server in $dir"; }
}

pg_stop() {
	local dir=$1
	[ -f "$dir/data/postmaster.pid" ] &&
		runuser -u postgres -- $PG_BIN/pg_ctl -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
	return 0
}
