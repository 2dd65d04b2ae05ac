#!/usr/bin/env bash
# B3: anti-entropy between two nodes that hold the same tracked table of
# 1M rows, then differ in 10 and in 1,000 keys (updates, deletes, inserts
# on the peer).  Side by side, from node a:
#   exchange('b')             the hashtree way: lock, update and compare the
#                             trees of both nodes, partition by partition (the
#                             changes are folded into b's trees beforehand, as
#                             the background tick does; that time is printed)
#   pull + diff               the whole table of b pulled over postgres_fdw
#                             and joined with a's (what one does without trees)
# Both must find every difference.  Reported: time, round trips, and the
# bytes on the wire (TCP, both directions, read from the kernel with ss).
# Usage (as root): bench/b3_exchange.sh [rows]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

ROWS=${1:-1000000}
require_root
install_deps
build_install
command -v ss >/dev/null || apt_install_pinned iproute2 >/dev/null 2>&1 || die "ss (iproute2) is needed"

WORK=$(mktemp -d /tmp/hashtree-bench.XXXXXX)
chown postgres "$WORK"
trap 'pg_stop "$WORK/a"; pg_stop "$WORK/b"; rm -rf "$WORK"' EXIT
PORT_A=54341
PORT_B=54342
for n in a b; do
	port=$([ $n = a ] && echo $PORT_A || echo $PORT_B)
	pg_start "$WORK/$n" "$port" "listen_addresses = '127.0.0.1'" "shared_buffers = 512MB" \
		"max_wal_size = 8GB" "shared_preload_libraries = 'hashtree'"
done
export PGUSER=postgres PGDATABASE=postgres PGOPTIONS="-c client_min_messages=warning"
A="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/a -p $PORT_A"
B="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/b -p $PORT_B"

echo "== B3: two nodes, $ROWS rows each; loading and tracking"
for node in "$A" "$B"; do
	$node -c "CREATE EXTENSION hashtree" \
		-c "CREATE TABLE kv (id bigint PRIMARY KEY, payload text NOT NULL, amount numeric(12,2),
		                     updated timestamptz NOT NULL)" \
		-c "INSERT INTO kv SELECT i, md5(i::text) || md5((i + 1)::text), i * 0.25,
		           '2026-01-01'::timestamptz + i * interval '1 s' FROM generate_series(1, $ROWS) i" \
		-c "VACUUM ANALYZE kv" \
		-c "SELECT hashtree.track('kv')" >/dev/null
done
$A -c "SELECT hashtree.add_peer('b', 'host=127.0.0.1 port=$PORT_B dbname=postgres user=postgres')" \
	-c "CREATE EXTENSION postgres_fdw" \
	-c "CREATE SERVER b_srv FOREIGN DATA WRAPPER postgres_fdw
	      OPTIONS (host '127.0.0.1', port '$PORT_B', dbname 'postgres', fetch_size '10000')" \
	-c "CREATE USER MAPPING FOR postgres SERVER b_srv OPTIONS (user 'postgres')" \
	-c "CREATE FOREIGN TABLE kv_b (id bigint, payload text, amount numeric(12,2), updated timestamptz)
	      SERVER b_srv OPTIONS (table_name 'kv')" >/dev/null

# bytes of the established TCP connections to b, both directions
cat >"$WORK/wire.sh" <<EOF
ss -tinH state established "dst 127.0.0.1:$PORT_B" |
	awk '{ for (i = 1; i <= NF; i++) if (\$i ~ /^bytes_(sent|received):/) { split(\$i, v, ":"); s += v[2] } }
	     END { print s + 0 }'
EOF
# run SQL on a in one session: connect to b first (untimed), then time the
# statement and measure the wire between two snapshots, then run it again
# in the same session (warm caches, connection open); prints "ms found ms2"
# and leaves the bytes (of the first run) in $WORK/bytes
measure() {
	local warm=$1 sql=$2
	$A -At <<SQL
\o /dev/null
$warm
\o
\! sh $WORK/wire.sh > $WORK/before
SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t0 \gset
$sql \gset r_
SELECT round(extract(epoch FROM clock_timestamp()) * 1000 - :t0) AS ms \gset
\! sh $WORK/wire.sh > $WORK/after
\! echo \$(( \$(cat $WORK/after) - \$(cat $WORK/before) )) > $WORK/bytes
SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t0 \gset
$sql \gset r2_
SELECT round(extract(epoch FROM clock_timestamp()) * 1000 - :t0) AS ms2 \gset
SELECT :ms || ' ' || :'r_found' || ' ' || :ms2;
SQL
}

