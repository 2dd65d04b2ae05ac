# The upgrade path.  Two nodes are created at 0.1 (the install script as
# released) and filled: plain entries, a tracked table, a tracked
# fragmented table, each other as peers, trees with 0.1's rows for packed
# tables.  Then ALTER EXTENSION hashtree UPDATE: every partition is not
# built until reset, which gives back the same trees without the old rows;
# writes, updates, check_tree, compare, exchange, the fold of a tracked
# table and add_frag/del_frag all work.  And the extension's objects after
# the upgrade, from every version that can still be installed, are exactly
# those of a fresh install: definitions, privileges (initial ones too),
# triggers, dumped configuration; the comparison is shown to see a missing
# or changed object.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Digest::SHA qw(sha256_hex);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

# 0.1's install script is the one released (commit 5439a7a) and never
# changes: without its header comment (lines 2-6), the same bytes.  (A
# merge of a branch that still edits extension/hashtree--0.1.sql may pair
# that file with this one instead of hashtree--1.0.sql.)
{
	my $sharedir = `pg_config --sharedir`;
	chomp $sharedir;
	my @lines = split /^/, slurp_file("$sharedir/extension/hashtree--0.1.sql");
	splice(@lines, 1, 5);
	is(sha256_hex(join('', @lines)),
		'09d0d0ab009c3a520efb6975724ecc8babeffd3c84204291a0b684407534d482',
		'hashtree--0.1.sql is 0.1 as released (a change meant for hashtree--1.0.sql?)');
}

my $a = ht_node('a', no_extension => 1);
my $b = ht_node('b', no_extension => 1);
my $current = $a->safe_psql('postgres',
	q{SELECT default_version FROM pg_available_extensions WHERE name = 'hashtree'});
isnt($current, '0.1', "the current version ($current) is not 0.1");

