# The launcher's cleanup of what fragment moves leave on the peers (issue
# 15, DESIGN §19): node a's launcher drops, on each peer with fragments,
# a's tables that no foreign table of a refers to — sources moved away,
# targets of moves that rolled back, tables of dropped parents — and never
# one a move under way holds (remote part committed, swap not yet), nor
# one that a fragment uses.  An unreachable peer is skipped.  drop_peer
# waits for a move to the peer under way and then refuses.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $a = ht_node('a', conf => q{
hashtree.database = 'postgres'
hashtree.tick_interval = 1
hashtree.exchange_interval = 0
log_min_messages = debug1
});
my $b = ht_node('b');
my $c = ht_node('c');
my %peer = (b => $b, c => $c);
$a->safe_psql('postgres', 'CREATE EXTENSION postgres_fdw');
foreach my $name (sort keys %peer)
{
	$a->safe_psql('postgres', sprintf(q{SELECT hashtree.add_peer('%s', 'host=%s port=%d dbname=postgres')},
		$name, $peer{$name}->host, $peer{$name}->port));
}

sub sql { my ($node, $q) = @_; return $node->safe_psql('postgres', $q); }

sub remote_tables
{
	my ($node) = @_;
	return sql($node, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'});
}

sub placement
{
	return sql($a, q{SELECT string_agg(fragment || '@' || node, ' ' ORDER BY fragment)
					 FROM hashtree.fragments WHERE "table" = 't'::regclass});
}

sub rows { return sql($a, q{SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY id)) FROM t}); }

sub move
{
	my ($tbl, $k, $node) = @_;
	$node = defined $node ? "'$node'" : 'NULL';
	return sql($a, qq{SELECT hashtree.move_frag('$tbl', $k, $node, 'block_writes')});
}

# wait until a's launcher has looked at peer $name after log offset $off
sub wait_cleanup
{
	my ($name, $off) = @_;
	return $a->wait_for_log(qr/cleanup on peer "$name": \d+ tables not referenced here, \d+ dropped/, $off);
}

$a->safe_psql('postgres', q{
	CREATE TABLE t (id int PRIMARY KEY, v text) PARTITION BY HASH (id);
	SELECT hashtree.frag_init('t', 4);
	INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 4000) g;
});
my $rows = rows();

# leftovers of every kind: 1 to b, then b to c (b's table is left), 2 to c
# and home (c's table is left), a table u with a fragment on b, dropped
move('t', 1, 'b');
move('t', 1, 'c');
move('t', 2, 'c');
move('t', 2, undef);
$a->safe_psql('postgres', q{
	CREATE TABLE u (id int PRIMARY KEY) PARTITION BY HASH (id);
	SELECT hashtree.frag_init('u', 2);
	INSERT INTO u SELECT generate_series(1, 100);
	SELECT hashtree.move_frag('u', 1, 'b', 'block_writes');
	DROP TABLE u;
});
ok(wait_for_value($b, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'}, '0'),
	'b: the table moved away and the dropped table\'s are gone');
ok(wait_for_value($c, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'}, '1'),
	'c: the table moved home is gone, the fragment\'s stays');
is(placement(), '1@c 2@a 3@a 4@a', 'placement');
is(rows(), $rows, 'every row reachable through the parent');
like(slurp_file($a->logfile), qr/dropped \d+ leftover tables? of fragment moves on peer "b"/,
	'the launcher logs what it dropped');

# a move under way: its remote part committed on b, its swap not yet
# committed here (it holds the table's operation lock): never dropped
my $s = $a->background_psql('postgres');
$s->query_safe(q{BEGIN; SELECT hashtree.move_frag('t', 3, 'b', 'block_writes')});
is(remote_tables($b), '1', 'a move under way: its table on b is committed');
my $off = -s $a->logfile;
wait_cleanup('b', $off);
$off = -s $a->logfile;
wait_cleanup('b', $off);
is(remote_tables($b), '1', 'a move under way: two cleanups of b later, its table is still there');
$s->query_safe('COMMIT');
$off = -s $a->logfile;
wait_cleanup('b', $off);
is(remote_tables($b), '1', 'the move committed: its table stays (a fragment)');
is(placement(), '1@c 2@a 3@b 4@a', 'placement after the move');
is(rows(), $rows, 'every row reachable through the parent after the move');

# a move that rolled back: its table on b is garbage
$s->query_safe(q{BEGIN; SELECT hashtree.move_frag('t', 4, 'b', 'block_writes')});
is(remote_tables($b), '2', 'another move under way: its table on b');
$s->query_safe('ROLLBACK');
ok(wait_for_value($b, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'}, '1'),
	'the move rolled back: the launcher drops its table');
is(placement(), '1@c 2@a 3@b 4@a', 'placement unchanged');
is(rows(), $rows, 'rows unchanged');

# an unreachable peer is skipped; the others are still cleaned
$c->stop;
$off = -s $a->logfile;
ok($a->wait_for_log(qr/leftovers of fragment moves on peer "c" are not removed now/, $off),
	'c down: the cleanup of c says so');
move('t', 3, undef);
ok(wait_for_value($b, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'}, '0'),
	'c down: b is still cleaned');
$c->start;
is(sql($a, 'SELECT count(*) FROM t'), '4000', 'c up again: its fragment is read');

# drop_peer waits for a move to the peer under way, then refuses
$s->query_safe(q{BEGIN; SELECT hashtree.move_frag('t', 4, 'b', 'block_writes')});
my $d = $a->background_psql('postgres', on_error_stop => 0);
$d->query_until(qr/started/, q{\echo started
SELECT hashtree.drop_peer('b');
});
ok($a->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%drop_peer%' AND wait_event_type = 'Lock'
	   AND pid <> pg_backend_pid()}),
	'drop_peer waits for the move to b');
$s->query_safe('COMMIT');
$d->quit;
like($d->{stderr}, qr/cannot drop peer "b" because it holds fragments/, 'then refuses: b holds fragment 4');
is(sql($a, q{SELECT count(*) FROM hashtree.peers WHERE name = 'b'}), '1', 'b is still a peer');
is(placement(), '1@c 2@a 3@a 4@b', 'placement after the move');
is(rows(), $rows, 'rows after the move');
$s->quit;

done_testing();
