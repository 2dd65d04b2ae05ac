# Warm exchange workers (issue 13): the background exchange keeps its
# connection to the peer between exchanges (one peer backend serves them
# all, one job runs them), connects again when the peer closed the
# connection while it was idle (a terminated session: no exchange fails
# for it), closes it on a reload once the peer's connection string changed
# (and the next exchange uses the new one), and the job leaves when the
# peer is dropped.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $conf = <<'EOF';
hashtree.database = 'postgres'
hashtree.tick_interval = 1
hashtree.exchange_interval = 1
hashtree.max_exchanges = 2
hashtree.repair = 'pull'
hashtree.connect_timeout = '2s'
hashtree.statement_timeout = '10s'
EOF
my $a = ht_node('a', conf => $conf);
my $b = ht_node('b');
my $b_conn = $b->connstr('postgres');
foreach my $n ($a, $b)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE acct (id int PRIMARY KEY, owner text);
		SELECT hashtree.track('acct');
		INSERT INTO acct SELECT i, 'owner ' || i FROM generate_series(1, 500) i;
	});
}
$b->safe_psql('postgres', q{UPDATE acct SET owner = 'b' WHERE id % 50 = 0});
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b', \$\$$b_conn\$\$)");

# the peer backends serving a's workers, by application name
sub served
{
	my ($app) = @_;
	return $b->safe_psql('postgres',
		"SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE application_name = '$app'");
}
sub job { return $a->safe_psql('postgres',
		q{SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE backend_type = 'hashtree exchange'}); }
sub last_id { return $a->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM hashtree.exchange_log'); }
sub runs_since
{
	my ($id, $n) = @_;
	return $a->poll_query_until('postgres',
		"SELECT count(DISTINCT run) >= $n FROM hashtree.exchange_log WHERE worker AND id > $id");
}
# exchanges that failed (an error: a partition skipped because the tick
# held its lock is not one, and happens on a loaded machine)
sub failures_since
{
	my ($id) = @_;
	return $a->safe_psql('postgres',
		"SELECT count(*) FILTER (WHERE outcome = 'error') || '/' || count(*) FROM hashtree.exchange_log WHERE worker AND id > $id");
}

# the workers' exchanges pull b's rows, and go on
ok($a->poll_query_until('postgres',
	q{SELECT count(*) = 10 FROM acct WHERE owner = 'b'}), 'the workers pulled b\'s rows');
ok(runs_since(0, 2), 'the workers run exchanges');
my $pid = served('hashtree');
like($pid, qr/^\d+$/, "one peer backend serves the workers' exchanges ($pid)");
my $job = job();
like($job, qr/^\d+$/, "one job runs them ($job)");

# 1. kept: the next exchanges use the same connection and job
my $id = last_id();
ok(runs_since($id, 3), 'three more exchanges');
is(served('hashtree'), $pid, 'the same peer backend served them: the connection was kept');
is(job(), $job, 'the same job ran them');
like(failures_since($id), qr{^0/[1-9]}, 'none failed');

# 2. the peer closes the connection while it is idle: the next exchange
# notices it before using it and connects again, no exchange fails
$b->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$id = last_id();
ok(runs_since($id, 2), 'exchanges after the peer closed the connection');
like(failures_since($id), qr{^0/[1-9]}, 'none failed: the closed connection was not used');
my $pid2 = served('hashtree');
like($pid2, qr/^\d+$/, "a new peer backend serves them ($pid2)");
isnt($pid2, $pid, 'not the old one');
is(job(), $job, 'the same job');

# 3. the peer's connection string changes: a reload closes the kept
# connection (the job stays, parked), the next exchange uses the new one
$a->safe_psql('postgres', 'ALTER SYSTEM SET hashtree.exchange_interval = 3600');
$a->reload;
sleep 3;	# (an exchange in progress ends, the job is parked)
$id = last_id();
$a->safe_psql('postgres', qq{SELECT hashtree.drop_peer('b');
	SELECT hashtree.add_peer('b', \$\$$b_conn application_name=hashtree_two\$\$)});
is(served('hashtree'), $pid2, 'the kept connection is open before the reload');
$a->reload;
ok($b->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $pid2"),
	'the reload closed the kept connection of a changed peer');
is(job(), $job, 'the job stays');
is(last_id(), $id, 'no exchange meanwhile');
$a->safe_psql('postgres', 'ALTER SYSTEM SET hashtree.exchange_interval = 1');
$a->reload;
ok(runs_since($id, 1), 'the next exchange');
like(served('hashtree_two'), qr/^\d+$/, 'it connected with the new connection string');
like(failures_since($id), qr{^0/[1-9]}, 'and did not fail');
is(job(), $job, 'the same job');

# 4. the peer dropped: a reload and the job leaves, with its connection
$a->safe_psql('postgres', q{SELECT hashtree.drop_peer('b')});
$a->reload;
ok($a->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'hashtree exchange'}),
	'the job left when its peer was dropped');
ok($b->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name LIKE 'hashtree%'}),
	'and its connection is closed');
ok(!$a->log_contains('FATAL|lost connection'), 'no FATAL, no lost connection in the log');

done_testing();
