--
-- Hostile users: code that runs with the extension's rights never resolves
-- names the caller controls, trigger functions work only on tracked tables,
-- tracking cannot be switched off behind hashtree's back (issue 10)
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;
CREATE EXTENSION hashtree;
DROP SCHEMA IF EXISTS evil CASCADE;
DROP SCHEMA IF EXISTS "Shop Floor" CASCADE;
DROP ROLE IF EXISTS regress_evil;
RESET client_min_messages;
CREATE ROLE regress_evil;
CREATE SCHEMA evil AUTHORIZATION regress_evil;

-- the attacker's toolbox: functions, aggregates and operators that become
-- superuser when run by one, and log who ran them
SET ROLE regress_evil;
CREATE TABLE evil.log (who name, what text);
GRANT INSERT ON evil.log TO PUBLIC;
CREATE FUNCTION evil.pwn(what text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO evil.log VALUES (current_user, what);
	IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
		ALTER ROLE regress_evil SUPERUSER;
	END IF;
	RETURN true;
END $$;
CREATE FUNCTION evil.max_step(int, int) RETURNS int LANGUAGE sql
	AS $$ SELECT CASE WHEN evil.pwn('max') THEN CASE WHEN $1 > $2 THEN $1 ELSE $2 END END $$;
CREATE AGGREGATE evil.max(int) (sfunc = evil.max_step, stype = int);
CREATE FUNCTION evil.count_step(bigint) RETURNS bigint LANGUAGE sql
	AS $$ SELECT CASE WHEN evil.pwn('count') THEN coalesce($1, 0) + 1 END $$;
CREATE AGGREGATE evil.count(*) (sfunc = evil.count_step, stype = bigint);
CREATE FUNCTION evil.oideq(oid, int4) RETURNS boolean LANGUAGE sql
	AS $$ SELECT evil.pwn('=(oid,int4)') $$;
CREATE OPERATOR evil.= (leftarg = oid, rightarg = int4, function = evil.oideq);
CREATE FUNCTION evil.regeq(regclass, oid) RETURNS boolean LANGUAGE sql
	AS $$ SELECT evil.pwn('=(regclass,oid)') $$;
CREATE OPERATOR evil.= (leftarg = regclass, rightarg = oid, function = evil.regeq);
CREATE FUNCTION evil.unnest(int4[]) RETURNS SETOF int4 LANGUAGE sql
	AS $$ SELECT x FROM pg_catalog.unnest($1) x WHERE evil.pwn('unnest') $$;
CREATE TABLE evil.t (id int PRIMARY KEY);
RESET ROLE;

-- hashtree's trigger functions refuse any table hashtree does not track
-- (EXECUTE stays granted: PostgreSQL checks it when a table owner creates a
-- partition, which clones the row trigger)
SET ROLE regress_evil;
CREATE TRIGGER hashtree_track AFTER INSERT ON evil.t
	FOR EACH ROW EXECUTE FUNCTION hashtree._track_row();
CREATE TRIGGER hashtree_track_truncate AFTER TRUNCATE ON evil.t
	FOR EACH STATEMENT EXECUTE FUNCTION hashtree._track_truncate();
INSERT INTO evil.t VALUES (1);
TRUNCATE evil.t;
DROP TRIGGER hashtree_track ON evil.t;
DROP TRIGGER hashtree_track_truncate ON evil.t;
RESET ROLE;
SELECT count(*) AS logged_keys FROM hashtree.dirty_key WHERE pa = 'evil';

-- a writer of a tracked table with the attacker's schema first in its path,
-- in a new session (nothing cached): the row trigger resolves nothing there
CREATE TABLE public.shared (id int PRIMARY KEY, v text);
SELECT hashtree.track('public.shared');
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON public.shared TO regress_evil;
\c
SET ROLE regress_evil;
SET search_path = evil, pg_catalog;
INSERT INTO public.shared VALUES (1, 'a'), (2, 'b');
UPDATE public.shared SET v = 'c' WHERE id = 1;
DELETE FROM public.shared WHERE id = 2;
TRUNCATE public.shared;
INSERT INTO public.shared VALUES (3, 'd');
RESET search_path;
RESET ROLE;
SELECT count(*) AS logged_keys FROM hashtree.dirty_key WHERE pb = 'shared';

-- the extension's SQL never meets the attacker's operators, even with the
-- attacker's schema in front of pg_catalog
SELECT hashtree.add_peer('p1', 'host=/nonexistent port=1 dbname=x password=secret');
GRANT SELECT ON hashtree.peers TO regress_evil;
SET ROLE regress_evil;
SET search_path = evil, pg_catalog;
SELECT name, conninfo FROM hashtree.peers;
RESET search_path;
RESET ROLE;
-- (a superuser with such a path is on its own: the statements below name
-- pg_catalog's functions; hashtree's own SQL must not need to)
SET search_path = evil, pg_catalog, public;
SELECT pg_catalog.count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
						FROM pg_catalog.generate_series(0, 7) p) s;
