# A reset of a big partition, and track() of a big table, report progress,
# and a cancel leaves everything exactly as it was (one transaction).
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
	SELECT count(*) FROM (SELECT hashtree.insert(0, 'big', 'p' || (i % 3), ('k' || i)::bytea, '\x01', false)
							FROM generate_series(1, 300000) i) s});
is(lock_update_all($node), 'ok/ok', 'built');
my $state = q{SELECT builds || ' ' || last_build || ' ' || entries FROM hashtree.status WHERE partition = 0};
my $before = $node->safe_psql('postgres', $state);
my $tops = tops($node);

# cancel in the middle
my $s = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{\echo started
SELECT hashtree.reset(0);
});
ok($node->poll_query_until('postgres',
	"SELECT state = 'active' AND query LIKE '%reset%' FROM pg_stat_activity WHERE pid = $pid"),
	'reset running');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
ok($node->poll_query_until('postgres', "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid"),
	'reset canceled');
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'the reset reports the cancel');
is($node->safe_psql('postgres', $state), $before, 'no build recorded');
is(tops($node), $tops, 'the previous trees are intact');
is(check_trees($node), '0', 'and consistent');

# a full reset says how far it got
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT hashtree.reset(0)');
is($ret, 0, 'reset completes');
like($err, qr/NOTICE:  reset of partition 0: leaf trees rebuilt, \d+ segments/, 'progress reported');
is(tops($node), $tops, 'same trees after the reset');

# track() of a big table: progress, and a cancel leaves nothing behind
$node->safe_psql('postgres', q{
	CREATE TABLE big (id int PRIMARY KEY, payload text);
	INSERT INTO big SELECT i, repeat('x', 4000) || i FROM generate_series(1, 400000) i});
# (long values, compressed in TOAST: hashing them keeps track() busy for
# seconds, long enough to be canceled and to report progress -- in one
# backend: parallel workers sharing the scan would make it too short here)
my $nothing = q{SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'big'::regclass) || ' ' ||
					   (SELECT count(*) FROM hashtree.tracked_table) || ' ' ||
					   (SELECT count(*) FROM hashtree.leaf_entry WHERE pb = 'big')};
$s = $node->background_psql('postgres', on_error_stop => 0);
$pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_safe('SET max_parallel_maintenance_workers = 0');
$s->query_until(qr/started/, q{\echo started
SELECT hashtree.track('big');
});
ok($node->poll_query_until('postgres',
	"SELECT state = 'active' AND query LIKE '%track%' FROM pg_stat_activity WHERE pid = $pid"),
	'track running');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
ok($node->poll_query_until('postgres', "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid"),
	'track canceled');
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'track reports the cancel');
is($node->safe_psql('postgres', $nothing), '0 0 0', 'no trigger, no registration, no entry left');

($ret, $out, $err) = $node->psql('postgres',
	q{SET max_parallel_maintenance_workers = 0; SELECT hashtree.track('big')});
is($out, '400000', 'track completes');
like($err, qr/NOTICE:  track\(public\.big\): \d+ rows hashed/, 'track reports progress');

done_testing();
