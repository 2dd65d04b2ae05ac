# pg_dump / pg_restore keep the configuration (peers, tracked tables) and
# the entries written through the API; the trees and the entries of tracked
# tables, derived data, are rebuilt after the restore and come back
# identical.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $node = ht_node('n');
$node->safe_psql('postgres', q{
	SELECT hashtree.add_peer('p1', 'host=/tmp port=5999 dbname=x password=secret');
	SELECT hashtree.add_peer('p2', 'host=/tmp port=6000 dbname=y');
	SELECT count(*) FROM (SELECT hashtree.insert('p' || (i % 4), 's' || (i % 3), ('k' || i)::bytea,
												sha256(i::text::bytea))
							FROM generate_series(1, 3000) i) s;
	CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric);
	INSERT INTO acct SELECT i, 'o' || i, i FROM generate_series(1, 2000) i;
	SELECT hashtree.track('acct');
});
is(lock_update_all($node), 'ok/ok', 'trees built');
my $tops = tops($node);
my $dump = tree_dump($node);
my $peers = q{SELECT string_agg(name || ' ' || conninfo, ', ' ORDER BY name) FROM hashtree.peers};
my $peers_before = $node->safe_psql('postgres', $peers);

my $file = $node->basedir . '/db.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $file, '-d', $node->connstr('postgres') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $file ], 'pg_restore');

is($node->safe_psql('restored', $peers), $peers_before, 'peers restored');
is($node->safe_psql('restored', 'SELECT count(*) FROM hashtree.entry WHERE depth = 2'), '3000',
	'entries written through the API restored (those of tracked tables are derived)');
is($node->safe_psql('restored', 'SELECT table_name, key_columns FROM hashtree.tracked'), 'acct|id',
	'tracked table registered');
is($node->safe_psql('restored', q{SELECT tgname FROM pg_trigger WHERE tgrelid = 'acct'::regclass ORDER BY 1}),
	"hashtree_track\nhashtree_track_truncate", 'tracking triggers restored');
is($node->safe_psql('restored', 'SELECT count(*) FROM hashtree.node'), '0', 'trees not restored');
is($node->safe_psql('restored', 'SELECT count(*) FILTER (WHERE NOT built) FROM hashtree.status'), '8',
	'every partition marked not built after the restore');
is($node->safe_psql('restored', 'SELECT hashtree.lock(0)'), 'not_built', 'lock says not_built');

reset_all($node, 'restored');
is(tops($node, 'restored'), $tops, 'same top hashes after rebuilding');
ok(tree_dump($node, 'restored') eq $dump, 'identical trees after rebuilding');
is(lock_update_all($node, 'restored'), 'ok/ok', 'the restored trees can be locked and updated');
$node->safe_psql('restored', q{UPDATE acct SET balance = 0 WHERE id = 1});
$node->safe_psql('postgres', q{UPDATE acct SET balance = 0 WHERE id = 1});
lock_update_all($node, 'restored');
lock_update_all($node);
is(tops($node, 'restored'), tops($node), 'the restored tracked table is still tracked');

done_testing();
