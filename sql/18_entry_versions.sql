--
-- Versions and tombstones of plain entries (DESIGN §20): tombstones(prefix_a,
-- prefix_b), insert()/delete() with a version, the helpers of repair
-- 'newest' (the repair itself: TAP t/025_newest_entries.pl)
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;	-- (tables of the tests before stay)
CREATE EXTENSION hashtree;
RESET client_min_messages;

CREATE OR REPLACE FUNCTION update_all() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p
$$;
CREATE OR REPLACE FUNCTION trees_ok() RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM generate_series(0, 7) p, hashtree.check_tree(p)
$$;
CREATE OR REPLACE FUNCTION tops() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(coalesce(hashtree.top_hash(p)::text, '-'), ',' ORDER BY p)
	  FROM generate_series(0, 7) p
$$;
-- T(t) = SHA-256(0x04 || u64 µs since 2000-01-01 UTC)[0..16], in core SQL
CREATE OR REPLACE FUNCTION t_hash(t timestamptz) RETURNS bytea LANGUAGE sql AS $$
	SELECT substring(sha256('\x04'::bytea ||
		int8send((extract(epoch FROM t - '2000-01-01 00:00:00+00') * 1000000)::int8)) FOR 16)
$$;
-- the leaf entries of prefix (a, b): hash (of a tombstone: T(its time),
-- recomputed; a time of this year is a delete's without a version), version
CREATE OR REPLACE FUNCTION entries(a text, b text)
	RETURNS TABLE(key text, hash text, version timestamptz) LANGUAGE sql AS $$
	SELECT convert_from(e.key, 'UTF8'),
		   CASE WHEN tb.key IS NULL THEN e.hash::text WHEN e.hash = t_hash(tb.deleted_at)
				THEN 'T(' || CASE WHEN tb.deleted_at BETWEEN now() - interval '1 day' AND now()
								  THEN 'the time of the call' ELSE tb.deleted_at::text END || ')'
				ELSE 'wrong hash ' || e.hash::text END,
		   e.version
	  FROM hashtree.entry e
	  LEFT JOIN hashtree.tombstone tb ON tb.part = e.part AND tb.pa = e.pa AND tb.pb = e.pb
		AND tb.key = e.key
	 WHERE e.depth = 2 AND e.pa = a AND e.pb = b ORDER BY e.key
$$;
-- what repair 'newest' reads of keys, in their partitions
CREATE OR REPLACE FUNCTION versions(a text, b text, keys text[])
	RETURNS TABLE(key text, hash bytea, version timestamptz, dead boolean) LANGUAGE sql AS $$
	SELECT convert_from(n.key, 'UTF8'), n.hash, n.version, n.dead
	  FROM unnest(keys) k,
		   hashtree._newest_entries(hashtree.partition_of(a, b, k), a, b,
									ARRAY[convert_to(k, 'UTF8')]) n
	 ORDER BY 1
$$;
SET timezone = 'UTC';

-- a plain prefix opts in (commit times are off here: a warning)
SELECT hashtree.tombstones('pa', 'pb');
SELECT hashtree.tombstones('pa', 'pb', true);		-- again: nothing changes
SELECT prefix_a, prefix_b FROM hashtree.tombstone_prefix;
-- bad arguments
SELECT hashtree.tombstones(NULL, 'pb');
SELECT hashtree.tombstones('pa', NULL);
SELECT hashtree.tombstones('pa', 'pb', NULL);
SELECT hashtree.tombstones(repeat('x', 600), 'pb');
-- (a version given as a literal needs its type: delete(text, text,
-- unknown, unknown) has four candidates)
SELECT hashtree.delete('pa', 'pb', 'k', '2030-01-01');
-- the prefix of a tracked table: tombstones(tbl) is the way
CREATE TABLE ev_tt (id int PRIMARY KEY);
SELECT hashtree.track('ev_tt');
SELECT hashtree.tombstones('public', 'ev_tt');
SELECT hashtree.insert('public', 'ev_tt', 'k', '\x01', false, '2030-01-01');
-- not for PUBLIC
CREATE ROLE ev_other;
SET ROLE ev_other;
SELECT hashtree.tombstones('pa', 'pb', false);
SELECT hashtree.insert('pa', 'pb', 'k', '\x01', false, '2030-01-01');
SELECT hashtree.delete('pa', 'pb', 'k', timestamptz '2030-01-01');
SELECT * FROM hashtree._newest_entries(0, 'pa', 'pb', '{}');
RESET ROLE;

-- inserts with a version: the caller's, or (NULL, or the signatures
-- without it) the commit time, stored as NULL
SELECT hashtree.insert('pa', 'pb', 'k1', '\x01', false, '2030-01-01 00:00:00+00');
SELECT hashtree.insert(hashtree.partition_of('pa', 'pb', 'k2'), 'pa', 'pb', 'k2'::text, '\x02',
					   false, '2030-01-02 00:00:00+00');
