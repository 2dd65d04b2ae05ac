#!/usr/bin/env bash
# B6: update() after 1,000 changes in a 1M-entry partition, against a full
# rebuild (reset) of the same partition, measured side by side on one
# throwaway server (fsync and synchronous_commit on, as in production).
# Also: insert() throughput, against a plain INSERT ... ON CONFLICT into an
# equivalent indexed table (pgbench, 1 and 2 clients).
# Usage (as root): bench/b6_update_vs_reset.sh [entries] [changes] [rounds]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

ENTRIES=${1:-1000000}
CHANGES=${2:-1000}
ROUNDS=${3:-5}
require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-bench.XXXXXX)
chown postgres "$WORK"
trap 'pg_stop "$WORK/server"; rm -rf "$WORK"' EXIT
pg_start "$WORK/server" 54330 "shared_buffers = 1GB" "max_wal_size = 8GB" "fsync = on" \
	"checkpoint_timeout = 30min"
export PGHOST=$WORK/server PGPORT=54330 PGUSER=postgres PGDATABASE=postgres
export PGOPTIONS="-c client_min_messages=warning"
PSQL="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1"

# run SQL in one session with \timing; print the milliseconds of each statement
timed() { $PSQL -c '\timing on' "$@" | awk '/^Time:/ { print $2 }'; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

$PSQL -c 'CREATE EXTENSION hashtree'
echo "== loading $ENTRIES entries into partition 0 (insert(), one transaction per 100,000)"
load_ms=0
for ((start = 1; start <= ENTRIES; start += 100000)); do
	end=$((start + 99999)); [ $end -gt "$ENTRIES" ] && end=$ENTRIES
	ms=$(timed -c "SELECT count(*) FROM (SELECT hashtree.insert(0, 'bench', 'p', ('key' || i)::bytea, sha256(i::text::bytea), false) FROM generate_series($start, $end) i) s" | tail -1)
	load_ms=$(echo "$load_ms + $ms" | bc)
done
first_ms=$(timed -c "SELECT hashtree.lock(0)" -c "SELECT hashtree.update(0)" | tail -1)
$PSQL -c 'VACUUM ANALYZE hashtree.entry, hashtree.node, hashtree.dirty'
echo "   inserts: $(echo "scale=0; $ENTRIES * 1000 / $load_ms" | bc) entries/s in batches; first update (all $ENTRIES segments dirty): ${first_ms} ms"

echo "== $ROUNDS rounds: $CHANGES changes (1/3 new keys, 1/3 new hashes, 1/3 deletes), then update(0); then reset(0)"
upd=(); rst=()
for ((r = 1; r <= ROUNDS; r++)); do
	n3=$((CHANGES / 3))
	$PSQL -c "SELECT count(*) FROM (
		SELECT hashtree.insert(0, 'bench', 'p', ('new$r-' || i)::bytea, '\x01', false) FROM generate_series(1, $n3) i) s" \
	      -c "SELECT count(*) FROM (
		SELECT hashtree.insert(0, 'bench', 'p', ('key' || (1 + (i::bigint * 7919 + $r * 104729) % $ENTRIES))::bytea, ('\x0$r')::bytea, false)
		  FROM generate_series(1, $n3) i) s" \
	      -c "SELECT count(*) FROM (
		SELECT hashtree.delete(0, 'bench', 'p', ('key' || (1 + (i::bigint * 15485863 + $r * 32452843) % $ENTRIES))::bytea)
		  FROM generate_series(1, $((CHANGES - 2 * n3))) i) s" >/dev/null
	u=$(timed -c "SELECT hashtree.lock(0)" -c "SELECT hashtree.update(0)" | tail -1)
	x=$(timed -c "SELECT hashtree.reset(0)" | tail -1)
	seg=$($PSQL -At -c "SELECT last_update_segments FROM hashtree.status WHERE partition = 0")
	echo "   round $r: update ${u} ms ($seg segments recomputed), reset ${x} ms"
	upd+=("$u"); rst+=("$x")
done
mu=$(printf '%s\n' "${upd[@]}" | median)
mr=$(printf '%s\n' "${rst[@]}" | median)
bad=$($PSQL -At -c "SELECT count(*) FROM hashtree.check_tree(0)")
entries=$($PSQL -At -c "SELECT entries FROM hashtree.status WHERE partition = 0")
echo "B6: partition of $entries entries, $CHANGES changes: update ${mu} ms, reset ${mr} ms (medians): reset/update = $(echo "scale=1; $mr / $mu" | bc)x (target >= 50x); check_tree mismatches: $bad"

echo "== insert() throughput vs a plain INSERT ... ON CONFLICT (pgbench, 10 s each)"
$PSQL -c "CREATE TABLE plain (pa text, pb text, k bytea, h bytea, PRIMARY KEY (pa, pb, k))"
cat >"$WORK/ht.sql" <<'SQL'
\set k random(1, 1000000000)
SELECT hashtree.insert('ins', 'p', ('k' || :k)::bytea, '\x0102030405060708090a0b0c0d0e0f10');
SQL
cat >"$WORK/plain.sql" <<'SQL'
\set k random(1, 1000000000)
INSERT INTO plain VALUES ('ins', 'p', ('k' || :k)::bytea, '\x0102030405060708090a0b0c0d0e0f10')
	ON CONFLICT (pa, pb, k) DO UPDATE SET h = EXCLUDED.h;
SQL
tps() {
	local out
	out=$($PG_BIN/pgbench -n -M prepared -c "$1" -j "$1" -T 10 -f "$2" 2>&1) || { echo "$out" >&2; die "pgbench failed"; }
	echo "$out" | awk '/^tps/ { print int($3) }'
}
for c in 1 2; do
	p=$(tps $c "$WORK/plain.sql"); h=$(tps $c "$WORK/ht.sql")
	echo "insert, $c client(s), durable commits: hashtree.insert ${h} tps, plain INSERT ${p} tps: ratio $(echo "scale=2; $h / $p" | bc)"
done
