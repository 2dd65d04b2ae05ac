# Canonical trees: two clusters fed the same entries in different orders
# and batches (with overwrites, deletes, intermediate updates and a restart
# on one of them) hold byte-identical top hashes, prefix hashes, buckets
# and key hashes.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $a = ht_node('a');
my $b = ht_node('b');

# the data: several prefixes (one non-ASCII), short, long (> 64 bytes) and
# empty keys, hashes of several lengths
my @entries;
foreach my $i (1 .. 2500)
{
	my $pa = ('app', 'crm', 'café')[ $i % 3 ];
	my $pb = ('users', 'orders', 'items', 'ünïcode')[ $i % 4 ];
	my $key = $i % 97 == 0 ? "repeat('long-key-$i', 20)" : "'k$i'";
	my $hash = $i % 5 == 0 ? "'\\x" . sprintf('%02x', $i % 256) . "'" : "sha256('v$i')";
	push @entries, [ $pa, $pb, "convert_to($key, 'UTF8')", "$hash\::bytea" ];
}
push @entries, [ 'app', 'users', "''::bytea", "'\\x00'::bytea" ];

sub insert_sql
{
	my ($e, $hash) = @_;
	return "SELECT hashtree.insert('$e->[0]', '$e->[1]', $e->[2], " . ($hash // $e->[3]) . ");\n";
}

# node a: everything in one transaction, in order
$a->safe_psql('postgres', "BEGIN;\n" . join('', map { insert_sql($_) } @entries) . "COMMIT;");
is(lock_update_all($a), 'ok/ok', 'a: locked and updated');

# node b: reverse order, batches of varying size, wrong hashes first,
# extra keys inserted and deleted again, updates in between, a restart
my @rev = reverse @entries;
my $n = 0;
while (@rev)
{
	my @batch = splice(@rev, 0, 1 + ($n++ * 37) % 400);
	my $sql = "BEGIN;\n";
	foreach my $e (@batch)
	{
		$sql .= insert_sql($e, "'\\xdead'") if $n % 3 == 0;
		$sql .= insert_sql($e);
	}
	$sql .= "SELECT hashtree.insert('tmp', 'gone', 'x$n', '\\x01');\n";
	$sql .= "SELECT hashtree.insert('app', 'users', 'extra$n', '\\x01');\n";
	$sql .= "COMMIT;\n";
	$sql .= "SELECT hashtree.delete('app', 'users', 'extra$n');\n" if $n % 2;
	$b->safe_psql('postgres', $sql);
	lock_update_all($b) if $n % 4 == 0;
	$b->restart if $n == 5;
}
$b->safe_psql('postgres', join('', map { "SELECT hashtree.delete('tmp', 'gone', 'x$_');\n" } 1 .. $n));
$b->safe_psql('postgres', join('', map { "SELECT hashtree.delete('app', 'users', 'extra$_');\n" } grep { !($_ % 2) } 1 .. $n));
is(lock_update_all($b), 'ok/ok', 'b: locked and updated');

is(entry_count($b), entry_count($a), 'same number of entries');
is(tops($b), tops($a), 'same top hashes');
isnt(tops($a), '', 'top hashes present');

my $prefix_hashes = q{
	SELECT string_agg(format('%s %s %s %s', p, pa, pb, encode(h, 'hex')), E'\n' ORDER BY p, pa, pb)
	  FROM generate_series(0, 7) p,
		   (VALUES ('app', NULL), ('crm', NULL), ('café', NULL), ('tmp', NULL),
				   ('app', 'users'), ('crm', 'orders'), ('café', 'ünïcode'), ('tmp', 'gone')) v(pa, pb),
		   LATERAL (SELECT hashtree.prefix_hash(p, pa, pb) AS h) x};
is($b->safe_psql('postgres', $prefix_hashes), $a->safe_psql('postgres', $prefix_hashes),
	'same prefix hashes');

my $dump_a = tree_dump($a);
my $dump_b = tree_dump($b);
cmp_ok(length($dump_a), '>', 10000, 'the dump covers the trees');
ok($dump_a eq $dump_b, 'byte-identical buckets and key hashes on both nodes');

# after a restart and a rebuild on a, still identical
$a->restart;
reset_all($a);
ok(tree_dump($a) eq $dump_b, 'identical after a restart and a rebuild');
is(check_trees($b), '0', 'b: stored trees equal a rebuild');

done_testing();
