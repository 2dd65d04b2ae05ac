--
-- Fragments on other servers (DESIGN §19): move_frag's refusals, each with
-- its SQLSTATE and nothing changed; then a real move to a peer and back
-- ("loop" is this very database, reached over libpq and postgres_fdw like
-- any other server; t/019 moves between real clusters)
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;
DROP EXTENSION IF EXISTS postgres_fdw CASCADE;
DROP SCHEMA IF EXISTS hashtree_fragments CASCADE;
CREATE EXTENSION hashtree;
RESET client_min_messages;
SET hashtree.node_name = 'regress';
SELECT hashtree.add_peer('loop', format('host=%s port=%s dbname=%s',
	current_setting('unix_socket_directories'), current_setting('port'),
	current_database()));

-- SQLSTATE and message of a statement, or 'ok'
CREATE FUNCTION pg_temp.err(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	-- (the names of the tables on the peer vary from run to run)
	RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, 'ht_[0-9a-f_]+', 'ht_...', 'g');
END $$;

CREATE TABLE mt (id int PRIMARY KEY, v text NOT NULL, n numeric) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mt', 4);
INSERT INTO mt SELECT g, 'v' || g, g / 7.0 FROM generate_series(1, 2000) g;
CREATE TABLE mr_plain (id int PRIMARY KEY);
-- what must not change: the placement, the rows, the parent's key
CREATE VIEW mr_state AS
	SELECT (SELECT string_agg(f.fragment || '@' || CASE WHEN f.node = hashtree.node_name() THEN 'here' ELSE f.node END
							  || ':' || f.relation, ' ' ORDER BY f.fragment)
			  FROM hashtree.fragments f WHERE f."table" = 'mt'::regclass) AS placement,
		   (SELECT count(*) || '/' || sum(id) || '/' || md5(string_agg(mt::text, ',' ORDER BY id)) FROM mt) AS rows,
		   (SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint
			 WHERE conrelid = 'mt'::regclass) AS parent_constraints;
CREATE TEMP TABLE mr_before AS SELECT * FROM mr_state;

-- bad arguments
SELECT pg_temp.err($$SELECT hashtree.move_frag(NULL, 1, 'loop', 'block_writes')$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', NULL, 'loop', 'block_writes')$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 1, 'loop', NULL)$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 1, 'loop', 'fast')$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag(0, 1, 'loop', 'block_writes')$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_plain', 1, 'loop', 'block_writes')$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 0, 'loop', 'block_writes')$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 5, 'loop', 'block_writes')$$);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 1, 'nobody', 'block_writes')$$);
-- here already: nothing to do
SELECT hashtree.move_frag('mt', 1, NULL, 'block_writes');
SELECT hashtree.move_frag('mt', 1, hashtree.node_name(), 'block_writes');
-- postgres_fdw is not installed
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 1, 'loop', 'block_writes')$$);
CREATE EXTENSION postgres_fdw;
-- online: not in a transaction that used the table (the copy runs elsewhere)
BEGIN;
SELECT count(*) FROM mt;
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 1, 'loop')$$);
ROLLBACK;

-- not the table's owner (and not granted move_frag: it uses peers)
CREATE ROLE ht_mover;
GRANT USAGE ON SCHEMA hashtree TO ht_mover;
SET ROLE ht_mover;
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 1, 'loop', 'block_writes')$$);
RESET ROLE;
-- nor add_frag/del_frag that place or read fragments on peers, in either
-- mode, even on a table of one's own
CREATE TABLE mr_own (id int PRIMARY KEY) PARTITION BY HASH (id);
SELECT n_fragments FROM hashtree.frag_init('mr_own', 2);
ALTER TABLE mr_own OWNER TO ht_mover;
ALTER TABLE mr_own_frag1 OWNER TO ht_mover;
ALTER TABLE mr_own_frag2 OWNER TO ht_mover;
ALTER ROLE ht_mover LOGIN;
GRANT CREATE ON SCHEMA public TO ht_mover;
SET ROLE ht_mover;
SELECT pg_temp.err($$SELECT * FROM hashtree.add_frag('mr_own', 'online', 'loop')$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.add_frag('mr_own', 'block_writes', 'loop')$$);
SELECT fragment, node = hashtree.node_name() AS here FROM hashtree.fragments WHERE "table" = 'mr_own'::regclass;
RESET ROLE;
DROP TABLE mr_own;
REVOKE CREATE ON SCHEMA public FROM ht_mover;
GRANT EXECUTE ON FUNCTION hashtree.move_frag TO ht_mover;
SET ROLE ht_mover;
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 1, 'loop', 'block_writes')$$);
RESET ROLE;

