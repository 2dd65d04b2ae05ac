--
-- Peers: add_peer, drop_peer, view peers, calls on a peer over libpq
--
SET client_min_messages = warning;
DROP EXTENSION hashtree;
CREATE EXTENSION hashtree;
RESET client_min_messages;
SET hashtree.node_name = 'regress';

-- "loop" is this very database, reached over libpq like any other peer
SELECT hashtree.add_peer('loop', format('host=%s port=%s dbname=%s',
	current_setting('unix_socket_directories'), current_setting('port'),
	current_database()));
SELECT hashtree.add_peer('dead', 'host=/nonexistent port=1 dbname=x');
SELECT name, conninfo LIKE 'host=%' AS has_conninfo FROM hashtree.peers ORDER BY 1;

-- errors
SELECT hashtree.add_peer('loop', 'dbname=x');
SELECT hashtree.add_peer(NULL, 'dbname=x');
SELECT hashtree.add_peer('x', NULL);
SELECT hashtree.add_peer('', 'dbname=x');
SELECT hashtree.add_peer(repeat('n', 64), 'dbname=x');
SELECT hashtree.add_peer('x', 'dbname=x nonsense=1');
SELECT hashtree.add_peer('x', 'dbname=''x');
SELECT hashtree.add_peer(hashtree.node_name(), 'dbname=x');
SELECT hashtree.drop_peer('nobody');
SELECT hashtree.drop_peer(NULL);
SELECT name FROM hashtree.peers ORDER BY 1;

-- some data
SELECT count(*) FROM (SELECT hashtree.insert('a', 'b' || (i % 3), ('k' || i)::bytea, sha256(i::text::bytea))
						FROM generate_series(1, 300) i) s;
SELECT hashtree.lock(0), hashtree.update(0);

-- a peer's answers equal the local ones
SELECT (SELECT array_agg(child || ':' || encode(hash, 'hex')) FROM hashtree.get_bucket('loop', 0, '{}', 2, 0)) =
	   (SELECT array_agg(child || ':' || encode(hash, 'hex')) FROM hashtree.get_bucket(NULL, 0, '{}', 2, 0))
	   AS same_bucket;
SELECT count(*) > 0 AS nonempty FROM hashtree.get_bucket('loop', 0, '{a,b1}', 2, 0);
SELECT (SELECT array_agg(key || hash) FROM hashtree.key_hashes('loop', 0, '{a}', hashtree.segment_of('b1', 262144))) =
	   (SELECT array_agg(key || hash) FROM hashtree.key_hashes(NULL, 0, '{a}', hashtree.segment_of('b1', 262144)))
	   AS same_entries;

-- compare with a peer that holds the same trees: no differences
SELECT * FROM hashtree.compare(0, 'loop');

-- the peer's lock is owned by the peer backend serving this session's
-- connection: it is not ours, and it lasts until released
SELECT hashtree.lock('loop', 1);
SELECT lock_owner IS NOT NULL AND lock_owner <> pg_backend_pid() AS peer_owns
  FROM hashtree.status WHERE partition = 1;
SELECT hashtree.lock(1), hashtree.lock('loop', 1);
SELECT hashtree.update('loop', 1);
SELECT hashtree.release_lock(1);
SELECT hashtree.release_lock('loop', 1), hashtree.release_lock('loop', 1);
SELECT hashtree.lock('loop', 0);			-- held locally by this backend
SELECT hashtree.update('loop', 0);
SELECT hashtree.reset('loop', 3);
SELECT builds FROM hashtree.status WHERE partition = 3;

-- the peer's errors come back with the peer's SQLSTATE and message
SELECT * FROM hashtree.get_bucket('loop', 8, '{}', 1, 0);
\set VERBOSITY sqlstate
SELECT hashtree.lock('loop', 99);
\set VERBOSITY default
-- arguments that are wrong on any node are refused before calling the peer
SELECT * FROM hashtree.key_hashes('loop', 0, '{}', 70000);

-- unknown and unreachable peers
SELECT * FROM hashtree.get_bucket('nobody', 0, '{}', 1, 0);
SELECT * FROM hashtree.compare(0, 'nobody');
DO $$
BEGIN
	PERFORM hashtree.lock('dead', 0);
EXCEPTION WHEN sqlclient_unable_to_establish_sqlconnection THEN
	RAISE NOTICE 'unreachable peer: %', SQLSTATE;
END $$;

-- a changed conninfo is picked up; a dropped peer is gone
SELECT hashtree.drop_peer('loop');
SELECT * FROM hashtree.get_bucket('loop', 0, '{}', 1, 0);
SELECT hashtree.drop_peer('dead');
SELECT count(*) FROM hashtree.peers;