# Every object of the extension, one line each, with what defines it.
# Newlines inside a definition are kept as "\n".
my $objects_sql = q{
WITH ext AS (SELECT e.oid, e.extnamespace, e.extconfig, e.extcondition
			   FROM pg_extension e WHERE e.extname = 'hashtree'),
mem AS (SELECT d.classid, d.objid, d.objsubid FROM pg_depend d, ext
		 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid
		   AND d.deptype = 'e'),
rel AS (SELECT c.* FROM pg_class c JOIN mem ON mem.classid = 'pg_class'::regclass
		 AND mem.objid = c.oid),
lines AS (
	SELECT 'member ' || pg_describe_object(m.classid, m.objid, m.objsubid) FROM mem m
	UNION ALL
	SELECT format('extension schema=%s config=%s conditions=%s',
				  ext.extnamespace::regnamespace, ext.extconfig::regclass[], ext.extcondition)
	  FROM ext
	UNION ALL
	SELECT format('schema %s owner=%s acl=%s', n.nspname, pg_get_userbyid(n.nspowner), n.nspacl)
	  FROM pg_namespace n, ext WHERE n.oid = ext.extnamespace
	UNION ALL
	SELECT format('function %s owner=%s acl=%s %s', p.oid::regprocedure,
				  pg_get_userbyid(p.proowner), p.proacl,
				  CASE WHEN p.prokind = 'a'
					   THEN (SELECT format('aggregate %s parallel=%s',
										   row(g.aggkind, g.aggtransfn, g.aggfinalfn,
											   g.aggcombinefn, g.aggserialfn, g.aggdeserialfn,
											   g.aggtranstype::regtype, g.agginitval,
											   g.aggfinalextra, g.aggfinalmodify),
										   p.proparallel)
							   FROM pg_aggregate g WHERE g.aggfnoid = p.oid)
					   ELSE pg_get_functiondef(p.oid) END)
	  FROM pg_proc p JOIN mem m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
	UNION ALL
	SELECT format('relation %s kind=%s persistence=%s owner=%s acl=%s options=%s rls=%s,%s replident=%s',
				  r.oid::regclass, r.relkind, r.relpersistence, pg_get_userbyid(r.relowner),
				  r.relacl, r.reloptions, r.relrowsecurity, r.relforcerowsecurity, r.relreplident)
	  FROM rel r
	UNION ALL
	-- columns by their position among the live ones (a dropped column
	-- leaves a gap in attnum, not in the table's shape)
	SELECT format('column %s #%s %s %s notnull=%s collation=%s default=%s storage=%s identity=%s generated=%s acl=%s',
				  r.oid::regclass, row_number() OVER (PARTITION BY r.oid ORDER BY a.attnum),
				  a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
				  (SELECT c.collname FROM pg_collation c WHERE c.oid = a.attcollation),
				  pg_get_expr(d.adbin, d.adrelid), a.attstorage, a.attidentity, a.attgenerated,
				  a.attacl)
	  FROM rel r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
	  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
	UNION ALL
	SELECT format('constraint %s %s %s', c.conrelid::regclass, c.conname, pg_get_constraintdef(c.oid))
	  FROM pg_constraint c JOIN rel r ON r.oid = c.conrelid
	UNION ALL
	SELECT format('index %s', pg_get_indexdef(i.indexrelid))
	  FROM pg_index i JOIN rel r ON r.oid = i.indrelid
	UNION ALL
	SELECT format('trigger %s enabled=%s', pg_get_triggerdef(t.oid), t.tgenabled)
	  FROM pg_trigger t JOIN rel r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
	UNION ALL
	SELECT format('rule %s %s', w.rulename, pg_get_ruledef(w.oid))
	  FROM pg_rewrite w JOIN rel r ON r.oid = w.ev_class
	UNION ALL
	SELECT format('policy %s %s', p.polname, p.polrelid::regclass)
	  FROM pg_policy p JOIN rel r ON r.oid = p.polrelid
	UNION ALL
	SELECT format('sequence %s %s owned_by=%s', s.seqrelid::regclass,
				  row(s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmax, s.seqmin,
					  s.seqcache, s.seqcycle),
				  (SELECT d.refobjid::regclass || '.' || a.attname
					 FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid
					  AND a.attnum = d.refobjsubid
					WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
					  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')))
	  FROM pg_sequence s JOIN rel r ON r.oid = s.seqrelid
	UNION ALL
	SELECT format('type %s kind=%s owner=%s acl=%s attributes=%s', t.oid::regtype, t.typtype,
				  pg_get_userbyid(t.typowner), t.typacl,
				  (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod),
									 ', ' ORDER BY a.attnum)
					 FROM pg_attribute a WHERE a.attrelid = t.typrelid AND a.attnum > 0
					  AND NOT a.attisdropped))
	  FROM pg_type t JOIN mem m ON m.classid = 'pg_type'::regclass AND m.objid = t.oid
	UNION ALL
	SELECT format('event trigger %s on %s tags=%s function=%s enabled=%s owner=%s', e.evtname,
				  e.evtevent, e.evttags, e.evtfoid::regprocedure, e.evtenabled,
				  pg_get_userbyid(e.evtowner))
	  FROM pg_event_trigger e JOIN mem m ON m.classid = 'pg_event_trigger'::regclass
	   AND m.objid = e.oid
	UNION ALL
	-- the privileges pg_dump takes as the extension's own
	SELECT format('initprivs %s %s %s', pg_describe_object(i.classoid, i.objoid, i.objsubid),
				  i.privtype, i.initprivs)
	  FROM pg_init_privs i
	 WHERE (i.classoid, i.objoid) IN (SELECT m.classid, m.objid FROM mem m)
		OR (i.classoid = 'pg_namespace'::regclass AND i.objoid = (SELECT extnamespace FROM ext))
	UNION ALL
	SELECT format('comment %s %s', pg_describe_object(d.classoid, d.objoid, d.objsubid),
				  d.description)
	  FROM pg_description d
	 WHERE (d.classoid, d.objoid) IN (SELECT m.classid, m.objid FROM mem m))
SELECT replace(l, E'\n', '\n') FROM lines x(l) ORDER BY replace(l, E'\n', '\n') COLLATE "C"};

sub objects
{
	my ($node, $db) = @_;
	return [ split /\n/, $node->safe_psql($db, $objects_sql) ];
}

# the lines only one of two listings has, marked with the listing's name
sub object_diff
{
	my ($x, $xname, $y, $yname) = @_;
	my (%in_x, %in_y);
	$in_x{$_}++ for @$x;
	$in_y{$_}++ for @$y;
	my @d;
	push @d, "only $xname: $_" for grep { ($in_x{$_} // 0) != ($in_y{$_} // 0) } sort keys %in_x;
	push @d, "only $yname: $_" for grep { !$in_x{$_} } sort keys %in_y;
	return join("\n", @d);
}

# -------------------------------------------------------------------------
# Two nodes at 0.1, filled, each the other's peer
# -------------------------------------------------------------------------

# The library is the current one, which needs what 0.1's objects lack
# (packed trees, issue 11: functions _pack_sum and _hash_sum, the column
# entry_pack.sum; exchanges of whole nodes, issue 13: functions _nodes_m,
# _entries_m, _descend_m, _exchange_begin and _exchange_end, the column
# exchange_log.run; two-way repair, issue 14: the columns
# exchange_log.rows_local and rows_remote; the exchange at 10M rows, issue 11: the column
# node.subs).  The fill lends them to the 0.1 database, outside the
# extension, and takes the functions back before the update, and the
# columns' values: a database filled by 0.1's own library has the data, not
# these.  (entry_pack.sum stays: a dropped column in entry_pack crashes the
# library's pack writer, which leaves the nulls of other columns false;
# exchange_log.run, rows_local and rows_remote and node.subs go, the update adds them.)
my $lend = q{
	ALTER TABLE hashtree.entry_pack ADD COLUMN sum bytea;
	ALTER TABLE hashtree.node ADD COLUMN subs bytea;
	CREATE FUNCTION hashtree._hash_sum_step(internal, bytea) RETURNS internal
		AS '$libdir/hashtree', 'ht_hash_sum_step' LANGUAGE C CALLED ON NULL INPUT;
	CREATE AGGREGATE hashtree._hash_sum(bytea) (SFUNC = hashtree._hash_sum_step,
		STYPE = internal, FINALFUNC = hashtree._sum_final);
	CREATE FUNCTION hashtree._pack_sum(lo int4, data bytea, OUT hash bytea, OUT n int8)
		AS '$libdir/hashtree', 'ht_pack_sum' LANGUAGE C IMMUTABLE STRICT;
	ALTER TABLE hashtree.exchange_log ADD COLUMN run int8,
		ADD COLUMN rows_local int8 NOT NULL DEFAULT 0, ADD COLUMN rows_remote int8 NOT NULL DEFAULT 0;
	CREATE FUNCTION hashtree._nodes_m(int[], int, text[], text[], int, bigint[], bigint, int)
		RETURNS TABLE(i int, children bytea) AS '$libdir/hashtree', 'ht_nodes_m_sql' LANGUAGE C;
	CREATE FUNCTION hashtree._entries_m(int[], int, text[], text[], int[], int)
		RETURNS TABLE(i int, key bytea, hash bytea) AS '$libdir/hashtree', 'ht_entries_m_sql' LANGUAGE C;
	CREATE FUNCTION hashtree._descend_m(int[], int, text[], text[], int, bigint[], bigint, int, bytea[])
		RETURNS TABLE(i int, child bigint, children bytea, key bytea, hash bytea)
		AS '$libdir/hashtree', 'ht_descend_m_sql' LANGUAGE C;
	CREATE FUNCTION hashtree._exchange_begin(int[], int, int)
		RETURNS TABLE("partition" int, lock text, update text, sqlstate text, message text, top bytea,
					  entries int, depth int2, pa text, key bytea)
		AS '$libdir/hashtree', 'ht_exchange_begin' LANGUAGE C;
	CREATE FUNCTION hashtree._exchange_end(int[]) RETURNS TABLE("partition" int, answer text)
		AS '$libdir/hashtree', 'ht_exchange_end' LANGUAGE C;
};
my $take_back = q{
	SET session_replication_role = replica;	-- (past the guard trigger)
	UPDATE hashtree.entry_pack SET sum = NULL;
	RESET session_replication_role;
	DROP AGGREGATE hashtree._hash_sum(bytea);
	DROP FUNCTION hashtree._hash_sum_step(internal, bytea);
	DROP FUNCTION hashtree._pack_sum(int4, bytea);
	DROP FUNCTION hashtree._nodes_m(int[], int, text[], text[], int, bigint[], bigint, int);
	DROP FUNCTION hashtree._entries_m(int[], int, text[], text[], int[], int);
	DROP FUNCTION hashtree._descend_m(int[], int, text[], text[], int, bigint[], bigint, int, bytea[]);
	DROP FUNCTION hashtree._exchange_begin(int[], int, int);
	DROP FUNCTION hashtree._exchange_end(int[]);
	ALTER TABLE hashtree.exchange_log DROP COLUMN run, DROP COLUMN rows_local,
		DROP COLUMN rows_remote;
	ALTER TABLE hashtree.node DROP COLUMN subs;
};

my %conn = (a => $a->connstr('postgres'), b => $b->connstr('postgres'));
foreach my $n ([ $a, 'b' ], [ $b, 'a' ])
{
	my ($node, $peer) = @$n;
	$node->safe_psql('postgres', qq{
		CREATE EXTENSION hashtree VERSION '0.1';
		$lend
		SELECT hashtree.add_peer('$peer', \$\$$conn{$peer}\$\$);
		SELECT count(*) FROM (SELECT hashtree.insert('plain', 'x', 'k' || i, '\\x01'::bytea)
								FROM generate_series(1, 300) i) s;
		CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric);
		INSERT INTO acct SELECT i, 'owner ' || i, i * 10 FROM generate_series(1, 2000) i;
		SELECT hashtree.track('acct');	-- packs the rows there
		INSERT INTO acct SELECT i, 'owner ' || i, i * 10 FROM generate_series(2001, 2200) i;
		CREATE TABLE ft (id int PRIMARY KEY, v text NOT NULL) PARTITION BY HASH (id);
		SELECT * FROM hashtree.frag_init('ft', 3);
		INSERT INTO ft SELECT g, 'v' || g FROM generate_series(1, 1500) g;
		SELECT hashtree.track('ft');
		SELECT * FROM hashtree.add_frag('ft', 'block_writes');
	});
}
is($a->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'hashtree'}),
	'0.1', 'a: created at 0.1');
