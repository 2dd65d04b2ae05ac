#!/usr/bin/env bash
# B8 (issue 15, item 6): fragments on other servers.
#  - moving a fragment of a 1M-row table (8 fragments: 125k rows) to a peer
#    and back with move_frag (block_writes and online: verified by digests
#    on both sides), vs doing it by hand through postgres_fdw: INSERT INTO
#    a foreign table SELECT * FROM the fragment (batch_size 1, postgres_fdw's
#    default, and batch_size 1000), no verification;
#  - reads by key through the parent (pgbench, one client, per-statement
#    latency): a key of a local fragment vs a key of the remote fragment;
#  - add_frag of the remote fragment 1 with the new fragment 9 on the peer,
#    and del_frag back, online vs block_writes, while a writer (pgbench,
#    two clients, updates and inserts through the parent) works: the time
#    of each and the writer's longest transaction during it.
# Two servers on this machine (Unix sockets): the peer's share of the CPU
# is counted in the times.
# Usage (as root): bench/b8_frag_remote.sh [rows] [rounds] [read seconds]
# (B8_PORT: the first of the two servers' ports, 54361 unless set)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

ROWS=${1:-1000000}
ROUNDS=${2:-3}
READ_S=${3:-10}
require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-bench.XXXXXX)
chown postgres "$WORK"
trap 'pg_stop "$WORK/a"; pg_stop "$WORK/b"; rm -rf "$WORK"' EXIT
conf=("shared_buffers = 512MB" "max_wal_size = 8GB" "fsync = on" "checkpoint_timeout = 30min"
	"shared_preload_libraries = 'hashtree'")
PA=${B8_PORT:-54361}
PB=$((PA + 1))
pg_start "$WORK/a" $PA "${conf[@]}" "hashtree.node_name = 'a'"
pg_start "$WORK/b" $PB "${conf[@]}" "hashtree.node_name = 'b'"
export PGUSER=postgres PGDATABASE=postgres
export PGOPTIONS="-c client_min_messages=warning"
PSQL="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1"
A="$PSQL -h $WORK/a -p $PA"
B="$PSQL -h $WORK/b -p $PB"
timed() { $1 -c '\timing on' -c "$2" | awk '/^Time:/ { print $2 }' | tail -1; }
median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

echo "== B8: a fragmented table of $ROWS rows, 8 fragments, on a; peer b"
$B -c 'CREATE EXTENSION hashtree'
$A -c 'CREATE EXTENSION hashtree' -c 'CREATE EXTENSION postgres_fdw' \
	-c "SELECT hashtree.add_peer('b', 'host=$WORK/b port=$PB dbname=postgres')" \
	-c "CREATE TABLE big (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
	                      created timestamptz NOT NULL) PARTITION BY HASH (id)" \
	-c "SELECT hashtree.frag_init('big', 8)" \
	-c "INSERT INTO big SELECT i, 'c' || (i % 1000), i * 0.5, '2026-01-01'::timestamptz + i * interval '1 s'
	      FROM generate_series(1, $ROWS) i" \
	-c "VACUUM ANALYZE big" >/dev/null
frag_rows=$($A -At -c "SELECT rows FROM hashtree.frag_size('big', true) WHERE fragment = 1")
rel1=$($A -At -c "SELECT relation FROM hashtree.fragments WHERE \"table\" = 'big'::regclass AND fragment = 1")
# the keys of fragment 1 (to go remote) and of fragment 2 (stays here), for the reads
$A -c "CREATE TABLE keys1 AS SELECT row_number() OVER () AS rn, id FROM $rel1" \
	-c "CREATE TABLE keys2 AS SELECT row_number() OVER () AS rn, id FROM big
	      WHERE hashtree.key_to_frag_number('big', id) = 2" \
	-c "ALTER TABLE keys1 ADD PRIMARY KEY (rn)" -c "ALTER TABLE keys2 ADD PRIMARY KEY (rn)" \
	-c "ANALYZE keys1, keys2" >/dev/null
# by hand: a server and mapping of its own, a table on b, a foreign table over it
$A -c "CREATE SERVER manual FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '$WORK/b', port '$PB', dbname 'postgres')" \
	-c "CREATE USER MAPPING FOR PUBLIC SERVER manual OPTIONS (user 'postgres')" >/dev/null
echo "   fragment 1: $frag_rows rows"

# the first move to a peer gives each local fragment its own key (DESIGN §19): not timed with the rest
first=$(timed "$A" "SELECT hashtree.move_frag('big', 1, 'b', 'block_writes')")
$A -c "SELECT hashtree.move_frag('big', 1, NULL, 'block_writes')" >/dev/null
echo "   first move to b (with the conversion of the parent's key to per-fragment keys): $first ms"
bw_to=(); bw_back=(); on_to=(); on_back=(); hand1=(); hand1000=()
for r in $(seq 1 "$ROUNDS"); do
	bw_to+=("$(timed "$A" "SELECT hashtree.move_frag('big', 1, 'b', 'block_writes')")")
	bw_back+=("$(timed "$A" "SELECT hashtree.move_frag('big', 1, NULL, 'block_writes')")")
	on_to+=("$(timed "$A" "SELECT hashtree.move_frag('big', 1, 'b', 'online')")")
	on_back+=("$(timed "$A" "SELECT hashtree.move_frag('big', 1, NULL, 'online')")")
	for bs in 1 1000; do
		$B -c "DROP TABLE IF EXISTS manual1" \
			-c "CREATE TABLE manual1 (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
			                          created timestamptz NOT NULL)" >/dev/null
		$A -c "DROP FOREIGN TABLE IF EXISTS manual1" \
			-c "CREATE FOREIGN TABLE manual1 (id bigint, customer text, amount numeric(12,2), created timestamptz)
			      SERVER manual OPTIONS (table_name 'manual1', batch_size '$bs')" >/dev/null
		t=$(timed "$A" "INSERT INTO manual1 SELECT * FROM $rel1")
		[ "$bs" = 1 ] && hand1+=("$t") || hand1000+=("$t")
	done
