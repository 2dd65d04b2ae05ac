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
pg_start "$WORK/east" 54401 "shared_preload_libraries = 'hashtree'" "hashtree.node_name = 'east'"
pg_start "$WORK/west" 54402 "shared_preload_libraries = 'hashtree'" "hashtree.node_name = 'west'"

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

say "done: the servers are removed"
