# CREATE EXTENSION works with and without shared_preload_libraries, and
# reads hashtree.partitions when it runs; the two kinds of node exchange.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $plain = ht_node('plain', no_preload => 1, no_extension => 1);
my $pre = ht_node('pre', no_extension => 1);

is($plain->safe_psql('postgres', q{SHOW shared_preload_libraries}), '', 'not preloaded');
$plain->safe_psql('postgres', q{SET hashtree.partitions = 16; CREATE EXTENSION hashtree;});
is($plain->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status'), '16',
	'partitions from the GUC set before CREATE EXTENSION');
$plain->safe_psql('postgres', 'CREATE DATABASE d2');
$plain->safe_psql('d2', 'CREATE EXTENSION hashtree');
is($plain->safe_psql('d2', 'SELECT count(*) FROM hashtree.status'), '8', 'default partitions');

$pre->append_conf('postgresql.conf', "hashtree.partitions = 16\n");
$pre->reload;
$pre->safe_psql('postgres', 'CREATE EXTENSION hashtree');
is($pre->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status'), '16',
	'partitions from postgresql.conf');
# changing the setting later changes nothing
$pre->append_conf('postgresql.conf', "hashtree.partitions = 4\n");
$pre->restart;
is($pre->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status'), '16', 'count fixed at creation');

# the same entries, the same trees, compared across the two kinds
my $fill = q{SELECT count(*) FROM (SELECT hashtree.insert('a', 'b', ('k' || i)::bytea, '\x01')
									FROM generate_series(1, 500) i) s};
$plain->safe_psql('postgres', $fill);
$pre->safe_psql('postgres', $fill);
my $pre_conn = $pre->connstr('postgres');
$plain->safe_psql('postgres', "SELECT hashtree.add_peer('pre', \$\$$pre_conn\$\$)");
is($plain->safe_psql('postgres', q{
	SELECT count(*) FROM generate_series(0, 15) p,
		LATERAL (SELECT hashtree.lock(p), hashtree.update(p), hashtree.lock('pre', p), hashtree.update('pre', p)) x,
		LATERAL hashtree.compare(p, 'pre') c}), '0', 'no differences between the two nodes');
is(tops($plain), tops($pre), 'same top hashes');

# a peer with another partition count cannot be compared
my $d2_conn = $plain->connstr('d2');
$pre->safe_psql('postgres', "SELECT hashtree.add_peer('d2', \$\$$d2_conn\$\$)");
my ($ret, $out, $err) = $pre->psql('postgres',
	q{SELECT hashtree.lock(0); SELECT * FROM hashtree.compare(0, 'd2')});
like($err, qr/peer "d2" has 8 partitions, this node has 16/, 'partition counts must match');

done_testing();
