--
-- mnesia's hash_module: a custom hash operator class on the partition key.
-- PostgreSQL routes rows by the operator class's extended hash function,
-- key_to_frag_number computes the same hash, and linear hashing splits and
-- merges over it.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;
CREATE EXTENSION hashtree;
RESET client_min_messages;

-- a hash module that hashes only the block of an id (id / 10), by its own
-- formula (a multiplicative hash in SQL), so the ten ids of a block always
-- share a fragment
CREATE FUNCTION block_hash_ext(v int, seed bigint) RETURNS bigint
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	AS $$ SELECT ((((v / 10)::numeric * 2654435761 + 40503) * 11400714819323198485 + seed)
				  % 9223372036854775807)::bigint $$;
CREATE FUNCTION block_hash(v int) RETURNS int
	LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
	AS $$ SELECT (block_hash_ext(v, 0) % 2147483647)::int $$;
CREATE OPERATOR CLASS block_ops FOR TYPE int USING hash AS
	OPERATOR 1 = (int, int),
	FUNCTION 1 block_hash(int),
	FUNCTION 2 block_hash_ext(int, bigint);

-- the fragment a hash module puts id in, computed without the extension's C
-- code: PostgreSQL calls the extended hash function with its partitioning
-- seed 0x7A5B22367996DCFD and, for a one-column key, adds 0x49A0F4DD15E5A8E3
-- (modulo 2^64); then mnesia's rule (frag_number)
CREATE FUNCTION expected_frag(n int, v int) RETURNS int LANGUAGE sql AS
$$ SELECT hashtree.frag_number(n, (block_hash_ext(v, 8816678312871386365)::numeric
		+ 18446744073709551616 + 5305509591434766563) % 18446744073709551616) $$;

CREATE TABLE orders (id int PRIMARY KEY, note text NOT NULL) PARTITION BY HASH (id block_ops);
CREATE TABLE orders_plain (id int PRIMARY KEY, note text NOT NULL) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('orders', 4);
SELECT * FROM hashtree.frag_init('orders_plain', 4);
INSERT INTO orders SELECT g, 'n' || g FROM generate_series(1, 3000) g;
INSERT INTO orders_plain SELECT * FROM orders;

-- every row where key_to_frag_number and the formula say; blocks kept together;
-- the default operator class places keys elsewhere
SELECT count(*) AS rows,
	   count(*) FILTER (WHERE f.fragment <> hashtree.key_to_frag_number('orders', id)) AS misplaced,
	   count(*) FILTER (WHERE f.fragment <> expected_frag(4, id)) AS not_by_formula,
	   count(DISTINCT f.fragment) AS fragments_used
  FROM orders o JOIN hashtree.fragments f ON f.relation = o.tableoid;
SELECT count(*) AS split_blocks FROM (SELECT id / 10 FROM orders GROUP BY 1 HAVING count(DISTINCT tableoid) > 1) s;
SELECT count(*) > 0 AS default_splits_blocks
  FROM (SELECT id / 10 FROM orders_plain GROUP BY 1 HAVING count(DISTINCT tableoid) > 1) s;
SELECT count(*) > 1000 AS other_fragments
  FROM generate_series(1, 3000) g
 WHERE hashtree.key_to_frag_number('orders', g) <> hashtree.key_to_frag_number('orders_plain', g);

-- 4 -> 9 -> 1 fragments, online and block_writes in turn (each step its own
-- transaction: an online step may not follow a write in its transaction);
-- after every step: rows moved = rows of the new (add) or removed (del)
-- fragment, every row in the fragment key_to_frag_number and the formula
-- name, blocks together, no row lost or doubled
CREATE TEMP TABLE steps (i serial, op text, mode text, n int, iter int[], lock int[], moved bigint,
						 expect_moved bigint, misplaced bigint, not_by_formula bigint,
						 split_blocks bigint, total bigint, distinct_ids bigint);
