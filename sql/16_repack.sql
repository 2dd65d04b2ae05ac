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

-- two tables whose names hash alike (hashtext('public') # hashtext(name)
-- equal): a fold whose logged keys do not fit in maintenance_work_mem
-- (1MB: 4,096 per partition) takes them through the SQL sort, interleaved
-- by segment, and meets each table several times; a TRUNCATE of one
-- re-hashes it, and its keys met afterwards are not applied again.  A fold
-- of fewer keys sorts them in memory (grouped by table exactly).
SELECT (hashtext('public') # hashtext('c142084')) = (hashtext('public') # hashtext('c205747')) AS same_hash;
CREATE TABLE c142084 (id int PRIMARY KEY, v text);
CREATE TABLE c205747 (id int PRIMARY KEY, v text);
SELECT hashtree.track('c142084'), hashtree.track('c205747');
SET maintenance_work_mem = '1MB';
INSERT INTO c142084 SELECT g, 'x' || g FROM generate_series(1, 20000) g;
INSERT INTO c205747 SELECT g, 'y' || g FROM generate_series(1, 20000) g;
SELECT update_all();
SELECT trees_ok() AS tree_mismatches;
UPDATE c142084 SET v = v || '!' WHERE id % 30 = 0;
UPDATE c205747 SET v = v || '!' WHERE id % 30 = 1;
DELETE FROM c205747 WHERE id % 100 = 0;
SELECT update_all();
SELECT trees_ok() AS tree_mismatches;
SELECT as_rebuilt('c142084') AS c142084_as_rebuilt, as_rebuilt('c205747') AS c205747_as_rebuilt;
INSERT INTO c142084 SELECT g, 'new' FROM generate_series(20001, 40000) g;
UPDATE c205747 SET v = v || '?';
TRUNCATE c142084;
INSERT INTO c142084 VALUES (1, 'again');
SELECT update_all();
SELECT trees_ok() AS tree_mismatches;
SELECT as_rebuilt('c142084') AS c142084_as_rebuilt, as_rebuilt('c205747') AS c205747_as_rebuilt;
SELECT (SELECT sum(n) FROM hashtree.entry_pack WHERE pb = 'c142084')
	 + (SELECT count(*) FROM hashtree.entry WHERE pb = 'c142084' AND depth = 2) AS c142084_entries;
RESET maintenance_work_mem;
DROP TABLE c142084, c205747;
DROP FUNCTION update_all(), trees_ok(), tops(text), as_rebuilt(text);
