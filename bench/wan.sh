#!/usr/bin/env bash
# WAN: B3 (bench/b3_exchange.sh) with the peer behind a delaying proxy
# (bench/wan_proxy.pl, the project's own, no kernel features).  Two nodes
# hold the same tracked table of ROWS rows (default 1M), trees built; node
# a reaches b only through the proxy, which delays every chunk by RTT/2 in
# each direction and counts the request/response turns.  For every round
# trip time (default 20 and 100 ms) and 0, 10 and 1,000 differing keys
# (updates, deletes and inserts on b), from a new session on a whose
# connection to b is already open (untimed, as in B3), and again in the
# same session (warm):
#   exchange('b')   time; round trips as logged in hashtree.exchange_log
#                   (each exchange's once: its rows share them, see
#                   DESIGN §13) and as counted by the proxy
#   pull + diff     b's whole table pulled through the same proxy and joined
#                   with a's, two ways: postgres_fdw (as B3, fetch_size
#                   10000: one round trip per 10,000 rows) and COPY ... TO
#                   STDOUT through psql (COPY FROM PROGRAM into a temporary
#                   table: one stream, a new connection every time)
# then, at the first round trip time, the repair of the differences by
# exchange('b', repair => 'pull') (time, round trips; the second run finds
# what is left).  All must find every difference.  A table at the end,
# with the targets of issue 13.  The proxy has no bandwidth limit, which
# favours the pulls; the machine may be shared: the times are indicative.
# Usage (as root): bench/wan.sh [rows] ["rtt_ms ..."]
#   WAN_PORT=N: ports N (a), N+1 (b), N+2 (proxy); default 54361
#   WAN_DIFFS="0 10 1000": the numbers of differences
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

ROWS=${1:-1000000}
RTTS=${2:-20 100}
DIFFS=${WAN_DIFFS:-0 10 1000}
PORT_A=${WAN_PORT:-54361}
PORT_B=$((PORT_A + 1))
PORT_P=$((PORT_A + 2))
require_root
install_deps
build_install
command -v bc >/dev/null || apt_install_pinned bc bc >/dev/null 2>&1 || die "bc is needed"

WORK=$(mktemp -d /tmp/hashtree-wan.XXXXXX)
chown postgres "$WORK"
PROXY="perl $REPO/bench/wan_proxy.pl"
CTL="$PROXY --ctl $WORK/proxy.stats"
PROXY_PID=
stop_proxy() {
	if [ -n "$PROXY_PID" ]; then
		kill "$PROXY_PID" 2>/dev/null || true
		wait "$PROXY_PID" 2>/dev/null || true
		PROXY_PID=
	fi
}
# start_proxy RTT: a fresh proxy to b, RTT/2 ms each way
start_proxy() {
	stop_proxy
	rm -f "$WORK/proxy.stats"
	$PROXY --delay "$(echo "scale=3; $1 / 2" | bc)" --stats "$WORK/proxy.stats" \
		"$PORT_P" "$WORK/b/.s.PGSQL.$PORT_B" &
	PROXY_PID=$!
	for _ in $(seq 100); do
		grep -qx "pid $PROXY_PID" "$WORK/proxy.stats" 2>/dev/null && return 0
		sleep 0.05
	done
	die "the proxy did not start"
}
trap 'stop_proxy; pg_stop "$WORK/a"; pg_stop "$WORK/b"; rm -rf "$WORK"' EXIT
for n in a b; do
	port=$([ $n = a ] && echo $PORT_A || echo $PORT_B)
	pg_start "$WORK/$n" "$port" "shared_buffers = 512MB" "max_wal_size = 8GB" \
		"shared_preload_libraries = 'hashtree'"
done
export PGUSER=postgres PGDATABASE=postgres PGOPTIONS="-c client_min_messages=warning"
A="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/a -p $PORT_A"
B="$PG_BIN/psql -X -q -v ON_ERROR_STOP=1 -h $WORK/b -p $PORT_B"

