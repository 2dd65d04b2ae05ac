--
-- Fragmented tables: linear hashing over hash partitions
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;
CREATE EXTENSION hashtree;
RESET client_min_messages;

-- frag_number: the fragment of the low bits of a hash, for N = 1..9
-- (the table recorded from mnesia_frag_hash for phash2(Key) band 15)
SELECT h, string_agg(hashtree.frag_number(n, h)::text, ' ' ORDER BY n) AS "N=1..9"
  FROM generate_series(0, 15) h, generate_series(1, 9) n GROUP BY h ORDER BY h;
SELECT hashtree.frag_number(9, 18446744073709551615), hashtree.frag_number(1, 0);
SELECT hashtree.frag_number(0, 1);
SELECT hashtree.frag_number(3, -1);
SELECT hashtree.frag_number(3, 1.5);
SELECT hashtree.frag_number(3, 18446744073709551616);

-- a table with rows, from 1 fragment to 64 and back, one step at a time;
-- after every step: the state, the iter/lock fragments, every partition's
-- bound and every row's place are checked
CREATE TABLE lt (id int PRIMARY KEY, v text NOT NULL) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('lt');
INSERT INTO lt SELECT g, 'v' || g FROM generate_series(1, 600) g;
CREATE TEMP TABLE steps (i serial, op text, before_n int, n int, p int, l int, iter int[], lock int[],
						 moved bigint, expect_moved bigint, bad_bounds bigint, misplaced bigint, total bigint);
DO $$
DECLARE
	r record;
	before int;
	expect bigint;
BEGIN
	FOR k IN 1..126 LOOP
		SELECT n_fragments INTO before FROM hashtree.frag_state('lt');
		IF k <= 63 THEN
			-- rows of fragment P that go to N+1: those in N+1 afterwards
			SELECT * INTO r FROM hashtree.add_frag('lt', 'block_writes');
			SELECT count(*) INTO expect FROM lt JOIN hashtree.fragments f ON f.relation = lt.tableoid
			 WHERE f.fragment = r.n_fragments;
		ELSE
			SELECT count(*) INTO expect FROM lt JOIN hashtree.fragments f ON f.relation = lt.tableoid
			 WHERE f.fragment = before;
			SELECT * INTO r FROM hashtree.del_frag('lt', 'block_writes');
		END IF;
		INSERT INTO steps (op, before_n, n, p, l, iter, lock, moved, expect_moved, bad_bounds, misplaced, total)
		SELECT CASE WHEN k <= 63 THEN 'add' ELSE 'del' END, before, r.n_fragments, r.next_n_to_split,
			   r.n_doubles, r.iter_frags, r.additional_lock_frags, r.moved_rows, expect,
			   (SELECT count(*) FROM hashtree.fragments f
				 WHERE f."table" = 'lt'::regclass
				   AND (f.modulus, f.remainder) IS DISTINCT FROM
					   (CASE WHEN f.fragment < r.next_n_to_split OR f.fragment > (1 << r.n_doubles)
							 THEN 1 << (r.n_doubles + 1) ELSE 1 << r.n_doubles END, f.fragment - 1)),
			   (SELECT count(*) FROM lt JOIN hashtree.fragments f ON f.relation = lt.tableoid
				 WHERE f.fragment <> hashtree.key_to_frag_number('lt', lt.id)),
			   (SELECT count(*) FROM lt);
	END LOOP;
END $$;
-- the steps against the closed forms: N = 2^L + P - 1; add splits P into N+1;
-- del merges N back into the fragment add split
SELECT count(*) AS steps,
	   count(*) FILTER (WHERE n <> (1 << l) + p - 1) AS bad_states,
	   count(*) FILTER (WHERE op = 'add' AND (n <> before_n + 1 OR lock <> ARRAY[n]
						OR iter <> ARRAY[CASE WHEN p = 1 THEN 1 << (l - 1) ELSE p - 1 END])) AS bad_adds,
	   count(*) FILTER (WHERE op = 'del' AND (n <> before_n - 1 OR iter <> ARRAY[before_n] OR lock <> ARRAY[p]))
		 AS bad_dels,
	   count(*) FILTER (WHERE moved <> expect_moved) AS bad_moved,
	   sum(bad_bounds) AS bad_bounds, sum(misplaced) AS misplaced,
	   min(total) AS min_rows, max(total) AS max_rows
  FROM steps;
-- each del is the exact inverse of the add that made its N
SELECT count(*) AS unmatched FROM steps a JOIN steps d ON d.op = 'del' AND d.before_n = a.n
 WHERE a.op = 'add' AND (d.n <> a.before_n OR d.iter <> a.lock OR d.lock <> a.iter);
