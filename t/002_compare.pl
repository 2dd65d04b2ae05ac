# compare() returns exactly the differences between two nodes, of all five
# kinds, and nothing else.
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
my $b_conn = $b->connstr('postgres');
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b', \$\$$b_conn\$\$)");

# the same base on both nodes
my $base = q{
	SELECT count(*) FROM (
	  SELECT hashtree.insert(pa, pb, ('k' || i)::bytea, sha256(('v' || i)::bytea))
	    FROM generate_series(1, 3000) i,
	         LATERAL (SELECT (ARRAY['a', 'a', 'b', 'c'])[1 + i % 4] AS pa,
	                         (ARRAY['x', 'y', 'z', 'w'])[1 + i % 4] AS pb) p) s};
$a->safe_psql('postgres', $base);
$b->safe_psql('postgres', $base);
# prefixes: (a,x) (a,y) (b,z) (c,w)

sub compare_all
{
	return $a->safe_psql('postgres', q{
		SELECT string_agg(format('%s|%s|%s|%s', c.kind, c.prefix_a, coalesce(c.prefix_b, '-'),
								 coalesce(convert_from(c.key, 'UTF8'), 'partition ' || p)), E'\n'
						  ORDER BY 1)
		  FROM generate_series(0, 7) p,
			   LATERAL (SELECT hashtree.lock(p) AS l1, hashtree.update(p) AS u1,
							   hashtree.lock('b', p) AS l2, hashtree.update('b', p) AS u2) x,
			   LATERAL hashtree.compare(p, 'b') c});
}

is(compare_all(), '', 'no differences between equal nodes');

# random divergence on b, and the exact list of what a must report
srand(42);
my %expected;
my @sql;
my %touched;
foreach my $round (1 .. 150)
{
	my $i = 1 + int(rand(3000));
	next if $touched{$i}++;
	my $pa = ('a', 'a', 'b', 'c')[ $i % 4 ];
	my $pb = ('x', 'y', 'z', 'w')[ $i % 4 ];
	next if $pb eq 'y' || $pb eq 'z';    # whole prefixes go below
	my $what = int(rand(3));
	if ($what == 0)
	{
		push @sql, "SELECT hashtree.delete('$pa', '$pb', 'k$i'::bytea)";
		$expected{"remote_missing|$pa|$pb|k$i"} = 1;
	}
	elsif ($what == 1)
	{
		push @sql, "SELECT hashtree.insert('$pa', '$pb', 'k$i'::bytea, '\\x01')";
		$expected{"different|$pa|$pb|k$i"} = 1;
	}
	else
	{
		push @sql, "SELECT hashtree.insert('$pa', '$pb', 'new$i'::bytea, '\\x02')";
		$expected{"missing|$pa|$pb|new$i"} = 1;
	}
}
# A whole prefix missing on one side is reported once per partition that
# holds keys of it (a prefix's keys are spread over the partitions).
sub prefix_rows
{
	my ($kind, $pa, $pb, $name, $keys) = @_;
	my $parts = $a->safe_psql('postgres',
		"SELECT string_agg(DISTINCT hashtree.partition_of('$pa', '$pb', k)::text, ' ') FROM ($keys) s(k)");
	$expected{"$kind|$name|partition $_"} = 1 foreach split / /, $parts;
}
# a whole prefix_a and a whole prefix_b only on b
my $new_keys = "SELECT ('n' || i)::bytea FROM generate_series(1, 50) i";
push @sql, "SELECT hashtree.insert('only_b', 'p', ('n' || i)::bytea, '\\x03') FROM generate_series(1, 50) i";
prefix_rows('missing_prefix', 'only_b', 'p', 'only_b|-', $new_keys);
push @sql, "SELECT hashtree.insert('a', 'only_b', ('n' || i)::bytea, '\\x03') FROM generate_series(1, 50) i";
prefix_rows('missing_prefix', 'a', 'only_b', 'a|only_b', $new_keys);
# a whole prefix_a (b has only (b,z)) and a whole prefix_b (a,y) only on a
push @sql, "SELECT hashtree.delete('b', 'z', ('k' || i)::bytea) FROM generate_series(1, 3000) i";
prefix_rows('remote_missing_prefix', 'b', 'z', 'b|-',
	"SELECT key FROM hashtree.entry WHERE depth = 2 AND pa = 'b' AND pb = 'z'");
push @sql, "SELECT hashtree.delete('a', 'y', ('k' || i)::bytea) FROM generate_series(1, 3000) i";
prefix_rows('remote_missing_prefix', 'a', 'y', 'a|y',
	"SELECT key FROM hashtree.entry WHERE depth = 2 AND pa = 'a' AND pb = 'y'");

$b->safe_psql('postgres', join(";\n", @sql) . ';');

my $got = compare_all();
my @got = split /\n/, $got;
my %got = map { $_ => 1 } @got;
is(scalar(@got), scalar(keys %got), 'no difference reported twice')
  or do { my %c; $c{$_}++ for @got; diag(join("\n", grep { $c{$_} > 1 } sort keys %c)); };
is_deeply(\%got, \%expected, 'exactly the differences, of all kinds')
  or diag(join("\n", 'got:', sort(@got), 'expected:', sort keys %expected));
foreach my $kind ('missing', 'remote_missing', 'different', 'missing_prefix', 'remote_missing_prefix')
{
	ok((grep { /^$kind\|/ } @got), "kind $kind reported");
}

# the local side was compared as locked and updated; the peer's locks are
# held by the peer backend serving a's connection, and go with it
is($b->safe_psql('postgres', 'SELECT count(lock_owner) FROM hashtree.status'), '0',
	"peer locks are gone with the session that took them");

# converge by copying the entries, then nothing is reported
$a->safe_psql('postgres', 'SELECT count(*) FROM hashtree.entry');
my $copy = $b->safe_psql('postgres', q{
	SELECT string_agg(format('SELECT hashtree.insert(%s, %L, %L, %L::bytea, %L::bytea, false);',
							 part, pa, pb, key, hash), E'\n')
	  FROM hashtree.entry WHERE depth = 2});
$a->safe_psql('postgres', 'DELETE FROM hashtree.entry WHERE depth = 2');
reset_all($a);
$a->safe_psql('postgres', $copy);
is(compare_all(), '', 'no differences after copying the peer\'s entries');

done_testing();
