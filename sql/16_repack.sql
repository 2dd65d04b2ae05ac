--
-- A tracked table whose size moved far from the one its packs were made
-- for is packed again by the fold: from its own entries, not the table
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree;
CREATE EXTENSION hashtree;
RESET client_min_messages;

CREATE FUNCTION update_all() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p
$$;
CREATE FUNCTION trees_ok() RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM generate_series(0, 7) p, hashtree.check_tree(p)
$$;
-- the top hash of each partition's tree of tbl, and whether a rebuild from
-- the table gives the same
CREATE FUNCTION tops(tbl text) RETURNS TABLE(part int, hash bytea) LANGUAGE sql AS $$
	SELECT n.part, n.hash FROM hashtree.node n
	 WHERE n.depth = 2 AND n.pa = 'public' AND n.pb = tbl AND n.level = 1
$$;
CREATE FUNCTION as_rebuilt(tbl text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
	before bytea[];
BEGIN
	SELECT array_agg(hash ORDER BY part) INTO before FROM tops(tbl);
	PERFORM hashtree.reset(p) FROM generate_series(0, 7) p;
	RETURN before = (SELECT array_agg(hash ORDER BY part) FROM tops(tbl));
END $$;

-- tracked while small: packs of the widest span, where the rows are
CREATE TABLE grow (id int PRIMARY KEY, v text);
INSERT INTO grow SELECT i, 'v' || i FROM generate_series(1, 8) i;
SELECT hashtree.track('grow');
SELECT count(*) AS packs, min(span) AS span, sum(n) AS entries
  FROM hashtree.entry_pack WHERE pb = 'grow';

-- 50,000 rows more: most fall where no pack is, and would be entry rows
INSERT INTO grow SELECT i, 'v' || i FROM generate_series(9, 50000) i;
SELECT update_all();
SELECT count(*) AS entry_rows FROM hashtree.entry WHERE pb = 'grow' AND depth = 2;
SELECT sum(n) AS packed, min(span) AS span, max(span) = min(span) AS one_span
  FROM hashtree.entry_pack WHERE pb = 'grow';
SELECT count(*) AS level_3_4_rows FROM hashtree.node
 WHERE pb = 'grow' AND depth = 2 AND level IN (3, 4);
SELECT trees_ok() AS tree_mismatches;
SELECT as_rebuilt('grow');

-- packs grown past four times the target (a smaller target here): the
-- next fold that touches them packs again with a smaller span
SET hashtree.pack_target = 1;
UPDATE grow SET v = v || '!' WHERE id % 7 = 0;
SELECT update_all();
SELECT sum(n) AS packed, min(span) AS span, max(span) = min(span) AS one_span
  FROM hashtree.entry_pack WHERE pb = 'grow';
SELECT trees_ok() AS tree_mismatches;
RESET hashtree.pack_target;
SELECT as_rebuilt('grow');

-- few changes, or changes in the packs: nothing is packed again
SELECT min(span) AS span_before FROM hashtree.entry_pack WHERE pb = 'grow' \gset
UPDATE grow SET v = v || '?' WHERE id <= 100;
DELETE FROM grow WHERE id BETWEEN 101 AND 200;
SELECT update_all();
SELECT min(span) = :span_before AS same_span FROM hashtree.entry_pack WHERE pb = 'grow';
SELECT trees_ok() AS tree_mismatches;
SELECT as_rebuilt('grow');

DROP TABLE grow;

-- two tables, one keeping tombstones: a fold whose logged keys do not fit
-- in maintenance_work_mem (1MB: 4,096 per partition) takes them through the
-- SQL-sorted cursor, a smaller one sorts them in memory; the same trees
CREATE TABLE kw_1 (id int PRIMARY KEY, v text);
CREATE TABLE kw_2 (id int PRIMARY KEY, v text);
SELECT hashtree.track('kw_1'), hashtree.track('kw_2');
SET client_min_messages = error;
SELECT hashtree.tombstones('kw_1');
RESET client_min_messages;
SET maintenance_work_mem = '1MB';
INSERT INTO kw_1 SELECT g, 'x' || g FROM generate_series(1, 20000) g;
INSERT INTO kw_2 SELECT g, 'y' || g FROM generate_series(1, 20000) g;
SELECT update_all();
SELECT trees_ok() AS tree_mismatches;
UPDATE kw_1 SET v = v || '!' WHERE id % 30 = 0;
UPDATE kw_2 SET v = v || '!' WHERE id % 30 = 1;
DELETE FROM kw_2 WHERE id % 100 = 0;
SELECT update_all();
SELECT trees_ok() AS tree_mismatches;
SELECT as_rebuilt('kw_1') AS kw_1_as_rebuilt, as_rebuilt('kw_2') AS kw_2_as_rebuilt;
INSERT INTO kw_1 SELECT g, 'new' FROM generate_series(20001, 40000) g;
UPDATE kw_2 SET v = v || '?';
TRUNCATE kw_1;
INSERT INTO kw_1 VALUES (1, 'again');
SELECT update_all();
SELECT trees_ok() AS tree_mismatches;
SELECT as_rebuilt('kw_1') AS kw_1_as_rebuilt, as_rebuilt('kw_2') AS kw_2_as_rebuilt;
SELECT (SELECT sum(n) FROM hashtree.entry_pack WHERE pb = 'kw_1')
	 + (SELECT count(*) FROM hashtree.entry WHERE pb = 'kw_1' AND depth = 2) AS kw_1_entries;
-- every key it had, and those logged with the TRUNCATE, has a tombstone
-- (but the one written again)
SELECT count(*) AS kw_1_tombstones FROM hashtree.tombstone WHERE pb = 'kw_1';
RESET maintenance_work_mem;
DROP TABLE kw_1, kw_2;
DROP FUNCTION update_all(), trees_ok(), tops(text), as_rebuilt(text);

-- _subs_add: the kept sub-bucket hashes of a level-2 row with deltas added
-- (items of an index byte and 32 bytes, by index); a hash that comes back to
-- zero leaves the list
SELECT encode(hashtree._subs_add(''::bytea, decode('03' || repeat('00', 31) || '05', 'hex')), 'hex') AS added;
SELECT length(hashtree._subs_add(decode('03' || repeat('00', 31) || '05', 'hex'),
                                 decode('03' || repeat('ff', 31) || 'fb', 'hex'))) AS back_to_zero;
SELECT encode(hashtree._subs_add(decode('01' || repeat('00', 31) || '01' || '04' || repeat('00', 31) || '02', 'hex'),
                                 decode('02' || repeat('00', 31) || '07', 'hex')), 'hex') AS merged;
SELECT hashtree._subs_add(''::bytea, decode('00', 'hex'));
SELECT hashtree._subs_add(''::bytea, decode('05' || repeat('00', 32) || '02' || repeat('00', 32), 'hex'));
SELECT hashtree._subs_add(''::bytea, decode('20' || repeat('00', 32), 'hex'));