-- 1 -> 9 -> 1, exactly as recorded from the real mnesia module
WITH mnesia(op, b_n, b_p, b_l, a_n, a_p, a_l, iter, lock) AS (VALUES
	('add', 1, 1, 0, 2, 1, 1, 1, 2), ('add', 2, 1, 1, 3, 2, 1, 1, 3), ('add', 3, 2, 1, 4, 1, 2, 2, 4),
	('add', 4, 1, 2, 5, 2, 2, 1, 5), ('add', 5, 2, 2, 6, 3, 2, 2, 6), ('add', 6, 3, 2, 7, 4, 2, 3, 7),
	('add', 7, 4, 2, 8, 1, 3, 4, 8), ('add', 8, 1, 3, 9, 2, 3, 1, 9),
	('del', 9, 2, 3, 8, 1, 3, 9, 1), ('del', 8, 1, 3, 7, 4, 2, 8, 4), ('del', 7, 4, 2, 6, 3, 2, 7, 3),
	('del', 6, 3, 2, 5, 2, 2, 6, 2), ('del', 5, 2, 2, 4, 1, 2, 5, 1), ('del', 4, 1, 2, 3, 2, 1, 4, 2),
	('del', 3, 2, 1, 2, 1, 1, 3, 1), ('del', 2, 1, 1, 1, 1, 0, 2, 1))
SELECT m.op, format('(%s,%s,%s)', m.b_n, m.b_p, m.b_l) AS before,
	   format('(%s,%s,%s)', s.n, s.p, s.l) AS after, s.iter, s.lock,
	   (s.n, s.p, s.l, s.iter, s.lock) = (m.a_n, m.a_p, m.a_l, ARRAY[m.iter], ARRAY[m.lock]) AS same_as_mnesia
  FROM mnesia m JOIN steps s ON s.op = m.op AND s.before_n = m.b_n
 ORDER BY s.i;
SELECT * FROM hashtree.frag_state('lt');

-- online mode, both ways; fragment names, indexes, owner, grants, constraints
-- and the fragments' own triggers kept
CREATE ROLE ht_frag_reader;
GRANT SELECT ON lt, lt_frag1 TO ht_frag_reader;
ALTER TABLE lt ADD CONSTRAINT v_not_empty CHECK (v <> '');
CREATE FUNCTION lt_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER lt_frag1_note BEFORE UPDATE ON lt_frag1 FOR EACH ROW EXECUTE FUNCTION lt_note();
SELECT * FROM hashtree.add_frag('lt', 'online');
SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE t.tgname = 'lt_frag1_note' ORDER BY 1;
SELECT c.relname, k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
 WHERE k.conname = 'v_not_empty' ORDER BY 1;
INSERT INTO lt VALUES (-1, '');
SELECT relname, has_table_privilege('ht_frag_reader', oid, 'SELECT') AS reader_may_select,
	   pg_get_userbyid(relowner) = current_user AS same_owner
  FROM pg_class WHERE relname IN ('lt_frag1', 'lt_frag2') ORDER BY 1;
SELECT * FROM hashtree.add_frag('lt');
SELECT * FROM hashtree.add_frag('lt');
SELECT * FROM hashtree.del_frag('lt');
SELECT "table", fragment, relation, modulus, remainder FROM hashtree.fragments WHERE "table" = 'lt'::regclass;
SELECT count(*), count(DISTINCT id),
	   count(*) FILTER (WHERE hashtree.key_to_frag_number('lt', id) <>
					   (SELECT fragment FROM hashtree.fragments f WHERE f.relation = lt.tableoid)) AS misplaced
  FROM lt;
SELECT c.relname, i.relname AS index FROM pg_class c JOIN pg_index x ON x.indrelid = c.oid
  JOIN pg_class i ON i.oid = x.indexrelid WHERE c.relname LIKE 'lt\_frag%' ORDER BY 1;
SELECT * FROM hashtree.frag_names('lt');
SELECT fragment, relation, rows FROM hashtree.frag_size('lt', true);
-- no leftovers of the operations
SELECT count(*) FROM pg_class WHERE relname LIKE 'hashtree\_frag\_%';
SELECT op, op_phase, op_sources, op_helpers FROM hashtree.frag_table;

-- key_to_frag_number: composite keys, nulls, any key types, same as routing
CREATE TABLE ct (a int, b text, c uuid, d numeric, payload text) PARTITION BY HASH (a, b, c, d);
SELECT * FROM hashtree.frag_init('ct', 11);
INSERT INTO ct SELECT g, CASE WHEN g % 5 = 0 THEN NULL ELSE 'b' || g END, md5(g::text)::uuid,
					 CASE WHEN g % 7 = 0 THEN NULL ELSE g / 3.0 END, 'p'
  FROM generate_series(1, 3000) g;