# the differences: b has 10 more plain keys, a 5 changed balances
$b->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT hashtree.insert('plain', 'x', 'k' || i, '\x01'::bytea)
							FROM generate_series(301, 310) i) s});
$a->safe_psql('postgres', q{UPDATE acct SET balance = -balance WHERE id <= 5});
foreach my $node ($a, $b)
{
	is(lock_update_all($node), 'ok/ok', $node->name . ': lock and update at 0.1');
	is(check_trees($node), '0', $node->name . ': check_tree at 0.1');
}

# exchange report: "kind prefix_a.prefix_b" with a count
my $report_sql = q{
	SELECT string_agg(kind || ' ' || prefix_a || '.' || prefix_b || ' ' || n, ', ' ORDER BY kind, prefix_a, prefix_b)
	  FROM (SELECT kind, prefix_a, prefix_b, count(*) AS n
			  FROM hashtree.exchange('%s', NULL, '%s') GROUP BY 1, 2, 3) r};
sub report
{
	my ($node, $peer, $mode) = @_;
	return $node->safe_psql('postgres', sprintf($report_sql, $peer, $mode // 'none'));
}
my $expected_report = 'different public.acct 5, missing plain.x 10';
is(report($a, 'b'), $expected_report, 'exchange at 0.1 reports the differences');

# what 0.1's library stores besides: segment and sub-bucket rows of packed
# trees (level 3: one per pack here, level 4: one per pack's sub-bucket;
# written past the guard trigger, as the library writes them)
my %before;
foreach my $n ([ 'a', $a ], [ 'b', $b ])
{
	my ($name, $node) = @$n;
	$before{$name} = { tops => tops($node), entries => entry_count($node) };
	$node->safe_psql('postgres', qq{
		$take_back
		SET session_replication_role = replica;
		INSERT INTO hashtree.node (part, child, n, depth, level, pa, pb, hash)
		SELECT p.part, l.child, p.n, 2, l.level, p.pa, p.pb, '\\x01'
		  FROM hashtree.entry_pack p,
			   LATERAL (VALUES (3, p.lo::int8), (4, (p.lo >> 5)::int8)) l(level, child)
		ON CONFLICT DO NOTHING;
	});
}
my $old_rows_sql = q{
	SELECT count(*) FROM hashtree.node n
	 WHERE n.level IN (3, 4) AND n.depth = 2
	   AND EXISTS (SELECT 1 FROM hashtree.entry_pack p
				    WHERE p.part = n.part AND p.pa = n.pa AND p.pb = n.pb)};
cmp_ok($a->safe_psql('postgres', $old_rows_sql), '>', 0, 'a: 0.1 rows of packed trees');
is($a->safe_psql('postgres', q{SELECT bool_and(built) FROM hashtree.status}), 't',
	'a: every partition built before the update');
# the library over a database not updated yet writes node rows without the
# columns 0.1 lacks (an entry written and deleted again: the same trees)
$b->safe_psql('postgres', q{SELECT hashtree.insert('plain', 'x', 'written at 0.1', '\x07'::bytea);
	SELECT hashtree.delete('plain', 'x', 'written at 0.1')});
is(lock_update_all($b), 'ok/ok', 'b: update() at 0.1 with the current library');
is(tops($b), $before{b}{tops}, 'b: the same trees');

# -------------------------------------------------------------------------
# the update
# -------------------------------------------------------------------------
$a->safe_psql('postgres', 'ALTER EXTENSION hashtree UPDATE');
is($a->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'hashtree'}),
	$current, "a: updated to $current");
