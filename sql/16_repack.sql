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
DROP FUNCTION update_all(), trees_ok(), tops(text), as_rebuilt(text);