sync_trees() {
	for node in "$A" "$B"; do
		$node -c "SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
		                                  FROM generate_series(0, 7) p) s" >/dev/null
	done
}
sync_trees

HT_WARM="SELECT hashtree.lock('b', 0), hashtree.release_lock('b', 0);"
FDW_WARM="SELECT count(*) FROM (SELECT 1 FROM kv_b LIMIT 1) s;"
HT_SQL="SELECT count(*) AS found FROM hashtree.exchange('b')"
FDW_SQL="SELECT count(*) AS found FROM kv l FULL JOIN kv_b r ON l.id = r.id
          WHERE ROW(l.id, l.payload, l.amount, l.updated) IS DISTINCT FROM ROW(r.id, r.payload, r.amount, r.updated)"

round=0
for d in 0 10 1000; do
	round=$((round + 1))
	nupd=$((d * 4 / 10)); ndel=$((d * 3 / 10)); nins=$((d - nupd - ndel))
	if [ "$d" -gt 0 ]; then
		# updates in the first half of the ids, deletes in the second: disjoint
		$B -c "UPDATE kv SET amount = amount + 1 WHERE id IN (SELECT g * ($ROWS / 2 / $nupd) - $round FROM generate_series(1, $nupd) g)" \
			-c "DELETE FROM kv WHERE id IN (SELECT $ROWS / 2 + g * ($ROWS / 2 / $ndel) - $round FROM generate_series(1, $ndel) g)" \
			-c "INSERT INTO kv SELECT $ROWS + $round * 100000 + g, 'new', 0, now() FROM generate_series(1, $nins) g" >/dev/null
	fi
	# the background tick keeps the trees current: fold b's changes first
	# (reported, not counted in the exchange)
	upd_ms=$($B -c '\timing on' -c "SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p),
	         hashtree.release_lock(p) FROM generate_series(0, 7) p) s" | awk '/^Time:/ { print $2 }')
	last=$($A -At -c "SELECT coalesce(max(id), 0) FROM hashtree.exchange_log")
	read -r ht_ms ht_found ht_ms2 < <(measure "$HT_WARM" "$HT_SQL"); ht_bytes=$(cat "$WORK/bytes")
	ht_rt=$($A -At -c "SELECT sum(round_trips) FILTER (WHERE id = run) FROM hashtree.exchange_log WHERE id > $last")
	ht_bad=$($A -At -c "SELECT count(*) FROM hashtree.exchange_log WHERE id > $last AND outcome <> 'ok'")
	read -r fdw_ms fdw_found fdw_ms2 < <(measure "$FDW_WARM" "$FDW_SQL"); fdw_bytes=$(cat "$WORK/bytes")
	[ "$ht_bad" = 0 ] || die "exchange did not complete on every partition"
	[ "$ht_found" = "$d" ] || die "exchange found $ht_found differences, expected $d"
	[ "$fdw_found" = "$d" ] || die "pull + diff found $fdw_found differences, expected $d"
	echo "B3 $d differing keys (both found all $d; b's update() folding them beforehand: ${upd_ms} ms):"
	echo "   exchange():  ${ht_ms} ms in a new session (${ht_ms2} ms again in the same one)," \
		"$((ht_rt / 2)) round trips, $ht_bytes bytes on the wire"
	echo "   pull + diff: ${fdw_ms} ms in a new session (${fdw_ms2} ms again), 1 query ($ROWS rows)," \
		"$fdw_bytes bytes on the wire"
	echo "   exchange is $(echo "scale=1; $fdw_ms / ($ht_ms + 0.001)" | bc)x faster in a new session," \
		"$(echo "scale=1; $fdw_ms2 / ($ht_ms2 + 0.001)" | bc)x warm, and moves" \
		"$(echo "scale=3; 100 * $ht_bytes / $fdw_bytes" | bc)% of the bytes (targets: >= 20x, <= 1%)"
	if [ "$d" -gt 0 ]; then
		ms=$($A -c '\timing on' -c "SELECT count(*) FROM hashtree.exchange('b', NULL, 'pull')" | awk '/^Time:/ { print $2 }')
		left=$($A -At -c "SELECT count(*) FROM hashtree.exchange('b')")
		echo "   repair: exchange('b', repair => 'pull') copied the $d rows in ${ms} ms; differences left: $left"
	fi
done
exit 0