is($a->safe_psql('postgres', q{SELECT count(*) FILTER (WHERE built) || '/' || count(*) FROM hashtree.status}),
	'0/8', 'a: every partition is not built after the update');
is(lock_update_all($a), 'not_built/not_built', 'a: lock and update answer not_built');
$a->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange('b')});
is($a->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT outcome, ',')
	  FROM (SELECT outcome FROM hashtree.exchange_log ORDER BY id DESC LIMIT 8) l}),
	'not_built', 'a: exchange skips partitions not built');
is(entry_count($a), $before{a}{entries}, 'a: the update keeps every entry');

reset_all($a);
is(tops($a), $before{a}{tops}, 'a: reset after the update gives back the same trees');
is($a->safe_psql('postgres', $old_rows_sql), '0', 'a: without the rows 1.0 does not store');
is($a->safe_psql('postgres', q{SELECT count(*) || ' ' || count(sum) FROM hashtree.entry_pack}),
	$a->safe_psql('postgres', q{SELECT count(*) || ' ' || count(*) FROM hashtree.entry_pack}),
	'a: the reset gave every pack its term');
is(check_trees($a), '0', 'a: check_tree finds nothing after the reset');

$b->safe_psql('postgres', 'ALTER EXTENSION hashtree UPDATE');
reset_all($b);
is(tops($b), $before{b}{tops}, 'b: same trees after update and reset');
is(report($a, 'b'), $expected_report, 'exchange after the update reports the same differences');
is($b->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange('a')}), '15',
	'and the other way round');

