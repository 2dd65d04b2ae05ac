# Tracked tables across nodes: the same rows in tables created with a
# different column order (and a dropped column) give the same trees; random
# DML on one node is found by compare, key for key; a crash during a write
# load leaves trees equal to a fresh re-hash.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use HashtreeTest;

$SIG{PIPE} = 'IGNORE';
my $a = ht_node('a', conf => "restart_after_crash = on\n");
my $b = ht_node('b');
my $b_conn = $b->connstr('postgres');
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b', \$\$$b_conn\$\$)");

# the same table, two column orders, one with a dropped column
$a->safe_psql('postgres', q{
	CREATE TABLE orders (id bigint, customer text, amount numeric(12,2), tags text[], note text,
						 placed date, PRIMARY KEY (id));
	CREATE TABLE items (order_id bigint, line int, sku text, qty int, PRIMARY KEY (order_id, line));
});
$b->safe_psql('postgres', q{
	CREATE TABLE orders (junk int, note text, placed date, tags text[], amount numeric(12,2),
						 customer text, id bigint PRIMARY KEY);
	ALTER TABLE orders DROP COLUMN junk;
	CREATE TABLE items (qty int, sku text, line int, order_id bigint, PRIMARY KEY (order_id, line));
});
my $fill = q{
	INSERT INTO orders (id, customer, amount, tags, note, placed)
	  SELECT i, 'cust ' || (i % 97), i * 1.25, ARRAY['t' || (i % 5), NULL], CASE WHEN i % 7 = 0 THEN NULL ELSE 'n' || i END,
			 date '2024-01-01' + (i % 365)
		FROM generate_series(1, 4000) i;
	INSERT INTO items (order_id, line, sku, qty)
	  SELECT i / 3 + 1, i % 3, 'sku' || (i % 50), i % 9 FROM generate_series(0, 2999) i;
	SELECT hashtree.track('orders'), hashtree.track('items');
};
$a->safe_psql('postgres', $fill);
$b->safe_psql('postgres', $fill);
is(lock_update_all($a), 'ok/ok', 'a updated');
is(lock_update_all($b), 'ok/ok', 'b updated');

my $prefixes = q{
	SELECT string_agg(p || ' ' || coalesce(encode(hashtree.prefix_hash(p, 'public', t), 'hex'), '-'), ' '
					  ORDER BY p, t)
	  FROM generate_series(0, 7) p, unnest(ARRAY['orders', 'items']) t};
my $pa = $a->safe_psql('postgres', $prefixes);
is($b->safe_psql('postgres', $prefixes), $pa, 'equal prefix hashes despite different column orders');
is(tops($b), tops($a), 'equal top hashes');

sub compare_all
{
	return $a->safe_psql('postgres', q{
		SELECT string_agg(format('%s|%s|%s', c.kind, c.prefix_b, coalesce(encode(c.key, 'hex'), '-')), E'\n'
						  ORDER BY 1)
		  FROM generate_series(0, 7) p,
			   LATERAL (SELECT hashtree.lock(p), hashtree.update(p),
							   hashtree.lock('b', p), hashtree.update('b', p)) x,
			   LATERAL hashtree.compare(p, 'b') c});
}
is(compare_all(), '', 'no differences');

# random DML on b; the expected differences are computed from the tables
srand(7);
my @sql;
foreach my $i (1 .. 60)
{
	my $id = 1 + int(rand(4000));
	my $what = int(rand(4));
	push @sql,
	    $what == 0 ? "UPDATE orders SET amount = amount + 1 WHERE id = $id"
	  : $what == 1 ? "DELETE FROM orders WHERE id = $id"
	  : $what == 2 ? "INSERT INTO orders (id, customer) VALUES (" . (10000 + $id) . ", 'new') ON CONFLICT DO NOTHING"
	  :              "UPDATE orders SET id = id + 20000 WHERE id = $id";
}
push @sql, "UPDATE items SET qty = qty + 1 WHERE order_id = 17";
push @sql, "DELETE FROM items WHERE order_id = 18";
push @sql, "INSERT INTO items VALUES (5, 'x', 9, 9999)";
$b->safe_psql('postgres', join(";\n", @sql) . ';');

# the keys whose rows differ, computed with row_key/row_hash on both sides
my $rows = q{
	SELECT string_agg(t || ' ' || encode(k, 'hex') || ' ' || encode(h, 'hex'), E'\n' ORDER BY 1) FROM (
		SELECT 'orders' AS t, hashtree.row_key('orders', o) AS k, hashtree.row_hash('orders', o) AS h FROM orders o
		UNION ALL
		SELECT 'items', hashtree.row_key('items', i), hashtree.row_hash('items', i) FROM items i) s};
my %ra = map { my @f = split / /; ("$f[0] $f[1]" => $f[2]) } split /\n/, $a->safe_psql('postgres', $rows);
my %rb = map { my @f = split / /; ("$f[0] $f[1]" => $f[2]) } split /\n/, $b->safe_psql('postgres', $rows);
my %expected;
foreach my $k (keys %ra)
{
	my ($t, $key) = split / /, $k;
	if (!exists $rb{$k}) { $expected{"remote_missing|$t|$key"} = 1; }
	elsif ($rb{$k} ne $ra{$k}) { $expected{"different|$t|$key"} = 1; }
}
foreach my $k (keys %rb)
{
	my ($t, $key) = split / /, $k;
	$expected{"missing|$t|$key"} = 1 unless exists $ra{$k};
}
cmp_ok(scalar(keys %expected), '>', 40, 'the DML changed rows');
my %got = map { $_ => 1 } split /\n/, compare_all();
is_deeply(\%got, \%expected, 'compare lists exactly the changed keys');

# crash during a write load on a: the trees after restart equal a re-hash
my @bg;
foreach my $s (1 .. 2)
{
	my $bg = $a->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/go/, qq{\\echo go
		\\o /dev/null
		DO \$\$BEGIN
			IF random() < 0.5 THEN
				UPDATE orders SET amount = amount + 1 WHERE id = (random() * 4000)::int;
			ELSE
				INSERT INTO orders (id, customer) VALUES ((random() * 1e9)::bigint, 's$s') ON CONFLICT DO NOTHING;
			END IF;
		END\$\$ \\watch 0.002
});
	push @bg, $bg;
}
usleep(1_500_000);
crash($a);
eval { $_->quit } foreach @bg;
$a->start;
cmp_ok($a->safe_psql('postgres', q{SELECT count(*) FROM orders WHERE customer IN ('s1', 's2')}), '>', 10,
	'writes committed before the crash');
is(lock_update_all($a), 'ok/ok', 'updated after the crash');
is(check_trees($a), '0', 'trees equal a rebuild of the entries');
is($a->safe_psql('postgres', q{
	SELECT count(*) FROM orders o FULL JOIN (SELECT key, hash FROM hashtree.leaf_entry WHERE pb = 'orders') e
	    ON e.key = hashtree.row_key('orders', o)
	 WHERE e.key IS NULL OR o.id IS NULL OR e.hash <> hashtree.row_hash('orders', o)}), '0',
	'entries equal the rows after the crash');
my $dump = tree_dump($a);
reset_all($a);
ok(tree_dump($a) eq $dump, 'identical to a fresh reset (which hashes the rows again)');

done_testing();
