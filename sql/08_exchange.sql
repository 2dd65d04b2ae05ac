--
-- exchange(): compare with a peer, repair (pull, push), exchange_log, errors
--
-- The peer is a second database of this server, reached over libpq like
-- any other node.
SET client_min_messages = warning;
DROP DATABASE IF EXISTS ht_regress_peer WITH (FORCE);
CREATE DATABASE ht_regress_peer;
RESET client_min_messages;

\c ht_regress_peer
CREATE EXTENSION hashtree;
-- the same table with its columns in another order: rows compare by name
CREATE TABLE items (qty numeric, name text, id int PRIMARY KEY);
SELECT hashtree.track('items');
INSERT INTO items SELECT i * 1.5, 'item ' || i, i FROM generate_series(1, 200) i
 WHERE i % 50 <> 0;
UPDATE items SET name = 'changed' WHERE id IN (7, 8);
INSERT INTO items VALUES (1000, 'only on the peer', 1000);
-- a table tracked on the peer only
CREATE TABLE peer_only (id int PRIMARY KEY);
SELECT hashtree.track('peer_only');
INSERT INTO peer_only SELECT generate_series(1, 3);
-- plain entries: k1..k5 on the peer, k3..k8 here, k3 with another hash
SELECT count(*) FROM (SELECT hashtree.insert('plain', 'p', 'k' || i, '\x01'::bytea)
						FROM generate_series(1, 5) i) s;

\c contrib_regression
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;
CREATE EXTENSION hashtree;
RESET client_min_messages;
SET hashtree.node_name = 'regress';
CREATE TABLE items (id int PRIMARY KEY, name text, qty numeric);
SELECT hashtree.track('items');
INSERT INTO items SELECT i, 'item ' || i, i * 1.5 FROM generate_series(1, 200) i;
SELECT count(*) FROM (SELECT hashtree.insert('plain', 'p', 'k' || i,
											 CASE WHEN i = 3 THEN '\x03' ELSE '\x01' END::bytea)
						FROM generate_series(3, 8) i) s;
SELECT hashtree.add_peer('other', format('host=%s port=%s dbname=ht_regress_peer',
	current_setting('unix_socket_directories'), current_setting('port')));

-- the key of a row, readable
CREATE FUNCTION item_id(key bytea) RETURNS text LANGUAGE sql AS
$$ SELECT CASE WHEN key IS NULL THEN NULL
			   WHEN substr(key, 1, 4) = '\x00000004' THEN 'id ' || ('x' || encode(substr(key, 5), 'hex'))::bit(32)::int
			   ELSE convert_from(key, 'UTF8') END $$;

-- report only: exactly the differences, each once
SELECT kind, prefix_a, prefix_b, item_id(key), repaired
  FROM hashtree.exchange('other') ORDER BY 2, 3, 1, 4;
SELECT count(*) AS partitions, sum(missing) AS missing, sum(remote_missing) AS remote_missing,
	   sum(different) AS different, sum(missing_prefix) AS missing_prefix,
	   sum(remote_missing_prefix) AS remote_missing_prefix, sum(repaired) AS repaired,
	   bool_and(outcome = 'ok') AS all_ok, bool_and(round_trips BETWEEN 3 AND 20) AS bounded_round_trips,
	   bool_and(bytes > 0) AS counted_bytes, bool_and(NOT worker) AS manual
  FROM hashtree.exchange_log;
-- nothing was changed, and no lock is left behind
SELECT count(*), sum(qty) FROM items;
SELECT count(*) FROM hashtree.status WHERE lock_owner IS NOT NULL;

-- pull: this node becomes equal to the peer (except what it cannot hold)
SELECT kind, prefix_a, prefix_b, item_id(key), repaired
  FROM hashtree.exchange('other', NULL, 'pull') ORDER BY 2, 3, 1, 4;
SELECT id, name, qty FROM items WHERE id IN (1, 7, 8, 50, 1000) ORDER BY id;
SELECT count(*) FROM items;
SELECT kind, prefix_a, prefix_b, item_id(key), repaired
  FROM hashtree.exchange('other') ORDER BY 2, 3, 1, 4;
SELECT message FROM hashtree.exchange_log WHERE message IS NOT NULL ORDER BY id LIMIT 1;

-- push: the peer becomes equal to this node
DELETE FROM items WHERE id BETWEEN 10 AND 12;
UPDATE items SET qty = -1 WHERE id = 20;
INSERT INTO items VALUES (2000, 'pushed', 2);
SELECT hashtree.delete('plain', 'p', 'k1');
SELECT count(*) FROM (SELECT hashtree.insert('plain', 'q', 'k' || i, '\x05'::bytea)
						FROM generate_series(1, 20) i) s;
