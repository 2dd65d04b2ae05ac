--
-- Entries: insert (both forms, if_missing), delete, bad input
--
CREATE FUNCTION entries() RETURNS TABLE(part int, pa text, pb text, key bytea, hash bytea)
LANGUAGE sql AS $$
	SELECT part, pa, pb, key, hash FROM hashtree.entry WHERE depth = 2 ORDER BY 1, 2, 3, 4
$$;

SELECT hashtree.insert('app', 'users', 'alice'::bytea, '\x01');
SELECT hashtree.insert('app', 'users', 'bob', '\x02');		-- text key
SELECT hashtree.insert('app', 'groups', '\x0001'::bytea, '\x03', true);
SELECT hashtree.insert(5, 'app', 'explicit', 'k'::bytea, '\x04', false);
SELECT hashtree.insert(6, 'app', 'explicit', 'k', '\x05', false);	-- text key
SELECT * FROM entries();
-- every entry is where partition_of routes it (or where it was put)
SELECT e.part = hashtree.partition_of(e.pa, e.pb, e.key) AS routed, e.pb
  FROM entries() e ORDER BY 2, 1;

-- overwrite, and if_missing leaves an existing entry alone
SELECT hashtree.insert('app', 'users', 'alice'::bytea, '\x11');
SELECT hashtree.insert('app', 'users', 'alice'::bytea, '\xff', true);
SELECT hashtree.insert('app', 'users', 'carol'::bytea, '\x12', true);
SELECT pb, convert_from(key, 'UTF8') AS key, hash FROM entries() WHERE pb = 'users';

-- only real changes are logged as dirty segments
SELECT count(*) AS dirty_rows FROM hashtree.dirty;
SELECT hashtree.insert('app', 'users', 'alice'::bytea, '\x11');		-- same hash
SELECT hashtree.insert('app', 'users', 'carol'::bytea, '\x99', true);	-- present
SELECT count(*) AS dirty_rows FROM hashtree.dirty;

-- delete (both forms); deleting an absent key is a no-op
SELECT hashtree.delete('app', 'users', 'bob');
SELECT hashtree.delete('app', 'users', 'nobody'::bytea);
SELECT hashtree.delete(5, 'app', 'explicit', 'k'::bytea);
SELECT hashtree.delete(6, 'app', 'explicit', 'k');
SELECT pb, key, hash FROM entries();

-- keys of any length up to 1 MB
SELECT hashtree.insert('app', 'big', repeat('x', 1024 * 1024)::bytea, '\x01');
SELECT hashtree.insert('app', 'big', repeat('y', 100)::bytea, '\x02');
SELECT hashtree.insert('app', 'big', ''::bytea, '\x03');
SELECT pb, octet_length(key) AS len, hash FROM entries() WHERE pb = 'big' ORDER BY 2;
SELECT hashtree.delete('app', 'big', repeat('x', 1024 * 1024)::bytea);
SELECT count(*) FROM entries() WHERE pb = 'big';

-- bad input: ERROR, nothing written
SELECT count(*) AS before FROM hashtree.entry \gset
SELECT hashtree.insert(NULL, 'b', 'k'::bytea, '\x01');
SELECT hashtree.insert('a', NULL, 'k'::bytea, '\x01');
SELECT hashtree.insert('a', 'b', NULL::bytea, '\x01');
SELECT hashtree.insert('a', 'b', 'k'::bytea, NULL);
SELECT hashtree.insert('a', 'b', 'k'::bytea, '\x01', NULL);
SELECT hashtree.insert('a', 'b', 'k'::bytea, '\x');
SELECT hashtree.insert('a', 'b', 'k'::bytea, ('\x' || repeat('00', 65))::bytea);
SELECT hashtree.insert('a', 'b', repeat('x', 1024 * 1024 + 1)::bytea, '\x01');
SELECT hashtree.insert(repeat('p', 513), 'b', 'k'::bytea, '\x01');
SELECT hashtree.insert(8, 'a', 'b', 'k'::bytea, '\x01', false);
SELECT hashtree.insert(-1, 'a', 'b', 'k'::bytea, '\x01', false);
SELECT hashtree.insert(NULL, 'a', 'b', 'k'::bytea, '\x01', false);
SELECT hashtree.insert(0, 'a', 'b', 'k'::bytea, '\x01', NULL);
SELECT hashtree.delete(NULL, 'b', 'k'::bytea);
SELECT hashtree.delete('a', 'b', NULL::bytea);
SELECT hashtree.delete(99, 'a', 'b', 'k'::bytea);
SELECT count(*) = :before AS nothing_written FROM hashtree.entry;
-- 64-byte hashes are fine
SELECT hashtree.insert('a', 'b', 'k'::bytea, ('\x' || repeat('ab', 64))::bytea);
SELECT octet_length(hash) FROM entries() WHERE pa = 'a';

-- transactional: an aborted transaction or subtransaction leaves nothing
BEGIN;
SELECT hashtree.insert('tx', 'x', 'k1'::bytea, '\x01');
ROLLBACK;
BEGIN;
SELECT hashtree.insert('tx', 'x', 'k2'::bytea, '\x02');
SAVEPOINT s;
SELECT hashtree.insert('tx', 'x', 'k3'::bytea, '\x03');
SELECT hashtree.delete('tx', 'x', 'k2'::bytea);
ROLLBACK TO SAVEPOINT s;
COMMIT;
SELECT pa, pb, key FROM entries() WHERE pa = 'tx';

-- reset the stage for the tree tests
SELECT count(*) FROM (SELECT hashtree.reset(p) FROM generate_series(0, 7) p) s;
SELECT count(*) AS dirty_rows FROM hashtree.dirty;
