#!/usr/bin/env bash
# The hashtree demo: two throwaway PostgreSQL servers ("east" and "west")
# hold the same entries, drift apart, and find exactly where they differ
# by walking their partition hashtrees over libpq.
# Run as root on a machine with Debian's postgresql-15: it installs what it
# needs, builds and installs the extension, and removes the servers at the end.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-demo.XXXXXX)
chown postgres "$WORK"
trap 'pg_stop "$WORK/east"; pg_stop "$WORK/west"; rm -rf "$WORK"' EXIT
# background workers in database postgres, idle until the last part of the demo
workers=("hashtree.database = 'postgres'" "hashtree.tick_interval = '1h'" "hashtree.exchange_interval = 0")
pg_start "$WORK/east" 54401 "shared_preload_libraries = 'hashtree'" "hashtree.node_name = 'east'" "${workers[@]}"
pg_start "$WORK/west" 54402 "shared_preload_libraries = 'hashtree'" "hashtree.node_name = 'west'" "${workers[@]}"

east() { $PG_BIN/psql -X -h "$WORK/east" -p 54401 -U postgres -v ON_ERROR_STOP=1 "$@"; }
west() { $PG_BIN/psql -X -h "$WORK/west" -p 54402 -U postgres -v ON_ERROR_STOP=1 "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "both nodes: CREATE EXTENSION hashtree; east knows west as a peer"
for n in east west; do $n -q -c 'CREATE EXTENSION hashtree'; done
east -q -c "SELECT hashtree.add_peer('west', 'host=$WORK/west port=54402 dbname=postgres user=postgres')" >/dev/null
east -c 'SELECT name, conninfo FROM hashtree.peers'

say "both nodes get the same 100,000 entries (object digests under prefixes), in different orders"
fill="SELECT count(*) FROM (SELECT hashtree.insert(pa, pb, ('obj-' || i)::bytea, sha256(('v1-' || i)::bytea))
        FROM generate_series(1, 100000) i,
        LATERAL (SELECT (ARRAY['shop', 'shop', 'crm'])[1 + i % 3] AS pa,
                        (ARRAY['orders', 'items', 'people'])[1 + i % 3] AS pb) p ORDER BY i DIRECTION) s"
east -q -c "${fill/DIRECTION/ASC}" >/dev/null
west -q -c "${fill/DIRECTION/DESC}" >/dev/null
for n in east west; do
	$n -q -At -c "SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',') FROM generate_series(0, 7) p" >/dev/null
done
say "after update(): identical top hashes on both nodes"
for n in east west; do
	echo "$n: $($n -At -c "SELECT string_agg(left(encode(hashtree.top_hash(p), 'hex'), 12), ' ') FROM generate_series(0, 7) p")"
done

say "west drifts: 3 objects change, 2 vanish, 2 appear, and a whole new prefix (crm, leads)"
west -q >/dev/null <<'SQL'
SELECT hashtree.insert('shop', 'orders', 'obj-3'::bytea, sha256('v2-3'));
SELECT hashtree.insert('shop', 'items', 'obj-4'::bytea, sha256('v2-4'));
SELECT hashtree.insert('crm', 'people', 'obj-8'::bytea, sha256('v2-8'));
SELECT hashtree.delete('shop', 'orders', 'obj-30'::bytea);
SELECT hashtree.delete('shop', 'items', 'obj-40'::bytea);
SELECT hashtree.insert('shop', 'orders', 'obj-new-1'::bytea, sha256('n1'));
SELECT hashtree.insert('crm', 'people', 'obj-new-2'::bytea, sha256('n2'));
SELECT FROM (SELECT hashtree.insert('crm', 'leads', ('lead-' || i)::bytea, sha256(i::text::bytea))
                        FROM generate_series(1, 20) i) s;
SQL
say "west's update() folds only the changed segments"
west -c "SELECT p AS partition, hashtree.lock(p), hashtree.update(p) FROM generate_series(0, 7) p" -q
west -c "SELECT partition, entries, last_update_segments AS segments_recomputed, last_update_nodes AS rows_written, last_update_ms FROM hashtree.status"

say "east compares each partition with west: lock and update both sides, walk only differing buckets"
east -c "SELECT p AS partition, c.kind, c.prefix_a, c.prefix_b, convert_from(c.key, 'UTF8') AS key
         FROM generate_series(0, 7) p,
           LATERAL (SELECT hashtree.lock(p), hashtree.update(p), hashtree.lock('west', p), hashtree.update('west', p)) l,
           LATERAL hashtree.compare(p, 'west') c
         ORDER BY c.kind, c.prefix_a, c.prefix_b, c.key, p"