-- tables whose fragments cannot be foreign tables
CREATE TABLE mr_ck (id int PRIMARY KEY, v int CHECK (v > 0)) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_ck', 2);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_ck', 1, 'loop', 'block_writes')$$);
CREATE TABLE mr_gen (id int PRIMARY KEY, v int, w int GENERATED ALWAYS AS (v * 2) STORED) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_gen', 2);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_gen', 1, 'loop', 'block_writes')$$);
CREATE DOMAIN mr_posint AS int CHECK (VALUE > 0);
CREATE TABLE mr_dom (id int PRIMARY KEY, v mr_posint) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_dom', 2);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_dom', 1, 'loop', 'block_writes')$$);
CREATE TABLE mr_nokey (id int, v text) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_nokey', 2);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_nokey', 1, 'loop', 'block_writes')$$);
ALTER TABLE mr_nokey ALTER COLUMN id SET NOT NULL;
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_nokey', 1, 'loop', 'block_writes')$$);
CREATE TABLE mr_fk (id int PRIMARY KEY, r int REFERENCES mr_plain) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_fk', 2);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_fk', 1, 'loop', 'block_writes')$$);
CREATE TABLE mr_ux (id int, v text, PRIMARY KEY (id)) PARTITION BY HASH (id);
CREATE UNIQUE INDEX mr_ux_lower ON mr_ux (id, lower(v));
SELECT * FROM hashtree.frag_init('mr_ux', 2);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_ux', 1, 'loop', 'block_writes')$$);
SELECT count(*) AS ux_parent_indexes FROM pg_index WHERE indrelid = 'mr_ux'::regclass;
CREATE TABLE mr_refd (id int PRIMARY KEY) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_refd', 2);
CREATE TABLE mr_referencing (r int REFERENCES mr_refd);
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_refd', 1, 'loop', 'block_writes')$$);
CREATE FUNCTION mr_noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
CREATE TRIGGER own BEFORE INSERT ON mt_frag3 FOR EACH ROW EXECUTE FUNCTION mr_noop();
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 3, 'loop', 'block_writes')$$);
DROP TRIGGER own ON mt_frag3;
CREATE TABLE mr_tr (id int PRIMARY KEY, v text) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_tr', 2);
SELECT hashtree.track('mr_tr') >= 0 AS tracked;
SELECT pg_temp.err($$SELECT hashtree.move_frag('mr_tr', 1, 'loop', 'block_writes')$$);
-- nothing changed, and nothing was created on the "peer"
SELECT s = b AS unchanged FROM mr_state s, mr_before b;
SELECT count(*) AS servers FROM pg_foreign_server;
SELECT count(*) AS remote_tables FROM pg_tables WHERE schemaname = 'hashtree_fragments';

-- a real move: fragment 2 to the peer
SELECT hashtree.move_frag('mt', 2, 'loop', 'block_writes') AS moved;
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows, parent_constraints FROM mr_state;
SELECT relkind, relowner = (SELECT extowner FROM pg_extension WHERE extname = 'hashtree') AS extension_owners
  FROM pg_class WHERE oid = 'mt_frag2'::regclass;
SELECT string_agg(conname, ',' ORDER BY conname) AS fragment_keys FROM pg_constraint
 WHERE conrelid IN (SELECT relation FROM hashtree.fragments WHERE "table" = 'mt'::regclass AND fragment <> 2);
SELECT fragment_keys FROM hashtree.frag_table WHERE parent = 'mt'::regclass;
SELECT srvname, ARRAY(SELECT option_name FROM pg_options_to_table(srvoptions) ORDER BY 1) AS options
  FROM pg_foreign_server;
SELECT umoptions FROM pg_user_mappings;
SELECT count(*) AS remote_tables FROM pg_tables WHERE schemaname = 'hashtree_fragments';
-- the rows of the fragment are in the peer's table, and only there
SELECT option_value AS rt FROM pg_options_to_table((SELECT ftoptions FROM pg_foreign_table
 WHERE ftrelid = 'mt_frag2'::regclass)) WHERE option_name = 'table_name' \gset
SELECT count(*) AS rows_in_remote_table, bool_and(hashtree.key_to_frag_number('mt', id) = 2) AS all_of_2,
	   count(*) = (SELECT count(*) FROM mt WHERE hashtree.key_to_frag_number('mt', id) = 2) AS all_rows_of_2
  FROM hashtree_fragments.:"rt";
