--
-- Keys of tracked tables are canonical under the key's equality: values
-- the key index considers equal are one key, whatever their bytes
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;
CREATE EXTENSION hashtree;
DROP EXTENSION IF EXISTS citext;
CREATE EXTENSION citext;
RESET client_min_messages;

CREATE FUNCTION k_update_all() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p
$$;
CREATE FUNCTION k_trees_ok() RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM generate_series(0, 7) p, hashtree.check_tree(p)
$$;
-- entries of a tracked table that differ from its rows (empty = in step)
CREATE FUNCTION k_out_of_step(tbl regclass) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	EXECUTE format($q$
		WITH r AS (SELECT hashtree.row_key(%1$L, t) AS key, hashtree.row_hash(%1$L, t) AS hash FROM %1$s t),
			 e AS (SELECT key, hash, part FROM hashtree.leaf_entry WHERE pa = 'public' AND pb = %2$L)
		SELECT count(*) FROM r FULL JOIN e ON e.key = r.key
		 WHERE e.key IS NULL OR r.key IS NULL OR e.hash <> r.hash
			OR e.part <> hashtree.partition_of('public', %2$L, e.key)$q$,
		tbl, (SELECT relname FROM pg_class WHERE oid = tbl)) INTO n;
	RETURN n;
END $$;
CREATE FUNCTION k_entries(name text) RETURNS bigint LANGUAGE sql AS $$
	SELECT count(*) FROM hashtree.leaf_entry WHERE pa = 'public' AND pb = name
$$;

-- float8: -0 = 0, and every NaN is one NaN
CREATE TABLE fk (id float8 PRIMARY KEY, v int);
INSERT INTO fk VALUES (0, 1), ('NaN', 2), (1.5, 3);
SELECT hashtree.track('fk');
SELECT k_update_all();
UPDATE fk SET id = '-0' WHERE id = 0;
UPDATE fk SET id = -id WHERE id = 'NaN';			-- a NaN with the sign bit set
SELECT float8send(id) FROM fk WHERE v IN (1, 2) ORDER BY v;
SELECT k_update_all();
SELECT k_entries('fk') AS entries, k_out_of_step('fk') AS out_of_step, k_trees_ok() AS tree_mismatches;
UPDATE fk SET v = v + 10;
SELECT k_update_all();
SELECT k_entries('fk') AS entries, k_out_of_step('fk') AS out_of_step, k_trees_ok() AS tree_mismatches;
-- the key is the send form of the canonical value: 0, the one NaN; other
-- values as before
SELECT v, hashtree.row_key('fk', fk) FROM fk ORDER BY v;
SELECT hashtree.row_key('fk', fk) = '\x00000008'::bytea || float8send(id) AS send_form
  FROM fk WHERE v = 13;
SELECT hashtree.row_key('fk', ROW('-0', 0)::fk) = hashtree.row_key('fk', ROW(0, 0)::fk) AS zero,
	   hashtree.row_key('fk', ROW(-'NaN'::float8, 0)::fk) = hashtree.row_key('fk', ROW('NaN', 0)::fk) AS nan;
-- the row hash is of the values as they are (-0 is not 0 there)
SELECT hashtree.row_hash('fk', ROW('-0', 0)::fk) = hashtree.row_hash('fk', ROW(0, 0)::fk) AS same_hash;
DELETE FROM fk WHERE id = 0;						-- deleted through the other zero
SELECT k_update_all();
SELECT k_entries('fk') AS entries, k_out_of_step('fk') AS out_of_step;

-- float4 likewise
CREATE TABLE f4k (id float4 PRIMARY KEY);
INSERT INTO f4k VALUES ('-0'), ('NaN');
SELECT hashtree.track('f4k');
SELECT hashtree.row_key('f4k', f4k) FROM f4k ORDER BY id;
UPDATE f4k SET id = -id;
SELECT k_update_all();
SELECT k_entries('f4k') AS entries, k_out_of_step('f4k') AS out_of_step;

-- numeric: 1.0 = 1.00 = 1 (the display scale is not part of the key)
CREATE TABLE nk (id numeric PRIMARY KEY, v int);
INSERT INTO nk VALUES (1.0, 1), (2.50, 2), ('NaN', 3), ('Infinity', 4), ('-Infinity', 5), (0.000, 6),
	(-12345678.9012345678900, 7);
