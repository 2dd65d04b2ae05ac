# Calls on peers never hang: connect and statement timeouts, cancel, a
# dead peer and a peer killed in the middle of a call all end in an error
# carrying the reason, and the next call works.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IO::Socket::INET;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use HashtreeTest;

$SIG{PIPE} = 'IGNORE';
my $a = ht_node('a');
my $b = ht_node('b');
my $b_conn = $b->connstr('postgres');
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b', \$\$$b_conn\$\$)");

# a "peer" that accepts TCP connections and never says anything
my $mute = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
  or die "cannot listen: $!";
my $mute_port = $mute->sockport;
$a->safe_psql('postgres', "SELECT hashtree.add_peer('mute', 'host=127.0.0.1 port=$mute_port dbname=x')");

# The client classifies each failure by its SQLSTATE (remote.h): class 08
# when the peer is lost (unreachable, broken, mute past the timeout), the
# peer's own SQLSTATE for an error the peer reported.

# 1. connect timeout
my $t0 = time;
my ($ret, $out, $err) = $a->psql('postgres',
	q{\set VERBOSITY verbose
SET hashtree.connect_timeout = '1s'; SELECT hashtree.lock('mute', 0)});
my $took = time - $t0;
like($err, qr/ERROR:  08001: could not connect to peer "mute": timeout expired/, 'connect timeout reported (08001)');
ok($took < 20, "connect timeout took ${took}s");

# 2. cancel while connecting
my $s = $a->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{SET hashtree.connect_timeout = '10min';
\echo started
SELECT hashtree.lock('mute', 0);
});
ok($a->poll_query_until('postgres',
	"SELECT wait_event = 'Extension' FROM pg_stat_activity WHERE pid = $pid"), 'waiting on the peer');
$t0 = time;
$a->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
ok($a->poll_query_until('postgres', "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid"),
	'cancel interrupts the wait');
ok(time - $t0 < 20, 'promptly');
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'the canceled call reports the cancel');

# 3. statement timeout: b's statement waits behind a table lock
my $blocker = $b->background_psql('postgres');
$blocker->query_safe('BEGIN; LOCK TABLE hashtree.partition IN ACCESS EXCLUSIVE MODE');
$t0 = time;
($ret, $out, $err) = $a->psql('postgres',
	q{\set VERBOSITY verbose
SET hashtree.statement_timeout = '1s'; SELECT hashtree.lock('b', 0)});
$took = time - $t0;
like($err, qr/ERROR:  08006: canceling statement on peer "b" due to statement timeout/,
	'statement timeout reported, the peer lost (08006)');
ok($took < 20, "statement timeout took ${took}s");
# the peer notices the closed connection and stops working for us
ok($b->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'hashtree'}),
	'the peer backend went away');
$blocker->query_safe('COMMIT');
is($a->safe_psql('postgres', q{SELECT hashtree.lock('b', 0)}), 'ok', 'the next call works');

# 4. the peer's errors come back with its SQLSTATE and message
($ret, $out, $err) = $a->psql('postgres', q{\set VERBOSITY verbose
SELECT hashtree.update('b', 99)});
like($err, qr/ERROR:  22023: partition 99 does not exist.*CONTEXT:  on peer "b"/s, 'peer error carried back');

# 4b. the peer cancels its own statement (its statement_timeout): the
# peer's error, not a lost peer (class 08) nor a cancel of this backend
# (class 57); the connection stays, the next call on it works
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b_st', \$\$$b_conn options='-c statement_timeout=300'\$\$)");
my $st = $a->background_psql('postgres', on_error_stop => 0);
$st->query_safe(q{\set VERBOSITY verbose});
is($st->query_safe(q{SELECT hashtree.lock('b_st', 1)}), 'ok', 'a lock on the peer, held by the connection');
$blocker->query_safe('BEGIN; LOCK TABLE hashtree.partition IN ACCESS EXCLUSIVE MODE');
$st->query(q{SELECT hashtree.lock('b_st', 0)});
$blocker->query_safe('COMMIT');
like($st->{stderr}, qr/ERROR:  38000: canceling statement due to statement timeout\n(LOCATION:[^\n]*\n)?CONTEXT:  on peer "b_st", which reported SQLSTATE 57014/,
	'the peer\'s own statement timeout is relayed as the peer\'s error (38000, its SQLSTATE named)');
$st->{stderr} = '';
is($st->query_safe(q{SELECT hashtree.release_lock('b_st', 1)}), 'ok',
	'the connection was kept (its lock is still there) and works');
$st->quit;

# 5. a peer killed in the middle of a call
$blocker->query_safe('BEGIN; LOCK TABLE hashtree.partition IN ACCESS EXCLUSIVE MODE');
$s = $a->background_psql('postgres', on_error_stop => 0);
$pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{SET hashtree.statement_timeout = 0;
\set VERBOSITY verbose
\echo started
SELECT hashtree.lock('b', 1);
});
ok($b->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'hashtree' AND wait_event_type = 'Lock'}),
	'the call is waiting on the peer');
crash($b);
eval { $blocker->quit };
ok($a->poll_query_until('postgres', "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid"),
	'the caller is released when the peer dies');
$s->quit;
like($s->{stderr}, qr/ERROR:  08006: (lost connection to peer "b"|.*connection to peer "b")/,
	'lost connection reported, the peer lost (08006)');

# 6. a dead peer: refused at once
$t0 = time;
($ret, $out, $err) = $a->psql('postgres', q{SELECT hashtree.lock('b', 0)});
like($err, qr/could not connect to peer "b"/, 'dead peer reported');
ok(time - $t0 < 20, 'without hanging');

# 7. back to life
$b->start;
is($a->safe_psql('postgres', q{SELECT hashtree.lock('b', 0), hashtree.update('b', 0)}), 'ok|ok',
	'calls work again after the peer restarted');

done_testing();