SELECT kind, prefix_a, prefix_b, item_id(key), repaired
  FROM hashtree.exchange('other', NULL, 'push') ORDER BY 2, 3, 1, 4;
SELECT kind, prefix_a, prefix_b, item_id(key), repaired
  FROM hashtree.exchange('other') ORDER BY 2, 3, 1, 4;

-- one partition
SELECT hashtree.insert('plain', 'p', 'one', '\x07'::bytea);
SELECT hashtree.partition_of('plain', 'p', 'one'::bytea) AS p \gset
SELECT partition = :p AS same_partition, kind, item_id(key) FROM hashtree.exchange('other', :p);
SELECT count(*) FROM hashtree.exchange('other', (:p + 1) % 8);

-- the peer's view after the push
\c ht_regress_peer
SELECT id, name, qty FROM items WHERE id IN (10, 20, 2000) ORDER BY id;
SELECT count(*) FROM items;
\c contrib_regression
SET hashtree.node_name = 'regress';

-- a partition locked by another backend here, or on the peer, is skipped,
-- never reported clean; "loop" is this database, reached over libpq: its
-- backend is "another backend"
SELECT hashtree.add_peer('loop', format('host=%s port=%s dbname=%s',
	current_setting('unix_socket_directories'), current_setting('port'), current_database()));
SELECT hashtree.lock('loop', 2);
SELECT * FROM hashtree.exchange('other', 2);
SELECT hashtree.release_lock('loop', 2);
SELECT partition, outcome, message FROM hashtree.exchange_log WHERE outcome <> 'ok' ORDER BY id;
-- a lock this backend took itself is kept (and used) by the exchange
SELECT hashtree.lock(2);
SELECT count(*) FROM hashtree.exchange('other', 2);
SELECT hashtree.release_lock(2);
-- the partition is locked here (by this backend): "there" it is locked
SELECT hashtree.lock(3);
SELECT * FROM hashtree.exchange('loop', 3);
SELECT hashtree.release_lock(3);
SELECT partition, outcome, message FROM hashtree.exchange_log WHERE outcome <> 'ok' ORDER BY id;

-- an unreachable peer: every partition is an error, the counts stay zero
SELECT hashtree.add_peer('dead', 'host=/nonexistent port=1 dbname=x');
SELECT partition, kind, repaired FROM hashtree.exchange('dead') ORDER BY 1;
SELECT partition, outcome, message, missing + remote_missing + different AS diffs
  FROM hashtree.exchange_log WHERE peer = 'dead' ORDER BY partition;
SELECT count(*) FROM hashtree.status WHERE lock_owner IS NOT NULL;

-- bad input changes nothing
SELECT count(*) AS log_rows FROM hashtree.exchange_log \gset
SELECT * FROM hashtree.exchange(NULL);
SELECT * FROM hashtree.exchange('other', NULL, NULL);
SELECT * FROM hashtree.exchange('other', NULL, 'sideways');
SELECT * FROM hashtree.exchange('other', 8);
SELECT * FROM hashtree.exchange('other', -1);
SELECT * FROM hashtree.exchange('nobody');
SELECT * FROM hashtree.exchange('regress');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM hashtree.exchange('other');
ROLLBACK;
SELECT count(*) = :log_rows AS unchanged FROM hashtree.exchange_log;

