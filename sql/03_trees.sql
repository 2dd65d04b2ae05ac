--
-- Trees: update, reset, prefix_hash, top_hash, get_bucket, key_hashes
--
SET client_min_messages = warning;
DROP EXTENSION hashtree;
CREATE EXTENSION hashtree;
RESET client_min_messages;

-- a snapshot of every stored tree row of a node, to compare trees
CREATE FUNCTION tree_rows() RETURNS TABLE(part int, depth int2, pa text, pb text,
										  level int2, child int8, hash bytea, n int8)
LANGUAGE sql AS $$
	SELECT part, depth, pa, pb, level, child, hash, n FROM hashtree.node
	UNION ALL
	SELECT part, depth, pa, pb, NULL, seg, hash, NULL FROM hashtree.entry WHERE depth < 2
$$;
CREATE FUNCTION lock_and_update_all() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p
$$;

-- never updated: no hashes yet
SELECT count(*) FROM (SELECT hashtree.insert('shop', 'orders', ('o' || i)::bytea, sha256(('v' || i)::bytea))
  FROM generate_series(1, 500) i) s;
SELECT count(*) FROM (SELECT hashtree.insert('shop', 'items', ('i' || i)::bytea, sha256(('w' || i)::bytea))
  FROM generate_series(1, 300) i) s;
SELECT count(*) FROM (SELECT hashtree.insert('crm', 'people', ('p' || i)::bytea, sha256(('x' || i)::bytea))
  FROM generate_series(1, 200) i) s;
SELECT hashtree.top_hash(0), hashtree.prefix_hash(0, 'shop'), hashtree.prefix_hash(0, 'shop', 'orders');
SELECT sum(dirty_segments) > 0 AS dirty, sum(entries) AS entries FROM hashtree.status;

SELECT lock_and_update_all();
SELECT sum(entries) AS entries, sum(dirty_segments) AS dirty FROM hashtree.status;
-- the tree hashes are canonical: these values are the same on every node
SELECT p, encode(hashtree.top_hash(p), 'hex') AS top_hash FROM generate_series(0, 7) p;
SELECT encode(hashtree.prefix_hash(3, 'shop'), 'hex') AS shop,
	   encode(hashtree.prefix_hash(3, 'shop', 'orders'), 'hex') AS shop_orders;
SELECT hashtree.prefix_hash(3, 'nothing'), hashtree.prefix_hash(3, 'shop', 'nothing');

-- the level 1 bucket holds the top hash; level 2 holds the level-3 buckets
SELECT child, hash = hashtree.top_hash(3) AS is_top
  FROM hashtree.get_bucket(NULL, 3, '{}', 1, 0);
SELECT child, hash = hashtree.prefix_hash(3, 'shop') AS is_top
  FROM hashtree.get_bucket(NULL, 3, '{shop}', 1, 0);
SELECT count(*) AS level2_children FROM hashtree.get_bucket(NULL, 3, '{shop,orders}', 2, 0);
-- the root's entries are the prefix_a trees; a prefix tree's entries its prefix_b trees
SELECT convert_from(key, 'UTF8') AS prefix_a, hash = hashtree.prefix_hash(3, convert_from(key, 'UTF8')) AS is_top
  FROM generate_series(0, 65535) s, hashtree.key_hashes(NULL, 3, '{}', s)
 WHERE s IN (hashtree.segment_of('shop', 65536), hashtree.segment_of('crm', 65536))
 ORDER BY 1;
SELECT convert_from(key, 'UTF8') AS prefix_b, hash = hashtree.prefix_hash(3, 'shop', convert_from(key, 'UTF8')) AS is_top
  FROM hashtree.key_hashes(NULL, 3, '{shop}', hashtree.segment_of('orders', 262144));
-- a leaf segment's entries, ordered by key
SELECT key, hash = sha256('v42'::bytea) AS hash_ok
  FROM hashtree.key_hashes(NULL, hashtree.partition_of('shop', 'orders', 'o42'::bytea),
						   '{shop,orders}', hashtree.segment_of('o42'));
-- the level-3 bucket holding that segment lists it
SELECT count(*) AS found
  FROM hashtree.get_bucket(NULL, hashtree.partition_of('shop', 'orders', 'o42'::bytea),
						   '{shop,orders}', 3, hashtree.segment_of('o42') / 1024)
 WHERE child = hashtree.segment_of('o42');

-- incremental: one changed key recomputes 3 segments (leaf, prefix, root tree)
-- and writes only their ancestors (segment, sub-bucket, bucket, top per tree, and
-- the derived entries), whatever the number of entries
SELECT hashtree.insert('shop', 'orders', 'o42'::bytea, '\x42');
SELECT hashtree.update(hashtree.partition_of('shop', 'orders', 'o42'::bytea));
SELECT last_update_segments, last_update_nodes FROM hashtree.status
 WHERE partition = hashtree.partition_of('shop', 'orders', 'o42'::bytea);
-- nothing to do: nothing written
SELECT hashtree.update(hashtree.partition_of('shop', 'orders', 'o42'::bytea));
SELECT last_update_segments, last_update_nodes FROM hashtree.status
 WHERE partition = hashtree.partition_of('shop', 'orders', 'o42'::bytea);