echo "== WAN: two nodes, $ROWS rows each; loading and tracking"
for node in "$A" "$B"; do
	$node -c "CREATE EXTENSION hashtree" \
		-c "CREATE TABLE kv (id bigint PRIMARY KEY, payload text NOT NULL, amount numeric(12,2),
		                     updated timestamptz NOT NULL)" \
		-c "INSERT INTO kv SELECT i, md5(i::text) || md5((i + 1)::text), i * 0.25,
		           '2026-01-01'::timestamptz + i * interval '1 s' FROM generate_series(1, $ROWS) i" \
		-c "VACUUM ANALYZE kv" \
		-c "SELECT hashtree.track('kv')" >/dev/null
done
# b only through the proxy
$A -c "SELECT hashtree.add_peer('b', 'host=127.0.0.1 port=$PORT_P dbname=postgres user=postgres')" \
	-c "CREATE EXTENSION postgres_fdw" \
	-c "CREATE SERVER b_srv FOREIGN DATA WRAPPER postgres_fdw
	      OPTIONS (host '127.0.0.1', port '$PORT_P', dbname 'postgres', fetch_size '10000')" \
	-c "CREATE USER MAPPING FOR postgres SERVER b_srv OPTIONS (user 'postgres')" \
	-c "CREATE FOREIGN TABLE kv_b (id bigint, payload text, amount numeric(12,2), updated timestamptz)
	      SERVER b_srv OPTIONS (table_name 'kv')" >/dev/null

# every partition's changes folded into the trees (the background tick's work)
sync_trees() {
	for node in "$A" "$B"; do
		$node -c "SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
		                                  FROM generate_series(0, (SELECT count(*) - 1 FROM hashtree.status)::int) p) s" >/dev/null
	done
}

# measure WARM BODY [AFTER]: in one new session on a, WARM (untimed: opens
# the connection to b through the proxy), then twice: reset the proxy's
# counters, BODY timed (SQL whose last statement, without a semicolon,
# returns a column "found"), the proxy's turns, exchange_log's round trips,
# AFTER (untimed).  Prints "ms1 found1 rt1 ms2 found2 rt2 bad" (rt: the
# round trips in exchange_log, each exchange's once; bad: its rows not
# "ok"), leaves the turns in $WORK/turns1, 2 and the first run's number of
# exchanges (runs) and of partitions in $WORK/parts
measure() {
	local warm=$1 body=$2 after=${3:-}
	$A -At <<SQL
\o /dev/null
$warm
\o
SELECT coalesce(max(id), 0) AS l0 FROM hashtree.exchange_log \gset
\! $CTL reset >/dev/null
SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t0 \gset
$body \gset r1_
SELECT round(extract(epoch FROM clock_timestamp()) * 1000 - :t0) AS ms1 \gset
\! $CTL turns >$WORK/turns1
\o /dev/null
$after
\o
SELECT coalesce(sum(round_trips) FILTER (WHERE id = run), 0) AS rt1, coalesce(max(id), :l0) AS l1,
       count(DISTINCT run) || ' exchange(s) of ' || count(*) || ' partitions' AS parts
  FROM hashtree.exchange_log WHERE id > :l0 \gset
\! $CTL reset >/dev/null
SELECT extract(epoch FROM clock_timestamp()) * 1000 AS t0 \gset
$body \gset r2_
SELECT round(extract(epoch FROM clock_timestamp()) * 1000 - :t0) AS ms2 \gset
\! $CTL turns >$WORK/turns2
\o /dev/null
$after
\o
SELECT coalesce(sum(round_trips) FILTER (WHERE id = run), 0) AS rt2 FROM hashtree.exchange_log WHERE id > :l1 \gset
SELECT count(*) FILTER (WHERE outcome <> 'ok') AS bad FROM hashtree.exchange_log WHERE id > :l0 \gset
\o $WORK/parts
SELECT :'parts';
\o
SELECT :ms1 || ' ' || :'r1_found' || ' ' || :rt1 || ' ' || :ms2 || ' ' || :'r2_found' || ' ' || :rt2 || ' ' || :bad;
SQL
}
# measure, with the proxy's turns: sets
# M=(ms1 found1 rt_log1 turns1 ms2 found2 rt_log2 turns2 bad)
run() {
	local ms1 f1 rt1 ms2 f2 rt2 bad
	local line
	line=$(measure "$@") || die "a measurement failed"
	read -r ms1 f1 rt1 ms2 f2 rt2 bad <<<"$line"
	M=("$ms1" "$f1" "$rt1" "$(cat "$WORK/turns1")" "$ms2" "$f2" "$rt2" "$(cat "$WORK/turns2")" "$bad")
}

