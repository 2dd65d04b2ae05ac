--
-- Fragmented tables against hostile users (issue 10): operators and
-- functions shadowed in the caller's search_path, a table owner's code run
-- by a fragment copy, odd identifiers, planning that would run user code,
-- the capture trigger fired where it does not belong.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS hashtree;
DROP ROLE IF EXISTS ht_evil;
DROP ROLE IF EXISTS ht_nologin;
DROP ROLE IF EXISTS ht_nobody;
RESET client_min_messages;

CREATE ROLE ht_evil LOGIN;
CREATE ROLE ht_nologin NOLOGIN;
CREATE ROLE ht_nobody LOGIN;
CREATE SCHEMA evil AUTHORIZATION ht_evil;
CREATE SCHEMA nol AUTHORIZATION ht_nologin;

SET ROLE ht_evil;
-- what every hostile function saw: who ran it, and for what
CREATE TABLE evil.seen (who text, what text);
GRANT INSERT, SELECT ON evil.seen TO PUBLIC;
-- the payload: a superuser running it makes ht_evil superuser
CREATE FUNCTION evil.payload(what text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO evil.seen VALUES (current_user, what);
	IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
		EXECUTE 'ALTER ROLE ht_evil SUPERUSER';
	END IF;
END $$;
-- operators with an exact match where pg_catalog has none, or a better one
CREATE FUNCTION evil.eq_rc_oid(regclass, oid) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('=(regclass,oid)'); RETURN $1::oid OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = evil.eq_rc_oid);
CREATE FUNCTION evil.eq_oid_rc(oid, regclass) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('=(oid,regclass)'); RETURN $1 OPERATOR(pg_catalog.=) $2::oid; END $$;
CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = regclass, FUNCTION = evil.eq_oid_rc);
CREATE FUNCTION evil.eq_rc_int8(regclass, int8) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('=(regclass,int8)'); RETURN $1::oid::int8 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = regclass, RIGHTARG = int8, FUNCTION = evil.eq_rc_int8);
-- same signatures as pg_catalog's: they win when evil comes first in the path
CREATE FUNCTION evil.eq_oid(oid, oid) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('=(oid,oid)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.eq_oid);
CREATE FUNCTION evil.ne_oid(oid, oid) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('<>(oid,oid)'); RETURN $1 OPERATOR(pg_catalog.<>) $2; END $$;
CREATE OPERATOR evil.<> (LEFTARG = oid, RIGHTARG = oid, FUNCTION = evil.ne_oid);
CREATE FUNCTION evil.eq_text(text, text) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('=(text,text)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.eq_text);
CREATE FUNCTION evil.eq_int4(int4, int4) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('=(int4,int4)'); RETURN $1 OPERATOR(pg_catalog.=) $2; END $$;
CREATE OPERATOR evil.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = evil.eq_int4);
CREATE FUNCTION evil.cnt(int8) RETURNS int8 LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('count(*)'); RETURN $1 OPERATOR(pg_catalog.+) 1; END $$;
CREATE AGGREGATE evil.count(*) (SFUNC = evil.cnt, STYPE = int8, INITCOND = '0');
CREATE FUNCTION evil.quote_ident(text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('quote_ident'); RETURN pg_catalog.quote_ident($1); END $$;
CREATE FUNCTION evil.starts_with(text, text) RETURNS bool LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('starts_with'); RETURN pg_catalog.starts_with($1, $2); END $$;

-- the table owner's code, in the fragmented table: it records who runs it
CREATE FUNCTION evil.owner_code(what text, v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN PERFORM evil.payload(what); RETURN v; END $$;
CREATE DOMAIN evil.checked_int AS int CHECK (evil.owner_code('domain', VALUE) IS NOT NULL);
CREATE TABLE evil.hp (
	id int PRIMARY KEY,
	v evil.checked_int,
	g int GENERATED ALWAYS AS (evil.owner_code('generated', id)) STORED,
	CHECK (evil.owner_code('check', id) IS NOT NULL)
) PARTITION BY HASH (id);
CREATE INDEX hp_expr ON evil.hp ((evil.owner_code('index', id)));
-- a trigger on the parent (cloned onto every fragment)
CREATE FUNCTION evil.trig() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM evil.payload('trigger ' || TG_NAME); RETURN NEW; END $$;
CREATE TRIGGER parent_trig BEFORE INSERT OR UPDATE ON evil.hp FOR EACH ROW EXECUTE FUNCTION evil.trig();

-- hazard 2: the registry writes under the caller's path, with evil in it
SET search_path = "$user", public, evil;
SELECT * FROM hashtree.frag_init('evil.hp', 2);
-- the fragments' own triggers, one per enabled state
CREATE TRIGGER own_origin BEFORE INSERT OR UPDATE ON evil.hp_frag1 FOR EACH ROW EXECUTE FUNCTION evil.trig();
CREATE TRIGGER own_always BEFORE INSERT OR UPDATE ON evil.hp_frag1 FOR EACH ROW EXECUTE FUNCTION evil.trig();
CREATE TRIGGER own_disabled BEFORE INSERT OR UPDATE ON evil.hp_frag1 FOR EACH ROW EXECUTE FUNCTION evil.trig();
CREATE TRIGGER own_replica BEFORE INSERT OR UPDATE ON evil.hp_frag1 FOR EACH ROW EXECUTE FUNCTION evil.trig();
ALTER TABLE evil.hp_frag1 ENABLE ALWAYS TRIGGER own_always;
ALTER TABLE evil.hp_frag1 DISABLE TRIGGER own_disabled;
ALTER TABLE evil.hp_frag1 ENABLE REPLICA TRIGGER own_replica;
INSERT INTO evil.hp (id, v) SELECT g, g FROM generate_series(1, 200) g;
TRUNCATE evil.seen;
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('evil.hp', 'block_writes');
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('evil.hp', 'online');
SELECT n_fragments FROM hashtree.del_frag('evil.hp', 'online');
SELECT n_fragments FROM hashtree.del_frag('evil.hp', 'block_writes');
SET search_path = evil, pg_catalog;
SELECT n_fragments FROM hashtree.add_frag('evil.hp', 'block_writes');
SELECT n_fragments FROM hashtree.add_frag('evil.hp', 'online');
RESET search_path;
-- the owner's code ran (as its owner); no trigger fired, no shadowed operator was used
SELECT who, what, count(*) > 0 AS ran FROM evil.seen GROUP BY 1, 2 ORDER BY 1, 2;
RESET ROLE;

-- the same operations by a superuser, with evil first in the path
TRUNCATE evil.seen;
SET search_path = evil, "$user", public, pg_catalog;
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('evil.hp', 'block_writes');
SELECT n_fragments, moved_rows > 0 AS moved FROM hashtree.add_frag('evil.hp', 'online');
SELECT n_fragments FROM hashtree.del_frag('evil.hp', 'online');
SELECT n_fragments FROM hashtree.del_frag('evil.hp', 'block_writes');
SELECT n_fragments FROM hashtree.frag_state('evil.hp');
RESET search_path;
-- every piece of the owner's code ran as ht_evil, nothing as the superuser
SELECT who, what, count(*) > 0 AS ran FROM evil.seen GROUP BY 1, 2 ORDER BY 1, 2;
SELECT rolsuper FROM pg_roles WHERE rolname = 'ht_evil';
-- the table is whole, its rows where routing puts them, the fragments the owner's
SELECT count(*) AS rows, count(DISTINCT id) AS ids,
	   count(*) FILTER (WHERE g <> id) AS bad_generated,
	   count(*) FILTER (WHERE hashtree.key_to_frag_number('evil.hp', id) <>
					   (SELECT fragment FROM hashtree.fragments f WHERE f.relation = hp.tableoid)) AS misplaced
  FROM evil.hp;
SELECT DISTINCT pg_get_userbyid(c.relowner) AS fragment_owner
  FROM hashtree.fragments f JOIN pg_class c ON c.oid = f.relation WHERE f."table" = 'evil.hp'::regclass;
-- the fragment's own triggers followed it, each in its state; parent's clones on all
SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = 'evil'::regnamespace AND c.relkind = 'r' ORDER BY 1, 2;
-- and they fire on the owner's writes again (own_origin, own_always, the parent's)
SET ROLE ht_evil;
TRUNCATE evil.seen;
UPDATE evil.hp SET v = v WHERE hashtree.key_to_frag_number('evil.hp', id) = 1 AND id = (
	SELECT min(id) FROM evil.hp WHERE hashtree.key_to_frag_number('evil.hp', id) = 1);
SELECT what, count(*) FROM evil.seen WHERE what LIKE 'trigger%' GROUP BY 1 ORDER BY 1;

-- match_spec_to_frag_numbers plans only built-in code
TRUNCATE evil.seen;
CREATE FUNCTION evil.stable_f(int) RETURNS int LANGUAGE plpgsql STABLE AS $$
BEGIN PERFORM evil.payload('stable_f'); RETURN $1; END $$;
CREATE FUNCTION evil.immutable_f(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN PERFORM evil.payload('immutable_f'); RETURN $1; END $$;
CREATE FUNCTION evil.sql_f(int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
CREATE DOMAIN evil.small AS int CHECK (VALUE < 1000);
SELECT hashtree.match_spec_to_frag_numbers('evil.hp', 'id = evil.stable_f(7)');
SELECT hashtree.match_spec_to_frag_numbers('evil.hp', 'id = evil.immutable_f(7)');
SELECT hashtree.match_spec_to_frag_numbers('evil.hp', 'id = evil.sql_f(7)');
SELECT hashtree.match_spec_to_frag_numbers('evil.hp', 'id OPERATOR(evil.=) 7');
SELECT hashtree.match_spec_to_frag_numbers('evil.hp', 'id = 7::evil.small');
SELECT hashtree.match_spec_to_frag_numbers('evil.hp', 'id IN (1, 2) AND v IS NOT NULL')
	   = ARRAY(SELECT DISTINCT hashtree.key_to_frag_number('evil.hp', k) FROM unnest(ARRAY[1, 2]) k ORDER BY 1)
	   AS builtin_ok;
SELECT count(*) AS user_code_run_while_planning FROM evil.seen;
RESET ROLE;

-- key_to_frag_number: needs SELECT; sees an add_frag of its own transaction
GRANT USAGE ON SCHEMA evil TO ht_nobody;
SET ROLE ht_nobody;
SELECT hashtree.key_to_frag_number('evil.hp', 7);
RESET ROLE;
GRANT SELECT ON evil.hp TO ht_nobody;
SET ROLE ht_nobody;
SELECT hashtree.key_to_frag_number('evil.hp', 7) BETWEEN 1 AND 4 AS with_select;
RESET ROLE;
CREATE TEMP TABLE kf (step int, k int, said int, actual int);
DO $$
DECLARE
	t regclass := 'evil.hp';
	said int;
BEGIN
	FOR step IN 1..3 LOOP
		FOR k IN 1..200 LOOP
			-- (a simple expression: one call site, its cache kept across the steps)
			said := hashtree.key_to_frag_number(t, k);
			INSERT INTO kf SELECT step, k, said, (SELECT f.fragment FROM evil.hp h
				   JOIN hashtree.fragments f ON f.relation = h.tableoid WHERE h.id = k);
		END LOOP;
		PERFORM hashtree.add_frag(t, 'block_writes');
	END LOOP;
END $$;
SELECT step, count(*) AS keys, count(*) FILTER (WHERE said = actual) AS right,
	   count(*) FILTER (WHERE actual = (SELECT max(actual) FROM kf m WHERE m.step = kf.step)) > 0 AS newest_used
  FROM kf GROUP BY step ORDER BY step;

-- online add_frag by a role that cannot log in: refused up front
SET ROLE ht_nologin;
CREATE TABLE nol.t (id int PRIMARY KEY) PARTITION BY HASH (id);
SELECT n_fragments FROM hashtree.frag_init('nol.t', 1);
INSERT INTO nol.t SELECT generate_series(1, 10);
SELECT * FROM hashtree.add_frag('nol.t', 'online');
SELECT n_fragments FROM hashtree.add_frag('nol.t', 'block_writes');
RESET ROLE;

-- _frag_capture acts only as the capture trigger of an operation under way
SET ROLE ht_evil;
CREATE TABLE evil.victim_log (id int, hashtree_truncated bool);
CREATE TABLE evil.plain (id int);
RESET ROLE;
-- (created by the superuser: the function's own checks are tested, not its grant)
CREATE TRIGGER hashtree_frag_capture AFTER INSERT ON evil.plain
	FOR EACH ROW EXECUTE FUNCTION hashtree._frag_capture();
CREATE TRIGGER spy AFTER INSERT ON evil.hp_frag1
	FOR EACH ROW EXECUTE FUNCTION hashtree._frag_capture('evil.victim_log', 'id');
CREATE TRIGGER hashtree_frag_capture AFTER INSERT ON evil.hp_frag2
	FOR EACH ROW EXECUTE FUNCTION hashtree._frag_capture();
CREATE TRIGGER hashtree_frag_capture_truncate AFTER TRUNCATE ON evil.hp_frag3
	FOR EACH STATEMENT EXECUTE FUNCTION hashtree._frag_capture();
SET ROLE ht_evil;
INSERT INTO evil.plain VALUES (1);
INSERT INTO evil.hp_frag1 (id, v) SELECT id, 1 FROM generate_series(1000, 2000) id
 WHERE hashtree.key_to_frag_number('evil.hp', id) = 1 LIMIT 1;
INSERT INTO evil.hp_frag2 (id, v) SELECT id, 1 FROM generate_series(1000, 2000) id
 WHERE hashtree.key_to_frag_number('evil.hp', id) = 2 LIMIT 1;
TRUNCATE evil.hp_frag3;
SELECT hashtree._frag_capture();
SELECT (SELECT count(*) FROM evil.victim_log) AS logged, (SELECT count(*) FROM evil.plain) AS plain,
	   (SELECT count(*) FROM evil.hp WHERE id >= 1000) AS inserted,
	   (SELECT count(*) FROM evil.hp_frag3) > 0 AS frag3_kept;
RESET ROLE;
DROP TRIGGER hashtree_frag_capture ON evil.plain;
DROP TRIGGER spy ON evil.hp_frag1;
DROP TRIGGER hashtree_frag_capture ON evil.hp_frag2;
DROP TRIGGER hashtree_frag_capture_truncate ON evil.hp_frag3;

-- deferrable foreign keys: NOT DEFERRABLE while rows move (a security-restricted
-- operation may not queue deferred triggers), their deferral back afterwards
CREATE TABLE fk_parent (id int PRIMARY KEY);
INSERT INTO fk_parent SELECT generate_series(1, 100);
CREATE TABLE fk_child (id int PRIMARY KEY, d int REFERENCES fk_parent DEFERRABLE INITIALLY DEFERRED,
					   i int REFERENCES fk_parent DEFERRABLE, n int REFERENCES fk_parent) PARTITION BY HASH (id);
SELECT n_fragments FROM hashtree.frag_init('fk_child', 1);
INSERT INTO fk_child SELECT g, g, g, g FROM generate_series(1, 100) g;
SELECT n_fragments FROM hashtree.add_frag('fk_child', 'block_writes');
SELECT n_fragments FROM hashtree.add_frag('fk_child', 'online');
SELECT n_fragments FROM hashtree.del_frag('fk_child', 'online');
SELECT c.conname, c.condeferrable, c.condeferred, count(*) AS fragments, bool_and(c.conparentid <> 0) AS linked
  FROM pg_constraint c JOIN hashtree.fragments f ON f.relation = c.conrelid
 WHERE f."table" = 'fk_child'::regclass AND c.contype = 'f' GROUP BY 1, 2, 3 ORDER BY 1;
BEGIN;
INSERT INTO fk_child VALUES (1000, 1000, 1, 1);
INSERT INTO fk_parent VALUES (1000);
COMMIT;
INSERT INTO fk_child VALUES (1001, 1, 1001, 1);
SELECT count(*) FROM fk_child;
DROP TABLE fk_child, fk_parent;

-- names with quotes, spaces, upper case and unicode: frag_activate (serial and
-- identity sequences), add_frag and del_frag in both modes, the lookups
CREATE SCHEMA "Sch'ema ü";
CREATE TABLE "Sch'ema ü"."Ta'ble Ä b" (
	"I'd" serial PRIMARY KEY,
	"Ident ity" int GENERATED ALWAYS AS IDENTITY,
	"V'al" text NOT NULL
);
CREATE INDEX "Ix'v ä" ON "Sch'ema ü"."Ta'ble Ä b" ("V'al");
INSERT INTO "Sch'ema ü"."Ta'ble Ä b" ("V'al") SELECT 'v' || g FROM generate_series(1, 100) g;
SELECT * FROM hashtree.frag_activate('"Sch''ema ü"."Ta''ble Ä b"');
SELECT n_fragments FROM hashtree.add_frag('"Sch''ema ü"."Ta''ble Ä b"', 'block_writes');
SELECT n_fragments FROM hashtree.add_frag('"Sch''ema ü"."Ta''ble Ä b"', 'online');
SELECT n_fragments FROM hashtree.add_frag('"Sch''ema ü"."Ta''ble Ä b"', 'online');
SELECT n_fragments FROM hashtree.del_frag('"Sch''ema ü"."Ta''ble Ä b"', 'online');
INSERT INTO "Sch'ema ü"."Ta'ble Ä b" ("V'al") VALUES ('after');
SELECT count(*), max("I'd") AS max_id, max("Ident ity") AS max_identity,
	   count(*) FILTER (WHERE hashtree.key_to_frag_number('"Sch''ema ü"."Ta''ble Ä b"', "I'd") <>
					   (SELECT fragment FROM hashtree.fragments f WHERE f.relation = t.tableoid)) AS misplaced
  FROM "Sch'ema ü"."Ta'ble Ä b" t;
SELECT pg_get_serial_sequence('"Sch''ema ü"."Ta''ble Ä b"', 'I''d') AS serial_owned_by_parent;
SELECT relation::text FROM hashtree.fragments WHERE "table" = '"Sch''ema ü"."Ta''ble Ä b"'::regclass;
SELECT c.relname AS fragment, i.relname AS index FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class c ON c.oid = x.indrelid
 WHERE c.relnamespace = '"Sch''ema ü"'::regnamespace AND c.relispartition ORDER BY 1, 2;
SELECT hashtree.match_spec_to_frag_numbers('"Sch''ema ü"."Ta''ble Ä b"', '"I''d" = 5')
	   = ARRAY[hashtree.key_to_frag_number('"Sch''ema ü"."Ta''ble Ä b"', 5)] AS pruned;
-- no working tables, logs or indexes left (identity sequences keep LIKE's names)
SELECT count(*) AS leftovers FROM pg_class WHERE relname LIKE 'hashtree\_frag\_%' AND relkind <> 'S';

-- nobody became superuser
SELECT rolname, rolsuper FROM pg_roles WHERE rolname IN ('ht_evil', 'ht_nologin', 'ht_nobody') ORDER BY 1;

SET client_min_messages = warning;
DROP SCHEMA "Sch'ema ü" CASCADE;
DROP SCHEMA evil CASCADE;
DROP SCHEMA nol CASCADE;
RESET client_min_messages;
DROP ROLE ht_evil;
DROP ROLE ht_nologin;
DROP ROLE ht_nobody;
