#!/usr/bin/env bash
# The hashtree demo: two throwaway PostgreSQL servers ("east" and "west")
# hold the same entries, drift apart, and find exactly where they differ
# by walking their partition hashtrees over libpq.
# Then a fragmented table grows from 4 to 9 fragments by linear hashing while
# a writer keeps writing to it.
# Run as root on a machine with Debian's postgresql-15: it installs what it
# needs, builds and installs the extension, and removes the servers at the end.
# HASHTREE_PG_BIN: the server build to use (see scripts/common.sh);
# HASHTREE_DEMO_PORT: east's port (default 54401), west's is the next one.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
. "$REPO/scripts/common.sh"

require_root
install_deps
build_install

WORK=$(mktemp -d /tmp/hashtree-demo.XXXXXX)
chown postgres "$WORK"
EAST_PORT=${HASHTREE_DEMO_PORT:-54401}
WEST_PORT=$((EAST_PORT + 1))
writer=
trap '{ [ -z "$writer" ] || kill "$writer" 2>/dev/null || true; }; pg_stop "$WORK/east"; pg_stop "$WORK/west"; rm -rf "$WORK"' EXIT
# background workers in database postgres, idle until the last part of the demo
workers=("hashtree.database = 'postgres'" "hashtree.tick_interval = '1h'" "hashtree.exchange_interval = 0")
pg_start "$WORK/east" "$EAST_PORT" "shared_preload_libraries = 'hashtree'" "hashtree.node_name = 'east'" "${workers[@]}"
pg_start "$WORK/west" "$WEST_PORT" "shared_preload_libraries = 'hashtree'" "hashtree.node_name = 'west'" "${workers[@]}"

