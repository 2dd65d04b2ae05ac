#!/usr/bin/env bash
# B7 (issue 14): two-way repair.  Two nodes hold the same two tracked tables
# of ROWS rows (track_commit_timestamp = on): kvt keeps tombstones, kvp does
# not.  Each round, 1,000 keys of one table conflict: 400 updated on both
# nodes (b first, a later), 300 deleted on a, 300 inserted on b.  From node
# a, side by side on fresh conflicts each round:
#   newest  exchange('b', NULL, 'newest') of kvt: both nodes get the newest
#           version of each key (rows and tombstones written on both sides)
#   pull-t  exchange('b', NULL, 'pull') of kvt: a gets b's versions
#           (tombstones copied: the reads and writes of newest, b forced)
#   pull    exchange('b', NULL, 'pull') of kvp: the plain pull path
# Target (issue 14): newest <= 2x pull.  Also reported: the update (the fold
# of the conflicting writes, deletes becoming tombstones) on each node.
# Usage (as root): bench/b7_newest.sh [rows] [rounds]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

ROWS=${1:-1000000}
ROUNDS=${2:-2}
require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-bench.XXXXXX)
chown postgres "$WORK"
trap 'pg_stop "$WORK/a"; pg_stop "$WORK/b"; rm -rf "$WORK"' EXIT
PORT_A=54371
PORT_B=54372
for n in a b; do
	port=$([ $n = a ] && echo $PORT_A || echo $PORT_B)
	pg_start "$WORK/$n" "$port" "listen_addresses = '127.0.0.1'" "shared_buffers = 512MB" \
		"max_wal_size = 8GB" "shared_preload_libraries = 'hashtree'" \
		"track_commit_timestamp = on"
done
export PGUSER=postgres PGDATABASE=postgres PGOPTIONS="-c client_min_messages=warning"
A="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/a -p $PORT_A"
B="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/b -p $PORT_B"

echo "== B7: two nodes, $ROWS rows each; loading and tracking"
for node in "$A" "$B"; do
	$node -c "CREATE EXTENSION hashtree" >/dev/null
	for t in kvt kvp; do
		$node -c "CREATE TABLE $t (id bigint PRIMARY KEY, payload text NOT NULL, amount numeric(12,2),
		                         updated timestamptz NOT NULL)" \
			-c "INSERT INTO $t SELECT i, md5(i::text) || md5((i + 1)::text), i * 0.25,
			           '2026-01-01'::timestamptz + i * interval '1 s' FROM generate_series(1, $ROWS) i" \
			-c "VACUUM ANALYZE $t" \
			-c "SELECT hashtree.track('$t')" >/dev/null
	done
	$node -c "SELECT hashtree.tombstones('kvt')" >/dev/null
done
$A -c "SELECT hashtree.add_peer('b', 'host=127.0.0.1 port=$PORT_B dbname=postgres user=postgres')" >/dev/null
$B -c "SELECT hashtree.add_peer('a', 'host=127.0.0.1 port=$PORT_A dbname=postgres user=postgres')" >/dev/null

# lock, update, release every partition; prints the time in ms
update_ms() {
	$1 -c '\timing on' -c "SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p),
	       hashtree.release_lock(p) FROM generate_series(0, 7) p) s" | awk '/^Time:/ { print $2 }'
}
update_ms "$A" >/dev/null
update_ms "$B" >/dev/null
[ "$($A -At -c "SELECT count(*) FROM hashtree.exchange('b')")" = 0 ] || die "the nodes differ after loading"

# 1,000 conflicting keys of table t in round r (disjoint between rounds)
conflicts() {
	local t=$1 r=$2 step=$((ROWS / 1000 / (3 * ROUNDS + 1)))
	local base=$((r * step))
	$B -c "UPDATE $t SET amount = amount + 1 WHERE id IN (SELECT $base + g * ($ROWS / 1000) FROM generate_series(1, 400) g)" \
		-c "INSERT INTO $t SELECT $ROWS + $r * 10000 + g, 'new on b', 0, now() FROM generate_series(1, 300) g" >/dev/null
	$A -c "UPDATE $t SET amount = amount - 1 WHERE id IN (SELECT $base + g * ($ROWS / 1000) FROM generate_series(1, 400) g)" \
		-c "DELETE FROM $t WHERE id IN (SELECT $base + 1 + g * ($ROWS / 1000) FROM generate_series(1, 300) g)" >/dev/null
}

# one exchange from a, after the trees are current; prints "ms found rows_local rows_remote"
exchange() {
	local mode=$1 last
	last=$($A -At -c "SELECT coalesce(max(id), 0) FROM hashtree.exchange_log")
	ms=$($A -c "SELECT hashtree.lock('b', 0), hashtree.release_lock('b', 0)" \
		-c '\timing on' -c "SELECT count(*) FROM hashtree.exchange('b', NULL, '$mode')" |
		awk '/^Time:/ { print $2 }')
	$A -At -F' ' -c "SELECT '$ms', sum(missing + remote_missing + different), sum(rows_local),
	                        sum(rows_remote) FROM hashtree.exchange_log WHERE id > $last"
}

printf '%-7s %6s %10s %10s %8s %10s %10s\n' round mode 'upd a ms' 'upd b ms' found 'exch ms' 'rows a/b'
tot_newest=0
tot_pullt=0
tot_pull=0
r=0
for i in $(seq 1 "$ROUNDS"); do
	for what in newest pull-t pull; do
		r=$((r + 1))
		case $what in
			newest) mode=newest; conflicts kvt $r ;;
			pull-t) mode=pull; conflicts kvt $r ;;
			pull) mode=pull; conflicts kvp $r ;;
		esac
		ua=$(update_ms "$A")
		ub=$(update_ms "$B")
		read -r ms found rl rr < <(exchange $mode)
		[ "$found" = 1000 ] || die "round $r: $found differences found, expected 1000"
		[ "$($A -At -c "SELECT count(*) FROM hashtree.exchange('b')")" = 0 ] ||
			die "round $r: the nodes still differ after the repair"
		printf '%-7s %6s %10s %10s %8s %10s %10s\n' "$r" "$what" "$ua" "$ub" "$found" "$ms" "$rl/$rr"
		case $what in
			newest) tot_newest=$(echo "$tot_newest + $ms" | bc) ;;
			pull-t) tot_pullt=$(echo "$tot_pullt + $ms" | bc) ;;
			pull) tot_pull=$(echo "$tot_pull + $ms" | bc) ;;
		esac
	done
done
echo "newest / pull: $(echo "scale=2; $tot_newest / $tot_pull" | bc) (target <= 2);" \
	"pull of the table with tombstones / pull: $(echo "scale=2; $tot_pullt / $tot_pull" | bc)"
