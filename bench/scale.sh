#!/usr/bin/env bash
# Scale (issue 11): how the cost of tracking grows with the table, side by
# side in one run, for each size given (default 1M, 4M and 10M rows):
#   scan          SELECT count(sha256(b::text::bytea)) FROM big b (the floor)
#   track         hashtree.track('big'), at the default maintenance_work_mem
#   first update  lock/update/release of every partition right after track()
#   comparable    track + first update, and its ratio to the scan (target <= 1.5x)
#   reset         reset() of every partition
#   update 1k     update() of every partition after 1,000 changed rows
#   fold          update() after 200,000 changed rows: logged keys folded per second
#   fold 30k      the same after 30,000 changed rows (one second of writes at
#                 30,000 rows per second; the workers' tick is 10 s by default): ms
#   fold steady   the fold of 200,000 changed rows again, three times, each after
#                 a VACUUM of the extension's tables (as autovacuum does between
#                 the workers' ticks; hashtree.entry_pack is set to be vacuumed
#                 at 5% dead): the median, keys/s
#   fold x2       the same from two sessions at once, partition p by session
#                 p % 2, as the workers with hashtree.tick_workers = 2 do
#   exchange 1k   exchange('b') with a second node holding the same rows but
#                 1,000 differing ones (EXCHANGE=0 skips it: it doubles the load;
#                 VACUUM=1 vacuums a's tables first, as autovacuum would after the
#                 fold's 200k rewrites — the bench runs with autovacuum off);
#                 in a new session, then again in the same one (warm)
#   bytes/row     everything hashtree stores for the table / rows, and its ratio
#                 to pg_total_relation_size of the table (target <= 0.5)
#   peak RSS      VmHWM of the backend that ran the step (kB)
# HUGE_PAGES=1 reserves huge pages for the two servers' shared memory (sysctl
# vm.nr_hugepages, given back at the end) and runs them with huge_pages = on,
# as PostgreSQL's documentation advises for large shared_buffers: without
# them a new backend pays a page fault per 4 kB of shared buffers it touches
# first, which on a virtual machine is most of a new session's exchange at
# 4M+ rows (docs/DESIGN.md §17).
# and at the end the cost per row of each size relative to the first, with a
# linear extrapolation to 100M rows from the largest size (stated as such).
# The servers keep 4 GB of WAL segments for reuse (min_wal_size), as a server
# that has been running a while has them: on a new server every segment a
# fold writes is a new file, zero-filled first (docs/DESIGN.md §17).
# Usage (as root): bench/scale.sh [rows ...]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

SIZES=("$@")
[ ${#SIZES[@]} -gt 0 ] || SIZES=(1000000 4000000 10000000)
EXCHANGE=${EXCHANGE:-1}
VACUUM=${VACUUM:-0}
HUGE_PAGES=${HUGE_PAGES:-0}
require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-scale.XXXXXX)
chown postgres "$WORK"
HUGE_CONF=()
HUGE_BEFORE=
if [ "$HUGE_PAGES" = 1 ]; then
	HUGE_BEFORE=$(cat /proc/sys/vm/nr_hugepages)
	# 1 GB of shared buffers and ~150 MB more per server, in 2 MB pages
	sysctl -q -w vm.nr_hugepages=$(( HUGE_BEFORE + 1200 )) || die "could not reserve huge pages"
	HUGE_CONF=("huge_pages = on")
fi
trap 'pg_stop "$WORK/a"; pg_stop "$WORK/b"; rm -rf "$WORK"; [ -z "$HUGE_BEFORE" ] || sysctl -q -w vm.nr_hugepages=$HUGE_BEFORE' EXIT
PORT_A=54351
PORT_B=54352
for n in a b; do
	port=$([ $n = a ] && echo $PORT_A || echo $PORT_B)
	pg_start "$WORK/$n" "$port" "listen_addresses = '127.0.0.1'" "shared_buffers = 1GB" \
		"max_wal_size = 16GB" "min_wal_size = 4GB" "checkpoint_timeout = 30min" "autovacuum = off" "jit = off" \
		"shared_preload_libraries = 'hashtree'" "${HUGE_CONF[@]}"
done
echo "huge pages: $([ "$HUGE_PAGES" = 1 ] && echo on || echo "off (HUGE_PAGES=1 to use them)")"
export PGUSER=postgres PGDATABASE=postgres PGOPTIONS="-c client_min_messages=warning"
A="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/a -p $PORT_A"
B="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/b -p $PORT_B"
$A -c "CREATE EXTENSION hashtree" -c "SELECT hashtree.add_peer('b', 'host=127.0.0.1 port=$PORT_B dbname=postgres user=postgres')" >/dev/null
$B -c "CREATE EXTENSION hashtree" >/dev/null
UPDATE_ALL="SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p) FROM generate_series(0, hashtree_partitions() - 1) p) s"
for node in "$A" "$B"; do
	$node -c "CREATE FUNCTION hashtree_partitions() RETURNS int LANGUAGE sql AS 'SELECT count(*)::int FROM hashtree.partition'" >/dev/null
done

# measure NODE SQL: one new session runs SQL; sets MS (elapsed; of the last
# statement when SQL has several), MS1 (of the first) and RSS (its backend's
# peak resident set, kB)
measure() {
	local node=$1 sql=$2 out
	out=$($node -v sql="$sql" <<'PSQL'
SELECT pg_backend_pid() AS pid \gset
\setenv HT_PID :pid
\timing on
:sql;
\timing off
\! echo "RSS $(awk '/^VmHWM/ { print $2 }' /proc/$HT_PID/status)"
PSQL
)
	MS=$(echo "$out" | awk '/^Time:/ { t = $2 } END { print t }')
	MS1=$(echo "$out" | awk '/^Time:/ && !f { t = $2; f = 1 } END { print t }')
	RSS=$(echo "$out" | awk '/^RSS/ { print $2 }')
}

load() {
	local node=$1 rows=$2
	$node -c "DROP TABLE IF EXISTS big" \
		-c "CREATE TABLE big (id bigint PRIMARY KEY, customer text NOT NULL, amount numeric(12,2),
		                      status text, created timestamptz)" \
		-c "INSERT INTO big SELECT i, 'c' || (i % 1000), i * 0.5, 'new',
		           '2024-01-01'::timestamptz + i * interval '1 s' FROM generate_series(1, $rows) i" \
		-c "VACUUM ANALYZE big" -c "CHECKPOINT" >/dev/null
}

