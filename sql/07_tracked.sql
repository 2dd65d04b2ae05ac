--
-- Tracked tables: every committed row change feeds the trees
--
SET client_min_messages = warning;
DROP EXTENSION hashtree;
CREATE EXTENSION hashtree;
RESET client_min_messages;

-- entries of a tracked table that differ from its rows (empty = in step),
-- and the trees checked against a rebuild
CREATE FUNCTION out_of_step(tbl regclass) RETURNS TABLE(problem text, key bytea)
LANGUAGE plpgsql AS $$
DECLARE
	s text;
	n text;
BEGIN
	SELECT nspname, relname INTO s, n FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace
	 WHERE c.oid = tbl;
	RETURN QUERY EXECUTE format($q$
		WITH r AS (SELECT hashtree.row_key(%1$L, t) AS key, hashtree.row_hash(%1$L, t) AS hash FROM %1$s t),
			 e AS (SELECT key, hash, part FROM hashtree.leaf_entry WHERE pa = %2$L AND pb = %3$L)
		SELECT CASE WHEN e.key IS NULL THEN 'no entry' WHEN r.key IS NULL THEN 'no row'
					WHEN e.hash <> r.hash THEN 'wrong hash' ELSE 'wrong partition' END, coalesce(r.key, e.key)
		  FROM r FULL JOIN e ON e.key = r.key
		 WHERE e.key IS NULL OR r.key IS NULL OR e.hash <> r.hash
			OR e.part <> hashtree.partition_of(%2$L, %3$L, e.key)$q$, tbl, s, n);
END $$;
CREATE FUNCTION update_all() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p
$$;
CREATE FUNCTION trees_ok() RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM generate_series(0, 7) p, hashtree.check_tree(p)
$$;

-- the encodings
CREATE TABLE enc (id int PRIMARY KEY, t text, n numeric, a int[], b bool);
INSERT INTO enc VALUES (1, 'héllo', 1.50, '{1,NULL,3}', true), (2, NULL, NULL, NULL, NULL);
SELECT id, hashtree.row_key('enc', enc), hashtree.row_hash('enc', enc) FROM enc ORDER BY id;
-- the key is u32 length + the binary send form of each key column
SELECT hashtree.row_key('enc', enc) = '\x00000004'::bytea || int4send(id) FROM enc;
-- the row hash ignores the client encoding, the column order and dropped columns
SET client_encoding = 'LATIN1';
SELECT id, hashtree.row_hash('enc', enc) FROM enc ORDER BY id;
RESET client_encoding;
CREATE TABLE enc2 (junk int, b bool, a int[], n numeric, t text, id int PRIMARY KEY);
ALTER TABLE enc2 DROP COLUMN junk;
INSERT INTO enc2 (id, t, n, a, b) SELECT id, t, n, a, b FROM enc;
SELECT e.id, hashtree.row_hash('enc', e) = hashtree.row_hash('enc2', e2) AS same
  FROM enc e JOIN enc2 e2 USING (id) ORDER BY 1;
-- but not a column's name
CREATE TABLE enc3 (id int PRIMARY KEY, tt text, n numeric, a int[], b bool);
INSERT INTO enc3 SELECT * FROM enc;
SELECT e.id, hashtree.row_hash('enc', e) = hashtree.row_hash('enc3', e3) AS same
  FROM enc e JOIN enc3 e3 USING (id) ORDER BY 1;
SELECT hashtree.row_hash('enc', e2) FROM enc2 e2;	-- not a row of enc
SELECT hashtree.row_hash(NULL, e) FROM enc e LIMIT 1;

