/* hashtree--0.1.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION hashtree" to load this file. \quit

-- The schema is created by CREATE EXTENSION (control file: schema = hashtree).
-- Ordinary users may look at the public views and call the pure functions;
-- everything else is granted explicitly by the administrator.
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

---------------------------------------------------------------------------
-- Internal helpers used by the tables' indexes and by the aggregates.
---------------------------------------------------------------------------

-- index identity of a key: the key up to 64 bytes, else a digest form
CREATE FUNCTION @extschema@._kid(key bytea) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_kid'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- sums of digests, the node hashes (see docs/DESIGN.md)
CREATE FUNCTION @extschema@._entry_sum_step(internal, bytea, bytea) RETURNS internal
	AS 'MODULE_PATHNAME', 'ht_entry_sum_step'
	LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION @extschema@._child_sum_step(internal, bigint, bytea) RETURNS internal
	AS 'MODULE_PATHNAME', 'ht_child_sum_step'
	LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE FUNCTION @extschema@._sum_final(internal) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_sum_final'
	LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;

CREATE AGGREGATE @extschema@._entry_sum(bytea, bytea) (
	SFUNC = @extschema@._entry_sum_step,
	STYPE = internal,
	FINALFUNC = @extschema@._sum_final
);
CREATE AGGREGATE @extschema@._child_sum(bigint, bytea) (
	SFUNC = @extschema@._child_sum_step,
	STYPE = internal,
	FINALFUNC = @extschema@._sum_final
);
CREATE FUNCTION @extschema@._hash_sum_step(internal, bytea) RETURNS internal
	AS 'MODULE_PATHNAME', 'ht_hash_sum_step'
	LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE AGGREGATE @extschema@._hash_sum(bytea) (
	SFUNC = @extschema@._hash_sum_step,
	STYPE = internal,
	FINALFUNC = @extschema@._sum_final
);

---------------------------------------------------------------------------
-- Storage.  See docs/DESIGN.md for the layout and the invariants.
---------------------------------------------------------------------------

-- One row per partition, created here from hashtree.partitions.
CREATE TABLE @extschema@.partition (
	part			int4 PRIMARY KEY,
	built			boolean NOT NULL DEFAULT true,
	built_at		timestamptz,
	builds			int8 NOT NULL DEFAULT 0,
	jitter			float8 NOT NULL DEFAULT random(),
	lock_pid		int4,
	lock_start		timestamptz,	-- start time of the owner backend (identity)
	locked_at		timestamptz,
	last_update		timestamptz,
	updates			int8 NOT NULL DEFAULT 0,
	last_update_segments int8,
	last_update_nodes int8,
	last_update_ms	float8
);

-- Entries of every tree.  depth 2: the user's entries (prefix_a, prefix_b,
-- key -> hash); depth 1 and 0: derived entries written by update/reset (a
-- child tree's name -> its top hash).
CREATE TABLE @extschema@.entry (
	part			int4 NOT NULL,
	seg				int4 NOT NULL,
	depth			int2 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL,
	key				bytea NOT NULL,
	hash			bytea NOT NULL,
	version			timestamptz		-- the writer's (DESIGN §20); NULL: the commit time
) WITH (fillfactor = 90);
CREATE UNIQUE INDEX entry_key ON @extschema@.entry
	(part, depth, pa, pb, seg, @extschema@._kid(key));

-- Tree nodes: level 3 rows hold segment hashes (child = segment), level 2
-- rows hold level-3 bucket hashes (child = bucket), the level 1 row holds
-- the top hash (child 0).  n = number of entries below.  Zero (empty) hashes
-- are never stored.  subs: in the level-2 rows of a leaf tree whose packs
-- cover one sub-bucket each (a big tracked table), the hashes of the
-- bucket's sub-buckets that packs hold (DESIGN §2); NULL elsewhere.
CREATE TABLE @extschema@.node (
	part			int4 NOT NULL,
	child			int8 NOT NULL,
	n				int8 NOT NULL,
	depth			int2 NOT NULL,
	level			int2 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL,
	hash			bytea NOT NULL,
	subs			bytea,
	PRIMARY KEY (part, depth, pa, pb, level, child)
) WITH (fillfactor = 80);

-- Segments of leaf trees changed since the last update (append-only log:
-- writers never wait on each other here; update deletes what it folds).
CREATE TABLE @extschema@.dirty (
	part			int4 NOT NULL,
	seg				int4 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL
);
CREATE INDEX dirty_part ON @extschema@.dirty (part);

-- Peers: other nodes, reached over libpq.
CREATE TABLE @extschema@.peer (
	name			text PRIMARY KEY,
	conninfo		text NOT NULL,
	added_at		timestamptz NOT NULL DEFAULT now()
);

-- Tracked tables: the registry.  prefix_a = schema_name, prefix_b =
-- table_name; signature = the key, columns (and partitions) last hashed.
CREATE TABLE @extschema@.tracked_table (
	schema_name		text NOT NULL,
	table_name		text NOT NULL,
	key_columns		text NOT NULL,
	signature		text NOT NULL,
	tracked_at		timestamptz NOT NULL DEFAULT now(),
	tombstones		boolean NOT NULL DEFAULT false,
	version_column	text,
	PRIMARY KEY (schema_name, table_name)
);

-- Keys of tracked rows changed since the last update, appended by the row
-- trigger (a plain heap insert: no index, nothing shared between writers).
-- key NULL: hash the table's rows of this partition again (TRUNCATE).
-- hash: the row hash of the version written, '' when the row went away,
-- NULL when not known (logged before 1.0): the fold reads the row.
-- One table per partition, dirty_key_<part> (created with the partitions
-- below), which the trigger writes directly: the fold of a partition reads
-- its own keys only.
CREATE TABLE @extschema@.dirty_key (
	part			int4 NOT NULL,
	seg				int4 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL,
	key				bytea,
	hash			bytea,
	version			bytea
) PARTITION BY LIST (part);

-- Entries of tracked tables, packed: one row holds the entries of `span`
-- consecutive segments [lo, lo + span) of one leaf tree in one partition,
-- sorted by (segment, key).  Written only by the re-hash of a table (which
-- builds them all, one span per tree and partition) and by the fold of its
-- logged keys (which rewrites the packs it changes); an entry of a segment
-- no pack covers is a row of hashtree.entry.  See docs/DESIGN.md.
CREATE TABLE @extschema@.entry_pack (
	part			int4 NOT NULL,
	lo				int4 NOT NULL,
	span			int4 NOT NULL CHECK (span > 0),
	n				int4 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL,
	data			bytea NOT NULL,
	sum				bytea,			-- the pack's term in its bucket's hash (NULL: zero)
	PRIMARY KEY (part, pa, pb, lo)
) WITH (toast_tuple_target = 8160, fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05);
-- (packs are incompressible: kept in line up to a page, never compressed;
-- the room left on each page lets the fold's rewrites be HOT updates, and
-- the versions they leave are vacuumed before they add more than 5%)
ALTER TABLE @extschema@.entry_pack ALTER COLUMN data SET STORAGE EXTERNAL;

-- pg_dump keeps the configuration and the entries written through the API;
-- trees, and the entries of tracked tables, are derived from data that is
-- dumped anyway, and rebuilt after a restore (reset).
SELECT pg_catalog.pg_extension_config_dump('@extschema@.peer', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tracked_table', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.entry',
	'WHERE depth = 2 AND NOT EXISTS (SELECT 1 FROM @extschema@.tracked_table t'
	' WHERE t.schema_name = pa AND t.table_name = pb)');

-- the entries of one pack: (segment, key, hash), by segment and key
CREATE FUNCTION @extschema@._unpack(lo int4, data bytea)
	RETURNS TABLE(seg int4, key bytea, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_unpack'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- a pack's term in its level-3 bucket's hash, and its number of entries
CREATE FUNCTION @extschema@._pack_sum(lo int4, data bytea, OUT hash bytea, OUT n int8)
	AS 'MODULE_PATHNAME', 'ht_pack_sum'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- the sub-bucket hashes a level-2 row keeps (node.subs) with the fold's
-- deltas added: both lists of (index in the bucket, 32 bytes), by index
CREATE FUNCTION @extschema@._subs_add(subs bytea, deltas bytea) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_subs_add_sql'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

-- the packed entries of one segment, found by the lookup the C code uses
-- (src/pack.c: the tree's span, then the pack at lo = seg - seg % span)
CREATE FUNCTION @extschema@._pack_seg("partition" int, prefix_a text, prefix_b text, seg int4)
	RETURNS TABLE(key bytea, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_pack_seg'
	LANGUAGE C STABLE STRICT;

-- every leaf (depth 2) entry: the plain rows and the packed ones
CREATE VIEW @extschema@.leaf_entry AS
	SELECT e.part, e.pa, e.pb, e.seg, e.key, e.hash
	  FROM @extschema@.entry e WHERE e.depth = 2
	UNION ALL
	SELECT p.part, p.pa, p.pb, u.seg, u.key, u.hash
	  FROM @extschema@.entry_pack p CROSS JOIN LATERAL @extschema@._unpack(p.lo, p.data) u;

REVOKE ALL ON @extschema@.partition, @extschema@.entry, @extschema@.node,
	@extschema@.entry_pack, @extschema@.leaf_entry,
	@extschema@.dirty, @extschema@.peer, @extschema@.tracked_table,
	@extschema@.dirty_key FROM PUBLIC;

-- create the partitions (reads hashtree.partitions)
CREATE FUNCTION @extschema@._create_partitions() RETURNS int
	AS 'MODULE_PATHNAME', 'ht_create_partitions'
	LANGUAGE C VOLATILE;
SELECT @extschema@._create_partitions();
DROP FUNCTION @extschema@._create_partitions();

-- Any write to these tables that does not come from the extension's own
-- code (a restore, a manual DELETE) marks every tree as not built.
CREATE FUNCTION @extschema@._guard() RETURNS trigger
	AS 'MODULE_PATHNAME', 'ht_guard'
	LANGUAGE C SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE TRIGGER guard AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON @extschema@.entry FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard();
CREATE TRIGGER guard AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON @extschema@.node FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard();
CREATE TRIGGER guard AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON @extschema@.entry_pack FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard();
CREATE TRIGGER guard AFTER DELETE OR UPDATE OR TRUNCATE
	ON @extschema@.dirty FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard();
CREATE TRIGGER guard AFTER DELETE OR UPDATE OR TRUNCATE
	ON @extschema@.dirty_key FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard();
-- (a restore loads the registry of tracked tables, whose entries are not dumped)
CREATE TRIGGER guard AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
	ON @extschema@.tracked_table FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard();

-- the tables of dirty_key, one per partition, guarded like it (a statement
-- trigger of a partitioned table does not fire for its partitions)
DO $$
DECLARE
	p int;
BEGIN
	FOR p IN SELECT part FROM @extschema@.partition ORDER BY part LOOP
		EXECUTE format('CREATE TABLE @extschema@.%I PARTITION OF @extschema@.dirty_key'
					   ' FOR VALUES IN (%s)', 'dirty_key_' || p, p);
		EXECUTE format('REVOKE ALL ON @extschema@.%I FROM PUBLIC', 'dirty_key_' || p);
		EXECUTE format('CREATE TRIGGER guard AFTER DELETE OR UPDATE OR TRUNCATE'
					   ' ON @extschema@.%I FOR EACH STATEMENT'
					   ' EXECUTE FUNCTION @extschema@._guard()', 'dirty_key_' || p);
	END LOOP;
END $$;

---------------------------------------------------------------------------
-- Pure functions (no table access): callable by everyone.
---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.segment_of(key bytea, segments int DEFAULT 1048576) RETURNS int
	AS 'MODULE_PATHNAME', 'ht_segment_of_sql'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.name(partition int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_name'
	LANGUAGE C STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.node_name() RETURNS text
	AS 'MODULE_PATHNAME', 'ht_node_name_sql'
	LANGUAGE C STABLE;

CREATE FUNCTION @extschema@.partition_of(prefix_a text, prefix_b text, key bytea) RETURNS int
	AS 'MODULE_PATHNAME', 'ht_partition_of'
	LANGUAGE C STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.partition_of(prefix_a text, prefix_b text, key text) RETURNS int
	AS 'MODULE_PATHNAME', 'ht_partition_of_text'
	LANGUAGE C STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

---------------------------------------------------------------------------
-- Entries
---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.insert(prefix_a text, prefix_b text, key bytea, hash bytea,
								   if_missing boolean DEFAULT false) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.insert(prefix_a text, prefix_b text, key text, hash bytea,
								   if_missing boolean DEFAULT false) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.insert("partition" int, prefix_a text, prefix_b text, key bytea,
								   hash bytea, if_missing boolean) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert_partition'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.insert("partition" int, prefix_a text, prefix_b text, key text,
								   hash bytea, if_missing boolean) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert_partition_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.delete(prefix_a text, prefix_b text, key bytea) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.delete(prefix_a text, prefix_b text, key text) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.delete("partition" int, prefix_a text, prefix_b text, key bytea) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete_partition'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.delete("partition" int, prefix_a text, prefix_b text, key text) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete_partition_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- insert() and delete() with a version (repair 'newest'; NULL: the commit
-- time, or for a delete the time of the call), DESIGN §20
CREATE FUNCTION @extschema@.insert(prefix_a text, prefix_b text, key bytea, hash bytea,
								   if_missing boolean, version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.insert(prefix_a text, prefix_b text, key text, hash bytea,
								   if_missing boolean, version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.insert("partition" int, prefix_a text, prefix_b text, key bytea,
								   hash bytea, if_missing boolean, version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert_partition'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.insert("partition" int, prefix_a text, prefix_b text, key text,
								   hash bytea, if_missing boolean, version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_insert_partition_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.delete(prefix_a text, prefix_b text, key bytea,
								   version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.delete(prefix_a text, prefix_b text, key text,
								   version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.delete("partition" int, prefix_a text, prefix_b text, key bytea,
								   version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete_partition'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.delete("partition" int, prefix_a text, prefix_b text, key text,
								   version timestamptz) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_delete_partition_text'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

---------------------------------------------------------------------------
-- Reading trees (local, or on a peer when node names one)
---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.prefix_hash("partition" int, prefix_a text, prefix_b text DEFAULT NULL)
	RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_prefix_hash'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.top_hash("partition" int) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_top_hash'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.get_bucket(node text, "partition" int, prefixes text[], level int,
									   bucket bigint)
	RETURNS TABLE(child bigint, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_get_bucket'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.key_hashes(node text, "partition" int, prefixes text[], segment bigint)
	RETURNS TABLE(key bytea, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_key_hashes'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- batched reads used by compare (one round trip per tree level); _nodes reads
-- children firsts[i] .. firsts[i] + span - 1 of a level (1 to 3, or 4: the
-- sub-buckets of 32 segments) and packs each request's into one value: per
-- child, the gap since the previous one (from firsts[i]; a varint: 7-bit
-- groups, low first, high bit = more) and the first hash_bytes bytes of its
-- hash
CREATE FUNCTION @extschema@._nodes("partition" int, depth int, pa text[], pb text[], level int,
								   firsts bigint[], span bigint, hash_bytes int DEFAULT 8)
	RETURNS TABLE(i int, children bytea)
	AS 'MODULE_PATHNAME', 'ht_nodes_sql'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@._entries("partition" int, depth int, pa text[], pb text[],
									 segments int[], hash_bytes int DEFAULT 0)
	RETURNS TABLE(i int, key bytea, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_entries_sql'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- the same for requests of several partitions (partitions[i] is request i's):
-- an exchange walks the trees of all its partitions in the same round trips
CREATE FUNCTION @extschema@._nodes_m(partitions int[], depth int, pa text[], pb text[],
									 level int, firsts bigint[], span bigint, hash_bytes int)
	RETURNS TABLE(i int, children bytea)
	AS 'MODULE_PATHNAME', 'ht_nodes_m_sql'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@._entries_m(partitions int[], depth int, pa text[], pb text[],
									   segments int[], hash_bytes int)
	RETURNS TABLE(i int, key bytea, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_entries_m_sql'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- two levels of the walk per round trip: the caller's children of a level
-- compared here, the next level under those that differ answered
CREATE FUNCTION @extschema@._descend_m(partitions int[], depth int, pa text[], pb text[],
									   level int, firsts bigint[], span bigint, hash_bytes int,
									   children bytea[])
	RETURNS TABLE(i int, child bigint, children bytea, key bytea, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_descend_m_sql'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- what a peer learns about us when it connects
CREATE FUNCTION @extschema@._hello(OUT version text, OUT partitions int, OUT node text)
	AS 'MODULE_PATHNAME', 'ht_hello'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

---------------------------------------------------------------------------
-- Locks, update, reset, compare
---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.lock("partition" int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_lock'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.lock(node text, "partition" int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_lock'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.lock(node text, "partition" int, pid int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_lock'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.release_lock("partition" int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_release_lock'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.release_lock(node text, "partition" int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_release_lock'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.release_lock(node text, "partition" int, pid int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_release_lock'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.update("partition" int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_update'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.update(node text, "partition" int) RETURNS text
	AS 'MODULE_PATHNAME', 'ht_update'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.reset("partition" int) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_reset'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.reset(node text, "partition" int) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_reset'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.compare("partition" int, node text)
	RETURNS TABLE(kind text, prefix_a text, prefix_b text, key bytea)
	AS 'MODULE_PATHNAME', 'ht_compare_sql'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- amcheck-style verification: rows where the stored tree differs from the
-- tree a reset would build from the current entries (empty = consistent)
CREATE FUNCTION @extschema@.check_tree("partition" int)
	RETURNS TABLE(depth int, prefix_a text, prefix_b text, level int, child bigint,
				  stored bytea, expected bytea)
	AS 'MODULE_PATHNAME', 'ht_check_tree'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

---------------------------------------------------------------------------
-- Tracked tables
---------------------------------------------------------------------------

-- the row trigger and the TRUNCATE trigger put on tracked tables (by track(),
-- as the extension owner).  EXECUTE stays granted to PUBLIC: PostgreSQL checks
-- it when it clones the row trigger onto a partition created by the table's
-- owner, and when a dump is restored by a non-superuser.  They refuse to work
-- as any trigger but hashtree's own on a registered tracked table.
CREATE FUNCTION @extschema@._track_row() RETURNS trigger
	AS 'MODULE_PATHNAME', 'ht_track_row'
	LANGUAGE C;
CREATE FUNCTION @extschema@._track_truncate() RETURNS trigger
	AS 'MODULE_PATHNAME', 'ht_track_truncate'
	LANGUAGE C;

CREATE FUNCTION @extschema@.track(tbl regclass, version_column name DEFAULT NULL) RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_track'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.untrack(tbl regclass) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_untrack'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- the canonical encodings, for anyone to check
CREATE FUNCTION @extschema@.row_hash(tbl regclass, r record) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_row_hash_sql'
	LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.row_key(tbl regclass, r record) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_row_key_sql'
	LANGUAGE C STABLE;

-- schema changes of tracked tables
CREATE FUNCTION @extschema@._ddl_table(relid oid, cmd pg_catalog.pg_ddl_command) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_ddl_table'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._ddl_dropped(triggers_dropped boolean) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_ddl_dropped'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._frag_dropped() RETURNS void
	AS 'MODULE_PATHNAME', 'ht_frag_dropped'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._ddl_type(typid oid) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_ddl_type'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._ddl_check_all() RETURNS void
	AS 'MODULE_PATHNAME', 'ht_ddl_check_all'
	LANGUAGE C VOLATILE;

CREATE FUNCTION @extschema@._on_ddl_end() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$
DECLARE
	r record;
BEGIN
	IF NOT EXISTS (SELECT 1 FROM @extschema@.tracked_table) THEN
		RETURN;
	END IF;
	-- a renamed schema or trigger: every tracked table must be as registered
	IF TG_TAG OPERATOR(pg_catalog.=) 'ALTER TRIGGER'::text
	   OR TG_TAG OPERATOR(pg_catalog.=) 'ALTER SCHEMA'::text THEN
		PERFORM @extschema@._ddl_check_all();
		RETURN;
	END IF;
	-- a changed type (an enum label renamed, a composite's attributes) changes
	-- the row hashes of the tracked tables that use it
	IF TG_TAG OPERATOR(pg_catalog.=) 'ALTER TYPE'::text THEN
		FOR r IN SELECT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() c
				  WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_type'::pg_catalog.regclass::pg_catalog.oid
		LOOP
			PERFORM @extschema@._ddl_type(r.objid);
		END LOOP;
		RETURN;
	END IF;
	FOR r IN SELECT c.objid, c.command FROM pg_catalog.pg_event_trigger_ddl_commands() c
			  WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid
				AND (c.object_type OPERATOR(pg_catalog.=) 'table'::text
					 OR c.object_type OPERATOR(pg_catalog.=) 'table column'::text)
	LOOP
		PERFORM @extschema@._ddl_table(r.objid, r.command);
	END LOOP;
END
$$;

CREATE FUNCTION @extschema@._on_sql_drop() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$
DECLARE
	triggers boolean;
BEGIN
	IF (EXISTS (SELECT 1 FROM @extschema@.tracked_table) OR EXISTS (SELECT 1 FROM @extschema@.frag_table))
	   AND EXISTS (SELECT 1 FROM pg_event_trigger_dropped_objects() d
				   WHERE d.object_type IN ('table', 'index', 'trigger', 'schema',
										   'table constraint'))
	THEN
		-- the tracking triggers are checked only when a trigger of that name
		-- was dropped: an unrelated DROP never fails because of them
		triggers := EXISTS (
			SELECT 1 FROM pg_catalog.pg_event_trigger_dropped_objects() d
			 WHERE d.object_type OPERATOR(pg_catalog.=) 'trigger'::text
			   AND pg_catalog.starts_with(d.object_identity, 'hashtree_track'));
		PERFORM @extschema@._ddl_dropped(triggers);
		PERFORM @extschema@._frag_dropped();
	END IF;
END
$$;

CREATE EVENT TRIGGER hashtree_ddl_end ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE', 'CREATE TABLE', 'ALTER TRIGGER', 'ALTER SCHEMA', 'ALTER TYPE')
	EXECUTE FUNCTION @extschema@._on_ddl_end();
CREATE EVENT TRIGGER hashtree_sql_drop ON sql_drop
	EXECUTE FUNCTION @extschema@._on_sql_drop();
-- also under session_replication_role = replica: tracking is never switched
-- off behind hashtree's back
ALTER EVENT TRIGGER hashtree_ddl_end ENABLE ALWAYS;
ALTER EVENT TRIGGER hashtree_sql_drop ENABLE ALWAYS;

-- rows: entries as of the last update; pending: keys logged since
CREATE VIEW @extschema@.tracked AS
	SELECT to_regclass(format('%I.%I', t.schema_name, t.table_name)) AS relation,
		   t.schema_name,
		   t.table_name,
		   t.key_columns,
		   t.tracked_at,
		   (SELECT coalesce(sum(n.n), 0)::int8
			  FROM @extschema@.partition p
			  JOIN @extschema@.node n ON n.part = p.part AND n.depth = 2
			   AND n.pa = t.schema_name AND n.pb = t.table_name
			   AND n.level = 1 AND n.child = 0) AS rows,
		   (SELECT count(*) FROM @extschema@.dirty_key k
			 WHERE k.pa = t.schema_name AND k.pb = t.table_name) AS pending,
		   CASE WHEN EXISTS (SELECT 1 FROM @extschema@.partition p WHERE NOT p.built)
				THEN 'not built'
				WHEN EXISTS (SELECT 1 FROM @extschema@.dirty_key k
							  WHERE k.pa = t.schema_name AND k.pb = t.table_name)
				THEN 'pending'
				ELSE 'current' END AS state,
		   t.version_column,
		   (SELECT a.atttypid::regtype FROM pg_catalog.pg_attribute a
			 WHERE a.attrelid = to_regclass(format('%I.%I', t.schema_name, t.table_name))
			   AND a.attname = t.version_column AND a.attnum > 0
			   AND NOT a.attisdropped) AS version_type
	  FROM @extschema@.tracked_table t;

GRANT SELECT ON @extschema@.tracked TO PUBLIC;

---------------------------------------------------------------------------
-- Peers
---------------------------------------------------------------------------

CREATE FUNCTION @extschema@.add_peer(name text, conninfo text) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_add_peer'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@.drop_peer(name text) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_drop_peer'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- true for superusers and members of the extension owner's role
CREATE FUNCTION @extschema@._privileged() RETURNS boolean
	AS 'MODULE_PATHNAME', 'ht_privileged'
	LANGUAGE C STABLE;

CREATE VIEW @extschema@.peers AS
	SELECT p.name,
		   CASE WHEN @extschema@._privileged() THEN p.conninfo END AS conninfo,
		   p.added_at
	  FROM @extschema@.peer p;

---------------------------------------------------------------------------
-- Anti-entropy: exchange with a peer, its log, and the repair helpers
---------------------------------------------------------------------------

-- One row per exchange and partition, by exchange() and by the workers.
-- outcome: ok (compared; the counts are the differences found), skipped_locked,
-- not_built (one side could not take part), error (message says why; the
-- counts are zero: a failed exchange never reports "no differences").  The
-- partitions of one exchange proceed together and share its round trips:
-- bytes and round_trips are those of the whole exchange, on each of its
-- rows, and run is the id of its first row (summed without double counting:
-- sum(round_trips) FILTER (WHERE id = run)).
CREATE TABLE @extschema@.exchange_log (
	id				bigserial PRIMARY KEY,
	peer			text NOT NULL,
	"partition"		int4 NOT NULL,
	repair			text NOT NULL CHECK (repair IN ('none', 'pull', 'push', 'newest')),
	worker			boolean NOT NULL DEFAULT false,
	started			timestamptz NOT NULL,
	finished		timestamptz NOT NULL,
	outcome			text NOT NULL
		CHECK (outcome IN ('ok', 'skipped_locked', 'not_built', 'error')),
	message			text,
	missing			int8 NOT NULL DEFAULT 0,
	remote_missing	int8 NOT NULL DEFAULT 0,
	different		int8 NOT NULL DEFAULT 0,
	missing_prefix	int8 NOT NULL DEFAULT 0,
	remote_missing_prefix int8 NOT NULL DEFAULT 0,
	repaired		int8 NOT NULL DEFAULT 0,
	bytes			int8 NOT NULL DEFAULT 0,
	round_trips		int8 NOT NULL DEFAULT 0,
	run				int8 NOT NULL,
	rows_local		int8 NOT NULL DEFAULT 0,
	rows_remote		int8 NOT NULL DEFAULT 0
);
CREATE INDEX exchange_log_started ON @extschema@.exchange_log (started);
REVOKE ALL ON @extschema@.exchange_log FROM PUBLIC;
REVOKE ALL ON SEQUENCE @extschema@.exchange_log_id_seq FROM PUBLIC;

CREATE FUNCTION @extschema@.exchange(peer text, "partition" int DEFAULT NULL,
									 repair text DEFAULT 'none')
	RETURNS TABLE("partition" int, kind text, prefix_a text, prefix_b text, key bytea,
				  repaired boolean, winner text)
	AS 'MODULE_PATHNAME', 'ht_exchange'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- the peer's side of an exchange: lock, update and top hash of each partition
-- (each in a subtransaction), then the release of those locks
CREATE FUNCTION @extschema@._exchange_begin(partitions int[], hash_bytes int,
											prefix_entries int)
	RETURNS TABLE("partition" int, lock text, update text, sqlstate text, message text,
				  top bytea, entries int, depth int2, pa text, key bytea)
	AS 'MODULE_PATHNAME', 'ht_exchange_begin'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@._exchange_end(partitions int[])
	RETURNS TABLE("partition" int, answer text)
	AS 'MODULE_PATHNAME', 'ht_exchange_end'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

-- Repair helpers, called by the exchanging node on itself and on the peer.
-- Plain entries:
CREATE FUNCTION @extschema@._prefix_children("partition" int, prefix_a text)
	RETURNS SETOF text
	LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT n.pb FROM @extschema@.node n
		   WHERE n.part = $1 AND n.depth = 2 AND n.pa = $2 AND n.level = 1
		   ORDER BY n.pb $$;
CREATE FUNCTION @extschema@._prefix_entries("partition" int, prefix_a text, prefix_b text)
	RETURNS TABLE(key bytea, hash bytea)
	LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT e.key, e.hash FROM @extschema@.leaf_entry e
		   WHERE e.part = $1 AND e.pa = $2 AND e.pb = $3 $$;
CREATE FUNCTION @extschema@._entries_by_key("partition" int, prefix_a text, prefix_b text,
											keys bytea[])
	RETURNS TABLE(key bytea, hash bytea)
	LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$ SELECT e.key, e.hash FROM unnest($4) u(k)
		   CROSS JOIN LATERAL (SELECT x.key, x.hash FROM @extschema@.entry x
								WHERE x.part = $1 AND x.depth = 2 AND x.pa = $2 AND x.pb = $3
								  AND x.seg = @extschema@.segment_of(u.k)
								  AND @extschema@._kid(x.key) = @extschema@._kid(u.k)
								  AND x.key = u.k
								UNION ALL
								SELECT y.key, y.hash
								  FROM @extschema@._pack_seg($1, $2, $3,
															 @extschema@.segment_of(u.k)) y
								 WHERE y.key = u.k LIMIT 1) e $$;
CREATE FUNCTION @extschema@._apply_entries("partition" int, prefix_a text, prefix_b text,
										   keys bytea[], hashes bytea[])
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_apply_entries'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
CREATE FUNCTION @extschema@._drop_entries("partition" int, prefix_a text, prefix_b text)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_drop_entries'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- Rows of tracked tables, in a transport form (per-column values by name:
-- the binary send form of built-in types, else text under pinned output
-- settings) with their row hashes.  They check the rights of the calling
-- role (exchange(): its caller; on a peer: the connection's role) and read
-- and write the rows as the table's owner in a security-restricted
-- operation.
CREATE FUNCTION @extschema@._row_partition(tbl oid, r record) RETURNS int
	AS 'MODULE_PATHNAME', 'ht_row_partition'
	LANGUAGE C STABLE;
CREATE FUNCTION @extschema@._rows_by_key(schema_name text, table_name text, keys bytea[])
	RETURNS TABLE(key bytea, hash bytea, r bytea)
	AS 'MODULE_PATHNAME', 'ht_rows_by_key'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._partition_rows(schema_name text, table_name text, "partition" int)
	RETURNS TABLE(key bytea, hash bytea, r bytea)
	AS 'MODULE_PATHNAME', 'ht_partition_rows'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._apply_rows(schema_name text, table_name text, rows bytea[],
										hashes bytea[], deletes bytea[])
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_apply_rows'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._delete_partition_rows(schema_name text, table_name text,
												   "partition" int)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_delete_partition_rows'
	LANGUAGE C VOLATILE;

---------------------------------------------------------------------------
-- Fragmented tables: hash partitions that follow linear hashing (mnesia's
-- mnesia_frag_hash).  Fragment k of a table with state (N, P, L) is the
-- partition (MODULUS 2^(L+1), REMAINDER k-1) when k < P or k > 2^L, else
-- (MODULUS 2^L, REMAINDER k-1).
---------------------------------------------------------------------------

-- The registry: one row per fragmented table.  op*: an online add_frag or
-- del_frag under way (its capture triggers are on op_sources, its new tables
-- are op_helpers); an interrupted one is rolled back by the next operation.
-- An online move_frag records op_fragment, op_node (where it goes, NULL:
-- here), op_remote (its new table there) and op_filenode (of the table it
-- leaves on a peer: a TRUNCATE there changes it).  An online add_frag or
-- del_frag with fragments on peers records op_node (add_frag's node) and in
-- op_remote its targets' tables on peers ('-': here), then its sources'
-- relfilenodes there (0: here), space-separated.
-- fragment_keys: the table's unique constraints, kept by each fragment
-- ('PRIMARY KEY (id)', 'UNIQUE (a, b)') instead of the parent, once a
-- fragment went to another server; NULL: the parent has them (DESIGN §19).
CREATE TABLE @extschema@.frag_table (
	parent			regclass PRIMARY KEY,
	n_fragments		int4 NOT NULL,
	next_n_to_split	int4 NOT NULL,
	n_doubles		int4 NOT NULL,
	op				text CHECK (op IN ('add_frag', 'del_frag', 'move_frag')),
	op_phase		text CHECK (op_phase IN ('preparing', 'prepared')),
	op_sources		oid[],
	op_helpers		oid[],
	op_error		text,
	op_moved		int8,
	fragment_keys	text[],
	op_fragment		int4,
	op_node			text,
	op_remote		text,
	op_filenode		int8,
	CHECK (n_doubles BETWEEN 0 AND 30 AND next_n_to_split BETWEEN 1 AND (1 << n_doubles)
		   AND n_fragments = (1 << n_doubles) + next_n_to_split - 1)
);
REVOKE ALL ON @extschema@.frag_table FROM PUBLIC;
GRANT SELECT ON @extschema@.frag_table TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.frag_table', '');

-- The postgres_fdw server derived from a peer for the fragments placed there
-- (owned by the extension's owner; its user mapping FOR PUBLIC holds the
-- credentials).
CREATE TABLE @extschema@.frag_server (
	peer			text PRIMARY KEY,
	server			text NOT NULL UNIQUE
);
REVOKE ALL ON @extschema@.frag_server FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.frag_server', '');

-- This node's identity in the names of its tables on peers (DESIGN §19):
-- the system identifier at first; a random one from the first fragment
-- operation that finds this server's system identifier or timeline changed
-- (a physical copy promoted, a backup restored), so that a copy never takes
-- the node's tables on peers for its own.  Not dumped: a restored dump is
-- another node, and its CREATE EXTENSION makes its own.
CREATE TABLE @extschema@.node_identity (
	single			bool PRIMARY KEY DEFAULT true CHECK (single),
	node_id			int8 NOT NULL,
	system_identifier	int8 NOT NULL,
	timeline		int8 NOT NULL
);
REVOKE ALL ON @extschema@.node_identity FROM PUBLIC;
INSERT INTO @extschema@.node_identity (node_id, system_identifier, timeline)
	SELECT s.system_identifier, s.system_identifier, c.timeline_id
	  FROM pg_catalog.pg_control_system() s, pg_catalog.pg_control_checkpoint() c;

CREATE TYPE @extschema@.frag_state AS (n_fragments int, next_n_to_split int, n_doubles int);

-- The functions below run with the caller's rights: changing a table's
-- fragments needs its ownership, as ALTER TABLE does.
CREATE FUNCTION @extschema@.frag_number(n_fragments int, hash numeric) RETURNS int
	AS 'MODULE_PATHNAME', 'ht_frag_number'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
-- nodes: fragment k goes to nodes[(k - 1) % length] (NULL or this node: here)
CREATE FUNCTION @extschema@.frag_init(tbl regclass, n_fragments int DEFAULT 1,
									   nodes text[] DEFAULT NULL)
	RETURNS @extschema@.frag_state
	AS 'MODULE_PATHNAME', 'ht_frag_init'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@.frag_activate(tbl regclass) RETURNS @extschema@.frag_state
	AS 'MODULE_PATHNAME', 'ht_frag_activate'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@.frag_state(tbl regclass) RETURNS @extschema@.frag_state
	AS 'MODULE_PATHNAME', 'ht_frag_state'
	LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.frag_names(tbl regclass) RETURNS SETOF regclass
	AS 'MODULE_PATHNAME', 'ht_frag_names'
	LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.frag_size(tbl regclass, exact boolean DEFAULT false)
	RETURNS TABLE(fragment int, relation regclass, rows bigint)
	AS 'MODULE_PATHNAME', 'ht_frag_size'
	LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.key_to_frag_number(tbl regclass, VARIADIC key "any") RETURNS int
	AS 'MODULE_PATHNAME', 'ht_key_to_frag_number'
	LANGUAGE C STABLE;
CREATE FUNCTION @extschema@.match_spec_to_frag_numbers(tbl regclass, predicate text) RETURNS int[]
	AS 'MODULE_PATHNAME', 'ht_match_spec_to_frag_numbers'
	LANGUAGE C STABLE;

-- node: where the new fragment goes (NULL: here).  Fragments elsewhere, and
-- a node, need EXECUTE on move_frag (they are moved with it)
CREATE FUNCTION @extschema@.add_frag(tbl regclass, mode text DEFAULT 'online',
									  node text DEFAULT NULL)
	RETURNS TABLE(n_fragments int, next_n_to_split int, n_doubles int, iter_frags int[],
				  additional_lock_frags int[], moved_rows bigint)
	AS 'MODULE_PATHNAME', 'ht_add_frag'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@.del_frag(tbl regclass, mode text DEFAULT 'online')
	RETURNS TABLE(n_fragments int, next_n_to_split int, n_doubles int, iter_frags int[],
				  additional_lock_frags int[], moved_rows bigint)
	AS 'MODULE_PATHNAME', 'ht_del_frag'
	LANGUAGE C VOLATILE;
-- moves a fragment to or from a peer: uses peers, so not for PUBLIC (the
-- administrator grants it); the caller must own the table as well
CREATE FUNCTION @extschema@.move_frag(tbl regclass, fragment int, node text,
									   mode text DEFAULT 'online')
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_move_frag'
	LANGUAGE C VOLATILE;
-- logs the keys written to the fragments an online operation is copying (its
-- triggers are created by the extension owner; not executable by PUBLIC, and
-- it refuses to work as any other trigger)
CREATE FUNCTION @extschema@._frag_capture() RETURNS trigger
	AS 'MODULE_PATHNAME', 'ht_frag_capture'
	LANGUAGE C;

CREATE VIEW @extschema@.fragments AS
	SELECT f.parent AS "table",
		   b.remainder + 1 AS fragment,
		   c.oid::regclass AS relation,
		   b.modulus,
		   b.remainder,
		   CASE WHEN c.reltuples >= 0 THEN c.reltuples::int8 END AS row_estimate,
		   CASE WHEN c.relkind <> 'f' THEN @extschema@.node_name()
				ELSE (SELECT s.peer FROM pg_catalog.pg_foreign_table t
						JOIN pg_catalog.pg_foreign_server v ON v.oid = t.ftserver
						JOIN @extschema@.frag_server s ON s.server = v.srvname
					   WHERE t.ftrelid = c.oid) END AS node
	  FROM @extschema@.frag_table f
	  JOIN pg_catalog.pg_inherits i ON i.inhparent = f.parent
	  JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
	 CROSS JOIN LATERAL (
		SELECT substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid) FROM 'modulus (\d+)')::int AS modulus,
			   substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid) FROM 'remainder (\d+)')::int AS remainder) b
	 ORDER BY f.parent::text, b.remainder;
GRANT SELECT ON @extschema@.fragments TO PUBLIC;

-- Schema changes of a table with fragments on other servers: a change of its
-- columns or constraints would reach the foreign partitions here but not
-- their tables on the peers; refused (DESIGN §19)
CREATE FUNCTION @extschema@._frag_ddl(relid oid, cmd pg_catalog.pg_ddl_command) RETURNS void
	AS 'MODULE_PATHNAME', 'ht_frag_ddl'
	LANGUAGE C VOLATILE;
CREATE FUNCTION @extschema@._on_frag_ddl_end() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
	AS $$
DECLARE
	r record;
BEGIN
	-- only when a fragmented table has a fragment elsewhere (a foreign partition)
	IF NOT EXISTS (SELECT 1 FROM @extschema@.frag_table f
					JOIN pg_catalog.pg_inherits i ON i.inhparent OPERATOR(pg_catalog.=) f.parent
					JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
				   WHERE c.relkind OPERATOR(pg_catalog.=) 'f'::"char") THEN
		RETURN;
	END IF;
	FOR r IN SELECT c.objid, c.command FROM pg_catalog.pg_event_trigger_ddl_commands() c
			  WHERE c.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass::pg_catalog.oid
	LOOP
		PERFORM @extschema@._frag_ddl(r.objid, r.command);
	END LOOP;
END
$$;
CREATE EVENT TRIGGER hashtree_frag_ddl_end ON ddl_command_end
	WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION @extschema@._on_frag_ddl_end();
ALTER EVENT TRIGGER hashtree_frag_ddl_end ENABLE ALWAYS;

---------------------------------------------------------------------------
-- Status
---------------------------------------------------------------------------

-- when a partition's trees expire: built_at + tree_ttl * (0.75 + 0.25 * jitter)
CREATE FUNCTION @extschema@._next_expiry(built_at timestamptz, jitter float8) RETURNS timestamptz
	AS 'MODULE_PATHNAME', 'ht_next_expiry'
	LANGUAGE C STABLE;

-- the live owner of a partition lock (NULL when none or when it exited)
CREATE FUNCTION @extschema@._lock_owner(pid int, start timestamptz) RETURNS int
	AS 'MODULE_PATHNAME', 'ht_lock_owner'
	LANGUAGE C VOLATILE;

CREATE VIEW @extschema@.status AS
	SELECT p.part AS "partition",
		   'hashtree_partition_' || p.part AS name,
		   p.built,
		   o.owner AS lock_owner,
		   CASE WHEN o.owner IS NOT NULL THEN p.locked_at END AS locked_at,
		   p.last_update,
		   p.built_at AS last_build,
		   (SELECT coalesce(sum(n.n), 0)::int8 FROM @extschema@.node n
			 WHERE n.part = p.part AND n.depth = 2 AND n.level = 1) AS entries,
		   (SELECT count(*) FROM (SELECT DISTINCT d.pa, d.pb, d.seg FROM @extschema@.dirty d
								   WHERE d.part = p.part) s) AS dirty_segments,
		   CASE WHEN p.built THEN @extschema@._next_expiry(p.built_at, p.jitter) END AS next_expiry,
		   p.updates,
		   p.builds,
		   p.last_update_segments,
		   p.last_update_nodes,
		   p.last_update_ms
	  FROM @extschema@.partition p
	 CROSS JOIN LATERAL (SELECT @extschema@._lock_owner(p.lock_pid, p.lock_start) AS owner) o
	 ORDER BY p.part;

GRANT SELECT ON @extschema@.status, @extschema@.peers TO PUBLIC;

-- Two-way repair (exchange with repair = 'newest', DESIGN §20).
-- Tombstones of the tracked tables that keep them (tombstones()): a deleted
-- key with the commit time of its delete; its entry in the trees is
-- (key, T(deleted_at)).  Expired after hashtree.tombstone_ttl by the fold.
CREATE TABLE @extschema@.tombstone (
	part			int4 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL,
	key				bytea NOT NULL,
	deleted_at		timestamptz NOT NULL,
	version			bytea
);
CREATE UNIQUE INDEX tombstone_key ON @extschema@.tombstone (part, pa, pb, @extschema@._kid(key));
-- The version a repair gave a row it wrote (the winner's): valid while the
-- row's xmin is this row's xmin (written in the same transaction).
CREATE TABLE @extschema@.row_version (
	part			int4 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL,
	key				bytea NOT NULL,
	version			timestamptz NOT NULL
);
CREATE UNIQUE INDEX row_version_key ON @extschema@.row_version (part, pa, pb, @extschema@._kid(key));
REVOKE ALL ON @extschema@.tombstone, @extschema@.row_version FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tombstone', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.row_version', '');
-- keep tombstones of a tracked table (or stop: its tombstones go)
CREATE FUNCTION @extschema@.tombstones(tbl regclass, enable boolean DEFAULT true)
	RETURNS void
	AS 'MODULE_PATHNAME', 'ht_tombstones'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- versions from a column of the table instead of commit times (NULL: back)
CREATE FUNCTION @extschema@.version_column(tbl regclass, col name)
	RETURNS void
	AS 'MODULE_PATHNAME', 'ht_version_column'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- the versions of the rows (and tombstones) of keys, with the rows
CREATE FUNCTION @extschema@._newest_rows(schema_name text, table_name text, "partition" int,
										 keys bytea[])
	RETURNS TABLE(key bytea, hash bytea, r bytea, version timestamptz, dead boolean,
				  vbytes bytea)
	AS 'MODULE_PATHNAME', 'ht_newest_rows'
	LANGUAGE C VOLATILE;
-- write the winners: rows with their versions, tombstones with their times
CREATE FUNCTION @extschema@._newest_apply(schema_name text, table_name text, "partition" int,
										  keys bytea[], rows bytea[], hashes bytea[],
										  versions timestamptz[], deletes bytea[],
										  deleted_at timestamptz[],
										  delete_versions bytea[] DEFAULT NULL)
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_newest_apply'
	LANGUAGE C VOLATILE;

-- Plain prefixes that keep tombstones (tombstones(prefix_a, prefix_b)):
-- their deletes leave a row of tombstone and the entry (key, T(deleted_at)).
CREATE TABLE @extschema@.tombstone_prefix (
	prefix_a		text COLLATE "C" NOT NULL,
	prefix_b		text COLLATE "C" NOT NULL,
	since			timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (prefix_a, prefix_b)
);
REVOKE ALL ON @extschema@.tombstone_prefix FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tombstone_prefix', '');
-- keep tombstones of a plain prefix (or stop: its tombstones go)
CREATE FUNCTION @extschema@.tombstones(prefix_a text, prefix_b text, enable boolean DEFAULT true)
	RETURNS void
	AS 'MODULE_PATHNAME', 'ht_tombstones_prefix'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- the versions of plain entries (and their tombstones) of keys
CREATE FUNCTION @extschema@._newest_entries("partition" int, prefix_a text, prefix_b text,
											keys bytea[])
	RETURNS TABLE(key bytea, hash bytea, version timestamptz, dead boolean)
	AS 'MODULE_PATHNAME', 'ht_newest_entries'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- write the winners: entries with their versions, tombstones with their times
CREATE FUNCTION @extschema@._newest_apply_entries("partition" int, prefix_a text, prefix_b text,
												  keys bytea[], hashes bytea[],
												  versions timestamptz[], deletes bytea[],
												  deleted_at timestamptz[])
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_newest_apply_entries'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;

---------------------------------------------------------------------------
-- Privileges: functions that read or change trees, entries or peers are not
-- for PUBLIC; the administrator grants EXECUTE to the roles that need them.
---------------------------------------------------------------------------

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
	@extschema@.segment_of(bytea, int),
	@extschema@.name(int),
	@extschema@.node_name(),
	@extschema@.partition_of(text, text, bytea),
	@extschema@.partition_of(text, text, text),
	@extschema@._kid(bytea),
	@extschema@._privileged(),
	@extschema@._lock_owner(int, timestamptz),
	@extschema@._next_expiry(timestamptz, float8),
	@extschema@.row_hash(regclass, record),
	@extschema@.row_key(regclass, record),
	@extschema@._track_row(),
	@extschema@._track_truncate(),
	@extschema@.frag_number(int, numeric),
	@extschema@.frag_init(regclass, int, text[]),
	@extschema@.frag_activate(regclass),
	@extschema@.frag_state(regclass),
	@extschema@.frag_names(regclass),
	@extschema@.frag_size(regclass, boolean),
	@extschema@.key_to_frag_number(regclass, "any"),
	@extschema@.match_spec_to_frag_numbers(regclass, text),
	@extschema@.add_frag(regclass, text, text),
	@extschema@.del_frag(regclass, text)
	TO PUBLIC;