stored_bytes() {
	$A -At -c "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
	             JOIN pg_namespace n ON n.oid = c.relnamespace
	            WHERE n.nspname = 'hashtree' AND c.relkind = 'r'
	              AND c.relname IN ('entry', 'entry_pack', 'node', 'dirty', 'dirty_key')"
}

# steady_fold STEP SESSIONS SIGN: three folds of every STEP-th row changed
# (amount + SIGN, - SIGN, + SIGN: two calls with opposite signs leave the
# rows as they were, for the exchange below), each after a VACUUM of the
# extension's tables, from SESSIONS sessions at once (partition p by
# session p % SESSIONS); prints the median keys/s
steady_fold() {
	local step=$1 n=$2 sign=$3 keys t0 ms rates=()
	for _ in 1 2 3; do
		$A -c "VACUUM hashtree.entry, hashtree.entry_pack, hashtree.node, hashtree.dirty, hashtree.dirty_key" >/dev/null
		$A -c "UPDATE big SET amount = amount + ($sign) WHERE id % $step = 0" >/dev/null
		sign=$(( -sign ))
		keys=$($A -At -c "SELECT count(*) FROM hashtree.dirty_key")
		t0=$(date +%s%N)
		for s in $(seq 0 $(( n - 1 ))); do
			$A -c "SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
			         FROM generate_series(0, hashtree_partitions() - 1) p WHERE p % $n = $s) s" >/dev/null &
		done
		wait
		ms=$(( ($(date +%s%N) - t0) / 1000000 ))
		rates+=($(( keys * 1000 / (ms > 0 ? ms : 1) )))
	done
	printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p
}