done
m() { printf '%s\n' "$@" | median; }
echo "B8 move of fragment 1 ($frag_rows rows) to b and back (medians of $ROUNDS), verified:"
echo "   block_writes: to b $(m "${bw_to[@]}") ms, back $(m "${bw_back[@]}") ms;" \
	"online: to b $(m "${on_to[@]}") ms, back $(m "${on_back[@]}") ms"
echo "   by hand, INSERT INTO foreign table SELECT * FROM fragment (not verified, no swap):" \
	"batch_size 1 $(m "${hand1[@]}") ms, batch_size 1000 $(m "${hand1000[@]}") ms"
echo "   rows on b by hand: $($B -At -c 'SELECT count(*) FROM manual1')"

echo "== B8 reads by key through the parent: local fragment 2 vs fragment 1 on b"
$A -c "SELECT hashtree.move_frag('big', 1, 'b', 'block_writes')" >/dev/null
n1=$($A -At -c "SELECT count(*) FROM keys1"); n2=$($A -At -c "SELECT count(*) FROM keys2")
for k in 1 2; do
	n=$n1; [ $k = 2 ] && n=$n2
	cat >"$WORK/read$k.sql" <<SQL
\\set r random(1, $n)
SELECT id FROM keys$k WHERE rn = :r \\gset
SELECT * FROM big WHERE id = :id;
SQL
done
reads() {
	# pgbench -r: the average latency of each statement; the third is the read
	runuser -u postgres -- env PGHOST="$WORK/a" PGPORT=$PA $PG_BIN/pgbench -n -c 1 -T "$READ_S" -r \
		-f "$WORK/read$1.sql" postgres 2>&1 |
		awk '/SELECT \* FROM big/ { lat = $1 } /number of transactions actually processed/ { n = $NF; sub(/\/.*/, "", n) }
		     END { printf "%.3f ms per read (%s reads)", lat, n }'
}
echo "B8 read by key, one client, ${READ_S} s each: local fragment $(reads 2); remote fragment (b) $(reads 1)"
$A -c "EXPLAIN (COSTS OFF) SELECT * FROM big WHERE id = $($A -At -c 'SELECT id FROM keys1 LIMIT 1')" | sed 's/^/   /'
echo "   rows in the table afterwards: $($A -At -c "SELECT count(*) = $ROWS AND count(*) = count(DISTINCT id) FROM big")"

echo "== B8 add_frag of fragment 1 (on b) with 9 on b, and del_frag back, under a writer through the parent"
$A -c "CREATE SEQUENCE bseq START $((ROWS + 1))" >/dev/null
cat >"$WORK/write.sql" <<SQL
\\set k random(1, $ROWS)
UPDATE big SET amount = amount + 1 WHERE id = :k;
INSERT INTO big VALUES (nextval('bseq'), 'w', 0, now());
SQL
# run $2 under a writer of $1 seconds: "<ms of the statement> <longest writer transaction, ms>"
under_writer() {
	rm -f "$WORK"/lat.*
	runuser -u postgres -- env PGHOST="$WORK/a" PGPORT=$PA $PG_BIN/pgbench -n -c 2 -T "$1" -l \
		--log-prefix="$WORK/lat" -f "$WORK/write.sql" postgres >/dev/null 2>&1 &
	local w=$!
	sleep 1
	local t
	t=$(timed "$A" "$2")
	wait $w
	echo "$t $(cat "$WORK"/lat.* | awk '{ if ($3 > m) m = $3 } END { printf "%.1f", m / 1000 }')"
}
declare -A took wmax
for mode in block_writes online; do
	for r in $(seq 1 "$ROUNDS"); do
		read -r t l < <(under_writer 8 "SELECT * FROM hashtree.add_frag('big', '$mode', 'b')")
		took[$mode,add]+="$t "; wmax[$mode,add]+="$l "
		read -r t l < <(under_writer 8 "SELECT * FROM hashtree.del_frag('big', '$mode')")
		took[$mode,del]+="$t "; wmax[$mode,del]+="$l "
	done
	# shellcheck disable=SC2086
	echo "B8 $mode: add_frag (1 on b split, 9 to b) $(m ${took[$mode,add]}) ms, the writer's longest" \
		"transaction $(m ${wmax[$mode,add]}) ms; del_frag back $(m ${took[$mode,del]}) ms, longest" \
		"$(m ${wmax[$mode,del]}) ms (medians of $ROUNDS)"
done
echo "   placement afterwards: $($A -At -c "SELECT string_agg(fragment || '@' || node, ' ' ORDER BY fragment)
	FROM hashtree.fragments WHERE \"table\" = 'big'::regclass")"
echo "   rows in the table afterwards: $($A -At -c "SELECT count(*) = count(DISTINCT id) FROM big")" \
	"$($A -At -c "SELECT count(*) FROM big JOIN hashtree.fragments f ON f.relation = big.tableoid
	WHERE f.fragment <> hashtree.key_to_frag_number('big', big.id)") misplaced"
exit 0
