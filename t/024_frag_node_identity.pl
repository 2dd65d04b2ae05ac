# A physical copy of a node, promoted, does not take the node's tables on
# its peers for its own (issue 15, DESIGN §19): the names of a node's tables
# on peers carry its identity (hashtree.node_identity), which is the system
# identifier at CREATE EXTENSION and a new random one on a server whose
# system identifier or timeline changed.  Node a keeps fragments on peer b;
# a2, a streaming standby of a, is promoted (same system identifier, same
# database oid, same table oid): the moves and cleanups of each then leave
# the other's tables on b alone, and each still cleans up its own.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $a = PostgreSQL::Test::Cluster->new('a');
$a->init(allows_streaming => 1);
$a->append_conf('postgresql.conf', "shared_preload_libraries = 'hashtree'\nhashtree.node_name = 'a'\n");
$a->start;
my $b = ht_node('b');
$a->safe_psql('postgres', sprintf(q{
	CREATE EXTENSION hashtree;
	CREATE EXTENSION postgres_fdw;
	SELECT hashtree.add_peer('b', 'host=%s port=%d dbname=postgres');
	CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL) PARTITION BY HASH (id);
	SELECT hashtree.frag_init('t', 4);
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 4000) g;
	SELECT hashtree.move_frag('t', 2, 'b', 'block_writes');
}, $b->host, $b->port));

sub sql { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

sub remote_tables
{
	return sql($b, q{SELECT string_agg(tablename, ' ' ORDER BY tablename) FROM pg_tables
					 WHERE schemaname = 'hashtree_fragments'});
}

sub rows { my ($node) = @_; return sql($node, q{SELECT count(*) || ' ' || sum(id) FROM t}); }

my $sysid = sql($a, q{SELECT to_hex(system_identifier) FROM pg_control_system()});
is(sql($a, q{SELECT to_hex(node_id) FROM hashtree.node_identity}), $sysid,
	'a node\'s identity is its system identifier at first');
like(remote_tables(), qr/^ht_0*${sysid}_\w+$/, 'its table on b is named after it');
my $all = rows($a);

# a2: a copy of a, promoted
$a->backup('bk');
my $a2 = PostgreSQL::Test::Cluster->new('a2');
$a2->init_from_backup($a, 'bk', has_streaming => 1);
$a2->append_conf('postgresql.conf', "hashtree.node_name = 'a2'\n");
$a2->start;
$a->wait_for_catchup($a2);
$a2->promote;
ok($a2->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()'), 'a2 is promoted');
is(rows($a2), $all, 'a2 has the rows, fragment 2 on b included');

# each moves a fragment to b: each cleanup (at the start of each move) sees
# the other's new table there, which no foreign table of its own refers to
is(sql($a, q{SELECT hashtree.move_frag('t', 3, 'b', 'block_writes') > 0}), 't', 'a moves fragment 3 to b');
is(sql($a2, q{SELECT hashtree.move_frag('t', 4, 'b', 'block_writes') > 0}), 't', 'a2 moves fragment 4 to b');
my $id2 = sql($a2, q{SELECT to_hex(node_id) FROM hashtree.node_identity});
isnt($id2, $sysid, 'a2 made an identity of its own');
is(sql($a, q{SELECT to_hex(node_id) FROM hashtree.node_identity}), $sysid, 'a kept its identity');
like(sql($a2, q{SELECT option_value FROM pg_options_to_table((SELECT ftoptions FROM pg_foreign_table
				WHERE ftrelid = 't_frag4'::regclass)) WHERE option_name = 'table_name'}),
	qr/^ht_0*${id2}_/, 'a2\'s new table on b is named after a2');
is(sql($a, q{SELECT hashtree.move_frag('t', 1, 'b', 'block_writes') > 0}), 't', 'a moves fragment 1 to b');
is(rows($a), $all, 'a reads all its rows (its fragment 3 on b was not dropped by a2)');
is(rows($a2), $all, 'a2 reads all its rows (its fragment 4 on b was not dropped by a)');
is(sql($b, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'}), '4',
	'b: a\'s fragments 1, 2 (a2\'s too, from before the copy), 3 and a2\'s fragment 4');

# each still cleans up its own leftovers: a's fragment 3 home and back
# (the table left on b is a's, dropped by a's next move), and a2's
# fragment 4 home (its table dropped by a2's next move, of fragment 1)
sql($a, q{SELECT hashtree.move_frag('t', 3, NULL, 'block_writes')});
sql($a, q{SELECT hashtree.move_frag('t', 3, 'b', 'block_writes')});
sql($a2, q{SELECT hashtree.move_frag('t', 4, NULL, 'block_writes')});
sql($a2, q{SELECT hashtree.move_frag('t', 1, 'b', 'block_writes')});
is(sql($b, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'}), '4',
	'b: the leftovers of each are gone (a\'s 1, 2, 3, a2\'s 1)');
is(rows($a), $all, 'a reads all its rows');
is(rows($a2), $all, 'a2 reads all its rows');
is(sql($a, q{SELECT string_agg(fragment || '@' || node, ' ' ORDER BY fragment) FROM hashtree.fragments}),
	'1@b 2@b 3@b 4@a', 'a\'s placement');
is(sql($a2, q{SELECT string_agg(fragment || '@' || node, ' ' ORDER BY fragment) FROM hashtree.fragments}),
	'1@b 2@b 3@a2 4@a2', 'a2\'s placement');

done_testing();