HT_WARM="SELECT hashtree.lock('b', 0), hashtree.release_lock('b', 0);"
HT_SQL="SELECT count(*) AS found FROM hashtree.exchange('b')"
HT_PULL_SQL="SELECT count(*) FILTER (WHERE repaired) AS found FROM hashtree.exchange('b', NULL, 'pull')"
DIFF_COND="ROW(l.id, l.payload, l.amount, l.updated) IS DISTINCT FROM ROW(r.id, r.payload, r.amount, r.updated)"
FDW_WARM="SELECT count(*) FROM (SELECT 1 FROM kv_b LIMIT 1) s;"
FDW_SQL="SELECT count(*) AS found FROM kv l FULL JOIN kv_b r ON l.id = r.id WHERE $DIFF_COND"
COPY_WARM="SET temp_buffers = '512MB'; SELECT 1;"
COPY_SQL="CREATE TEMP TABLE kv_pull (LIKE kv);
COPY kv_pull FROM PROGRAM '$PG_BIN/psql -X -q -h 127.0.0.1 -p $PORT_P -U postgres -d postgres -c \"COPY kv TO STDOUT\"';
SELECT count(*) AS found FROM kv l FULL JOIN kv_pull r ON l.id = r.id WHERE $DIFF_COND"
COPY_AFTER="DROP TABLE kv_pull;"

sync_trees
RESULTS=$WORK/results
: >"$RESULTS"
FIRST_RTT=${RTTS%% *}
round=0
for d in $DIFFS; do
	round=$((round + 1))
	nupd=$((d * 4 / 10)); ndel=$((d * 3 / 10)); nins=$((d - nupd - ndel))
	if [ "$d" -gt 0 ]; then
		# updates in the first half of the ids, deletes in the second: disjoint
		[ "$nupd" -gt 0 ] && $B -c "UPDATE kv SET amount = amount + 1 WHERE id IN
			(SELECT g * ($ROWS / 2 / $nupd) - $round FROM generate_series(1, $nupd) g)" >/dev/null
		[ "$ndel" -gt 0 ] && $B -c "DELETE FROM kv WHERE id IN
			(SELECT $ROWS / 2 + g * ($ROWS / 2 / $ndel) - $round FROM generate_series(1, $ndel) g)" >/dev/null
		$B -c "INSERT INTO kv SELECT $ROWS + $round * 100000 + g, 'new', 0, now() FROM generate_series(1, $nins) g" >/dev/null
	fi
	sync_trees
	for rtt in $RTTS; do
		start_proxy "$rtt"
		echo "== $d differing keys, round trip $rtt ms"
		run "$HT_WARM" "$HT_SQL"; ht=("${M[@]}"); ht_parts=$(cat "$WORK/parts")
		[ "${ht[8]}" = 0 ] || die "exchange did not complete on every partition"
		[ "${ht[1]}" = "$d" ] && [ "${ht[5]}" = "$d" ] || die "exchange found ${ht[1]}/${ht[5]} differences, expected $d"
		echo "   exchange():  ${ht[0]} ms new session, ${ht[4]} ms warm; round trips: exchange_log ${ht[2]}" \
			"($ht_parts), proxy ${ht[3]} (warm: ${ht[6]} / ${ht[7]})"
		run "$FDW_WARM" "$FDW_SQL"; fdw=("${M[@]}")
		[ "${fdw[1]}" = "$d" ] && [ "${fdw[5]}" = "$d" ] || die "pull + diff (fdw) found ${fdw[1]}/${fdw[5]}, expected $d"
		echo "   pull + diff, postgres_fdw: ${fdw[0]} ms new session, ${fdw[4]} ms warm; proxy turns ${fdw[3]} / ${fdw[7]}"
		run "$COPY_WARM" "$COPY_SQL" "$COPY_AFTER"; cp=("${M[@]}")
		[ "${cp[1]}" = "$d" ] && [ "${cp[5]}" = "$d" ] || die "pull + diff (copy) found ${cp[1]}/${cp[5]}, expected $d"
		echo "   pull + diff, COPY:         ${cp[0]} ms new session, ${cp[4]} ms warm; proxy turns ${cp[3]} / ${cp[7]}"
		echo "$rtt $d ${ht[0]} ${ht[4]} ${ht[2]} ${ht[3]} ${ht[6]} ${ht[7]} ${fdw[0]} ${fdw[4]} ${fdw[3]}" \
			"${cp[0]} ${cp[4]} ${cp[3]}" >>"$RESULTS"
	done
	if [ "$d" -gt 0 ]; then
		start_proxy "$FIRST_RTT"
		run "$HT_WARM" "$HT_PULL_SQL"; rp=("${M[@]}")
		[ "${rp[1]}" = "$d" ] && [ "${rp[5]}" = 0 ] || die "repair pulled ${rp[1]} of $d rows, then ${rp[5]} were left"
		echo "   repair, exchange('b', repair => 'pull') at $FIRST_RTT ms: ${rp[0]} ms for $d rows;" \
			"round trips: exchange_log ${rp[2]}, proxy ${rp[3]}; then nothing left (${rp[4]} ms," \
			"exchange_log ${rp[6]}, proxy ${rp[7]})"
		echo "$FIRST_RTT $d ${rp[0]} ${rp[2]} ${rp[3]}" >>"$WORK/repairs"
		sync_trees
	fi
