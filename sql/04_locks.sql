--
-- Locks: lock, release_lock (three arities), ownership, update gating
--
SET client_min_messages = warning;
DROP EXTENSION hashtree;
CREATE EXTENSION hashtree;
RESET client_min_messages;
SET hashtree.node_name = 'regress';

SELECT hashtree.lock(0), hashtree.lock(0);		-- re-locking by the owner is ok
SELECT lock_owner = pg_backend_pid() AS mine FROM hashtree.status WHERE partition = 0;
SELECT hashtree.update(0);
SELECT hashtree.release_lock(0), hashtree.release_lock(0);
SELECT hashtree.update(0);						-- not locked any more
SELECT lock_owner FROM hashtree.status WHERE partition = 0;

-- the node argument: NULL or this node's name is local
SELECT hashtree.lock(NULL, 1), hashtree.lock(hashtree.node_name(), 1);
SELECT hashtree.release_lock(hashtree.node_name(), 1), hashtree.release_lock(NULL, 1);

-- locking on behalf of another client backend (here the one serving a
-- peer connection to this same database, which outlives the statements
-- below); only the owner may update or release
CREATE FUNCTION sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || regexp_replace(SQLERRM, '[0-9]+', 'N', 'g');
END $$;
-- (not an auxiliary process: its lock would never vanish)
SELECT pid AS ckpt FROM pg_stat_activity WHERE backend_type = 'checkpointer' \gset
SELECT sqlstate_of(format('SELECT hashtree.lock(NULL, 2, %s)', :ckpt));
SELECT hashtree.add_peer('loop', format('host=%s port=%s dbname=%s',
	current_setting('unix_socket_directories'), current_setting('port'), current_database()));
SELECT hashtree.lock('loop', 6);
SELECT lock_owner AS other FROM hashtree.status WHERE partition = 6 \gset
SELECT hashtree.release_lock('loop', 6);
SELECT hashtree.lock(NULL, 2, :other);
SELECT lock_owner = :other AS owned_by_other FROM hashtree.status WHERE partition = 2;
SELECT hashtree.lock(2);
SELECT hashtree.update(2);
SELECT hashtree.release_lock(2);
SELECT hashtree.release_lock(NULL, 2, pg_backend_pid());
SELECT * FROM hashtree.compare(2, 'nobody');
SELECT sqlstate_of('SELECT hashtree.reset(2)');
SELECT hashtree.release_lock(NULL, 2, :other);
SELECT hashtree.drop_peer('loop');
SELECT hashtree.lock(2), hashtree.update(2), hashtree.release_lock(2);

-- a lock taken in a transaction that rolls back was never taken
BEGIN;
SELECT hashtree.lock(3);
ROLLBACK;
SELECT lock_owner FROM hashtree.status WHERE partition = 3;

-- compare needs the caller's lock on the local partition
SELECT * FROM hashtree.compare(3, 'nobody');
SELECT * FROM hashtree.compare(3, NULL);
SELECT * FROM hashtree.compare(3, hashtree.node_name());

-- a tree that is not built (a foreign write to the extension's tables)
SELECT hashtree.lock(4);
DELETE FROM hashtree.dirty;
SELECT count(*) FILTER (WHERE built) AS built FROM hashtree.status;
SELECT hashtree.lock(5), hashtree.update(4);
SELECT hashtree.reset(4);
SELECT built, builds FROM hashtree.status WHERE partition = 4;
SELECT hashtree.update(4), hashtree.release_lock(4);
SELECT count(*) FROM (SELECT hashtree.reset(p) FROM generate_series(0, 7) p) s;
SELECT count(*) FILTER (WHERE built) AS built FROM hashtree.status;

-- bad input
SELECT hashtree.lock(NULL::int);
SELECT hashtree.lock(8);
SELECT hashtree.lock(NULL, -1);
SELECT hashtree.lock(NULL, 0, NULL);
SELECT hashtree.lock(NULL, 0, 0);
SELECT hashtree.release_lock(NULL::int);
SELECT hashtree.release_lock(NULL, 8);
SELECT hashtree.release_lock(NULL, 0, NULL);
SELECT hashtree.lock('nobody', 0);
SELECT hashtree.update('nobody', 0);
SELECT hashtree.reset('nobody', 0);
SELECT hashtree.release_lock('nobody', 0, 1);