-- keys of any scalar type, and composite keys
CREATE TABLE k_bigint (k bigint PRIMARY KEY, v text);
CREATE TABLE k_text (k text PRIMARY KEY, v text);
CREATE TABLE k_uuid (k uuid PRIMARY KEY, v text);
CREATE TABLE k_numeric (k numeric PRIMARY KEY, v text);
CREATE TABLE k_multi (a int, b text, c date, v text, PRIMARY KEY (b, a, c));
CREATE TABLE k_replica (k int NOT NULL, v text);
CREATE UNIQUE INDEX k_replica_k ON k_replica (k);
ALTER TABLE k_replica REPLICA IDENTITY USING INDEX k_replica_k;
INSERT INTO k_bigint SELECT i * 10000000000, 'v' || i FROM generate_series(1, 50) i;
INSERT INTO k_text SELECT 'clé ' || i, 'v' || i FROM generate_series(1, 50) i;
INSERT INTO k_uuid SELECT md5(i::text)::uuid, 'v' || i FROM generate_series(1, 50) i;
INSERT INTO k_numeric SELECT i / 7.0, 'v' || i FROM generate_series(1, 50) i;
INSERT INTO k_multi SELECT i, 'b' || (i % 3), date '2020-01-01' + i, 'v' FROM generate_series(1, 50) i;
INSERT INTO k_replica SELECT i, 'v' FROM generate_series(1, 50) i;
SELECT hashtree.track('k_bigint'), hashtree.track('k_text'), hashtree.track('k_uuid'),
	   hashtree.track('k_numeric'), hashtree.track('k_multi'), hashtree.track('k_replica');
-- built on return: the trees count the rows at once
SELECT relation, schema_name, table_name, key_columns, rows, pending, state
  FROM hashtree.tracked ORDER BY 1::text;
SELECT update_all();
SELECT relation, rows, pending, state FROM hashtree.tracked ORDER BY 1::text;
SELECT count(*) FROM out_of_step('k_bigint') UNION ALL SELECT count(*) FROM out_of_step('k_text')
 UNION ALL SELECT count(*) FROM out_of_step('k_uuid') UNION ALL SELECT count(*) FROM out_of_step('k_numeric')
 UNION ALL SELECT count(*) FROM out_of_step('k_multi') UNION ALL SELECT count(*) FROM out_of_step('k_replica');
-- the prefix of a tracked table is (schema, table)
SELECT hashtree.prefix_hash(p, 'public', 'k_text') IS NOT NULL AS has_tree
  FROM generate_series(0, 7) p LIMIT 1;

-- every kind of statement
CREATE TABLE acct (id int PRIMARY KEY, owner text NOT NULL UNIQUE, balance numeric, note text);
INSERT INTO acct SELECT i, 'o' || i, i * 10, repeat('n', i) FROM generate_series(1, 100) i;
SELECT hashtree.track('acct');
SELECT update_all();
INSERT INTO acct VALUES (1001, 'new', 1, NULL);
UPDATE acct SET balance = balance + 1 WHERE id <= 10;
UPDATE acct SET id = id + 5000 WHERE id BETWEEN 11 AND 15;		-- key changes
DELETE FROM acct WHERE id BETWEEN 16 AND 20;
INSERT INTO acct VALUES (21, 'o21', 0, 'upsert') ON CONFLICT (id) DO UPDATE SET note = EXCLUDED.note;
INSERT INTO acct VALUES (22, 'o22', 0, 'ignored') ON CONFLICT (id) DO NOTHING;
INSERT INTO acct VALUES (2000, 'o23', 0, 'conflict on owner') ON CONFLICT (owner) DO UPDATE SET note = 'via owner';
UPDATE acct SET note = repeat('toast', 10000) WHERE id = 30;	-- TOASTed value
COPY acct FROM STDIN;
3001	copied1	1	x
3002	copied2	2	\N
\.
SELECT count(*) AS logged_keys FROM hashtree.dirty_key;
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('acct');
SELECT trees_ok() AS tree_mismatches;
SELECT rows, pending, state FROM hashtree.tracked WHERE relation = 'acct'::regclass;

-- aborted transactions and subtransactions leave no trace
BEGIN;
DELETE FROM acct;
ROLLBACK;
BEGIN;
INSERT INTO acct VALUES (4001, 'sub', 0, NULL);
SAVEPOINT s;
UPDATE acct SET balance = -1;
DELETE FROM acct WHERE id = 4001;
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT count(*) AS logged_keys FROM hashtree.dirty_key;
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('acct');

