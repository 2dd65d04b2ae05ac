/* hashtree--0.1--1.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION hashtree UPDATE TO '1.0'" to load this file. \quit

-- Every change of an object (a table, function, view, trigger, grant) made
-- in hashtree--1.0.sql is made here too; t/017_upgrade.pl compares an
-- upgraded database with a fresh 1.0 install, privileges included.

-- Packed trees store no segment or sub-bucket rows (docs/DESIGN.md §4):
-- their level-3 buckets add each pack's term (_pack_sum) to the sums of the
-- segments stored as rows (_hash_sum).  _pack_sums is gone (its C function
-- stays in the library, for 0.1's install script).
CREATE FUNCTION @extschema@._hash_sum_step(internal, bytea) RETURNS internal
	AS 'MODULE_PATHNAME', 'ht_hash_sum_step'
	LANGUAGE C CALLED ON NULL INPUT PARALLEL SAFE;
CREATE AGGREGATE @extschema@._hash_sum(bytea) (
	SFUNC = @extschema@._hash_sum_step,
	STYPE = internal,
	FINALFUNC = @extschema@._sum_final
);
DROP FUNCTION @extschema@._pack_sums(int4, bytea, int4[]);
CREATE FUNCTION @extschema@._pack_sum(lo int4, data bytea, OUT hash bytea, OUT n int8)
	AS 'MODULE_PATHNAME', 'ht_pack_sum'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
-- (the install script revokes EXECUTE on every function from PUBLIC)
REVOKE EXECUTE ON FUNCTION @extschema@._hash_sum_step(internal, bytea),
	@extschema@._hash_sum(bytea), @extschema@._pack_sum(int4, bytea) FROM PUBLIC;

-- Each pack stores its term in its level-3 bucket's hash (NULL: zero), which
-- compares and rebuilds read instead of decoding the pack.  The packs 0.1
-- wrote get theirs from the reset of their partition (below: no partition is
-- read before it), not here, which would rewrite every pack once more.  (IF
-- NOT EXISTS: t/017_upgrade.pl fills its 0.1 databases with the current
-- library, which needs the column.)
ALTER TABLE @extschema@.entry_pack ADD COLUMN IF NOT EXISTS sum bytea;

-- The logged keys: the row trigger logs the row hash of the version it saw
-- ('' when the row went away), so that the fold does not read the row
-- again (keys logged before, hash NULL, are read as before); and the log is
-- one table per partition, written directly by the trigger, so that the
-- fold of a partition reads its own keys only.  The keys logged so far move.
ALTER TABLE @extschema@.dirty_key RENAME TO dirty_key_0_1;
CREATE TABLE @extschema@.dirty_key (
	part			int4 NOT NULL,
	seg				int4 NOT NULL,
	pa				text COLLATE "C" NOT NULL,
	pb				text COLLATE "C" NOT NULL,
	key				bytea,
	hash			bytea,
	version			bytea
) PARTITION BY LIST (part);
REVOKE ALL ON @extschema@.dirty_key FROM PUBLIC;
CREATE TRIGGER guard AFTER DELETE OR UPDATE OR TRUNCATE
	ON @extschema@.dirty_key FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._guard();
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
INSERT INTO @extschema@.dirty_key (part, seg, pa, pb, key)
	SELECT part, seg, pa, pb, key FROM @extschema@.dirty_key_0_1;
CREATE OR REPLACE VIEW @extschema@.tracked AS
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
				ELSE 'current' END AS state
	  FROM @extschema@.tracked_table t;
DROP TABLE @extschema@.dirty_key_0_1;

-- The sub-bucket hashes that the level-2 rows of big packed leaf trees keep
-- (written by rebuilds: every partition becomes not built below).
ALTER TABLE @extschema@.node ADD COLUMN subs bytea;
CREATE FUNCTION @extschema@._subs_add(subs bytea, deltas bytea) RETURNS bytea
	AS 'MODULE_PATHNAME', 'ht_subs_add_sql'
	LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
REVOKE EXECUTE ON FUNCTION @extschema@._subs_add(bytea, bytea) FROM PUBLIC;

-- Room on each page of the packs, so that the fold's rewrites are HOT updates
-- (pages filled before stay as they are until rewritten), and the versions
-- they leave vacuumed before they add more than 5%.
ALTER TABLE @extschema@.entry_pack SET (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.05);

-- The trees of packed tables written by 0.1 have those rows, and no tree
-- of 0.1 is trusted under 1.0's layout: every partition becomes not built,
-- as after a restore.  update() and lock() answer not_built and exchanges
-- skip it until its trees are rebuilt from the leaf entries, by the workers
-- or by hashtree.reset(partition) (§7), which deletes the old rows.  (A
-- change of the entries' own layout would have to convert them here.)
UPDATE @extschema@.partition SET built = false WHERE built;

-- The packed entries of one segment: 0.1 found their pack in SQL, probing
-- the six possible spans; 1.0 calls the lookup of the C code, so that the
-- rule is written once.
CREATE OR REPLACE FUNCTION @extschema@._pack_seg("partition" int, prefix_a text, prefix_b text,
												 seg int4)
	RETURNS TABLE(key bytea, hash bytea)
	AS 'MODULE_PATHNAME', 'ht_pack_seg'
	LANGUAGE C STABLE STRICT;

-- A dropped fragmented table is forgotten by its own function (frag.c),
-- called by the sql_drop event trigger next to the tracked tables' one:
-- track.c no longer calls into frag.c.
CREATE FUNCTION @extschema@._frag_dropped() RETURNS void
	AS 'MODULE_PATHNAME', 'ht_frag_dropped'
	LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION @extschema@._frag_dropped() FROM PUBLIC;
CREATE OR REPLACE FUNCTION @extschema@._on_sql_drop() RETURNS event_trigger
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

-- An exchange of several partitions proceeds with all of them together
-- (issue 13): the peer locks, updates and returns the top hashes of all in
-- one request, and releases them in one; the walk reads the trees of all
-- its partitions in the same requests.  Their rows in exchange_log share
-- the exchange's round trips and bytes, and name its first row (run).
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
REVOKE EXECUTE ON FUNCTION @extschema@._nodes_m(int[], int, text[], text[], int, bigint[], bigint, int),
	@extschema@._entries_m(int[], int, text[], text[], int[], int),
	@extschema@._descend_m(int[], int, text[], text[], int, bigint[], bigint, int, bytea[]),
	@extschema@._exchange_begin(int[], int, int),
	@extschema@._exchange_end(int[]) FROM PUBLIC;
-- 0.1's rows were one exchange of one partition each
ALTER TABLE @extschema@.exchange_log ADD COLUMN run int8;
UPDATE @extschema@.exchange_log SET run = id;
ALTER TABLE @extschema@.exchange_log ALTER COLUMN run SET NOT NULL;

-- Fragments on other servers (issue 15, DESIGN §19): the unique constraints
-- kept per fragment, the servers derived from peers, move_frag, and the
-- node of each fragment in the view.
ALTER TABLE @extschema@.frag_table ADD COLUMN fragment_keys text[],
	ADD COLUMN op_fragment int4, ADD COLUMN op_node text, ADD COLUMN op_remote text,
	ADD COLUMN op_filenode int8,
	DROP CONSTRAINT frag_table_op_check,
	ADD CONSTRAINT frag_table_op_check CHECK (op IN ('add_frag', 'del_frag', 'move_frag'));
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
CREATE FUNCTION @extschema@.move_frag(tbl regclass, fragment int, node text,
									   mode text DEFAULT 'online')
	RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_move_frag'
	LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION @extschema@.move_frag(regclass, int, text, text) FROM PUBLIC;
CREATE OR REPLACE VIEW @extschema@.fragments AS
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
-- frag_init places fragments on nodes, add_frag the new fragment on a node
DROP FUNCTION @extschema@.frag_init(regclass, int);
CREATE FUNCTION @extschema@.frag_init(tbl regclass, n_fragments int DEFAULT 1,
									   nodes text[] DEFAULT NULL)
	RETURNS @extschema@.frag_state
	AS 'MODULE_PATHNAME', 'ht_frag_init'
	LANGUAGE C VOLATILE;
DROP FUNCTION @extschema@.add_frag(regclass, text);
CREATE FUNCTION @extschema@.add_frag(tbl regclass, mode text DEFAULT 'online',
									  node text DEFAULT NULL)
	RETURNS TABLE(n_fragments int, next_n_to_split int, n_doubles int, iter_frags int[],
				  additional_lock_frags int[], moved_rows bigint)
	AS 'MODULE_PATHNAME', 'ht_add_frag'
	LANGUAGE C VOLATILE;
REVOKE EXECUTE ON FUNCTION @extschema@.frag_init(regclass, int, text[]),
	@extschema@.add_frag(regclass, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.frag_init(regclass, int, text[]),
	@extschema@.add_frag(regclass, text, text) TO PUBLIC;

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
REVOKE EXECUTE ON FUNCTION @extschema@._frag_ddl(oid, pg_catalog.pg_ddl_command),
	@extschema@._on_frag_ddl_end() FROM PUBLIC;

-- Two-way repair (issue 14, DESIGN §20): tombstones, row versions, repair
-- 'newest' (exchange() gains a winner column; exchange_log counts the rows
-- written on each side).
ALTER TABLE @extschema@.tracked_table ADD COLUMN tombstones boolean NOT NULL DEFAULT false,
	ADD COLUMN version_column text;
-- the view shows each table's version column and its type
CREATE OR REPLACE VIEW @extschema@.tracked AS
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
ALTER TABLE @extschema@.exchange_log DROP CONSTRAINT exchange_log_repair_check,
	ADD CONSTRAINT exchange_log_repair_check CHECK (repair IN ('none', 'pull', 'push', 'newest')),
	ADD COLUMN rows_local int8 NOT NULL DEFAULT 0,
	ADD COLUMN rows_remote int8 NOT NULL DEFAULT 0;
DROP FUNCTION @extschema@.exchange(text, int, text);
CREATE FUNCTION @extschema@.exchange(peer text, "partition" int DEFAULT NULL,
									 repair text DEFAULT 'none')
	RETURNS TABLE("partition" int, kind text, prefix_a text, prefix_b text, key bytea,
				  repaired boolean, winner text)
	AS 'MODULE_PATHNAME', 'ht_exchange'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION @extschema@.exchange(text, int, text) FROM PUBLIC;
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
-- track() takes the version column at once
DROP FUNCTION @extschema@.track(regclass);
CREATE FUNCTION @extschema@.track(tbl regclass, version_column name DEFAULT NULL) RETURNS bigint
	AS 'MODULE_PATHNAME', 'ht_track'
	LANGUAGE C VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
REVOKE EXECUTE ON FUNCTION @extschema@.track(regclass, name) FROM PUBLIC;
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

REVOKE EXECUTE ON FUNCTION @extschema@.tombstones(regclass, boolean),
	@extschema@.version_column(regclass, name),
	@extschema@._newest_rows(text, text, int, bytea[]),
	@extschema@._newest_apply(text, text, int, bytea[], bytea[], bytea[], timestamptz[],
							  bytea[], timestamptz[], bytea[]) FROM PUBLIC;

-- Versions and tombstones of plain entries (DESIGN §20).
ALTER TABLE @extschema@.entry ADD COLUMN version timestamptz;
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
REVOKE EXECUTE ON FUNCTION
	@extschema@.insert(text, text, bytea, bytea, boolean, timestamptz),
	@extschema@.insert(text, text, text, bytea, boolean, timestamptz),
	@extschema@.insert(int, text, text, bytea, bytea, boolean, timestamptz),
	@extschema@.insert(int, text, text, text, bytea, boolean, timestamptz),
	@extschema@.delete(text, text, bytea, timestamptz),
	@extschema@.delete(text, text, text, timestamptz),
	@extschema@.delete(int, text, text, bytea, timestamptz),
	@extschema@.delete(int, text, text, text, timestamptz),
	@extschema@.tombstones(text, text, boolean),
	@extschema@._newest_entries(int, text, text, bytea[]),
	@extschema@._newest_apply_entries(int, text, text, bytea[], bytea[], timestamptz[],
									  bytea[], timestamptz[]) FROM PUBLIC;
