#!/usr/bin/env bash
# Runs every test of hashtree: pg_regress, isolation and TAP tests, on
# throwaway servers.  Run as root on a machine with Debian's postgresql-15:
# it installs the build and test dependencies it needs.
# Exits non-zero, printing the differences, if any test fails.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

require_root
install_deps || exit 1
build_install || exit 1

WORK=$(mktemp -d /tmp/hashtree-test.XXXXXX)
SERVER=$WORK/server
TREE=$WORK/tree
cleanup() { pg_stop "$SERVER"; rm -rf "$WORK"; }
trap cleanup EXIT

# a copy of the tree that postgres can write into (results, tmp_check)
mkdir -p "$TREE"
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard 2>/dev/null | xargs -0 -r cp --parents -t "$TREE") ||
	cp -r "$REPO/." "$TREE"
[ -f "$TREE/Makefile" ] || cp -r "$REPO/." "$TREE"
chown -R postgres "$WORK"

as_pg() { runuser -u postgres -- env PATH="$PG_BIN:$PATH" "$@"; }

status=0

# run_suites WHAT MAKE-ARGS...: the pg_regress suite, then the isolation tests
run_suites() {
	local what=$1
	shift
	echo "== pg_regress ($what)"
	if ! as_pg make -s -C "$TREE" PG_CONFIG=$PG_CONFIG installcheck ISOLATION= TAP_TESTS= "$@"; then
		status=1
		cat "$TREE/regression.diffs" 2>/dev/null
	fi
	echo "== isolation tests ($what)"
	if ! as_pg make -s -C "$TREE" PG_CONFIG=$PG_CONFIG installcheck REGRESS= TAP_TESTS= "$@"; then
		status=1
		cat "$TREE/output_iso/regression.diffs" 2>/dev/null
	fi
}

# the suites start their own server with hashtree.conf (as a developer
# without root would run them), then run against a running server
run_suites "own server: make installcheck TEMP_INSTANCE=1" TEMP_INSTANCE=1
pg_start "$SERVER" 54321 "include '$TREE/hashtree.conf'"
export PGHOST=$SERVER PGPORT=54321 PGUSER=postgres
run_suites "running server" PGHOST=$PGHOST PGPORT=$PGPORT PGUSER=$PGUSER
pg_stop "$SERVER"
unset PGHOST PGPORT PGUSER

# The build with -Wextra (make EXTRA_WARNINGS=1) in the copy: a warning of
# our own files fails the run (not those the server's headers give:
# -Wclobbered inside PG_TRY).
echo "== warnings under -Wextra"
as_pg make -s -C "$TREE" PG_CONFIG=$PG_CONFIG with_llvm=no EXTRA_WARNINGS=1 >/dev/null 2>"$WORK/warnings" || status=1
grep -E '^src/[^:]+:[0-9]+:[0-9]+: warning:' "$WORK/warnings" | sort -u
nwarn=$(grep -cE '^src/[^:]+:[0-9]+:[0-9]+: warning:' "$WORK/warnings" || true)
echo "$nwarn warnings in src/"
[ "$nwarn" = 0 ] || status=1

echo "== TAP tests"
if ! as_pg make -s -C "$TREE" PG_CONFIG=$PG_CONFIG installcheck REGRESS= ISOLATION= \
	PROVE_FLAGS="--timer"; then
	status=1
	for f in "$TREE"/tmp_check/log/regress_log_*; do
		[ -f "$f" ] || continue
		echo "---- $(basename "$f") (last 60 lines)"
		tail -n 60 "$f"
	done
fi

if [ $status = 0 ]; then
	echo "== all tests passed"
else
	echo "== SOME TESTS FAILED"
fi
exit $status