declare -A R
printf '%-10s %9s %9s %9s %9s %6s %9s %9s %9s %9s %9s %9s %9s %9s %8s %8s %9s\n' rows scan_ms track_ms upd1_ms compar_ms ratio reset_ms upd1k_ms fold_k/s fold30k_ms steady_k/s x2_k/s xchg1k_ms xchg_warm B/row vs_tbl rss_MB
for N in "${SIZES[@]}"; do
	$A -c "SELECT hashtree.untrack(to_regclass('big')) WHERE EXISTS (SELECT 1 FROM hashtree.tracked_table WHERE table_name = 'big')" >/dev/null
	# (the last size's packs and nodes, dead now, would be counted in the base)
	$A -c "VACUUM hashtree.entry, hashtree.entry_pack, hashtree.node, hashtree.dirty, hashtree.dirty_key" >/dev/null
	load "$A" "$N"
	tbl=$($A -At -c "SELECT pg_total_relation_size('big')")
	base=$(stored_bytes)
	measure "$A" "SELECT count(sha256(b::text::bytea)) FROM big b"; scan=$MS
	measure "$A" "SELECT hashtree.track('big')"; track=$MS; rss=$RSS
	measure "$A" "$UPDATE_ALL"; upd1=$MS; rss=$(( RSS > rss ? RSS : rss ))
	$A -c "VACUUM hashtree.entry, hashtree.entry_pack, hashtree.node, hashtree.dirty, hashtree.dirty_key" >/dev/null
	bytes=$(( $(stored_bytes) - base ))
	measure "$A" "SELECT count(*) FROM (SELECT hashtree.reset(p) FROM generate_series(0, hashtree_partitions() - 1) p) s"; reset=$MS; rss=$(( RSS > rss ? RSS : rss ))
	$A -c "UPDATE big SET amount = amount + 1 WHERE id IN (SELECT (random() * ($N - 1))::bigint + 1 FROM generate_series(1, 1000))" >/dev/null
	measure "$A" "$UPDATE_ALL"; upd1k=$MS
	step=$(( N / 200000 )); [ $step -ge 1 ] || step=1
	$A -c "UPDATE big SET amount = amount + 1 WHERE id % $step = 0" >/dev/null
	keys=$($A -At -c "SELECT count(*) FROM hashtree.dirty_key")
	measure "$A" "$UPDATE_ALL"; fold=$(echo "$keys * 1000 / $MS" | bc); rss=$(( RSS > rss ? RSS : rss ))
	step30=$(( N / 30000 )); [ $step30 -ge 1 ] || step30=1
	$A -c "UPDATE big SET amount = amount + 1 WHERE id % $step30 = 1" >/dev/null
	measure "$A" "$UPDATE_ALL"; fold30=$MS
	steady=$(steady_fold "$step" 1 1)
	x2=$(steady_fold "$step" 2 -1)
	xchg=-
	xchgw=-
	if [ "$EXCHANGE" = 1 ]; then
		$B -c "SELECT hashtree.untrack(to_regclass('big')) WHERE EXISTS (SELECT 1 FROM hashtree.tracked_table WHERE table_name = 'big')" >/dev/null
		load "$B" "$N"
		$B -c "UPDATE big SET amount = amount + 1 WHERE id % $step = 0" \
			-c "UPDATE big SET amount = amount + 1 WHERE id % $step30 = 1" \
			-c "SELECT hashtree.track('big')" -c "$UPDATE_ALL" \
			-c "UPDATE big SET status = 'drift' WHERE id IN (SELECT (random() * ($N - 1))::bigint + 1 FROM generate_series(1, 1000))" \
			-c "$UPDATE_ALL" >/dev/null
		[ "$VACUUM" = 1 ] && $A -c "VACUUM hashtree.entry_pack, hashtree.entry, hashtree.node" >/dev/null
		measure "$A" "SELECT count(*) FROM hashtree.exchange('b'); SELECT count(*) FROM hashtree.exchange('b')"
		xchg=$MS1; xchgw=$MS
	fi
	ratio=$(echo "scale=2; ($track + $upd1) / $scan" | bc)
	printf '%-10s %9.0f %9.0f %9.0f %9.0f %5sx %9.0f %9.0f %9s %9.0f %9s %9s %9s %9s %8s %8s %9s\n' "$N" "$scan" "$track" "$upd1" \
		"$(echo "$track + $upd1" | bc)" "$ratio" "$reset" "$upd1k" "$(echo "$fold / 1000" | bc)" "$fold30" \
		"$(( steady / 1000 ))" "$(( x2 / 1000 ))" "$xchg" "$xchgw" \
		"$(( bytes / N ))" "$(echo "scale=2; $bytes / $tbl" | bc)" "$(( rss / 1024 ))"
	R[$N]="$scan $track $upd1 $reset $upd1k $xchg $xchgw"
done

# cost per row of every size relative to the first size; extrapolation
first=${SIZES[0]}; last=${SIZES[-1]}
read -r s0 t0 u0 r0 k0 x0 w0 <<<"${R[$first]}"
echo
echo "per-row cost relative to $first rows (1.00 = linear; targets: track, reset <= 1.3; update after 1k changes, exchange <= 1.5 absolute):"
for N in "${SIZES[@]}"; do
	read -r s t u r k x w <<<"${R[$N]}"
	f=$(echo "scale=6; $first / $N" | bc)
	printf '  %-10s scan %5.2f  track %5.2f  track+update %5.2f  reset %5.2f  update-1k(abs) %5.2f  exchange-1k(abs) %s, warm %s\n' "$N" \
		"$(echo "$s * $f / $s0" | bc -l)" "$(echo "$t * $f / $t0" | bc -l)" "$(echo "($t + $u) * $f / ($t0 + $u0)" | bc -l)" \
		"$(echo "$r * $f / $r0" | bc -l)" "$(echo "$k / $k0" | bc -l)" \
		"$( [ "$x" = - ] && echo - || printf '%.2f' "$(echo "$x / $x0" | bc -l)")" \
		"$( [ "$w" = - ] && echo - || printf '%.2f' "$(echo "$w / $w0" | bc -l)")"
done
read -r s t u r k x w <<<"${R[$last]}"
echo "extrapolated (linear from $last rows, not measured): 100M rows: scan $(echo "$s * 100000000 / $last / 1000" | bc) s, track + first update $(echo "($t + $u) * 100000000 / $last / 1000" | bc) s, reset $(echo "$r * 100000000 / $last / 1000" | bc) s"