# the nodes repaired equal
report($a, 'b', 'pull');
is(lock_update_all($_), 'ok/ok', $_->name . ': lock and update after the repair') for $a, $b;
is(tops($a), tops($b), 'a pulled from b: same trees');
is(report($a, 'b'), '', 'nothing left to exchange');
is($a->safe_psql('postgres', q{
	SELECT string_agg(DISTINCT x.l1 || x.u1 || x.l2 || x.u2, ',') || ' ' || count(c.*)
	  FROM generate_series(0, 7) p,
		   LATERAL (SELECT hashtree.lock(p) AS l1, hashtree.update(p) AS u1,
						   hashtree.lock('b', p) AS l2, hashtree.update('b', p) AS u2) x
	  LEFT JOIN LATERAL hashtree.compare(p, 'b') c ON true}),
	'okokokok 0', 'compare (with a peer\'s locks and update) finds no difference');

# -------------------------------------------------------------------------
# after the upgrade: writes, the fold, fragments
# -------------------------------------------------------------------------
$a->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT hashtree.insert('plain', 'y', 'n' || i, '\x02'::bytea)
							FROM generate_series(1, 100) i) s;
	SELECT count(*) FROM (SELECT hashtree.delete('plain', 'x', 'k' || i)
							FROM generate_series(1, 50) i) s;
	INSERT INTO acct SELECT i, 'new ' || i, 0 FROM generate_series(2201, 2300) i;
	UPDATE acct SET owner = owner || '!' WHERE id % 10 = 0;
	DELETE FROM acct WHERE id % 7 = 0;
	INSERT INTO ft SELECT g, 'w' || g FROM generate_series(1501, 1600) g;
});
is($a->safe_psql('postgres', q{SELECT string_agg(state, ',' ORDER BY table_name) FROM hashtree.tracked}),
	'pending,pending', 'a: tracked tables have pending changes');
