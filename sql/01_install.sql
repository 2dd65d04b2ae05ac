--
-- Installation: schema, partitions, views, canonical definitions
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree;
RESET client_min_messages;

-- the partition count is read from hashtree.partitions at CREATE EXTENSION
SET hashtree.partitions = 4;
CREATE EXTENSION hashtree;
RESET hashtree.partitions;
SELECT count(*) AS partitions FROM hashtree.status;
DROP EXTENSION hashtree;

-- bad values are refused by the GUC itself
SET hashtree.partitions = 0;
SET hashtree.partitions = 2000;

-- default: 8
CREATE EXTENSION hashtree;
SELECT extname, extversion, extrelocatable, n.nspname
  FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE extname = 'hashtree';
SELECT partition, name, built, lock_owner, entries, dirty_segments, builds
  FROM hashtree.status;
SELECT name FROM pg_settings WHERE name LIKE 'hashtree.%' ORDER BY 1;
SELECT hashtree.name(3);
SELECT hashtree.name(8);
SELECT hashtree.name(-1);
SELECT hashtree.name(NULL);
SELECT hashtree.node_name() = format('%s-%s-%s',
	(SELECT system_identifier FROM pg_control_system()),
	current_setting('port'), current_database()) AS derived_node_name;
SET hashtree.node_name = 'alpha';
SELECT hashtree.node_name();
RESET hashtree.node_name;

-- the extension's tables are registered for pg_dump (configuration and
-- the user's entries; trees are derived data)
SELECT c.relname, x.cfg IS NOT NULL AS dumped, x.cond
  FROM pg_extension e
  CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
  JOIN pg_class c ON c.oid = x.cfg
 WHERE e.extname = 'hashtree' ORDER BY 1;

--
-- Canonical definitions (docs/DESIGN.md), recomputed with core SQL:
-- segment = low bits of the first 8 bytes of SHA-256(key), big-endian
--
SELECT bool_and(hashtree.segment_of(k) =
	(('x' || encode(substr(sha256(k), 1, 8), 'hex'))::bit(64)::bigint & (1048576 - 1)))
	AS segment_matches_sha256
  FROM (SELECT ('key' || i)::bytea AS k FROM generate_series(1, 200) i) s;
SELECT hashtree.segment_of('\x'::bytea), hashtree.segment_of('abc'::bytea, 65536);
SELECT hashtree.segment_of('abc'::bytea, 1000);
-- partition = first 8 bytes of SHA-256(0x02 | len(a) | a | len(b) | b | key) mod N
SELECT bool_and(hashtree.partition_of(a, b, k) =
	((('x' || encode(substr(sha256('\x02'::bytea
		|| int4send(octet_length(convert_to(a, 'UTF8'))) || convert_to(a, 'UTF8')
		|| int4send(octet_length(convert_to(b, 'UTF8'))) || convert_to(b, 'UTF8')
		|| k), 1, 8), 'hex'))::bit(64)::bigint::numeric + 18446744073709551616) % 18446744073709551616 % 8)::int)
	AS partition_matches_sha256
  FROM (SELECT 'pa' || (i % 7) AS a, 'pb' || (i % 3) AS b, ('k' || i)::bytea AS k
		  FROM generate_series(1, 300) i) s;
-- the keys of one full prefix are spread over all partitions
SELECT count(DISTINCT hashtree.partition_of('users', 'profiles', ('k' || i)::bytea))
  FROM generate_series(1, 200) i;
-- text keys are their UTF-8 bytes
SELECT hashtree.partition_of('a', 'b', 'clé') = hashtree.partition_of('a', 'b', convert_to('clé', 'UTF8'));
SELECT hashtree.partition_of(NULL, 'b', 'k');
SELECT hashtree.partition_of('a', NULL, 'k');
SELECT hashtree.partition_of('a', 'b', NULL::bytea);