east() { $PG_BIN/psql -X -h "$WORK/east" -p "$EAST_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
west() { $PG_BIN/psql -X -h "$WORK/west" -p "$WEST_PORT" -U postgres -v ON_ERROR_STOP=1 "$@"; }
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "both nodes: CREATE EXTENSION hashtree; east knows west as a peer"
for n in east west; do $n -q -c 'CREATE EXTENSION hashtree'; done
east -q -c "SELECT hashtree.add_peer('west', 'host=$WORK/west port=$WEST_PORT dbname=postgres user=postgres')" >/dev/null
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

say "fragmented tables: 'events' (100,000 rows) is PARTITION BY HASH (id) with 4 fragments"
east -q >/dev/null <<'SQL'
CREATE TABLE events (id bigserial PRIMARY KEY, kind text NOT NULL, n int NOT NULL DEFAULT 0) PARTITION BY HASH (id);
SELECT hashtree.frag_init('events', 4);
INSERT INTO events (kind) SELECT (ARRAY['click', 'view', 'buy'])[1 + g % 3] FROM generate_series(1, 100000) g;
CREATE TABLE writer (stop boolean NOT NULL, txns bigint NOT NULL, worst interval NOT NULL);
INSERT INTO writer VALUES (false, 0, '0');
SQL
east -c "SELECT f.fragment, f.relation, f.modulus, f.remainder, s.rows
         FROM hashtree.fragments f JOIN hashtree.frag_size('events', true) s USING (fragment)
         WHERE f.\"table\" = 'events'::regclass ORDER BY 1"

echo "a writer starts: one transaction after another, each an UPDATE of a random row and an INSERT, through the parent"
east -q >/dev/null <<'SQL' &
DO $$
DECLARE
	k bigint := 0;
	t0 timestamptz;
	target bigint;
BEGIN
	LOOP
		target := 1 + floor(random() * 100000)::bigint;
		t0 := clock_timestamp();
		UPDATE events SET n = n + 1 WHERE id = target;
		INSERT INTO events (kind) VALUES ('writer');
		k := k + 1;
		UPDATE writer SET txns = k, worst = greatest(worst, clock_timestamp() - t0);
		COMMIT;
		EXIT WHEN (SELECT stop FROM writer);
		PERFORM pg_sleep(0.002);
	END LOOP;
END $$;
SQL
writer=$!

say "add_frag('events', 'online') five times: 4 -> 9 fragments, each split moving only half of one fragment"
echo "(linear hashing: with 2^L <= N < 2^(L+1) fragments, the split fragment holds 1/2^L of the rows and gives half"
echo " of them to the new one, 1/2^(L+1) of the table: 1/8 while N < 8, then 1/16; PostgreSQL's own re-partitioning"
echo " to a new modulus would rewrite every row)"
for step in 1 2 3 4 5; do
	east -At <<'SQL'
SELECT n_fragments AS n, next_n_to_split AS p, n_doubles AS l FROM hashtree.frag_state('events') \gset
SELECT count(*) AS total FROM events \gset
SELECT array_agg(hashtree.key_to_frag_number('events', g) ORDER BY g) AS before FROM generate_series(1, 12) g \gset
SELECT clock_timestamp() AS t0 \gset
SELECT moved_rows AS moved, n_fragments AS n2 FROM hashtree.add_frag('events', 'online') \gset
SELECT format('%s -> %s: fragment %s split into %s and %s in %s ms; moved %s of %s rows = 1/%s (expected 1/%s); writer: %s transactions so far',
              :n, :n2, :p, :p, :n2, round(extract(epoch FROM clock_timestamp() - :'t0') * 1000),
              :moved, :total, round(:total::numeric / greatest(:moved, 1), 1), 1 << (:l + 1),
              (SELECT txns FROM writer));
SELECT '        key_to_frag_number(events, id) for id 1..12:' ||
       string_agg(lpad(f::text, 3) || CASE WHEN f <> (:'before'::int[])[g] THEN '*' ELSE ' ' END, '' ORDER BY g) ||
       '  (* moved)'
  FROM generate_series(1, 12) g, LATERAL hashtree.key_to_frag_number('events', g) f;
SQL
done
east -q -c "UPDATE writer SET stop = true"
if ! wait "$writer"; then writer=; die "the writer failed"; fi
writer=

say "the writer stopped: no transaction failed, no write was lost or doubled"
east -c "SELECT w.txns AS writer_transactions, round(extract(epoch FROM w.worst) * 1000, 1) AS worst_write_ms,
                count(*) AS rows, count(*) = 100000 + w.txns AS every_insert_there,
                sum(e.n) = w.txns AS every_update_there, count(DISTINCT e.id) = count(*) AS no_duplicate,
                count(*) FILTER (WHERE hashtree.key_to_frag_number('events', e.id) <> f.fragment) AS misplaced
         FROM events e JOIN hashtree.fragments f ON f.relation = e.tableoid, writer w GROUP BY w.txns, w.worst"
east -c "SELECT f.fragment, f.relation, f.modulus, f.remainder, s.rows
         FROM hashtree.fragments f JOIN hashtree.frag_size('events', true) s USING (fragment)
         WHERE f.\"table\" = 'events'::regclass ORDER BY 1"
echo "(two moduli side by side, as linear hashing wants: fragment 1 and 9 split, 2-8 not yet; state (N, P, L):" \
	"$(east -At -c "SELECT format('(%s, %s, %s)', n_fragments, next_n_to_split, n_doubles) FROM hashtree.frag_state('events')"))"

say "a query with a bound key reads one fragment: the one key_to_frag_number names (PostgreSQL's own pruning)"
east -At -c "SELECT 'key_to_frag_number(events, 4242) = ' || hashtree.key_to_frag_number('events', 4242) ||
                    ', match_spec_to_frag_numbers(events, ''id = 4242'') = ' || hashtree.match_spec_to_frag_numbers('events', 'id = 4242')::text"
east -c "EXPLAIN (COSTS OFF) SELECT * FROM events WHERE id = 4242"

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