SELECT pg_catalog.count(*) FROM (SELECT hashtree.reset(p) FROM pg_catalog.generate_series(0, 7) p) s;
SELECT relation, rows, state FROM hashtree.tracked;
SELECT pg_catalog.count(*) FROM (SELECT * FROM hashtree.check_tree(0)) c;
RESET search_path;

-- nobody became superuser, and the attacker's code never ran
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_evil';
SELECT who, what FROM evil.log;

-- a lock belongs to a client backend (an auxiliary process never exits)
DO $$
BEGIN
	PERFORM hashtree.lock(NULL, 0, (SELECT pid FROM pg_stat_activity
									 WHERE backend_type = 'checkpointer'));
EXCEPTION WHEN invalid_parameter_value THEN
	RAISE NOTICE 'lock for the checkpointer: %', regexp_replace(SQLERRM, '[0-9]+', 'N');
END $$;

-- regclass arguments that name no relation: undefined_table, not XX000
DO $$
BEGIN
	PERFORM hashtree.track(0);
EXCEPTION WHEN undefined_table THEN
	RAISE NOTICE 'track(0): undefined_table';
END $$;
DO $$
BEGIN
	PERFORM hashtree.untrack(0);
EXCEPTION WHEN undefined_table THEN
	RAISE NOTICE 'untrack(0): undefined_table';
END $$;

-- row_hash is no oracle for columns the caller cannot read
CREATE TABLE public.salted (id int PRIMARY KEY, v text, salt text);
GRANT SELECT (id, v) ON public.salted TO regress_evil;
GRANT EXECUTE ON FUNCTION hashtree.row_hash(regclass, record),
	hashtree.row_key(regclass, record) TO regress_evil;
SET ROLE regress_evil;
SELECT hashtree.row_hash('public.salted', ROW(1, 'v', 'guess')::public.salted);
SELECT hashtree.row_key('public.salted', ROW(1, 'v', 'guess')::public.salted);
RESET ROLE;
GRANT SELECT ON public.salted TO regress_evil;
SET ROLE regress_evil;
SELECT length(hashtree.row_hash('public.salted', ROW(1, 'v', 'guess')::public.salted));
RESET ROLE;

-- tracking cannot be switched off behind hashtree's back: a partitioned
-- tracked table in a schema with an awkward name
CREATE SCHEMA "Shop Floor";
CREATE TABLE "Shop Floor"."Orders" (id int PRIMARY KEY, v text) PARTITION BY HASH (id);
CREATE TABLE "Shop Floor"."Orders 0" PARTITION OF "Shop Floor"."Orders"
	FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE "Shop Floor"."Orders 1" PARTITION OF "Shop Floor"."Orders"
	FOR VALUES WITH (MODULUS 2, REMAINDER 1);
INSERT INTO "Shop Floor"."Orders" SELECT g, 'v' || g FROM generate_series(1, 100) g;
SELECT hashtree.track('"Shop Floor"."Orders"');
ALTER TRIGGER hashtree_track ON "Shop Floor"."Orders" RENAME TO quiet;
ALTER TRIGGER hashtree_track_truncate ON "Shop Floor"."Orders 1" RENAME TO quiet;
ALTER TABLE "Shop Floor"."Orders 0" DISABLE TRIGGER hashtree_track;
ALTER TABLE "Shop Floor"."Orders 0" DISABLE TRIGGER ALL;
ALTER TABLE "Shop Floor"."Orders" DISABLE TRIGGER hashtree_track_truncate;
ALTER TABLE "Shop Floor"."Orders" ENABLE REPLICA TRIGGER hashtree_track;
ALTER TABLE "Shop Floor"."Orders" ENABLE TRIGGER hashtree_track;
DROP TRIGGER hashtree_track_truncate ON "Shop Floor"."Orders 1";
ALTER SCHEMA "Shop Floor" RENAME TO "Back Office";
SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
						FROM generate_series(0, 7) p) s;