is(lock_update_all($a), 'ok/ok', 'a: lock and update after new writes');
is($a->safe_psql('postgres', q{
	SELECT state || ' ' || (rows = (SELECT count(*) FROM acct)) FROM hashtree.tracked
	 WHERE table_name = 'acct'}),
	'current true', 'a: the fold counts every row of the tracked table');
is(check_trees($a), '0', 'a: check_tree after the update');

# add_frag online (a background worker) and del_frag
is($a->safe_psql('postgres', q{SELECT n_fragments FROM hashtree.add_frag('ft')}), '5',
	'a: add_frag online after the upgrade');
is($a->safe_psql('postgres', q{SELECT n_fragments FROM hashtree.add_frag('ft', 'block_writes')}), '6',
	'a: add_frag');
is($a->safe_psql('postgres', q{SELECT n_fragments FROM hashtree.del_frag('ft', 'block_writes')}), '5',
	'a: del_frag');
is($a->safe_psql('postgres', q{
	SELECT count(*) || ' ' || count(*) FILTER (WHERE f.fragment <> hashtree.key_to_frag_number('ft', ft.id))
	  FROM ft JOIN hashtree.fragments f ON f.relation = ft.tableoid}),
	'1600 0', 'a: every row of the fragmented table where key_to_frag_number says');
is(lock_update_all($a), 'ok/ok', 'a: update after the fragment changes');
is($a->safe_psql('postgres', q{
	SELECT rows = 1600 AND state = 'current' FROM hashtree.tracked WHERE table_name = 'ft'}),
	't', 'a: the tracked fragmented table is hashed whole');
is(check_trees($a), '0', 'a: check_tree after the fragment changes');

# b catches up through an exchange between two upgraded nodes
report($b, 'a', 'pull');
is(lock_update_all($_), 'ok/ok', $_->name . ': lock and update') for $a, $b;
is(tops($b), tops($a), 'b pulled from a: same trees');

# -------------------------------------------------------------------------
# the objects: upgraded == fresh
# -------------------------------------------------------------------------
$a->safe_psql('postgres', 'CREATE DATABASE fresh');
$a->safe_psql('fresh', 'CREATE EXTENSION hashtree');
my $fresh = objects($a, 'fresh');
cmp_ok(scalar(@$fresh), '>', 200, 'the listing of a fresh install has ' . scalar(@$fresh) . ' lines');
is(object_diff(objects($a, 'postgres'), 'upgraded', $fresh, 'fresh'), '',
	'a: the upgraded extension has the objects of a fresh install');
is(object_diff(objects($b, 'postgres'), 'upgraded', $fresh, 'fresh'), '',
	'b: the upgraded extension has the objects of a fresh install');

# from every version that can still be installed, with nothing in it
my @old = split /\n/, $a->safe_psql('postgres', qq{
	SELECT version FROM pg_available_extension_versions
	 WHERE name = 'hashtree' AND version <> '$current' ORDER BY version});