-- TRUNCATE, then rows in the same transaction
BEGIN;
TRUNCATE acct;
INSERT INTO acct VALUES (1, 'again', 1, NULL);
COMMIT;
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('acct');
SELECT rows FROM hashtree.tracked WHERE relation = 'acct'::regclass;
SELECT trees_ok() AS tree_mismatches;

-- a partitioned table: its prefix is the parent's name; rows moving
-- between partitions change nothing
CREATE TABLE ev (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE ev_eu PARTITION OF ev FOR VALUES IN ('eu');
CREATE TABLE ev_us PARTITION OF ev FOR VALUES IN ('us');
INSERT INTO ev SELECT i, CASE WHEN i % 2 = 0 THEN 'eu' ELSE 'us' END, 'v' FROM generate_series(1, 60) i;
SELECT hashtree.track('ev');
SELECT update_all();
SELECT string_agg(coalesce(encode(hashtree.prefix_hash(p, 'public', 'ev'), 'hex'), '-'), ',' ORDER BY p) AS before_move
  FROM generate_series(0, 7) p \gset
-- a row moved to another partition and back: same trees
UPDATE ev SET region = 'eu' WHERE id = 3;
UPDATE ev SET region = 'us' WHERE id = 3;
SELECT update_all();
SELECT string_agg(coalesce(encode(hashtree.prefix_hash(p, 'public', 'ev'), 'hex'), '-'), ',' ORDER BY p)
	   = :'before_move' AS same_trees
  FROM generate_series(0, 7) p;
SELECT count(*) AS out_of_step FROM out_of_step('ev');
-- a key change that moves the row to the other partition
UPDATE ev SET region = 'eu' WHERE id = 5;
INSERT INTO ev_us VALUES (100, 'us', 'direct');		-- straight into a partition
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('ev');
TRUNCATE ev_eu;										-- one partition only
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('ev');
CREATE TABLE ev_asia PARTITION OF ev FOR VALUES IN ('asia');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'ev_asia'::regclass ORDER BY 1;
INSERT INTO ev VALUES (200, 'asia', 'x');
CREATE TABLE ev_other (LIKE ev);
INSERT INTO ev_other VALUES (300, 'other', 'attached');
SET client_min_messages = warning;
ALTER TABLE ev ATTACH PARTITION ev_other FOR VALUES IN ('other');
ALTER TABLE ev DETACH PARTITION ev_asia;
RESET client_min_messages;
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('ev');
SELECT trees_ok() AS tree_mismatches;
-- tracked again with the re-hash's scan shared with parallel workers
-- (forced on these small partitions; t/016 checks that they ran): the same
-- trees
SELECT string_agg(coalesce(encode(hashtree.prefix_hash(p, 'public', 'ev'), 'hex'), '-'), ',' ORDER BY p) AS serial_trees
  FROM generate_series(0, 7) p \gset
SET min_parallel_table_scan_size = 0;
SET max_parallel_maintenance_workers = 2;
SELECT hashtree.untrack('ev');
SELECT hashtree.track('ev');
SELECT update_all();
SELECT string_agg(coalesce(encode(hashtree.prefix_hash(p, 'public', 'ev'), 'hex'), '-'), ',' ORDER BY p)
	   = :'serial_trees' AS same_trees_parallel
  FROM generate_series(0, 7) p;
SELECT count(*) AS out_of_step FROM out_of_step('ev');
SELECT trees_ok() AS tree_mismatches;
RESET min_parallel_table_scan_size;
RESET max_parallel_maintenance_workers;

-- the trigger logs the row hash of each version written ('' when the row
-- went away); the fold takes a key logged once with its hash, and reads
-- the row of a key logged more than once
INSERT INTO acct VALUES (2, 'two', 2, NULL), (3, 'three', 3, NULL);
BEGIN;
UPDATE acct SET balance = 10 WHERE id = 1;
UPDATE acct SET balance = 11 WHERE id = 1;
COMMIT;
DELETE FROM acct WHERE id = 3;
UPDATE acct SET id = 4 WHERE id = 2;
SELECT count(*) AS logged, count(*) FILTER (WHERE k.hash = '') AS gone,
	   count(*) FILTER (WHERE k.hash = hashtree.row_hash('acct', a)) AS of_the_row
  FROM hashtree.dirty_key k LEFT JOIN acct a ON hashtree.row_key('acct', a) = k.key
 WHERE k.pb = 'acct';

-- schema changes: columns re-hash, renames are refused; the hashes logged
-- before (of the old columns) go with the re-hash
ALTER TABLE acct ADD COLUMN extra int DEFAULT 7;
SELECT count(*) AS logged FROM hashtree.dirty_key WHERE pb = 'acct';
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('acct');
ALTER TABLE acct DROP COLUMN note;
ALTER TABLE acct RENAME COLUMN extra TO extra2;
ALTER TABLE acct ALTER COLUMN balance TYPE float8;
SELECT update_all();
SELECT count(*) AS out_of_step FROM out_of_step('acct');
ALTER TABLE acct RENAME TO acct2;
CREATE SCHEMA other;
ALTER TABLE acct SET SCHEMA other;
ALTER TABLE acct DROP CONSTRAINT acct_pkey;
ALTER TABLE acct DISABLE TRIGGER hashtree_track;
DROP TRIGGER hashtree_track ON acct;
SELECT relation, key_columns FROM hashtree.tracked WHERE relation = 'acct'::regclass;
-- a dropped table is untracked
DROP TABLE k_replica;
SELECT count(*) FROM hashtree.tracked_table WHERE table_name = 'k_replica';
SELECT update_all();
SELECT count(*) FROM hashtree.leaf_entry WHERE pb = 'k_replica';
SELECT trees_ok() AS tree_mismatches;

-- untrack
SELECT hashtree.untrack('k_uuid');
SELECT tgname FROM pg_trigger WHERE tgrelid = 'k_uuid'::regclass;
SELECT count(*) FROM hashtree.leaf_entry WHERE pb = 'k_uuid';
SELECT update_all();
SELECT count(*) FROM hashtree.node WHERE pb = 'k_uuid';
SELECT hashtree.untrack('ev');
-- (ev_asia, detached before, keeps a TRUNCATE trigger that does nothing now)
SELECT tgrelid::regclass, tgname FROM pg_trigger
 WHERE tgname LIKE 'hashtree%' AND tgrelid::regclass::text LIKE 'ev%' ORDER BY 1, 2;
TRUNCATE ev_asia;

-- reset hashes tracked tables again
SELECT count(*) FROM (SELECT hashtree.reset(p) FROM generate_series(0, 7) p) s;
SELECT count(*) AS out_of_step FROM out_of_step('acct');
SELECT trees_ok() AS tree_mismatches;

-- the entries of a tracked table are packed (hashtree.entry_pack), a few
-- thousand rows per million entries; the fold rewrites the packs it changes
SELECT count(*) > 0 AS packed, (SELECT count(*) FROM hashtree.entry
								 WHERE depth = 2 AND pb = 'acct') AS plain_rows
  FROM hashtree.entry_pack WHERE pb = 'acct';
-- small packs (a table the planner believes large): segments spread over
-- many packs; emptied packs go away, and entries of segments no pack covers
-- are plain rows, until a re-hash packs them again
CREATE TABLE spread (id int PRIMARY KEY, v text);
INSERT INTO spread SELECT i, 'v' || i FROM generate_series(1, 3000) i;
UPDATE pg_class SET reltuples = 5e7 WHERE oid = 'spread'::regclass;
SELECT hashtree.track('spread');
SELECT min(span), max(span), sum(n) FROM hashtree.entry_pack WHERE pb = 'spread';
DELETE FROM spread WHERE id <= 2000;
UPDATE spread SET v = v || '!' WHERE id % 3 = 0;
SELECT update_all();
SELECT count(*) < 3000 AS fewer_packs, sum(n) FROM hashtree.entry_pack WHERE pb = 'spread';
INSERT INTO spread SELECT i, 'w' || i FROM generate_series(1, 2000) i;
SELECT update_all();
SELECT count(*) > 0 AS some_plain_rows FROM hashtree.entry WHERE depth = 2 AND pb = 'spread';
-- _pack_seg (pack.c's lookup, for SQL): a segment's packed entries, which
-- with its entry rows are exactly its leaf entries
CREATE TEMP TABLE spread_segs AS
  SELECT s.part, s.seg, x.key, x.hash, x.packed
    FROM (SELECT DISTINCT part, seg FROM hashtree.leaf_entry WHERE pa = 'public' AND pb = 'spread') s
   CROSS JOIN LATERAL (SELECT key, hash, true AS packed
                         FROM hashtree._pack_seg(s.part, 'public', 'spread', s.seg)
                       UNION ALL
                       SELECT key, hash, false FROM hashtree.entry e
                        WHERE e.part = s.part AND e.depth = 2 AND e.pa = 'public'
                          AND e.pb = 'spread' AND e.seg = s.seg) x;
SELECT count(*) FILTER (WHERE packed) > 0 AS some_packed,
       count(*) FILTER (WHERE NOT packed) > 0 AS some_rows,
       (SELECT count(*) FROM
         ((SELECT part, seg, key, hash FROM spread_segs
           EXCEPT ALL SELECT part, seg, key, hash FROM hashtree.leaf_entry WHERE pb = 'spread')
          UNION ALL
          (SELECT part, seg, key, hash FROM hashtree.leaf_entry WHERE pb = 'spread'
           EXCEPT ALL SELECT part, seg, key, hash FROM spread_segs)) d) AS differing
  FROM spread_segs;
SELECT count(*) AS out_of_step FROM out_of_step('spread');
SELECT trees_ok() AS tree_mismatches;
SELECT count(*) FROM (SELECT hashtree.reset(p) FROM generate_series(0, 7) p) s;
SELECT count(*) AS plain_rows FROM hashtree.entry WHERE depth = 2 AND pb = 'spread';
SELECT count(*) AS out_of_step FROM out_of_step('spread');
SELECT trees_ok() AS tree_mismatches;
SELECT hashtree.untrack('spread');
SELECT count(*) FROM hashtree.leaf_entry WHERE pb = 'spread';
-- long keys: a fold rewrites more packs of a partition than it writes at a
-- time (256 kB), so old versions must be gone before the first new one
CREATE TABLE longkey (k text PRIMARY KEY, v int);
INSERT INTO longkey SELECT repeat('k', 1000) || i, i FROM generate_series(1, 3000) i;
SELECT hashtree.track('longkey');
UPDATE longkey SET v = v + 1;
SELECT update_all();
SELECT sum(n) AS entries, min(n) > 0 AS none_empty FROM hashtree.entry_pack WHERE pb = 'longkey';
SELECT count(*) AS out_of_step FROM out_of_step('longkey');
SELECT trees_ok() AS tree_mismatches;
SELECT hashtree.untrack('longkey');
DROP TABLE longkey;
-- more records than maintenance_work_mem holds: track() sorts each full
-- buffer into a run written to a temporary file, and merges the runs once;
-- the packs and trees are those of a build in memory
CREATE TABLE many (id bigint PRIMARY KEY, v text);
INSERT INTO many SELECT i, 'v' || i FROM generate_series(1, 100000) i;
SELECT hashtree.track('many');
CREATE TEMP TABLE in_memory AS
  SELECT part, lo, span, n, data FROM hashtree.entry_pack WHERE pb = 'many';
SELECT update_all();
CREATE TEMP TABLE in_memory_tops AS
  SELECT p, hashtree.prefix_hash(p, 'public', 'many') AS prefix, hashtree.top_hash(p) AS top
    FROM generate_series(0, 7) p;
SELECT hashtree.untrack('many');
-- (several runs: one temporary file each, counted by the statistics)
SELECT pg_stat_force_next_flush();
CREATE TEMP TABLE temp_files AS
  SELECT temp_files FROM pg_stat_database WHERE datname = current_database();
SET maintenance_work_mem = '1MB';
SELECT hashtree.track('many');
SELECT pg_stat_force_next_flush();
SELECT pg_stat_clear_snapshot();
SELECT d.temp_files - t.temp_files >= 4 AS several_runs
  FROM pg_stat_database d, temp_files t WHERE d.datname = current_database();
RESET maintenance_work_mem;
SELECT sum(n) AS entries, count(*) = count(DISTINCT (part, lo)) AS one_pack_per_lo
  FROM hashtree.entry_pack WHERE pb = 'many';
SELECT count(*) AS plain_rows FROM hashtree.entry WHERE depth = 2 AND pb = 'many';
-- the same packs, byte for byte
SELECT count(*) AS packs_differing FROM
  ((SELECT * FROM in_memory EXCEPT SELECT part, lo, span, n, data FROM hashtree.entry_pack WHERE pb = 'many')
   UNION ALL
   (SELECT part, lo, span, n, data FROM hashtree.entry_pack WHERE pb = 'many' EXCEPT SELECT * FROM in_memory)) d;
SELECT update_all();
SELECT count(*) AS trees_differing FROM in_memory_tops t
 WHERE hashtree.prefix_hash(t.p, 'public', 'many') IS DISTINCT FROM t.prefix
    OR hashtree.top_hash(t.p) IS DISTINCT FROM t.top;
SELECT count(*) AS out_of_step FROM out_of_step('many');
SELECT trees_ok() AS tree_mismatches;
SELECT hashtree.untrack('many');
DROP TABLE many;

-- errors
-- the entries of a tracked table are not written through the entry API
SELECT hashtree.insert('public', 'acct', '\x01'::bytea, '\x01');
SELECT hashtree.delete('public', 'acct', '\x01'::bytea);
CREATE VIEW v AS SELECT 1 AS x;
CREATE TEMP TABLE tmp (id int PRIMARY KEY);
CREATE UNLOGGED TABLE unl (id int PRIMARY KEY);
CREATE TABLE nokey (id int);
CREATE TABLE fullid (id int NOT NULL, v text);
ALTER TABLE fullid REPLICA IDENTITY FULL;
CREATE TABLE arrkey (a int[] PRIMARY KEY);
CREATE TABLE p2 (id int PRIMARY KEY) PARTITION BY RANGE (id);
CREATE TABLE p2_1 PARTITION OF p2 FOR VALUES FROM (0) TO (100);
SELECT hashtree.track('p2_1');
SELECT hashtree.track('p2');
SELECT hashtree.track(NULL);
SELECT hashtree.track('v');
SELECT hashtree.track('tmp');
SELECT hashtree.track('unl');
SELECT hashtree.track('nokey');
SELECT hashtree.track('fullid');
SELECT hashtree.track('arrkey');
SELECT hashtree.track('acct');
SELECT hashtree.track('pg_class');
SELECT hashtree.track('hashtree.entry');
SELECT hashtree.untrack('nokey');
SELECT hashtree.untrack(NULL);
CREATE ROLE regress_hashtree_other;
GRANT EXECUTE ON FUNCTION hashtree.track(regclass, name) TO regress_hashtree_other;
SET ROLE regress_hashtree_other;
SELECT hashtree.track('nokey');
RESET ROLE;
DROP OWNED BY regress_hashtree_other;
DROP ROLE regress_hashtree_other;

-- check_tree reports an entry row in a segment that a pack covers (level 0)
CREATE TABLE packed (id int PRIMARY KEY, v text);
INSERT INTO packed SELECT i, 'v' FROM generate_series(1, 200) i;
SELECT hashtree.track('packed');
SELECT count(*) AS check_rows FROM generate_series(0, 7) p, hashtree.check_tree(p);
SET session_replication_role = replica;	-- (not through the guard trigger)
INSERT INTO hashtree.entry (part, seg, depth, pa, pb, key, hash)
	SELECT part, lo, 2, pa, pb, '\x01', '\x02' FROM hashtree.entry_pack
	 WHERE pb = 'packed' ORDER BY part, lo LIMIT 1;
RESET session_replication_role;
SELECT c.depth, c.prefix_b, c.level, c.stored, c.expected
  FROM generate_series(0, 7) p, hashtree.check_tree(p) c WHERE c.level = 0;
DELETE FROM hashtree.entry WHERE pb = 'packed';
SELECT hashtree.untrack('packed');
DROP TABLE packed;
