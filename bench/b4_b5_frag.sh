#!/usr/bin/env bash
# B4: add_frag on a 1M-row fragmented table going 8 -> 9 fragments (online
#     and block_writes) vs re-partitioning the table with PostgreSQL alone
#     (a new table with modulus 9, INSERT ... SELECT), side by side; the
#     rows moved; and the worst write latency seen by pgbench clients
#     writing through the parent during an online split, against the same
#     clients without a split.
# B5: key_to_frag_number calls per second in one backend.
# Usage (as root): bench/b4_b5_frag.sh [rows] [rounds]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

ROWS=${1:-1000000}
ROUNDS=${2:-3}
require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-bench.XXXXXX)
chown postgres "$WORK"
trap 'pg_stop "$WORK/server"; rm -rf "$WORK"' EXIT
pg_start "$WORK/server" 54351 "shared_buffers = 1GB" "max_wal_size = 8GB" "fsync = on" \
	"checkpoint_timeout = 30min" "shared_preload_libraries = 'hashtree'"
export PGHOST=$WORK/server PGPORT=54351 PGUSER=postgres PGDATABASE=postgres
export PGOPTIONS="-c client_min_messages=warning"
PSQL="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1"
timed() { $PSQL -c '\timing on' "$@" | awk '/^Time:/ { print $2 }' | tail -1; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "== B4: a fragmented table of $ROWS rows, 8 fragments"
$PSQL -c 'CREATE EXTENSION hashtree' \
	-c "CREATE TABLE big (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
	                      created timestamptz NOT NULL) PARTITION BY HASH (id)" \
	-c "SELECT hashtree.frag_init('big', 8)" \
	-c "INSERT INTO big SELECT i, 'c' || (i % 1000), i * 0.5, '2026-01-01'::timestamptz + i * interval '1 s'
	      FROM generate_series(1, $ROWS) i" \
	-c "VACUUM ANALYZE big" >/dev/null

online=(); blocking=(); repart=(); moved=
for r in $(seq 1 "$ROUNDS"); do
	online+=("$(timed -c "SELECT hashtree.add_frag('big', 'online')")")
	moved=$($PSQL -At -c "SELECT rows FROM hashtree.frag_size('big', true) WHERE fragment = 9")
	$PSQL -c "SELECT hashtree.del_frag('big', 'block_writes')" >/dev/null
	blocking+=("$(timed -c "SELECT hashtree.add_frag('big', 'block_writes')")")
	$PSQL -c "SELECT hashtree.del_frag('big', 'block_writes')" >/dev/null
	# PostgreSQL alone: a table hash-partitioned with the new modulus, filled from the old
	$PSQL -c "DROP TABLE IF EXISTS big9" \
		-c "CREATE TABLE big9 (LIKE big INCLUDING ALL) PARTITION BY HASH (id)"
	for g in $(seq 0 8); do
		$PSQL -c "CREATE TABLE big9_$g PARTITION OF big9 FOR VALUES WITH (MODULUS 9, REMAINDER $g)"
	done
	repart+=("$(timed -c "INSERT INTO big9 SELECT * FROM big")")
done
on=$(printf '%s\n' "${online[@]}" | median)
bw=$(printf '%s\n' "${blocking[@]}" | median)
rp=$(printf '%s\n' "${repart[@]}" | median)
echo "B4 add_frag 8 -> 9 on $ROWS rows (medians of $ROUNDS): online ${on} ms, block_writes ${bw} ms;" \
	"re-partitioning with INSERT ... SELECT ${rp} ms"
echo "   online is $(echo "scale=1; $rp / $on" | bc)x faster, block_writes $(echo "scale=1; $rp / $bw" | bc)x (target >= 5x);" \
	"rows moved: $moved of $ROWS = 1/$(echo "scale=1; $ROWS / $moved" | bc) (fragment 1 split into 1 and 9; ideal 1/16)"

echo "== write latency of clients (2, through the parent) during an online split, vs none"
cat >"$WORK/writers.sql" <<'SQL'
\set k random(1, 1000000)
UPDATE big SET amount = amount + 1 WHERE id = :k;
INSERT INTO big VALUES (nextval('ids'), 'new', 1, now());
SQL
$PSQL -c "CREATE SEQUENCE ids START 100000000" >/dev/null
latency() {
	# pgbench -l: per-transaction log; column 3 is the latency in microseconds
	local dir=$1
	mkdir -p "$dir"; chown postgres "$dir"
	(cd "$dir" && runuser -u postgres -- env PGHOST="$PGHOST" PGPORT="$PGPORT" $PG_BIN/pgbench -n -c 2 -j 2 \
		-T "$2" -f "$WORK/writers.sql" -l postgres >/dev/null 2>"$dir/err") &
}
maxlat() { cat "$1"/pgbench_log.* | awk '{ if ($3 > m) m = $3; n++ } END { printf "%.1f ms max over %d transactions", m / 1000, n }'; }
latency "$WORK/quiet" 8
wait
latency "$WORK/split" 8
sleep 2
split_ms=$(timed -c "SELECT hashtree.add_frag('big', 'online')")
wait
grep -q "ERROR" "$WORK/split/err" && { cat "$WORK/split/err"; die "client errors during the split"; }
echo "B4 online split (${split_ms} ms) under 2 writing clients: $(maxlat "$WORK/split");" \
	"same clients without a split: $(maxlat "$WORK/quiet")"
latency "$WORK/blocking" 8
sleep 2
$PSQL -c "SELECT hashtree.del_frag('big', 'block_writes')" >/dev/null
block_ms=$(timed -c "SELECT hashtree.add_frag('big', 'block_writes')")
wait
echo "B4 block_writes split (${block_ms} ms) under the same clients: $(maxlat "$WORK/blocking")"
echo "   rows in the table afterwards: $($PSQL -At -c "SELECT count(*) = count(DISTINCT id) FROM big") (no duplicates)"

echo "== B5: key_to_frag_number in one backend"
n=5000000
base=$(timed -c "SELECT count(g) FROM generate_series(1, $n) g")
calls=$(timed -c "SELECT count(hashtree.key_to_frag_number('big', g)) FROM generate_series(1, $n) g")
echo "B5 $n calls: ${calls} ms, the same scan without the call ${base} ms:" \
	"$(echo "$n * 1000 / $calls" | bc) calls/s overall, $(echo "$n * 1000 / ($calls - $base)" | bc) calls/s for the function (target >= 1,000,000/s)"
exit 0