CREATE FUNCTION step(op text, m text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
	r record;
	before int;
	expect bigint;
BEGIN
	SELECT n_fragments INTO before FROM hashtree.frag_state('orders');
	IF op = 'add' THEN
		SELECT * INTO r FROM hashtree.add_frag('orders', m);
		SELECT count(*) INTO expect FROM orders o JOIN hashtree.fragments f ON f.relation = o.tableoid
		 WHERE f.fragment = r.n_fragments;
	ELSE
		SELECT count(*) INTO expect FROM orders o JOIN hashtree.fragments f ON f.relation = o.tableoid
		 WHERE f.fragment = before;
		SELECT * INTO r FROM hashtree.del_frag('orders', m);
	END IF;
	INSERT INTO steps (op, mode, n, iter, lock, moved, expect_moved, misplaced, not_by_formula,
					   split_blocks, total, distinct_ids)
	SELECT op, m, r.n_fragments, r.iter_frags, r.additional_lock_frags, r.moved_rows, expect,
		   count(*) FILTER (WHERE f.fragment <> hashtree.key_to_frag_number('orders', o.id)),
		   count(*) FILTER (WHERE f.fragment <> expected_frag(r.n_fragments, o.id)),
		   (SELECT count(*) FROM (SELECT id / 10 FROM orders GROUP BY 1
								  HAVING count(DISTINCT tableoid) > 1) s),
		   count(*), count(DISTINCT o.id)
	  FROM orders o JOIN hashtree.fragments f ON f.relation = o.tableoid;
END $$;
SELECT FROM step('add', 'online');
SELECT FROM step('add', 'block_writes');
SELECT FROM step('add', 'online');
SELECT FROM step('add', 'block_writes');
SELECT FROM step('add', 'online');

-- at 9 fragments, pruning follows the hash module: a bound key scans one fragment
SELECT hashtree.match_spec_to_frag_numbers('orders', 'id = 1234') =
	   ARRAY[hashtree.key_to_frag_number('orders', 1234)] AS pruned_to_one,
	   hashtree.key_to_frag_number('orders', 1234) = expected_frag(9, 1234) AS by_formula;
EXPLAIN (COSTS OFF) SELECT * FROM orders WHERE id = 1234;
SELECT tableoid::regclass AS fragment, count(*) FROM orders WHERE id BETWEEN 1230 AND 1239 GROUP BY 1;

SELECT FROM step('del', 'block_writes');
SELECT FROM step('del', 'online');
SELECT FROM step('del', 'block_writes');
SELECT FROM step('del', 'online');
SELECT FROM step('del', 'block_writes');
SELECT FROM step('del', 'online');
SELECT FROM step('del', 'block_writes');
SELECT FROM step('del', 'online');
SELECT op, mode, n, iter, lock, moved > 0 AS moved_some, moved = expect_moved AS moved_right,
	   misplaced, not_by_formula, split_blocks, total, distinct_ids
  FROM steps ORDER BY i;
SELECT "table", fragment, relation, modulus, remainder FROM hashtree.fragments WHERE "table" = 'orders'::regclass;

-- a composite key: region by a PL/pgSQL hash module that ignores case (so
-- 'EU' and 'eu' share a fragment), id by block_ops
CREATE FUNCTION region_hash_ext(v text, seed bigint) RETURNS bigint
	LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
	AS $$ BEGIN RETURN pg_catalog.hashtextextended(pg_catalog.lower(v), seed); END $$;
CREATE FUNCTION region_hash(v text) RETURNS int
	LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
	AS $$ BEGIN RETURN pg_catalog.hashtext(pg_catalog.lower(v)); END $$;
CREATE OPERATOR CLASS region_ops FOR TYPE text USING hash AS
	OPERATOR 1 = (text, text),
	FUNCTION 1 region_hash(text),
	FUNCTION 2 region_hash_ext(text, bigint);
CREATE TABLE sales (region text, id int, amount int) PARTITION BY HASH (region region_ops, id block_ops);
SELECT * FROM hashtree.frag_init('sales', 3);
INSERT INTO sales SELECT (ARRAY['EU', 'eu', 'Eu', 'US', 'us', 'APAC', NULL])[1 + g % 7], g, g
  FROM generate_series(1, 2100) g;
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('sales', 'online');
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('sales', 'block_writes');
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.del_frag('sales', 'online');
SELECT count(*) AS rows,
	   count(*) FILTER (WHERE f.fragment <> hashtree.key_to_frag_number('sales', s.region, s.id)) AS misplaced,
	   sum(amount) = 2100 * 2101 / 2 AS amounts_whole
  FROM sales s JOIN hashtree.fragments f ON f.relation = s.tableoid;
SELECT count(*) AS case_split_groups
  FROM (SELECT lower(region), id / 10 FROM sales GROUP BY 1, 2 HAVING count(DISTINCT tableoid) > 1) s;
SELECT hashtree.key_to_frag_number('sales', 'EU', 5) = hashtree.key_to_frag_number('sales', 'eu', 7) AS same_fragment;

-- PostgreSQL partitions by an operator class with only its hash function;
-- block_writes works, online needs the equality operator to replay the
-- writes made during its copy and says so
CREATE OPERATOR CLASS bare_block_ops FOR TYPE int USING hash AS FUNCTION 2 block_hash_ext(int, bigint);
CREATE TABLE bare (id int, note text) PARTITION BY HASH (id bare_block_ops);
SELECT * FROM hashtree.frag_init('bare', 2);
INSERT INTO bare SELECT g, 'n' || g FROM generate_series(1, 500) g;
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('bare', 'block_writes');
SELECT * FROM hashtree.add_frag('bare', 'online');
SELECT * FROM hashtree.del_frag('bare', 'online');
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.del_frag('bare', 'block_writes');
SELECT * FROM hashtree.frag_state('bare');
SELECT count(*) AS rows, count(DISTINCT id) AS ids,
	   count(*) FILTER (WHERE f.fragment <> hashtree.key_to_frag_number('bare', id)) AS misplaced,
	   count(*) FILTER (WHERE f.fragment <> expected_frag(2, id)) AS not_by_formula
  FROM bare b JOIN hashtree.fragments f ON f.relation = b.tableoid;
SELECT op, op_phase, op_sources, op_helpers FROM hashtree.frag_table WHERE op IS NOT NULL;

-- fragments move rows with search_path pinned to pg_catalog, pg_temp (as
-- the owner): a hash function that finds its helpers by the session's
-- search_path fails there, with a clear error and nothing changed, and works
-- once it carries its own search_path
CREATE FUNCTION block_of(v int) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT (v / 10)::bigint $$;
CREATE FUNCTION path_hash_ext(v int, seed bigint) RETURNS bigint LANGUAGE sql IMMUTABLE STRICT
	AS $$ SELECT pg_catalog.hashint8extended(block_of(v), seed) $$;
CREATE OPERATOR CLASS path_ops FOR TYPE int USING hash AS
	OPERATOR 1 = (int, int), FUNCTION 2 path_hash_ext(int, bigint);
CREATE TABLE pathy (id int PRIMARY KEY, note text) PARTITION BY HASH (id path_ops);
SELECT * FROM hashtree.frag_init('pathy', 2);
INSERT INTO pathy SELECT g, 'n' || g FROM generate_series(1, 300) g;
\set VERBOSITY terse
SELECT * FROM hashtree.add_frag('pathy', 'block_writes');
SELECT * FROM hashtree.add_frag('pathy', 'online');
\set VERBOSITY default
SELECT * FROM hashtree.frag_state('pathy');
SELECT count(*) AS rows, count(DISTINCT tableoid) AS fragments FROM pathy;
ALTER FUNCTION path_hash_ext(int, bigint) SET search_path = public;
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('pathy', 'online');
SELECT count(*) AS rows,
	   count(*) FILTER (WHERE f.fragment <> hashtree.key_to_frag_number('pathy', id)) AS misplaced
  FROM pathy p JOIN hashtree.fragments f ON f.relation = p.tableoid;

DROP TABLE orders, orders_plain, sales, bare, pathy;
DROP FUNCTION step(text, text), expected_frag(int, int);
DROP OPERATOR FAMILY block_ops USING hash;
DROP OPERATOR FAMILY bare_block_ops USING hash;
DROP OPERATOR FAMILY region_ops USING hash;
DROP OPERATOR FAMILY path_ops USING hash;
DROP FUNCTION block_hash(int), block_hash_ext(int, bigint), region_hash(text), region_hash_ext(text, bigint),
	path_hash_ext(int, bigint), block_of(int);
