--
-- Two-way repair (DESIGN §20): tombstones of tracked tables, and the
-- errors of repair 'newest' (the repair itself: TAP t/021_newest.pl)
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree;
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
	SELECT string_agg(coalesce(hashtree.prefix_hash(p, '', '')::text, '-'), ',' ORDER BY p)
	  FROM generate_series(0, 7) p
$$;
-- T(t) = SHA-256(0x04 || u64 µs since 2000-01-01 UTC)[0..16], in core SQL
CREATE OR REPLACE FUNCTION t_hash(t timestamptz) RETURNS bytea LANGUAGE sql AS $$
	SELECT substring(sha256('\x04'::bytea ||
		int8send((extract(epoch FROM t - '2000-01-01 00:00:00+00') * 1000000)::int8)) FOR 16)
$$;
-- the leaf entries of table t: rows and tombstones
CREATE OR REPLACE FUNCTION t_entries() RETURNS TABLE(kind text, n bigint) LANGUAGE sql AS $$
	SELECT CASE WHEN tb.key IS NULL THEN 'row' WHEN e.hash = t_hash(tb.deleted_at)
				THEN 'tombstone' ELSE 'tombstone, wrong hash' END, count(*)
	  FROM hashtree.leaf_entry e
	  LEFT JOIN hashtree.tombstone tb ON tb.part = e.part AND tb.pa = e.pa AND tb.pb = e.pb
		AND tb.key = e.key
	 WHERE e.pa = 'public' AND e.pb = 't' GROUP BY 1 ORDER BY 1
$$;

-- only a tracked table keeps tombstones, and only its owner says so
CREATE TABLE t (id int PRIMARY KEY, v text);
SELECT hashtree.tombstones('t');
SELECT hashtree.tombstones(NULL);
SELECT hashtree.tombstones(0);
SELECT hashtree.track('t');
CREATE ROLE newest_other;
SET ROLE newest_other;
SELECT hashtree.tombstones('t');
RESET ROLE;
GRANT EXECUTE ON FUNCTION hashtree.tombstones(regclass, boolean) TO newest_other;
SET ROLE newest_other;
SELECT hashtree.tombstones('t');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION hashtree.tombstones(regclass, boolean) FROM newest_other;
-- (commit times are off here: deletes get the time of their fold)
SELECT hashtree.tombstones('t');
SELECT tombstones FROM hashtree.tracked_table WHERE table_name = 't';

INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;
SELECT update_all();
-- a delete leaves a tombstone and its entry (T of the delete's time)
DELETE FROM t WHERE id IN (2, 3, 5);
UPDATE t SET id = 1000 WHERE id = 7;		-- a key changed: 7 is deleted
SELECT update_all();
SELECT * FROM t_entries();
SELECT count(*) FROM hashtree.tombstone;
SELECT trees_ok();
-- a rebuild gives the same trees (tombstones are leaf entries)
SELECT tops() AS before \gset
SELECT count(*) FROM generate_series(0, 7) p, LATERAL (SELECT hashtree.reset(p)) r;
SELECT tops() = :'before' AS same_after_reset, trees_ok();
SELECT * FROM t_entries();
-- a key inserted again loses its tombstone
INSERT INTO t VALUES (2, 'back');
SELECT update_all();
SELECT * FROM t_entries();
SELECT count(*) FROM hashtree.tombstone;
-- deleted and inserted again before a fold, then a re-hash (track())
DELETE FROM t WHERE id = 2;
INSERT INTO t VALUES (2, 'again');
DELETE FROM t WHERE id = 9;
ALTER TABLE t ADD COLUMN w int;		-- a re-hash
SELECT * FROM t_entries();
SELECT update_all();
SELECT * FROM t_entries();
SELECT trees_ok();
-- a re-hash keeps the tombstones left
SELECT tops() AS before \gset
SELECT count(*) FROM generate_series(0, 7) p, LATERAL (SELECT hashtree.reset(p)) r;
SELECT tops() = :'before' AS same_after_reset;
-- and so does a reset with deletes not folded yet
DELETE FROM t WHERE id = 11;
SELECT count(*) FROM generate_series(0, 7) p, LATERAL (SELECT hashtree.reset(p)) r;
SELECT * FROM t_entries();
SELECT trees_ok();
-- expiry: tombstones older than hashtree.tombstone_ttl go at the next fold
SELECT pg_sleep(1.1);
SET hashtree.tombstone_ttl = 0;		-- never
SELECT update_all();
SELECT * FROM t_entries();
SET hashtree.tombstone_ttl = '1s';
SELECT update_all();
SELECT * FROM t_entries();
SELECT trees_ok();
RESET hashtree.tombstone_ttl;
-- no tombstones any more: they go, and their entries
DELETE FROM t WHERE id = 10;
SELECT hashtree.tombstones('t', false);
SELECT update_all();
SELECT * FROM t_entries();
SELECT count(*) FROM hashtree.tombstone;
SELECT trees_ok();

-- versions from a column instead of commit times: any type with an order
-- and a binary form
CREATE DOMAIN ver8 AS int8 CHECK (VALUE > 0);
CREATE TABLE vc (id int PRIMARY KEY, n int, at timestamptz, p point, "Vér sion" bigint,
				 tx text, dm ver8, arr int8[], rc regclass);
SELECT hashtree.version_column('vc', 'at');
SELECT hashtree.track('vc');
SELECT hashtree.version_column('vc', 'nope');
SELECT hashtree.version_column('vc', 'p');		-- no order
-- text (collatable: client encoding, collation), a domain (its checks are
-- the owner's code), an array, OIDs of the node's objects
SELECT hashtree.version_column('vc', 'tx');
SELECT hashtree.version_column('vc', 'dm');
SELECT hashtree.version_column('vc', 'arr');
SELECT hashtree.version_column('vc', 'rc');
SELECT hashtree.version_column('vc', 'n');
SELECT hashtree.version_column('vc', 'at');
SELECT version_column, version_type FROM hashtree.tracked WHERE table_name = 'vc';
SELECT hashtree.version_column('vc', NULL);
SELECT version_column, version_type FROM hashtree.tracked WHERE table_name = 'vc';
SELECT hashtree.version_column(NULL, 'at');
-- given to track(); a delete's tombstone carries the deleted row's version,
-- its entry T'(v) = SHA-256(0x05 || 0x01 || the version's binary form)[0..16]
-- (no version: SHA-256(0x05))
CREATE TABLE vt (id int PRIMARY KEY, "Vér sion" bigint);
SELECT hashtree.track('vt', version_column => 'nope');
SELECT count(*) FROM hashtree.tracked WHERE table_name = 'vt';	-- nothing done
SELECT hashtree.track('vt', version_column => 'Vér sion');
SELECT hashtree.tombstones('vt');
SELECT version_column, version_type FROM hashtree.tracked WHERE table_name = 'vt';
INSERT INTO vt SELECT g, g * 10 FROM generate_series(1, 20) g;
DELETE FROM vt WHERE id IN (3, 4);
UPDATE vt SET "Vér sion" = NULL WHERE id = 5;
DELETE FROM vt WHERE id = 5;			-- no version: unknown
UPDATE vt SET id = 100 WHERE id = 6;	-- a key changed: 6 deleted at version 60
SELECT update_all();
CREATE OR REPLACE FUNCTION vt_entries() RETURNS TABLE(key bytea, tomb_version bytea, entry_ok boolean)
LANGUAGE sql AS $$
	SELECT tb.key, tb.version,
		   e.hash = substring(sha256(CASE WHEN tb.version IS NULL THEN '\x05'::bytea
										ELSE '\x0501'::bytea || tb.version END) FOR 16)
	  FROM hashtree.tombstone tb
	  JOIN hashtree.leaf_entry e ON e.part = tb.part AND e.pa = tb.pa AND e.pb = tb.pb
		AND e.key = tb.key
	 WHERE tb.pb = 'vt' ORDER BY tb.key
$$;
SELECT key, tomb_version = int8send(30) AS v30, tomb_version = int8send(40) AS v40,
	   tomb_version = int8send(60) AS v60, tomb_version IS NULL AS unknown, entry_ok
  FROM vt_entries();
SELECT trees_ok();
-- a re-hash keeps them, with the same entries
SELECT hashtree.reset(p) FROM generate_series(0, 7) p;
SELECT count(*), bool_and(entry_ok) FROM vt_entries();
SELECT trees_ok();
-- the same column again changes nothing (the tombstones keep their versions)
SELECT hashtree.version_column('vt', 'Vér sion');
SELECT count(*) FILTER (WHERE tomb_version IS NOT NULL) AS versioned FROM vt_entries();
-- a TRUNCATE and a delete in the same fold: the delete's version stays
TRUNCATE vt;
INSERT INTO vt VALUES (50, 500);
DELETE FROM vt WHERE id = 50;
SELECT update_all();
SELECT tomb_version = int8send(500) AS v500, entry_ok FROM vt_entries()
 WHERE key = hashtree.row_key('vt', ROW(50, NULL)::vt);
SELECT count(*) AS tombstones, bool_and(entry_ok) FROM vt_entries();
SELECT trees_ok();
-- the version column cannot be dropped, renamed or retyped
ALTER TABLE vt DROP COLUMN "Vér sion";
ALTER TABLE vt RENAME COLUMN "Vér sion" TO other;
ALTER TABLE vt ALTER COLUMN "Vér sion" TYPE numeric;
ALTER TABLE vt ADD COLUMN extra int;		-- other changes are not refused
SELECT version_column, version_type FROM hashtree.tracked WHERE table_name = 'vt';
-- back to commit times: the tombstones lose their versions, T(deleted_at)
SELECT hashtree.version_column('vt', NULL);
SELECT update_all();
SELECT count(*) FILTER (WHERE tomb_version IS NULL) AS unversioned FROM vt_entries();
SELECT count(*) FROM hashtree.tombstone tb JOIN hashtree.leaf_entry e ON e.part = tb.part
   AND e.pa = tb.pa AND e.pb = tb.pb AND e.key = tb.key
 WHERE tb.pb = 'vt' AND e.hash = t_hash(tb.deleted_at);
SELECT trees_ok();

-- a TRUNCATE leaves a tombstone of every key the node knew of the table:
-- in its trees, logged and not folded yet; the keys written again after it
-- have their rows
CREATE TABLE tt (id int PRIMARY KEY, v text);
SELECT hashtree.track('tt');
SELECT hashtree.tombstones('tt');
INSERT INTO tt SELECT g, 'v' || g FROM generate_series(1, 50) g;
SELECT update_all();
DELETE FROM tt WHERE id = 1;			-- a tombstone before the TRUNCATE
SELECT update_all();
INSERT INTO tt VALUES (51, 'unfolded');
BEGIN;
TRUNCATE tt;
INSERT INTO tt VALUES (2, 'again'), (60, 'new');
COMMIT;
SELECT update_all();
CREATE OR REPLACE FUNCTION tt_entries() RETURNS TABLE(kind text, n bigint, keys text) LANGUAGE sql AS $$
	SELECT CASE WHEN tb.key IS NULL THEN 'row' WHEN e.hash = t_hash(tb.deleted_at)
				THEN 'tombstone' ELSE 'tombstone, wrong hash' END, count(*),
		   CASE WHEN count(*) < 5 THEN string_agg(encode(e.key, 'hex'), ',' ORDER BY e.key) END
	  FROM hashtree.leaf_entry e
	  LEFT JOIN hashtree.tombstone tb ON tb.part = e.part AND tb.pa = e.pa AND tb.pb = e.pb
		AND tb.key = e.key
	 WHERE e.pa = 'public' AND e.pb = 'tt' GROUP BY 1 ORDER BY 1
$$;
SELECT * FROM tt_entries();
SELECT count(*) FROM hashtree.tombstone WHERE pb = 'tt'
   AND key IN (hashtree.row_key('tt', ROW(1, NULL)::tt), hashtree.row_key('tt', ROW(51, NULL)::tt));
SELECT trees_ok();
-- the same trees after a rebuild
CREATE TEMP TABLE tops_before AS SELECT tops() AS t;
SELECT hashtree.reset(p) FROM generate_series(0, 7) p;
SELECT tops() = t AS same_tops FROM tops_before;
SELECT * FROM tt_entries();
-- a TRUNCATE whose marker a re-hash drops before any fold: the same
-- tombstones
INSERT INTO tt VALUES (70, 'x');
SELECT update_all();
TRUNCATE tt;
SELECT hashtree.reset(p) FROM generate_series(0, 7) p;
SELECT count(*) FROM hashtree.tombstone WHERE pb = 'tt'
   AND key IN (hashtree.row_key('tt', ROW(70, NULL)::tt), hashtree.row_key('tt', ROW(2, NULL)::tt));
SELECT * FROM tt_entries();
SELECT trees_ok();
-- a table without tombstones: a TRUNCATE leaves none
CREATE TABLE tn (id int PRIMARY KEY);
SELECT hashtree.track('tn');
INSERT INTO tn SELECT generate_series(1, 10);
SELECT update_all();
TRUNCATE tn;
SELECT update_all();
SELECT count(*) FROM hashtree.tombstone WHERE pb = 'tn';
SELECT count(*) FROM hashtree.leaf_entry WHERE pb = 'tn';

-- repair 'newest' needs commit timestamps
SELECT * FROM hashtree.exchange('nobody', NULL, 'newest');
-- the helpers check their arguments
SELECT hashtree._newest_apply('public', 't', 0, '{}', '{}', '{}', '{}', '{\x01}', '{}');
SELECT hashtree._newest_apply('public', 't', 8, '{}', '{}', '{}', '{}', '{}', '{}');
SELECT * FROM hashtree._newest_rows('public', 'nosuch', 0, '{}');
SELECT * FROM hashtree._newest_rows('public', 't', 0, NULL);
DROP ROLE newest_other;
