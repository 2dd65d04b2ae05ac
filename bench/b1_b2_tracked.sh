#!/usr/bin/env bash
# B1: single-row INSERT and UPDATE throughput on a tracked table vs the same
#     table untracked (pgbench, 2 clients), with durable commits (fsync and
#     synchronous_commit on) and CPU-bound (fsync off), measured side by side;
#     then the same, and a DELETE (each followed by the key's INSERT again),
#     on a tracked table that keeps tombstones and is versioned by a column
#     (issue 14: the row trigger logs the deleted row's version).
# B2: track() of a 1M-row table vs a plain scan that hashes every row in SQL.
# Usage (as root): bench/b1_b2_tracked.sh [seconds per pgbench run] [rows for B2, 0: no B2]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

SECS=${1:-20}
ROWS=${2:-1000000}
require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-bench.XXXXXX)
chown postgres "$WORK"
TICK=
trap '[ -n "$TICK" ] && kill $TICK 2>/dev/null; pg_stop "$WORK/server"; rm -rf "$WORK"' EXIT
pg_start "$WORK/server" 54331 "shared_buffers = 1GB" "max_wal_size = 8GB" "fsync = on" \
	"checkpoint_timeout = 30min" "shared_preload_libraries = 'hashtree'"
export PGHOST=$WORK/server PGPORT=54331 PGUSER=postgres PGDATABASE=postgres
export PGOPTIONS="-c client_min_messages=warning"
PSQL="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1"

$PSQL -c 'CREATE EXTENSION hashtree'
# three identical tables; one tracked, one tracked with tombstones and a
# version column
for t in plain tracked tombs; do
	$PSQL -c "CREATE TABLE $t (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
	                           status text, created timestamptz DEFAULT now())"
	$PSQL -c "INSERT INTO $t SELECT i, 'c' || (i % 1000), i * 0.5, 'new' FROM generate_series(1, 100000) i"
done
$PSQL -c "SELECT hashtree.track('tracked')" >/dev/null
$PSQL -c "SELECT hashtree.track('tombs', version_column => 'created')" \
	-c "SELECT hashtree.tombstones('tombs')" >/dev/null

for t in plain tracked tombs; do
	cat >"$WORK/ins_$t.sql" <<SQL
\set id random(1000000, 1000000000000)
INSERT INTO $t (id, customer, amount, status) VALUES (:id, 'c' || (:id::bigint % 1000), :id::bigint % 10000, 'new') ON CONFLICT (id) DO NOTHING;
SQL
	cat >"$WORK/upd_$t.sql" <<SQL
\set id random(1, 100000)
UPDATE $t SET amount = amount + 1, status = 'paid' WHERE id = :id;
SQL
	cat >"$WORK/del_$t.sql" <<SQL
\set id random(1, 100000)
DELETE FROM $t WHERE id = :id;
INSERT INTO $t (id, customer, amount, status) VALUES (:id, 'c' || (:id::bigint % 1000), :id::bigint % 10000, 'new') ON CONFLICT (id) DO NOTHING;
SQL
done

tps() {
	local out
	out=$($PG_BIN/pgbench -n -M prepared -c 2 -j 2 -T "$SECS" -f "$1" 2>&1) || { echo "$out" >&2; die "pgbench failed"; }
	echo "$out" | awk '/^tps/ { print int($3) }'
}
# a tick of update() every 10 s, as the background worker would do
ticker() {
	while sleep 10; do
		$PSQL -c "SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p) FROM generate_series(0, 7) p) s" >/dev/null 2>&1 || true
	done
}

# run_b1 MODE [TABLE [OPS]]: the tracked table (tracked, tombs) against plain
run_b1() {
	local mode=$1 tt=${2:-tracked} ops=${3:-ins upd} what
	for op in $ops; do
		# alternate the order to share out drift of the machine
		p1=$(tps "$WORK/${op}_plain.sql"); t1=$(tps "$WORK/${op}_$tt.sql")
		t2=$(tps "$WORK/${op}_$tt.sql"); p2=$(tps "$WORK/${op}_plain.sql")
		p=$(( (p1 + p2) / 2 )); t=$(( (t1 + t2) / 2 ))
		case $op in ins) what=INSERT ;; upd) what=UPDATE ;; del) what="DELETE + INSERT" ;; esac
		echo "B1 $mode, $what, 2 clients: untracked $p tps, $tt $t tps: ratio $(echo "scale=3; $t / $p" | bc)"
	done
}

# the keys logged meanwhile are folded by update(); how fast?
fold() {
	local keys ms
	keys=$($PSQL -At -c "SELECT count(*) FROM hashtree.dirty_key")
	ms=$($PSQL -c '\timing on' -c "SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p) FROM generate_series(0, 7) p) s" | awk '/^Time:/ { print $2 }')
	[ "$keys" -gt 0 ] && echo "   update() of all partitions folded $keys logged keys in ${ms} ms: $(echo "$keys * 1000 / $ms" | bc) keys/s"
}

# 1. the write path alone (update() runs between the measurements)
run_b1 "durable (fsync on, synchronous_commit on)"
fold
run_b1 "durable, tombstones and a version column" tombs "ins upd del"
fold
$PSQL -c "ALTER SYSTEM SET fsync = off" -c "ALTER SYSTEM SET synchronous_commit = off" -c "SELECT pg_reload_conf()" >/dev/null
run_b1 "CPU-bound (fsync off, synchronous_commit off)"
fold
$PSQL -c "ALTER SYSTEM RESET fsync" -c "ALTER SYSTEM RESET synchronous_commit" -c "SELECT pg_reload_conf()" >/dev/null

# 2. with update() of every partition every 10 s during the runs, as the
# background worker will do (the work moved off the write path, done beside it)
ticker & TICK=$!
run_b1 "durable, update() every 10 s"
kill $TICK 2>/dev/null || true
TICK=

[ "$ROWS" = 0 ] && exit 0		# (B1 only)
echo "== B2: track() of a $ROWS-row table vs a plain scan hashing every row in SQL"
$PSQL -c "CREATE TABLE big (id bigint PRIMARY KEY, customer text, amount numeric(12,2), status text, created timestamptz)"
$PSQL -c "INSERT INTO big SELECT i, 'c' || (i % 1000), i * 0.5, 'new', '2024-01-01'::timestamptz + i * interval '1 s' FROM generate_series(1, $ROWS) i"
$PSQL -c "VACUUM ANALYZE big"
# start from a quiet server: B1 left gigabytes of WAL and dirty buffers, and
# autovacuum work, that a checkpoint or a vacuum would spend during B2
$PSQL -c "VACUUM" -c "CHECKPOINT"
timed() { $PSQL -c '\timing on' "$@" | awk '/^Time:/ { print $2 }'; }
scan=(); track=()
for r in 1 2 3 4 5; do
	scan+=("$(timed -c "SELECT count(sha256(b::text::bytea)) FROM big b" | tail -1)")
	track+=("$(timed -c "SELECT hashtree.track('big')" | tail -1)")
	echo "   round $r: scan ${scan[-1]} ms, track() ${track[-1]} ms"
	$PSQL -c "SELECT hashtree.untrack('big')" -c "VACUUM hashtree.entry, hashtree.entry_pack" >/dev/null
done
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ms=$(printf '%s\n' "${scan[@]}" | median); mt=$(printf '%s\n' "${track[@]}" | median)
echo "B2: scan hashing every row ${ms} ms, track() ${mt} ms (medians of 5): track/scan = $(echo "scale=2; $mt / $ms" | bc)x (target <= 1.5x)"
exit 0
