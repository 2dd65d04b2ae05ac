# A partition lock vanishes when its owner exits: a local session that
# disconnects or is terminated, and the peer backend serving a remote
# lock when the session that took it ends.
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

# local owner disconnects
my $s1 = $a->background_psql('postgres');
is($s1->query_safe('SELECT hashtree.lock(0)'), 'ok', 'session 1 locks partition 0');
my $pid1 = $s1->query_safe('SELECT pg_backend_pid()');
is($a->safe_psql('postgres', 'SELECT lock_owner FROM hashtree.status WHERE partition = 0'), $pid1,
	'status shows the owner');
is($a->safe_psql('postgres', 'SELECT hashtree.lock(0)'), 'locked', 'another session cannot lock');
$s1->quit;
ok(wait_for_value($a, 'SELECT hashtree.lock(0)', 'ok'), 'lock free once its owner disconnected');

# local owner terminated
my $s2 = $a->background_psql('postgres', on_error_stop => 0);
is($s2->query_safe('SELECT hashtree.lock(1)'), 'ok', 'session 2 locks partition 1');
my $pid2 = $s2->query_safe('SELECT pg_backend_pid()');
$a->safe_psql('postgres', "SELECT pg_terminate_backend($pid2)");
ok(wait_for_value($a, 'SELECT hashtree.lock(1)', 'ok'), 'lock free once its owner was terminated');
is($a->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'0', 'status shows no dead owner');
$s2->quit;

# remote lock: owned by b's backend serving a's session, gone with it
my $s3 = $a->background_psql('postgres');
is($s3->query_safe(q{SELECT hashtree.lock('b', 2)}), 'ok', 'a session locks partition 2 on b');
is($b->safe_psql('postgres', q{SELECT a.application_name FROM hashtree.status s
								 JOIN pg_stat_activity a ON a.pid = s.lock_owner WHERE s.partition = 2}),
	'hashtree', 'b shows the lock owned by the backend serving the peer connection');
is($b->safe_psql('postgres', 'SELECT hashtree.lock(2)'), 'locked', 'b itself cannot take it');
is($s3->query_safe(q{SELECT hashtree.update('b', 2)}), 'ok', 'the owner can update through its connection');
$s3->quit;
ok(wait_for_value($b, 'SELECT hashtree.lock(2)', 'ok'), 'remote lock free once the session ended');

done_testing();
