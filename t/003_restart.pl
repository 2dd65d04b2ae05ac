# Persistence: a clean restart keeps the trees without a rebuild; locks do
# not survive a restart.
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
	SELECT count(*) FROM (SELECT hashtree.insert('p' || (i % 5), 's', ('k' || i)::bytea, sha256(i::text::bytea))
							FROM generate_series(1, 5000) i) s});
is(lock_update_all($node), 'ok/ok', 'locked and updated');

my $state = q{SELECT string_agg(format('%s %s %s %s', partition, built, builds, last_build), ', '
							   ORDER BY partition) FROM hashtree.status};
my $before = $node->safe_psql('postgres', $state);
my $dump = tree_dump($node);
# a lock held by a session that stays open across the restart attempt
my $bg = $node->background_psql('postgres');
$bg->query_safe('SELECT hashtree.lock(0)');

$bg->quit;
$node->restart;

is($node->safe_psql('postgres', $state), $before, 'same build state: no rebuild happened');
ok(tree_dump($node) eq $dump, 'identical trees after the restart');
is($node->safe_psql('postgres', 'SELECT count(lock_owner) FROM hashtree.status'), '0',
	'no lock survives a restart');
is($node->safe_psql('postgres', 'SELECT hashtree.lock(0)'), 'ok', 'partition lockable again');

# work goes on incrementally
$node->safe_psql('postgres', q{SELECT hashtree.insert('p1', 's', 'after'::bytea, '\x01')});
is(lock_update_all($node), 'ok/ok', 'updated after the restart');
is($node->safe_psql('postgres', 'SELECT sum(builds) FROM hashtree.status'), '0',
	'still no rebuild');
is(check_trees($node), '0', 'trees equal a rebuild');

done_testing();