-- odd tables: a key of a type outside pg_catalog (rows are found with the
-- key index's equality operator, named with its schema), columns named like
-- the aliases of generated SQL, quotes, spaces and unicode in names, values
-- text would not keep
\c ht_regress_peer
CREATE TYPE "Odd key" AS ENUM ('Abc', 'Here only', 'Only');
CREATE TABLE "Odd ""Tbl"" ü" (k "Odd key" PRIMARY KEY, t text, ht_row int, "x y" float8[], j jsonb);
SELECT hashtree.track('"Odd ""Tbl"" ü"');
INSERT INTO "Odd ""Tbl"" ü" VALUES ('Abc', 'peer', 1, '[2:3]={-0,1e-300}', 'null'),
	('Only', 'peer ✓', 2, NULL, NULL);
\c contrib_regression
SET hashtree.node_name = 'regress';
CREATE TYPE "Odd key" AS ENUM ('Abc', 'Here only', 'Only');
CREATE TABLE "Odd ""Tbl"" ü" (j jsonb, "x y" float8[], ht_row int, t text, k "Odd key" PRIMARY KEY);
SELECT hashtree.track('"Odd ""Tbl"" ü"');
INSERT INTO "Odd ""Tbl"" ü" VALUES (NULL, NULL, 0, 'here', 'Abc'), (NULL, NULL, 3, 'gone', 'Here only');
-- the key 'Abc' reads the row 'Abc'
SELECT count(*) FROM hashtree._rows_by_key('public', 'Odd "Tbl" ü',
	ARRAY[hashtree.row_key('"Odd ""Tbl"" ü"', ROW(NULL, NULL, NULL, NULL, 'Abc')::"Odd ""Tbl"" ü")]);
SELECT kind, prefix_b, repaired FROM hashtree.exchange('other', NULL, 'pull')
 WHERE prefix_b LIKE 'Odd%' ORDER BY 1;
SET extra_float_digits = 0;
SELECT k, t, ht_row, "x y", float8send("x y"[2]), j, j IS NULL AS sql_null FROM "Odd ""Tbl"" ü" ORDER BY k;
RESET extra_float_digits;
SELECT count(*) FROM hashtree.exchange('other') WHERE prefix_b LIKE 'Odd%';
-- a row this node's trigger changes: not repaired, the error names table and key
CREATE FUNCTION lower_t() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN NEW.t := lower(NEW.t); RETURN NEW; END $$;
CREATE TRIGGER lower_t BEFORE INSERT OR UPDATE ON "Odd ""Tbl"" ü"
	FOR EACH ROW EXECUTE FUNCTION lower_t();
\c ht_regress_peer
UPDATE "Odd ""Tbl"" ü" SET t = 'CHANGED' WHERE k = 'Abc';
\c contrib_regression
SET hashtree.node_name = 'regress';
SELECT kind, prefix_b, repaired FROM hashtree.exchange('other', NULL, 'pull')
 WHERE prefix_b LIKE 'Odd%' ORDER BY 1;
SELECT k, t FROM "Odd ""Tbl"" ü" ORDER BY k;
SELECT hashtree.untrack('"Odd ""Tbl"" ü"');
DROP TABLE "Odd ""Tbl"" ü";
DROP FUNCTION lower_t();
DROP TYPE "Odd key";

-- a partition with more prefixes than _exchange_begin sends entries of
-- (1,024): its prefix trees are walked from the root, the others' not
\c ht_regress_peer
SELECT count(*) FROM (SELECT hashtree.insert(0, 'many' || i, 'b', 'k'::bytea,
											 CASE WHEN i = 500 THEN '\x02' ELSE '\x01' END::bytea, false)
						FROM generate_series(1, 1100) i) s;
SELECT hashtree.insert(0, 'many_peer', 'b', 'k'::bytea, '\x01'::bytea, false);
SELECT hashtree.insert(1, 'few', 'b', 'k'::bytea, '\x02'::bytea, false);
\c contrib_regression
SET hashtree.node_name = 'regress';
SELECT count(*) FROM (SELECT hashtree.insert(0, 'many' || i, 'b', 'k'::bytea, '\x01'::bytea, false)
						FROM generate_series(1, 1100) i) s;
SELECT hashtree.insert(1, 'few', 'b', 'k'::bytea, '\x01'::bytea, false);
SELECT "partition", kind, prefix_a, prefix_b, key, repaired
  FROM hashtree.exchange('other') WHERE prefix_a ~ '^(many|few)' ORDER BY 1, 2, 3;
-- partition 0 walked from the root: more round trips than the prefix
-- entries sent with the top hashes need (1 + 2 + 1)
SELECT round_trips > 4 AS walked_from_root FROM hashtree.exchange_log
 WHERE id = (SELECT max(id) FROM hashtree.exchange_log);
SELECT count(*) FROM (SELECT hashtree.delete(0, 'many' || i, 'b', 'k'::bytea)
						FROM generate_series(1, 1100) i) s;
SELECT hashtree.delete(1, 'few', 'b', 'k'::bytea);
\c ht_regress_peer
SELECT count(*) FROM (SELECT hashtree.delete(0, 'many' || i, 'b', 'k'::bytea)
						FROM generate_series(1, 1100) i) s;
SELECT hashtree.delete(0, 'many_peer', 'b', 'k'::bytea);
SELECT hashtree.delete(1, 'few', 'b', 'k'::bytea);
\c contrib_regression
SET hashtree.node_name = 'regress';

-- the log and the exchange are not for everybody
CREATE ROLE ht_exchange_nobody;
SET ROLE ht_exchange_nobody;
SELECT * FROM hashtree.exchange('other');
SELECT count(*) FROM hashtree.exchange_log;
RESET ROLE;
DROP ROLE ht_exchange_nobody;

SELECT hashtree.drop_peer('other');
SELECT hashtree.drop_peer('loop');
SELECT hashtree.drop_peer('dead');
DROP FUNCTION item_id(bytea);
SELECT hashtree.untrack('items');
DROP TABLE items;
SET client_min_messages = warning;
DROP DATABASE ht_regress_peer WITH (FORCE);