SELECT count(*) AS rows,
	   count(*) FILTER (WHERE hashtree.key_to_frag_number('ct', a, b, c, d) =
						(SELECT fragment FROM hashtree.fragments f WHERE f.relation = ct.tableoid)) AS agree
  FROM ct;
SELECT hashtree.key_to_frag_number('ct', NULL::int, NULL::text, NULL::uuid, NULL::numeric) AS all_null;
SELECT hashtree.key_to_frag_number('lt', 42) = hashtree.key_to_frag_number('lt', 42::smallint) AS widened,
	   hashtree.key_to_frag_number('lt', 42) = hashtree.key_to_frag_number('lt', '42') AS literal,
	   hashtree.key_to_frag_number('lt', 42) = hashtree.key_to_frag_number('lt', VARIADIC ARRAY[42]) AS variadic;

-- match_spec_to_frag_numbers: what PostgreSQL prunes to
SELECT hashtree.match_spec_to_frag_numbers('lt', 'id = 42') = ARRAY[hashtree.key_to_frag_number('lt', 42)] AS one;
SELECT hashtree.match_spec_to_frag_numbers('lt', 'id = 42 AND v LIKE ''v%''') =
	   ARRAY[hashtree.key_to_frag_number('lt', 42)] AS one_with_more;
SELECT array_length(hashtree.match_spec_to_frag_numbers('lt', 'v = ''v1'''), 1) AS all_of_them;
SELECT hashtree.match_spec_to_frag_numbers('lt', 'id IN (1, 2, 3)') =
	   (SELECT array_agg(f ORDER BY f)
		  FROM (SELECT DISTINCT hashtree.key_to_frag_number('lt', g) AS f FROM generate_series(1, 3) g) s)
	   AS pruned_set;
SELECT hashtree.match_spec_to_frag_numbers('lt', 'false') AS none,
	   hashtree.match_spec_to_frag_numbers('lt', 'id = 1 AND id = 2') AS contradiction;
SELECT hashtree.match_spec_to_frag_numbers('ct', 'a = 1 AND b = ''b1'' AND c = ''c4ca4238-a0b9-2382-0dcc-509a6f75849b'' AND d = 1 / 3.0') =
	   ARRAY[hashtree.key_to_frag_number('ct', 1, 'b1', 'c4ca4238-a0b9-2382-0dcc-509a6f75849b'::uuid, 1 / 3.0)]
	   AS composite;
SELECT array_length(hashtree.match_spec_to_frag_numbers('ct', 'a = 1'), 1) AS partial_key;

-- a tracked fragmented table keeps its prefix_hash through add_frag / del_frag
SELECT hashtree.track('lt');
SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p) FROM generate_series(0, 7) p) s;
SELECT string_agg(coalesce(encode(hashtree.prefix_hash(p, 'public', 'lt'), 'hex'), '-'), ',' ORDER BY p) AS before
  FROM generate_series(0, 7) p \gset
SELECT n_fragments FROM hashtree.add_frag('lt', 'block_writes');
SELECT n_fragments FROM hashtree.add_frag('lt', 'online');
SELECT n_fragments FROM hashtree.del_frag('lt', 'online');
SELECT count(*) AS logged_keys FROM hashtree.dirty_key;
SELECT count(*) FROM (SELECT hashtree.update(p) FROM generate_series(0, 7) p) s;
SELECT string_agg(coalesce(encode(hashtree.prefix_hash(p, 'public', 'lt'), 'hex'), '-'), ',' ORDER BY p) = :'before'
	   AS same_prefix_hash
  FROM generate_series(0, 7) p;
SELECT count(*) FROM hashtree.check_tree(0);
SELECT count(*) AS fragments_without_truncate_trigger FROM hashtree.fragments f
 WHERE f."table" = 'lt'::regclass
   AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = f.relation AND t.tgname = 'hashtree_track_truncate');
SELECT count(*) FROM (SELECT hashtree.release_lock(p) FROM generate_series(0, 7) p) s;

-- frag_activate: a plain table becomes fragment 1 of a hash parent with its
-- name, its rows untouched (same relation), sequences going on
CREATE TABLE acts (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, s serial, note text);
INSERT INTO acts (note) SELECT 'n' || g FROM generate_series(1, 500) g;
SELECT 'acts'::regclass::oid AS old_oid \gset
GRANT SELECT ON acts TO ht_frag_reader;
SELECT * FROM hashtree.frag_activate('acts');
SELECT relkind, (SELECT oid FROM pg_class WHERE relname = 'acts_frag1') = :old_oid AS same_relation_is_fragment_1
  FROM pg_class WHERE relname = 'acts';