SELECT hashtree.insert('pa', 'pb', '\x6b33'::bytea, '\x03', false, NULL);
SELECT hashtree.insert('pa', 'pb', 'k4', '\x04');
SELECT hashtree.insert(hashtree.partition_of('pa', 'pb', 'k5'), 'pa', 'pb', 'k5', '\x05', false);
SELECT * FROM entries('pa', 'pb');
-- what newest reads (no commit times here: NULL, not known)
SELECT * FROM versions('pa', 'pb', '{k1,k2,k3,k4,k5,k6}');
-- bad versions
SELECT hashtree.insert('pa', 'pb', 'k1', '\x01', false, 'infinity');
SELECT hashtree.insert('pa', 'pb', 'k1', '\x01', false, '-infinity');
SELECT hashtree.delete('pa', 'pb', 'k1', timestamptz 'infinity');
SELECT hashtree.delete(0, 'pa', 'pb', 'k1'::bytea, timestamptz '-infinity');
SELECT hashtree.insert(99, 'pa', 'pb', 'k1', '\x01', false, '2030-01-01');
SELECT hashtree.insert('pa', 'pb', 'k1', NULL, false, '2030-01-01');
SELECT hashtree.insert('pa', 'pb', 'k1', '\x01', NULL::boolean, '2030-01-01');
SELECT * FROM entries('pa', 'pb') WHERE key = 'k1';

-- deletes leave tombstones: (key, T(t)), also of a key never written; t
-- is the caller's version, or the time of the call
BEGIN;
SELECT hashtree.delete('pa', 'pb', 'k1', timestamptz '2030-01-03 00:00:00+00');
SELECT hashtree.delete(hashtree.partition_of('pa', 'pb', 'k2'), 'pa', 'pb', 'k2'::bytea,
					   '2030-01-04 00:00:00+00');
SELECT hashtree.delete('pa', 'pb', 'k9'::text, timestamptz '2030-01-05 00:00:00+00');
SELECT hashtree.delete('pa', 'pb', 'k4');
SELECT deleted_at >= now() AND deleted_at <= clock_timestamp() AS time_of_the_call
  FROM hashtree.tombstone WHERE key = 'k4';
COMMIT;
SELECT * FROM entries('pa', 'pb');
SELECT * FROM versions('pa', 'pb', '{k1,k2,k3,k9}');
SELECT update_all();
SELECT trees_ok();
-- a delete again moves the tombstone
SELECT hashtree.delete('pa', 'pb', 'k1', timestamptz '2030-01-06 00:00:00+00');
SELECT * FROM entries('pa', 'pb') WHERE key = 'k1';
-- an insert removes it
SELECT hashtree.insert('pa', 'pb', 'k1', '\x11', false, '2030-01-07 00:00:00+00');
SELECT * FROM entries('pa', 'pb') WHERE key = 'k1';
SELECT count(*) FROM hashtree.tombstone WHERE key = 'k1';
-- if_missing: a tombstone is no entry, an entry stays
SELECT hashtree.insert('pa', 'pb', 'k2', '\x22', true, '2030-01-08 00:00:00+00');
SELECT hashtree.insert('pa', 'pb', 'k2', '\x23', true, '2030-01-09 00:00:00+00');
SELECT * FROM entries('pa', 'pb') WHERE key = 'k2';
SELECT count(*) FROM hashtree.tombstone WHERE key = 'k2';
-- in a prefix that keeps tombstones an unchanged entry is written again
-- (a new version); elsewhere an unchanged entry writes nothing
SELECT update_all();
SELECT hashtree.insert('pa', 'pb', 'k2', '\x22', false, '2030-01-08 00:00:00+00');
SELECT hashtree.insert('plain', 'x', 'a', '\x01', false, '2030-01-01 00:00:00+00');
SELECT hashtree.insert('plain', 'x', 'b', '\x02');
SELECT count(*) FROM hashtree.dirty WHERE pa = 'pa';
SELECT count(*) FROM hashtree.dirty WHERE pa = 'plain';
SELECT hashtree.insert('plain', 'x', 'a', '\x01', false, '2030-01-01 00:00:00+00');
SELECT hashtree.insert('plain', 'x', 'b', '\x02');
SELECT count(*) FROM hashtree.dirty WHERE pa = 'plain';
SELECT hashtree.insert('plain', 'x', 'b', '\x02', false, '2030-01-01 00:00:00+00');	-- a version
SELECT count(*) FROM hashtree.dirty WHERE pa = 'plain';
-- a prefix without tombstones: a delete removes the entry, its version is
-- not kept
SELECT hashtree.delete('plain', 'x', 'a', timestamptz '2030-01-02 00:00:00+00');
SELECT * FROM entries('plain', 'x');
SELECT count(*) FROM hashtree.tombstone WHERE pa = 'plain';
SELECT * FROM versions('plain', 'x', '{a,b}');
SELECT update_all();
SELECT trees_ok();