SELECT relation, rows, state FROM hashtree.tracked WHERE table_name = 'Orders';
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
 WHERE tgname LIKE 'hashtree%' AND tgrelid::regclass::text LIKE '"Shop Floor"%' ORDER BY 1, 2;
-- not under session_replication_role = replica either (the event triggers
-- fire ALWAYS)
SET session_replication_role = replica;
DROP TRIGGER hashtree_track_truncate ON "Shop Floor"."Orders 1";
ALTER TABLE "Shop Floor"."Orders" DISABLE TRIGGER hashtree_track;
RESET session_replication_role;
-- what would make the trees lie is refused: unlogged (a crash empties it),
-- forced row level security (the fold reads as the owner), inheritance
ALTER TABLE "Shop Floor"."Orders 1" SET UNLOGGED;
ALTER TABLE public.shared SET UNLOGGED;
ALTER TABLE public.shared FORCE ROW LEVEL SECURITY;
CREATE TABLE public.shared_child (extra int) INHERITS (public.shared);
CREATE TABLE public.other_child (id int NOT NULL, v text);
ALTER TABLE public.other_child INHERIT public.shared;
DROP TABLE public.other_child;
-- values rewritten without a change of shape are hashed again
CREATE TYPE "Shop Floor".mood AS ENUM ('happy', 'sad');
CREATE TABLE "Shop Floor".moods (id int PRIMARY KEY, m "Shop Floor".mood);
INSERT INTO "Shop Floor".moods VALUES (1, 'happy'), (2, 'sad');
SELECT hashtree.track('"Shop Floor".moods');
ALTER TABLE "Shop Floor".moods ALTER COLUMN id TYPE int USING id + 1000;
ALTER TYPE "Shop Floor".mood RENAME VALUE 'happy' TO 'glad';
SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
						FROM generate_series(0, 7) p) s;
SELECT r.id, e.hash = hashtree.row_hash('"Shop Floor".moods', r) AS hash_ok
  FROM "Shop Floor".moods r
  LEFT JOIN hashtree.leaf_entry e ON e.pb = 'moods' AND e.key = hashtree.row_key('"Shop Floor".moods', r)
 ORDER BY r.id;
SELECT count(*) AS entries FROM hashtree.leaf_entry WHERE pb = 'moods';
SELECT hashtree.untrack('"Shop Floor".moods');

-- a partition attached later gets its TRUNCATE trigger too
CREATE TABLE "Shop Floor".regions (id int, r text, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
CREATE TABLE "Shop Floor".regions_eu PARTITION OF "Shop Floor".regions FOR VALUES IN ('eu');
SELECT hashtree.track('"Shop Floor".regions');
CREATE TABLE "Shop Floor"."Regions Asia" (LIKE "Shop Floor".regions);
INSERT INTO "Shop Floor"."Regions Asia" VALUES (1, 'asia');
SET client_min_messages = warning;
ALTER TABLE "Shop Floor".regions ATTACH PARTITION "Shop Floor"."Regions Asia" FOR VALUES IN ('asia');
RESET client_min_messages;
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
 WHERE tgname LIKE 'hashtree%' AND tgrelid::regclass::text LIKE '"Shop Floor".%egions%' ORDER BY 1, 2;
SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
						FROM generate_series(0, 7) p) s;
TRUNCATE "Shop Floor"."Regions Asia";
SELECT count(*) FILTER (WHERE key IS NULL) AS rehash_markers FROM hashtree.dirty_key WHERE pb = 'regions';
SELECT count(*) FROM (SELECT hashtree.lock(p), hashtree.update(p), hashtree.release_lock(p)
						FROM generate_series(0, 7) p) s;
SELECT relation, rows, state FROM hashtree.tracked WHERE table_name = 'regions';
SELECT hashtree.untrack('"Shop Floor".regions');
SELECT hashtree.untrack('"Shop Floor"."Orders"');
SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'hashtree%';

SET client_min_messages = warning;
DROP SCHEMA "Shop Floor" CASCADE;
DROP TABLE public.shared, public.salted;
DROP SCHEMA evil CASCADE;
SELECT hashtree.drop_peer('p1');
DROP OWNED BY regress_evil;
DROP ROLE regress_evil;
