# Crash safety: kill -9 of the postmaster during inserts and during an
# update; after the restart the trees equal a fresh reset (the tables are
# WAL-logged, so a committed change is never lost and an uncommitted one
# never half applied).
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

my $node = ht_node('n', conf => "restart_after_crash = on\n");
$node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT hashtree.insert('p' || (i % 7), 's' || (i % 3), ('k' || i)::bytea,
												sha256(i::text::bytea))
							FROM generate_series(1, 20000) i) s});
is(lock_update_all($node), 'ok/ok', 'initial trees');

sub after_crash_equals_reset
{
	my ($what) = @_;
	$node->start;
	is(lock_update_all($node), 'ok/ok', "$what: locked and updated after the crash");
	is(check_trees($node), '0', "$what: stored trees equal a rebuild of the entries");
	my $dump = tree_dump($node);
	reset_all($node);
	ok(tree_dump($node) eq $dump, "$what: identical to a fresh reset");
}

# 1. kill -9 while sessions insert (many small transactions)
my @bg;
foreach my $s (1 .. 2)
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/go/, qq{\\echo go
		SELECT count(*) FROM (SELECT hashtree.insert('crash', 's$s', ('c' || i)::bytea, '\\x01')
								FROM generate_series(1, 1) i) s;
		\\o /dev/null
		SELECT hashtree.insert('crash', 's$s', ('c' || i)::bytea, sha256(i::text::bytea)) FROM generate_series(1, 300) i \\watch 0.01
});
	push @bg, $bg;
}
ok($node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM hashtree.entry WHERE pa = 'crash'}), 'inserts running');
usleep(300_000);
crash($node);
# the sessions died with the server
eval { $_->quit } foreach @bg;
after_crash_equals_reset('during inserts');

# 2. kill -9 in the middle of an update of a large dirty set
$node->safe_psql('postgres', q{
	SELECT count(*) FROM (SELECT hashtree.insert('big', 'b', ('b' || i)::bytea, '\x02')
							FROM generate_series(1, 60000) i) s});
my $upd = $node->background_psql('postgres', on_error_stop => 0);
$upd->query_until(qr/go/, q{\echo go
	SELECT string_agg(hashtree.lock(p) || hashtree.update(p), ',') FROM generate_series(0, 7) p;
});
ok($node->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE '%hashtree.update(p)%' AND state = 'active'
	    AND pid <> pg_backend_pid()}), 'update running');
usleep(200_000);
crash($node);
eval { $upd->quit };
after_crash_equals_reset('during an update');

done_testing();