SELECT hashtree.track('nk');
UPDATE nk SET id = 1.00 WHERE id = 1;
UPDATE nk SET id = 2.5000 WHERE id = 2.5;
UPDATE nk SET id = 0 WHERE id = 0;
SELECT id FROM nk ORDER BY v;
SELECT k_update_all();
SELECT k_entries('nk') AS entries, k_out_of_step('nk') AS out_of_step, k_trees_ok() AS tree_mismatches;
SELECT v, hashtree.row_key('nk', nk) = '\x'::bytea || int4send(length(numeric_send(trim_scale(id)))) ||
	   numeric_send(trim_scale(id)) AS trimmed_send_form
  FROM nk ORDER BY v;
SELECT hashtree.row_key('nk', ROW(1.0, 0)::nk) = hashtree.row_key('nk', ROW(1, 0)::nk) AS one,
	   hashtree.row_key('nk', ROW(1.10, 0)::nk) = hashtree.row_key('nk', ROW(1.1, 0)::nk) AS one_one,
	   hashtree.row_key('nk', ROW(1.1, 0)::nk) = hashtree.row_key('nk', ROW(1.01, 0)::nk) AS differ;
-- a key with a typmod: decoded keys find the rows
CREATE TABLE nk2 (id numeric(10, 3) PRIMARY KEY, v int);
INSERT INTO nk2 VALUES (1, 1), (2.5, 2), (-3.125, 3);
SELECT hashtree.track('nk2');
UPDATE nk2 SET v = v + 1;
DELETE FROM nk2 WHERE id = 2.5;
SELECT k_update_all();
SELECT k_entries('nk2') AS entries, k_out_of_step('nk2') AS out_of_step;

-- interval: equal spans (30-day months, 24-hour days) are one key
CREATE TABLE ik (id interval PRIMARY KEY, v int);
INSERT INTO ik VALUES ('1 day', 1), ('1 mon', 2), ('-1 hour', 3), ('1 mon 1 day 25:00:00', 4),
	('-1 mon 5 days', 5), ('178000000 years', 6), ('-178000000 years -1 day', 7),
	('178956970 years 7 mons 100 days', 8), ('-178956970 years -8 mons -100 days -1 hour', 9);
SELECT hashtree.track('ik');
UPDATE ik SET id = '24 hours' WHERE v = 1;
UPDATE ik SET id = '30 days' WHERE v = 2;
UPDATE ik SET id = '-60 minutes' WHERE v = 3;
UPDATE ik SET id = '1 mon 2 days 1 hour' WHERE v = 4;
UPDATE ik SET id = '178956970 years 6 mons 130 days' WHERE v = 8;	-- months full: days
UPDATE ik SET id = '-178956970 years -7 mons -130 days -1 hour' WHERE v = 9;
SELECT k_update_all();
SELECT k_entries('ik') AS entries, k_out_of_step('ik') AS out_of_step;
-- the key is the send form of the span as (months, days, time)
SELECT v, id, hashtree.row_key('ik', ik) FROM ik ORDER BY v;
SELECT hashtree.row_key('ik', ROW('1 day', 0)::ik) = hashtree.row_key('ik', ROW('24 hours', 0)::ik) AS day,
	   hashtree.row_key('ik', ROW('1 year', 0)::ik) = hashtree.row_key('ik', ROW('360 days', 0)::ik) AS year,
	   hashtree.row_key('ik', ROW('-1 day', 0)::ik) = hashtree.row_key('ik', ROW('-1 mon 29 days', 0)::ik) AS neg,
	   hashtree.row_key('ik', ROW('1 day', 0)::ik) = hashtree.row_key('ik', ROW('1 day 1 microsecond', 0)::ik) AS differ;
-- a key with fields restricted by its typmod
CREATE TABLE ik2 (id interval day to minute PRIMARY KEY, v int);
INSERT INTO ik2 VALUES ('45 days 25:01', 1), ('-3 days', 2);
SELECT hashtree.track('ik2');
UPDATE ik2 SET v = v + 1;
SELECT k_update_all();
SELECT k_entries('ik2') AS entries, k_out_of_step('ik2') AS out_of_step;

-- bpchar without a length: trailing spaces do not count; char(n): padded,
-- its send form as before
CREATE TABLE bk (id bpchar PRIMARY KEY, v int);
INSERT INTO bk VALUES ('a  ', 1), ('b', 2);
SELECT hashtree.track('bk');
UPDATE bk SET id = 'a' WHERE v = 1;
UPDATE bk SET id = 'b ' WHERE v = 2;
SELECT k_update_all();
SELECT k_entries('bk') AS entries, k_out_of_step('bk') AS out_of_step;
SELECT v, hashtree.row_key('bk', bk) FROM bk ORDER BY v;
CREATE TABLE cnk (id char(3) PRIMARY KEY);
INSERT INTO cnk VALUES ('a');
SELECT hashtree.track('cnk');
SELECT hashtree.row_key('cnk', cnk) = '\x00000003'::bytea || bpcharsend(id) AS send_form FROM cnk;

