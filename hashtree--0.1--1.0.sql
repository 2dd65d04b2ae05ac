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
