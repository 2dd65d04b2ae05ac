--
-- Privileges: tables are not writable by PUBLIC, conninfo is not readable
-- by unprivileged roles, functions that change or reveal data are granted
-- explicitly
--
SET client_min_messages = warning;
DROP EXTENSION hashtree;
CREATE EXTENSION hashtree;
DROP ROLE IF EXISTS regress_hashtree_user;
RESET client_min_messages;
CREATE ROLE regress_hashtree_user;

SELECT hashtree.add_peer('p1', 'host=/tmp port=1 dbname=x password=secret');
SELECT hashtree.insert('a', 'b', 'k'::bytea, '\x01');

SET ROLE regress_hashtree_user;
-- allowed: status, peer names, pure functions
SELECT count(*) FROM hashtree.status;
SELECT name, conninfo FROM hashtree.peers;
SELECT hashtree.partition_of('a', 'b', 'k'::bytea) BETWEEN 0 AND 7 AS ok, hashtree.name(0);
-- refused
SELECT * FROM hashtree.peer;
SELECT count(*) FROM hashtree.entry;
INSERT INTO hashtree.entry VALUES (0, 0, 2, 'a', 'b', 'x', '\x01');
UPDATE hashtree.partition SET built = false;
DELETE FROM hashtree.node;
TRUNCATE hashtree.dirty;
SELECT hashtree.insert('a', 'b', 'k2'::bytea, '\x01');
SELECT hashtree.delete('a', 'b', 'k'::bytea);
SELECT hashtree.add_peer('p2', 'dbname=x');
SELECT hashtree.reset(0);
SELECT * FROM hashtree.key_hashes(NULL, 0, '{}', 0);
RESET ROLE;

-- granted EXECUTE is enough: the functions write the tables for the caller
GRANT EXECUTE ON FUNCTION hashtree.insert(text, text, bytea, bytea, boolean) TO regress_hashtree_user;
SET ROLE regress_hashtree_user;
SELECT hashtree.insert('a', 'b', 'k2'::bytea, '\x02');
SELECT count(*) FROM hashtree.entry;
RESET ROLE;
SELECT key, hash FROM hashtree.entry WHERE pa = 'a' ORDER BY key;

-- functions that run with the owner's rights pin search_path
SELECT p.proname, p.prosecdef, p.proconfig
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
  JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'hashtree'
 WHERE p.prosecdef AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false);

-- peers are configured by superusers only, even with EXECUTE granted: a
-- peer connection runs with the server's own identity
GRANT EXECUTE ON FUNCTION hashtree.add_peer(text, text), hashtree.drop_peer(text) TO regress_hashtree_user;
SET ROLE regress_hashtree_user;
SELECT hashtree.add_peer('p2', 'dbname=x');
SELECT hashtree.drop_peer('p1');
RESET ROLE;
SELECT name FROM hashtree.peers;

DROP OWNED BY regress_hashtree_user;
DROP ROLE regress_hashtree_user;