ok(grep({ $_ eq '0.1' } @old), 'version 0.1 can still be installed');
foreach my $v (@old)
{
	my $db = "from_$v";
	$db =~ s/\W/_/g;
	$a->safe_psql('postgres', "CREATE DATABASE $db");
	$a->safe_psql($db, "CREATE EXTENSION hashtree VERSION '$v'");
	$a->safe_psql($db, 'ALTER EXTENSION hashtree UPDATE');
	is(object_diff(objects($a, $db), "from $v", $fresh, 'fresh'), '',
		"upgraded from $v: the objects of a fresh install");
}

# the comparison sees what an upgrade script could miss: each change, made
# in a transaction that is rolled back, makes the listing differ
my @mutations = (
	[ 'a missing function' => q{
		ALTER EXTENSION hashtree DROP FUNCTION hashtree.name(int);
		DROP FUNCTION hashtree.name(int);} ],
	[ 'an extra function' => q{
		CREATE FUNCTION hashtree.extra() RETURNS int LANGUAGE sql AS 'SELECT 1';
		ALTER EXTENSION hashtree ADD FUNCTION hashtree.extra();} ],
	[ 'a changed function body' => q{
		CREATE OR REPLACE FUNCTION hashtree._prefix_children("partition" int, prefix_a text)
			RETURNS SETOF text LANGUAGE sql STABLE SECURITY DEFINER
			SET search_path = pg_catalog, pg_temp
			AS $$ SELECT n.pb FROM hashtree.node n WHERE n.part = $1 AND n.pa = $2 $$;} ],
	[ 'a function no longer SECURITY DEFINER' => q{
		ALTER FUNCTION hashtree.insert(text, text, bytea, bytea, boolean) SECURITY INVOKER;} ],
	[ 'a grant' => q{GRANT EXECUTE ON FUNCTION hashtree.reset(int) TO PUBLIC;} ],
	[ 'a revoke' => q{REVOKE SELECT ON hashtree.status FROM PUBLIC;} ],
	[ 'a schema grant' => q{GRANT CREATE ON SCHEMA hashtree TO PUBLIC;} ],
	[ 'a new column' => q{ALTER TABLE hashtree.peer ADD COLUMN note text;} ],
	[ 'a changed default' => q{ALTER TABLE hashtree.partition ALTER COLUMN jitter SET DEFAULT 0;} ],
	[ 'a dropped index' => q{DROP INDEX hashtree.exchange_log_started;} ],
	[ 'a changed check constraint' => q{
		ALTER TABLE hashtree.entry_pack DROP CONSTRAINT entry_pack_span_check;} ],
	[ 'a disabled trigger' => q{ALTER TABLE hashtree.entry DISABLE TRIGGER guard;} ],
	[ 'a changed view' => q{
		CREATE OR REPLACE VIEW hashtree.peers AS
			SELECT p.name, p.conninfo, p.added_at FROM hashtree.peer p;} ],
	[ 'a changed storage parameter' => q{ALTER TABLE hashtree.node SET (fillfactor = 70);} ],
	[ 'a changed event trigger' => q{ALTER EVENT TRIGGER hashtree_sql_drop ENABLE;} ],
	[ 'a changed composite type' => q{ALTER TYPE hashtree.frag_state ADD ATTRIBUTE x int;} ],
	[ 'a table no longer dumped' => q{
		UPDATE pg_extension SET extconfig = extconfig[1:2], extcondition = extcondition[1:2]
		 WHERE extname = 'hashtree';} ],
);
foreach my $m (@mutations)
{
	my ($what, $sql) = @$m;
	my $out = $a->safe_psql('fresh', "BEGIN; $sql\n$objects_sql; ROLLBACK;");
	# safe_psql prints only the listing (the other statements print nothing
	# with -q, except the changes' own results, which are not listing lines)
	my @mutant = grep { /^(member|extension|schema|function|relation|column|constraint|index|trigger|rule|policy|sequence|type|event trigger|initprivs|comment) / } split /\n/, $out;
	isnt(object_diff(\@mutant, 'mutant', $fresh, 'fresh'), '', "the comparison sees $what");
}
is(object_diff(objects($a, 'fresh'), 'fresh', $fresh, 'fresh'), '', 'every change was rolled back');

done_testing();