-- keys whose equality is bitwise: their send form, as before
CREATE TABLE ek (i2 int2, i8 int8, t text, u uuid, d date, ts timestamptz, b bytea, c char(2),
	PRIMARY KEY (i2, i8, t, u, d, ts, b, c));
INSERT INTO ek VALUES (-2, 8000000000, 'clé', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2020-02-29',
	'2020-02-29 12:00:00+00', '\xdeadbeef', 'x');
SELECT hashtree.track('ek');
SELECT hashtree.row_key('ek', ek) = '\x00000002'::bytea || int2send(i2) || '\x00000008' || int8send(i8)
	   || '\x00000004' || textsend(t) || '\x00000010' || uuid_send(u) || '\x00000004' || date_send(d)
	   || '\x00000008' || timestamptz_send(ts) || '\x00000004' || byteasend(b)
	   || '\x00000002' || bpcharsend(c) AS send_forms
  FROM ek;
SELECT key_columns, signature FROM hashtree.tracked_table WHERE table_name IN ('ek', 'fk') ORDER BY 1;

-- a partitioned table with a float8 key
CREATE TABLE pk (id float8, r int, v int, PRIMARY KEY (id, r)) PARTITION BY LIST (r);
CREATE TABLE pk1 PARTITION OF pk FOR VALUES IN (1);
CREATE TABLE pk2 PARTITION OF pk FOR VALUES IN (2);
INSERT INTO pk VALUES (0, 1, 1), ('NaN', 2, 2);
SELECT hashtree.track('pk');
UPDATE pk SET id = '-0' WHERE id = 0;
UPDATE pk1 SET v = 5;
SELECT k_update_all();
SELECT k_entries('pk') AS entries, k_out_of_step('pk') AS out_of_step, k_trees_ok() AS tree_mismatches;

-- keys whose equality is not bitwise, without a canonical form: refused
CREATE COLLATION k_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
CREATE TABLE rk_ci (id text COLLATE k_ci PRIMARY KEY);
CREATE TABLE rk_citext (id citext PRIMARY KEY);
CREATE TABLE rk_jsonb (id jsonb PRIMARY KEY);
CREATE TABLE rk_range (id int4range PRIMARY KEY);
CREATE TABLE rk_multi (a int, b jsonb, PRIMARY KEY (a, b));
CREATE TABLE rk_idx (id text COLLATE k_ci NOT NULL);		-- the replica identity index decides
CREATE UNIQUE INDEX rk_idx_id ON rk_idx (id);
ALTER TABLE rk_idx REPLICA IDENTITY USING INDEX rk_idx_id;
SELECT hashtree.track('rk_ci');
SELECT hashtree.track('rk_citext');
SELECT hashtree.track('rk_jsonb');
SELECT hashtree.track('rk_range');
SELECT hashtree.track('rk_multi');
SELECT hashtree.track('rk_idx');
SELECT count(*) AS registered FROM hashtree.tracked_table WHERE table_name LIKE 'rk%';
SELECT count(*) AS triggers FROM pg_trigger WHERE tgname LIKE 'hashtree%' AND tgrelid::regclass::text LIKE 'rk%';
-- a text key under the same collation, deterministic: tracked
CREATE COLLATION k_cs (provider = icu, locale = 'und', deterministic = true);
CREATE TABLE tk (id text COLLATE k_cs PRIMARY KEY, v int);
INSERT INTO tk VALUES ('A', 1), ('b', 2);
SELECT hashtree.track('tk');
UPDATE tk SET v = v + 1;
SELECT k_update_all();
SELECT k_entries('tk') AS entries, k_out_of_step('tk') AS out_of_step;