SELECT "table", fragment, relation, modulus, remainder, row_estimate,
	   node = hashtree.node_name() AS here
  FROM hashtree.fragments WHERE "table" = 'acts'::regclass;
SELECT relname FROM pg_class WHERE relname LIKE 'acts%pkey' ORDER BY 1;
INSERT INTO acts (note) VALUES ('after') RETURNING id, s;
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('acts', 'block_writes');
INSERT INTO acts (note) VALUES ('after a split') RETURNING id, s;
SELECT count(*), count(DISTINCT id), has_table_privilege('ht_frag_reader', 'acts', 'SELECT') AS reader
  FROM acts;
SELECT * FROM hashtree.frag_activate('acts');
CREATE TABLE nopk (id int);
SELECT * FROM hashtree.frag_activate('nopk');
DROP TABLE acts, nopk;
SELECT count(*) AS registered FROM hashtree.frag_table WHERE parent::text LIKE 'acts%';

-- bad input: clear errors, nothing changed
SELECT * FROM hashtree.frag_init('lt');
CREATE TABLE plain (id int PRIMARY KEY);
SELECT * FROM hashtree.frag_init('plain');
SELECT * FROM hashtree.add_frag('plain');
CREATE TABLE ranged (id int) PARTITION BY RANGE (id);
SELECT * FROM hashtree.frag_init('ranged');
CREATE TABLE expr (id int) PARTITION BY HASH ((id + 1));
SELECT * FROM hashtree.frag_init('expr');
CREATE TABLE hashed (id int) PARTITION BY HASH (id);
CREATE TABLE hashed_0 PARTITION OF hashed FOR VALUES WITH (MODULUS 2, REMAINDER 0);
SELECT * FROM hashtree.frag_init('hashed');
SELECT * FROM hashtree.frag_init('ct', 0);
SELECT * FROM hashtree.frag_init(NULL);
SELECT * FROM hashtree.add_frag('lt', 'fast');
SELECT * FROM hashtree.add_frag('lt', NULL);
SELECT * FROM hashtree.add_frag('hashed');
SELECT * FROM hashtree.frag_state('hashed');
CREATE TABLE one (id int) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('one');
SELECT * FROM hashtree.del_frag('one');
SELECT hashtree.key_to_frag_number('lt', 1, 2);
SELECT hashtree.key_to_frag_number('lt', now());
SELECT hashtree.key_to_frag_number('lt', 'x');
SELECT hashtree.match_spec_to_frag_numbers('lt', 'id = 1; DROP TABLE lt');
SELECT hashtree.match_spec_to_frag_numbers('lt', 'id = 1 FROM pg_class');
SELECT hashtree.match_spec_to_frag_numbers('lt', 'id');
SELECT hashtree.match_spec_to_frag_numbers('lt', 'id IN (SELECT 1)');
SELECT hashtree.match_spec_to_frag_numbers('lt', 'nosuchcolumn = 1');
SELECT hashtree.match_spec_to_frag_numbers('lt', '');
-- a layout changed behind our back is refused
ALTER TABLE ct DETACH PARTITION ct_frag11;
SELECT hashtree.key_to_frag_number('ct', 1, 'b1', NULL, NULL);
SELECT * FROM hashtree.add_frag('ct');
ALTER TABLE ct ATTACH PARTITION ct_frag11 FOR VALUES WITH (MODULUS 16, REMAINDER 10);
SELECT * FROM hashtree.frag_state('ct');
-- a foreign key that references the table
CREATE TABLE refs (id int REFERENCES lt (id));
SELECT * FROM hashtree.add_frag('lt', 'block_writes');
DROP TABLE refs;
-- online mode in a transaction that wrote the table
BEGIN;
INSERT INTO lt VALUES (100000, 'x');
SELECT * FROM hashtree.add_frag('lt', 'online');
ROLLBACK;
-- not the owner
SET ROLE ht_frag_reader;
SELECT * FROM hashtree.add_frag('lt');
SELECT * FROM hashtree.frag_init('one');
SELECT hashtree.key_to_frag_number('lt', 7) BETWEEN 1 AND 64 AS readers_may_ask;
RESET ROLE;
SELECT * FROM hashtree.frag_state('lt');
SELECT count(*) FROM lt;

SELECT hashtree.untrack('lt');
DROP TABLE lt, ct, plain, ranged, expr, hashed, one;
DROP FUNCTION lt_note();
DROP ROLE ht_frag_reader;