-- the incremental trees equal a fresh rebuild, byte for byte
SELECT count(*) AS mismatches FROM generate_series(0, 7) p, hashtree.check_tree(p);
CREATE TEMP TABLE incremental AS SELECT * FROM tree_rows();
SELECT count(*) FROM (SELECT hashtree.reset(p) FROM generate_series(0, 7) p) s;
SELECT (SELECT count(*) FROM (SELECT * FROM incremental EXCEPT SELECT * FROM tree_rows()) a) +
	   (SELECT count(*) FROM (SELECT * FROM tree_rows() EXCEPT SELECT * FROM incremental) b)
	   AS differences_from_reset;
SELECT sum(builds) AS builds FROM hashtree.status;

-- canonical: the same entries reached by another order, batching and with
-- deletes and overwrites in between give the same trees
SELECT count(*) FROM (SELECT hashtree.delete('shop', 'orders', ('o' || i)::bytea)
						FROM generate_series(1, 500) i) s;
SELECT lock_and_update_all();
SELECT hashtree.prefix_hash(p, 'shop', 'orders') FROM generate_series(0, 7) p LIMIT 1;
SELECT count(*) AS orders_rows FROM hashtree.node WHERE pb = 'orders';
SELECT count(*) FROM (SELECT hashtree.insert('shop', 'orders', ('o' || i)::bytea, '\x00')
						FROM generate_series(500, 1, -1) i) s;
SELECT lock_and_update_all();
SELECT count(*) FROM (SELECT hashtree.insert('shop', 'orders', ('o' || i)::bytea,
											 CASE WHEN i = 42 THEN '\x42'::bytea ELSE sha256(('v' || i)::bytea) END)
						FROM generate_series(1, 500) i ORDER BY md5(i::text)) s;
SELECT lock_and_update_all();
SELECT (SELECT count(*) FROM (SELECT * FROM incremental EXCEPT SELECT * FROM tree_rows()) a) +
	   (SELECT count(*) FROM (SELECT * FROM tree_rows() EXCEPT SELECT * FROM incremental) b)
	   AS differences;

-- empty trees disappear: no row of a deleted prefix remains
SELECT count(*) FROM (SELECT hashtree.delete('crm', 'people', ('p' || i)::bytea)
						FROM generate_series(1, 200) i) s;
SELECT lock_and_update_all();
SELECT count(*) AS crm_rows FROM tree_rows() WHERE pa = 'crm' OR pb = 'crm';
SELECT count(*) FROM hashtree.entry WHERE depth = 0 AND key = 'crm'::bytea;
SELECT hashtree.prefix_hash(p, 'crm') IS NULL AS gone FROM generate_series(0, 0) p;
SELECT count(*) AS mismatches FROM generate_series(0, 7) p, hashtree.check_tree(p);

-- transactional: an aborted transaction never reaches a tree ...
SELECT hashtree.top_hash(1) AS top1 \gset
BEGIN;
SELECT hashtree.insert(1, 'tx', 'x', 'k'::bytea, '\x01', false);
SELECT hashtree.update(1);
SELECT hashtree.top_hash(1) = :'top1' AS unchanged_inside;
ROLLBACK;
SELECT hashtree.update(1);
SELECT last_update_segments FROM hashtree.status WHERE partition = 1;
SELECT hashtree.top_hash(1) = :'top1' AS unchanged;
-- ... nor an aborted subtransaction
BEGIN;
SAVEPOINT a;
SELECT hashtree.insert(1, 'tx', 'x', 'k'::bytea, '\x01', false);
ROLLBACK TO SAVEPOINT a;
SELECT hashtree.update(1);
COMMIT;
SELECT hashtree.top_hash(1) = :'top1' AS unchanged;
-- a committed change is reflected by the next update
SELECT hashtree.insert(1, 'tx', 'x', 'k'::bytea, '\x01', false);
SELECT hashtree.update(1);
SELECT hashtree.top_hash(1) = :'top1' AS unchanged, hashtree.prefix_hash(1, 'tx', 'x') IS NOT NULL AS has_tx;
-- update and reset need READ COMMITTED
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT hashtree.update(1);
ROLLBACK;

-- bad input
SELECT * FROM hashtree.get_bucket(NULL, 8, '{}', 1, 0);
SELECT * FROM hashtree.get_bucket(NULL, NULL, '{}', 1, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, NULL, 1, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{a,b,c}', 1, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{a,NULL}', 1, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{{a},{b}}', 1, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{}', 0, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{}', 4, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{}', 2, 1);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{}', 3, 256);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{a}', 3, 512);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{a,b}', 3, 1024);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{a,b}', NULL, 0);
SELECT * FROM hashtree.get_bucket(NULL, 0, '{a,b}', 3, NULL);
SELECT * FROM hashtree.key_hashes(NULL, 0, '{}', 65536);
SELECT * FROM hashtree.key_hashes(NULL, 0, '{a,b}', -1);
SELECT * FROM hashtree.key_hashes(NULL, 0, '{a,b}', NULL);
SELECT * FROM hashtree.key_hashes(NULL, 9, '{a,b}', 0);
SELECT hashtree.prefix_hash(NULL, 'a');
SELECT hashtree.prefix_hash(0, NULL);
SELECT hashtree.prefix_hash(42, 'a');
SELECT hashtree.top_hash(NULL);
SELECT hashtree.top_hash(8);
SELECT hashtree.update(NULL);
SELECT hashtree.update(8);
SELECT hashtree.reset(NULL);
SELECT hashtree.reset(-3);
SELECT * FROM hashtree.check_tree(8);