-- a peer that holds a fragment cannot be dropped (nothing changed: the
-- peer, its server and mapping, the placement and the rows)
CREATE TEMP TABLE mr_before_drop AS SELECT * FROM mr_state;
SELECT pg_temp.err($$SELECT hashtree.drop_peer('loop')$$);
SELECT count(*) AS peers FROM hashtree.peers WHERE name = 'loop';
SELECT count(*) AS servers, (SELECT count(*) FROM pg_user_mappings) AS mappings FROM pg_foreign_server;
SELECT s = b AS unchanged FROM mr_state s, mr_before_drop b;
-- (its detail and hint)
SELECT hashtree.drop_peer('loop');
-- not under a transaction snapshot: a move committed while it waited would
-- not be seen
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT pg_temp.err($$SELECT hashtree.drop_peer('loop')$$);
ROLLBACK;
-- schema changes that would not reach the peer's table: refused, nothing
-- changed; those that stay here are allowed
SELECT pg_temp.err($$ALTER TABLE mt ADD COLUMN extra int$$);
SELECT pg_temp.err($$ALTER TABLE mt DROP COLUMN n$$);
SELECT pg_temp.err($$ALTER TABLE mt ALTER COLUMN n TYPE float8$$);
SELECT pg_temp.err($$ALTER TABLE mt RENAME COLUMN v TO w$$);
SELECT pg_temp.err($$ALTER TABLE mt ALTER COLUMN n SET NOT NULL$$);
SELECT pg_temp.err($$ALTER TABLE mt ADD CONSTRAINT mr_pos CHECK (id > 0)$$);
SELECT pg_temp.err($$ALTER TABLE mt ALTER COLUMN v SET DEFAULT 'x', ADD COLUMN extra int$$);
ALTER TABLE mt ADD COLUMN extra int;
SELECT s = b AS unchanged FROM mr_state s, mr_before_drop b;
SELECT string_agg(attname, ',' ORDER BY attnum) AS columns FROM pg_attribute
 WHERE attrelid = 'mt'::regclass AND attnum > 0 AND NOT attisdropped;
ALTER TABLE mt ALTER COLUMN v SET DEFAULT 'dflt';
ALTER TABLE mt ALTER COLUMN v DROP DEFAULT;
ALTER TABLE mt RENAME TO mt_renamed;
ALTER TABLE mt_renamed RENAME TO mt;
-- routing, pruning, writes through the parent
SELECT min(id) AS k2 FROM mt WHERE hashtree.key_to_frag_number('mt', id) = 2 \gset
SELECT hashtree.match_spec_to_frag_numbers('mt', format('id = %s', :k2));
EXPLAIN (COSTS OFF) SELECT * FROM mt WHERE id = :k2;
UPDATE mt SET v = 'changed' WHERE id = :k2;
SELECT pg_temp.err(format($$INSERT INTO mt VALUES (%s, 'dup', 0)$$, :k2));
INSERT INTO mt VALUES (:k2, 'dup', 0) ON CONFLICT DO NOTHING;
SELECT pg_temp.err($$INSERT INTO mt VALUES (1, 'x', 0) ON CONFLICT (id) DO NOTHING$$);
DELETE FROM mt WHERE id = :k2 RETURNING id = :k2 AS deleted;
INSERT INTO mt VALUES (:k2, 'v' || :k2, :k2 / 7.0);
SELECT tableoid::regclass, v FROM mt WHERE id = :k2;
SELECT * FROM hashtree.frag_size('mt', true) WHERE fragment = 2;
-- splits and merges: of fragments here as ever (5 split from 1, merged
-- back); one that touches a fragment elsewhere moves it here and back in
-- the same transaction (block_writes), or (online) creates its targets
-- where they go (below); bad arguments change nothing
SELECT * FROM hashtree.add_frag('mt', 'block_writes');
SELECT * FROM hashtree.del_frag('mt', 'block_writes');
SELECT pg_temp.err($$SELECT * FROM hashtree.add_frag('mt', 'online', 'nobody')$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.add_frag('mt', 'block_writes', 'nobody')$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.add_frag('mt', 'sideways', 'loop')$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.del_frag('mt', NULL)$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.add_frag(NULL, 'online', 'loop')$$);
-- online, not in a transaction that has used the table (the copy runs elsewhere)
BEGIN;
SELECT count(*) > 0 AS used FROM mt;
SELECT pg_temp.err($$SELECT * FROM hashtree.del_frag('mt')$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.add_frag('mt', 'online', 'loop')$$);
ROLLBACK;
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows FROM mr_state;
-- 4 merged into 2 (on the peer), then 2 split again, 4 going to the peer
SELECT * FROM hashtree.del_frag('mt', 'block_writes');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows FROM mr_state;
SELECT * FROM hashtree.add_frag('mt', 'block_writes', node => 'loop');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows FROM mr_state;
SELECT count(*) AS misplaced FROM mt JOIN hashtree.fragments f ON f.relation = mt.tableoid
 WHERE f.fragment <> hashtree.key_to_frag_number('mt', mt.id);