done
stop_proxy

# the table
ratio() { printf "%.2f" "$(echo "scale=3; $1 / ($2 + 0.001)" | bc)"; }
echo
echo "== WAN exchange vs pull + diff, $ROWS rows (times in ms; rt = round trips: exchange_log / proxy;"
echo "   new = new session, peer connection already open; x fdw: the pull of B3 (postgres_fdw), which"
echo "   issue 13's target names; x copy: the COPY stream, a faster pull than the issue asks to beat)"
printf '%5s %6s | %8s %8s | %7s %7s | %8s %8s %5s | %8s %8s %5s | %13s | %13s | %s\n' \
	rtt diffs "xch new" "xch warm" "rt new" "rt warm" "fdw new" "fdw warm" "turns" \
	"copy new" "copy warm" turns "x fdw new/wrm" "x copy new/wrm" "targets (issue 13)"
while read -r rtt d hn hw rtl rtp rtl2 rtp2 fn fw ft cn cw ct; do
	xn=$(ratio "$fn" "$hn")
	xw=$(ratio "$fw" "$hw")
	cxn=$(ratio "$cn" "$hn")
	cxw=$(ratio "$cw" "$hw")
	lim=$([ "$d" = 0 ] && echo 6 || echo 16)
	t="rt <= $lim: $([ "$rtl" -le $lim ] && [ "$rtp" -le $lim ] && echo met || echo MISSED)"
	if [ "$rtt" = 20 ] && [ "$d" = 1000 ]; then
		t="$t; <= 600 ms: $([ "$hn" -le 600 ] && echo met || echo MISSED)"
		t="$t; >= 20x (fdw, new session): $([ "$(echo "$xn >= 20" | bc)" = 1 ] && echo met || echo MISSED)"
		t="$t; against COPY: $([ "$(echo "$cxn >= 20" | bc)" = 1 ] && echo also || echo not) 20x"
	fi
	printf '%5s %6s | %8s %8s | %3s/%-3s %3s/%-3s | %8s %8s %5s | %8s %8s %5s | %6s %6s | %6s %6s | %s\n' \
		"$rtt" "$d" "$hn" "$hw" "$rtl" "$rtp" "$rtl2" "$rtp2" "$fn" "$fw" "$ft" "$cn" "$cw" "$ct" \
		"$xn" "$xw" "$cxn" "$cxw" "$t"
done <"$RESULTS"
if [ -f "$WORK/repairs" ]; then
	echo "repair => 'pull' (new session): rtt diffs ms rt(exchange_log/proxy), target: <= 4 round trips more than the exchange"
	while read -r rtt d ms rtl rtp; do
		echo "   $rtt ms, $d rows: $ms ms, $rtl/$rtp"
	done <"$WORK/repairs"
fi
exit 0