-- the writes of repair 'newest': entries with their versions (NULL: not
-- known, kept as -infinity), tombstones with their times, NULL: purged
SELECT hashtree._newest_apply_entries(hashtree.partition_of('pa', 'pb', 'k6'), 'pa', 'pb',
	ARRAY['k6']::bytea[], ARRAY['\x06']::bytea[], ARRAY['2030-02-01 00:00:00+00']::timestamptz[],
	NULL, NULL);
SELECT hashtree._newest_apply_entries(hashtree.partition_of('pa', 'pb', 'k7'), 'pa', 'pb',
	ARRAY['k7']::bytea[], ARRAY['\x07']::bytea[], ARRAY[NULL]::timestamptz[], NULL, NULL);
SELECT hashtree._newest_apply_entries(hashtree.partition_of('pa', 'pb', 'k5'), 'pa', 'pb',
	NULL, NULL, NULL, ARRAY['k5']::bytea[], ARRAY['2030-02-02 00:00:00+00']::timestamptz[]);
SELECT hashtree._newest_apply_entries(hashtree.partition_of('pa', 'pb', 'k9'), 'pa', 'pb',
	NULL, NULL, NULL, ARRAY['k9']::bytea[], ARRAY[NULL]::timestamptz[]);
SELECT hashtree._newest_apply_entries(hashtree.partition_of('plain', 'x', 'b'), 'plain', 'x',
	NULL, NULL, NULL, ARRAY['b']::bytea[], ARRAY['2030-02-02 00:00:00+00']::timestamptz[]);
SELECT * FROM entries('pa', 'pb');
SELECT * FROM versions('pa', 'pb', '{k5,k6,k7,k9}');
SELECT * FROM entries('plain', 'x');
-- their bad arguments
SELECT hashtree._newest_apply_entries(0, 'pa', 'pb', ARRAY['k']::bytea[], ARRAY[]::bytea[],
	ARRAY['2030-01-01']::timestamptz[], NULL, NULL);
SELECT hashtree._newest_apply_entries(0, 'pa', 'pb', NULL, NULL, NULL, ARRAY['k']::bytea[], NULL);
SELECT hashtree._newest_apply_entries(0, 'pa', 'pb', ARRAY[NULL]::bytea[], ARRAY['\x01']::bytea[],
	ARRAY['2030-01-01']::timestamptz[], NULL, NULL);
SELECT hashtree._newest_apply_entries(0, 'pa', 'pb', ARRAY['k']::bytea[], ARRAY['']::bytea[],
	ARRAY['2030-01-01']::timestamptz[], NULL, NULL);
SELECT hashtree._newest_apply_entries(0, 'pa', 'pb', NULL, NULL, NULL, ARRAY['k']::bytea[],
	ARRAY['infinity']::timestamptz[]);
SELECT hashtree._newest_apply_entries(99, 'pa', 'pb', NULL, NULL, NULL, NULL, NULL);
SELECT hashtree._newest_apply_entries(NULL, 'pa', 'pb', NULL, NULL, NULL, NULL, NULL);
SELECT hashtree._newest_apply_entries(0, 'public', 'ev_tt', NULL, NULL, NULL, NULL, NULL);
SELECT * FROM hashtree._newest_entries(99, 'pa', 'pb', '{}');
SELECT * FROM hashtree._newest_entries(0, 'pa', 'pb', NULL);
SELECT update_all();
SELECT trees_ok();

-- a reset gives the same trees (tombstones are entries)
SELECT tops() AS before \gset
SELECT count(*) FROM generate_series(0, 7) p, LATERAL (SELECT hashtree.reset(p)) r;
SELECT tops() = :'before' AS same_tops;

-- expiry after hashtree.tombstone_ttl, at the update: the tombstones of a
-- time past go with their entries; the others stay
SELECT hashtree.delete('pa', 'pb', 'old', timestamptz '2020-01-01 00:00:00+00');
SELECT count(*) FROM hashtree.entry WHERE key = 'old';
SET hashtree.tombstone_ttl = 0;		-- never
SELECT update_all();
SELECT count(*) FROM hashtree.tombstone WHERE key = 'old';
RESET hashtree.tombstone_ttl;
SELECT update_all();
SELECT count(*) FROM hashtree.tombstone WHERE key = 'old';
SELECT count(*) FROM hashtree.entry WHERE key = 'old';
SELECT count(*) FROM hashtree.tombstone WHERE pa = 'pa';
SELECT trees_ok();

-- disabling: the prefix's tombstones and their entries go
SELECT hashtree.tombstones('pa', 'pb', false);
SELECT count(*) FROM hashtree.tombstone WHERE pa = 'pa';
SELECT key, hash FROM entries('pa', 'pb');
SELECT count(*) FROM hashtree.tombstone_prefix;
SELECT hashtree.delete('pa', 'pb', 'k1', timestamptz '2030-03-01 00:00:00+00');
SELECT count(*) FROM hashtree.tombstone WHERE pa = 'pa';
SELECT update_all();
SELECT trees_ok();

DROP TABLE ev_tt;
DROP ROLE ev_other;