-- schema changes that would make the key such a type are refused
ALTER TABLE tk ALTER COLUMN id TYPE text COLLATE k_ci;
ALTER TABLE tk ALTER COLUMN id TYPE citext;
ALTER TABLE fk ALTER COLUMN id TYPE jsonb USING to_jsonb(id);
SELECT pg_typeof(id), count(*) FROM fk GROUP BY 1;
SELECT key_columns, signature FROM hashtree.tracked_table WHERE table_name = 'tk';
-- ... those to a type with a canonical form re-hash the table
SET client_min_messages = warning;
ALTER TABLE tk ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE fk ALTER COLUMN id TYPE numeric USING id::numeric;
RESET client_min_messages;
SELECT signature FROM hashtree.tracked_table WHERE table_name = 'fk';
SELECT k_update_all();
SELECT k_entries('fk') AS entries, k_out_of_step('fk') AS out_of_step, k_trees_ok() AS tree_mismatches;
SELECT k_entries('tk') AS entries, k_out_of_step('tk') AS out_of_step;

-- row_key() of a table that is not tracked follows the same rules
CREATE TABLE plain_f (id float8 PRIMARY KEY);
SELECT hashtree.row_key('plain_f', ROW('-0')::plain_f) = hashtree.row_key('plain_f', ROW(0)::plain_f) AS same;
SELECT hashtree.row_key('rk_jsonb', ROW('{}')::rk_jsonb);

-- the row hash of valid UTF-8 text, to compare with a SQL_ASCII database
CREATE TABLE asc_t (k text PRIMARY KEY, v text, a text[]);
SELECT hashtree.row_hash('asc_t', ROW('clé', 'café', '{é,x}')::asc_t) AS utf8_hash \gset
SELECT current_database() AS regress_db \gset

-- a SQL_ASCII database: text is not checked on input there.  A key that is
-- not valid UTF-8 is refused when written; other columns are hashed as
-- stored (valid UTF-8 hashes as in a UTF-8 database), so no fold fails
SET client_min_messages = warning;
DROP DATABASE IF EXISTS regress_hashtree_ascii WITH (FORCE);
RESET client_min_messages;
CREATE DATABASE regress_hashtree_ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0;
\c regress_hashtree_ascii
SET client_min_messages = warning;
CREATE EXTENSION hashtree;
RESET client_min_messages;
SHOW server_encoding;
CREATE FUNCTION k_update_all() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p
$$;
-- \xe9 alone is not UTF-8
CREATE FUNCTION latin(t text) RETURNS text LANGUAGE sql AS $$
	SELECT convert_from(convert_to(replace(t, 'é', ''), 'SQL_ASCII') || '\xe9'::bytea, 'SQL_ASCII')
$$;
CREATE TABLE asc_t (k text PRIMARY KEY, v text, a text[]);
INSERT INTO asc_t VALUES ('clé', 'café', '{é,x}');
SELECT hashtree.row_hash('asc_t', asc_t) = :'utf8_hash' AS same_as_utf8 FROM asc_t;
SELECT hashtree.track('asc_t');
INSERT INTO asc_t VALUES (latin('clé'), 'v', NULL);		-- refused
UPDATE asc_t SET k = latin('k') WHERE k = 'clé';		-- refused
INSERT INTO asc_t VALUES ('k2', latin('café'), ARRAY[latin('é')]);	-- hashed as stored
UPDATE asc_t SET v = latin('v') WHERE k = 'clé';
SELECT k, octet_length(v) FROM asc_t ORDER BY k;
SELECT k_update_all();
SELECT count(*) AS entries FROM hashtree.leaf_entry WHERE pb = 'asc_t';
SELECT count(*) AS tree_mismatches FROM generate_series(0, 7) p, hashtree.check_tree(p);
SELECT count(*) AS out_of_step FROM asc_t t
  LEFT JOIN hashtree.leaf_entry e ON e.pb = 'asc_t' AND e.key = hashtree.row_key('asc_t', t)
 WHERE e.hash IS DISTINCT FROM hashtree.row_hash('asc_t', t);
-- track() of a table that already holds such a key is refused
CREATE TABLE asc_bad (k text PRIMARY KEY);
INSERT INTO asc_bad VALUES (latin('é'));
SELECT hashtree.track('asc_bad');
\c :regress_db
DROP DATABASE regress_hashtree_ascii WITH (FORCE);

-- clean up
SELECT hashtree.untrack(c) FROM unnest(ARRAY['fk', 'f4k', 'nk', 'nk2', 'ik', 'ik2', 'bk', 'cnk', 'ek', 'pk', 'tk']::regclass[]) c;
SELECT count(*) AS leftover FROM hashtree.tracked_table
 WHERE table_name IN ('fk', 'f4k', 'nk', 'nk2', 'ik', 'ik2', 'bk', 'cnk', 'ek', 'pk', 'tk');