echo "(a whole prefix missing on one side is reported once per partition holding its keys)"

say "what a 'different' key looks like on both sides (key_hashes of its segment)"
seg=$(east -At -c "SELECT hashtree.segment_of('obj-3'::bytea)")
part=$(east -At -c "SELECT hashtree.partition_of('shop', 'orders', 'obj-3'::bytea)")
east -c "SELECT 'east' AS node, convert_from(key, 'UTF8') AS key, encode(hash, 'hex') AS hash FROM hashtree.key_hashes(NULL, $part, '{shop,orders}', $seg)
         UNION ALL
         SELECT 'west', convert_from(key, 'UTF8'), encode(hash, 'hex') FROM hashtree.key_hashes('west', $part, '{shop,orders}', $seg)"

say "tracked tables: both nodes track 'accounts' (columns in another order on west); west drifts"
east -q -c "CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2))"
west -q -c "CREATE TABLE accounts (balance numeric(12,2), owner text NOT NULL, id int PRIMARY KEY)"
for n in east west; do
	$n -q -c "INSERT INTO accounts (id, owner, balance) SELECT i, 'owner ' || i, i * 1.25 FROM generate_series(1, 10000) i" \
		-c "SELECT hashtree.track('accounts')" >/dev/null
done
west -q <<'SQL'
UPDATE accounts SET balance = balance + 100 WHERE id IN (7, 8, 9);
DELETE FROM accounts WHERE id IN (10, 11);
INSERT INTO accounts (id, owner, balance) VALUES (-5, 'only on west', 20001), (-6, 'only on west', 20002);
SQL

say "east: exchange('west', repair => 'pull') — report every difference and make east equal to west"
east -c "SELECT kind, prefix_a || '.' || coalesce(prefix_b, '*') AS prefix, count(*) AS keys, bool_and(repaired) AS repaired
         FROM hashtree.exchange('west', repair => 'pull') GROUP BY 1, 2 ORDER BY 2, 1"
east -c "SELECT partition, outcome, missing, remote_missing, different, missing_prefix AS miss_pfx,
                remote_missing_prefix AS rmiss_pfx, repaired, round_trips, bytes, finished - started AS took
         FROM hashtree.exchange_log ORDER BY id DESC LIMIT 8"
east -c "SELECT id, owner, balance FROM accounts WHERE id IN (-6, -5, 7, 8, 9, 10, 11) ORDER BY id"
say "a second exchange finds the nodes equal"
east -c "SELECT count(*) AS differences FROM hashtree.exchange('west')"

say "background workers (a reload turns them on): east is the reference and pushes to west every second"
east -q -c "ALTER SYSTEM SET hashtree.tick_interval = '1s'" -c "ALTER SYSTEM SET hashtree.exchange_interval = '1s'" \
	-c "ALTER SYSTEM SET hashtree.repair = 'push'" -c "SELECT pg_reload_conf()" >/dev/null
west -q -c "ALTER SYSTEM SET hashtree.tick_interval = '1s'" -c "SELECT pg_reload_conf()" >/dev/null
echo "east renames accounts 100-104; on west, someone deletes accounts 200-202"
east -q -c "UPDATE accounts SET owner = 'renamed on east' WHERE id BETWEEN 100 AND 104"
west -q -c "DELETE FROM accounts WHERE id BETWEEN 200 AND 202"
for i in $(seq 1 60); do
	same=$(east -At -c "SELECT count(*) = 0 FROM hashtree.exchange('west')" 2>/dev/null || true)
	[ "$same" = t ] && break
	sleep 1
done
echo "converged after about ${i} s: west is equal to east again"
for n in east west; do
	echo "$n: $($n -At -c "SELECT count(*) || ' rows; 100-104 owned by ' || string_agg(DISTINCT owner, ', ') FILTER (WHERE id BETWEEN 100 AND 104) || '; 200-202 present: ' || count(*) FILTER (WHERE id BETWEEN 200 AND 202) FROM accounts")"
done
echo "east's worker log:"
grep -h "hashtree: exchange with peer" "$WORK/east/log" | sed 's/^.*LOG: */  /' | head -3

say "done: the servers are removed"