SELECT hashtree.move_frag('mt', 4, NULL, 'block_writes') > 0 AS moved;
-- the same online (DESIGN §19): each target created where it goes and
-- filled from the sources, wherever they are; after each step the rows
-- are the same and each is where key_to_frag_number says
CREATE VIEW mr_misplaced AS SELECT count(*) AS misplaced FROM mt
  JOIN hashtree.fragments f ON f.relation = mt.tableoid
 WHERE f.fragment <> hashtree.key_to_frag_number('mt', mt.id);
-- 4 (here) into 2 (there): the target there
SELECT * FROM hashtree.del_frag('mt');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows, misplaced FROM mr_state, mr_misplaced;
-- 2 (there) split, 4 there too: source and targets on one peer
SELECT * FROM hashtree.add_frag('mt', node => 'loop');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows, misplaced FROM mr_state, mr_misplaced;
-- 1 (here) split, 5 there
SELECT * FROM hashtree.add_frag('mt', 'online', 'loop');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows, misplaced FROM mr_state, mr_misplaced;
-- 5 (there) into 1 (here): the target here
SELECT * FROM hashtree.del_frag('mt', 'online');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows, misplaced FROM mr_state, mr_misplaced;
-- 4 (there) into 2 (there)
SELECT * FROM hashtree.del_frag('mt');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows, misplaced FROM mr_state, mr_misplaced;
-- 2 (there) split, 4 here
SELECT * FROM hashtree.add_frag('mt');
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows, misplaced FROM mr_state, mr_misplaced;
SELECT op, op_phase, op_error FROM hashtree.frag_table WHERE parent = 'mt'::regclass;
SELECT count(*) AS logs FROM pg_class WHERE relname LIKE 'hashtree\_frag\_%\_log';
-- the rows of fragment 2 are all in its table on the peer, and only there
SELECT option_value AS rt FROM pg_options_to_table((SELECT ftoptions FROM pg_foreign_table
 WHERE ftrelid = 'mt_frag2'::regclass)) WHERE option_name = 'table_name' \gset
SELECT count(*) AS rows_in_remote_table, bool_and(hashtree.key_to_frag_number('mt', id) = 2) AS all_of_2,
	   count(*) = (SELECT count(*) FROM mt WHERE hashtree.key_to_frag_number('mt', id) = 2) AS all_rows_of_2
  FROM hashtree_fragments.:"rt";
DROP VIEW mr_misplaced;
-- the first fragment of a table to leave, by an online add_frag: the
-- parent's key becomes the fragments' first (in the worker), then the split
CREATE TABLE mr_first (id int PRIMARY KEY, v text NOT NULL) PARTITION BY HASH (id);
SELECT n_fragments FROM hashtree.frag_init('mr_first', 2);
INSERT INTO mr_first SELECT g, 'f' || g FROM generate_series(1, 300) g;
SELECT n_fragments, moved_rows FROM hashtree.add_frag('mr_first', node => 'loop');
SELECT fragment, node = hashtree.node_name() AS here FROM hashtree.fragments
 WHERE "table" = 'mr_first'::regclass;
SELECT count(*), sum(id), count(*) FILTER (WHERE hashtree.key_to_frag_number('mr_first', id) = 3) AS of_3
  FROM mr_first;
SELECT fragment_keys FROM hashtree.frag_table WHERE parent = 'mr_first'::regclass;
SELECT count(*) AS parent_keys FROM pg_constraint WHERE conrelid = 'mr_first'::regclass;
SELECT n_fragments, moved_rows FROM hashtree.del_frag('mr_first');
SELECT count(*), sum(id) FROM mr_first;
DROP TABLE mr_first;
-- an identity column: values kept, there and back
CREATE TABLE mr_id (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text) PARTITION BY HASH (id);
SELECT * FROM hashtree.frag_init('mr_id', 2);
INSERT INTO mr_id (v) SELECT 'r' || g FROM generate_series(1, 50) g;
SELECT hashtree.move_frag('mr_id', 2, 'loop', 'block_writes') > 0 AS there,
	   hashtree.move_frag('mr_id', 2, NULL, 'block_writes') > 0 AS back;
INSERT INTO mr_id (v) VALUES ('after');
SELECT count(*), count(DISTINCT id), max(id) FROM mr_id;
-- frag_init places the fragments round-robin (NULL: here); a wrong name
-- creates nothing
CREATE TABLE mr_fi (id int PRIMARY KEY, v text) PARTITION BY HASH (id);
SELECT pg_temp.err($$SELECT * FROM hashtree.frag_init('mr_fi', 3, nodes => '{loop,nobody}')$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.frag_init('mr_fi', 3, nodes => '{}')$$);
SELECT pg_temp.err($$SELECT * FROM hashtree.frag_init('mr_fi', 3, nodes => '{{loop}}')$$);
SELECT count(*) AS partitions FROM pg_inherits WHERE inhparent = 'mr_fi'::regclass;
SELECT * FROM hashtree.frag_init('mr_fi', 3, nodes => ARRAY[NULL, 'loop']);
SELECT fragment, relation, node = hashtree.node_name() AS here FROM hashtree.fragments
 WHERE "table" = 'mr_fi'::regclass;
INSERT INTO mr_fi SELECT g, 'x' FROM generate_series(1, 100) g;
SELECT count(*) FROM mr_fi;
-- a copy that does not come out equal is no move: the "peer" changes
-- rows as they arrive (an event trigger there puts a trigger on its new
-- tables), the digests differ, nothing changes
CREATE FUNCTION mr_mangle() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN NEW.v := NEW.v || '!'; RETURN NEW; END $$;
CREATE FUNCTION mr_mangle_new_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
	FOR r IN SELECT * FROM pg_event_trigger_ddl_commands()
			  WHERE schema_name = 'hashtree_fragments' AND object_type = 'table' LOOP
		EXECUTE format('CREATE TRIGGER mr_mangle BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION public.mr_mangle()',
					   r.object_identity);
	END LOOP;
END $$;
CREATE EVENT TRIGGER mr_mangle ON ddl_command_end WHEN TAG IN ('CREATE TABLE')
	EXECUTE FUNCTION mr_mangle_new_tables();
CREATE TEMP TABLE mr_before2 AS SELECT * FROM mr_state;
SELECT pg_temp.err($$SELECT hashtree.move_frag('mt', 3, 'loop', 'block_writes')$$);
SELECT s = b AS unchanged FROM mr_state s, mr_before2 b;
DROP EVENT TRIGGER mr_mangle;
DROP FUNCTION mr_mangle_new_tables();
-- moving to where it is: nothing
SELECT hashtree.move_frag('mt', 2, 'loop', 'block_writes');
-- and back: the peer's table is left to the next move's cleanup
SELECT hashtree.move_frag('mt', 2, NULL, 'block_writes') AS moved;
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows FROM mr_state;
SELECT count(*) AS remote_tables FROM pg_tables WHERE schemaname = 'hashtree_fragments';
SELECT conname FROM pg_constraint WHERE conrelid = 'mt_frag2'::regclass;
-- the next move cleans up (online, fragment 4 there and back)
SELECT hashtree.move_frag('mt', 4, 'loop') AS moved;
SELECT count(*) AS remote_tables FROM pg_tables WHERE schemaname = 'hashtree_fragments';
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows FROM mr_state;
SELECT hashtree.move_frag('mt', 4, NULL) AS moved;
SELECT op, op_phase, op_error FROM hashtree.frag_table WHERE parent = 'mt'::regclass;
SELECT placement, rows = (SELECT rows FROM mr_before) AS same_rows FROM mr_state;
-- every fragment here again: the key can go back to the parent without a
-- build, and the columns can change
ALTER TABLE mt ADD PRIMARY KEY (id);
ALTER TABLE mt ADD COLUMN extra int;
ALTER TABLE mt DROP COLUMN extra;
SELECT count(*) AS attached_keys FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
 WHERE i.inhparent = 'mt_pkey'::regclass;

SELECT hashtree.untrack('mr_tr');
DROP VIEW mr_state;
DROP TABLE mt, mr_fi, mr_id, mr_ck, mr_gen, mr_dom, mr_nokey, mr_fk, mr_ux, mr_referencing, mr_refd, mr_tr, mr_plain;
-- no fragment there any more: the peer can go
SELECT hashtree.drop_peer('loop');
DROP FUNCTION mr_noop();
DROP FUNCTION mr_mangle();
DROP DOMAIN mr_posint;
DROP OWNED BY ht_mover;
DROP ROLE ht_mover;
