# exchange() across a WAN: the peer reached through bench/wan_proxy.pl, a
# proxy that delays every chunk and counts request/response turns.  The
# differences found, and the rows a pull or a push repairs, are those of a
# direct connection; exchange_log's round trips are the turns the proxy
# counted, and a whole node takes few of them, however many partitions
# (issue 13: at most 6 when the nodes are equal, 16 with differences, 4
# more for a repair): 2 when equal, 4 with differences in several
# partitions, 2 more for a repair; a partition locked on the peer
# is skipped while the others go on; a proxy killed in the middle of the
# descent (the link lost) or stopped (the peer silent) ends as errors,
# never as "no differences", with no lock left on either node, and the
# next exchange works.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time sleep);
use HashtreeTest;

$SIG{PIPE} = 'IGNORE';
my $a = ht_node('a');
my $b = ht_node('b');
$a->safe_psql('postgres', sprintf(q{SELECT hashtree.add_peer('b', $$%s$$)}, $b->connstr('postgres')));

# ---- the proxy ----------------------------------------------------------------

my $proxy_script = "$FindBin::RealBin/../bench/wan_proxy.pl";
my $stats = PostgreSQL::Test::Utils::tempdir() . '/proxy.stats';
my $target = $b->host . '/.s.PGSQL.' . $b->port;
$target = '127.0.0.1:' . $b->port unless $b->host =~ m{/};
my ($proxy_pid, $proxy_port);

# start the proxy (on the port it had before, if any), one-way delay in ms
sub start_proxy
{
	my ($delay) = @_;
	unlink $stats;
	my $pid = fork;
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', '/dev/null');
		exec($^X, $proxy_script, '--delay', $delay, '--stats', $stats, $proxy_port // 0, $target)
		  or die "exec: $!";
	}
	foreach my $i (1 .. 500)
	{
		my $s = proxy_stats();
		if ($s && $s->{pid} == $pid)
		{
			$proxy_pid = $pid;
			$proxy_port = $s->{port};
			return;
		}
		sleep 0.02;
	}
	die "the proxy did not start";
}

sub stop_proxy
{
	my ($sig) = @_;
	return unless $proxy_pid;
	kill($sig // 'TERM', $proxy_pid);
	waitpid($proxy_pid, 0);
	$proxy_pid = undef;
	return;
}
END { stop_proxy('KILL') if $proxy_pid; }

# the stats file as it is (undef if not there yet)
sub proxy_stats
{
	open(my $fh, '<', $stats) or return;
	my %s;
	while (<$fh>)
	{
		my ($k, $v) = /^(\S+) (.*)$/ or next;
		$s{$k} = $v unless $k eq 'conn';
	}
	close $fh;
	return \%s;
}

# the proxy's --ctl: "reset" or "turns" (waits for the proxy's answer)
sub proxy_ctl
{
	my ($cmd) = @_;
	open(my $fh, '-|', $^X, $proxy_script, '--ctl', $stats, $cmd) or die "ctl: $!";
	my $out = join('', <$fh>);
	close $fh or die "wan_proxy.pl --ctl $cmd failed";
	chomp $out;
	return $out;
}

start_proxy(5);
$a->safe_psql('postgres', "SELECT hashtree.add_peer('bw', 'host=127.0.0.1 port=$proxy_port dbname=postgres')");

# ---- the same table on both nodes, then b diverges -------------------------

for my $n ($a, $b)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric);
		SELECT hashtree.track('acct');
		INSERT INTO acct SELECT i, 'owner ' || i, i * 10 FROM generate_series(1, 3000) i;
		SELECT count(*) FROM (SELECT hashtree.insert('plain', 'x', 'k' || i, '\x01'::bytea)
								FROM generate_series(1, 50) i) s;
	});
}
$b->safe_psql('postgres', q{
	INSERT INTO acct SELECT i, 'new ' || i, 1 FROM generate_series(4001, 4040) i;
	DELETE FROM acct WHERE id % 97 = 0;
	UPDATE acct SET balance = -balance WHERE id % 89 = 0;
	SELECT hashtree.insert('plain', 'x', 'k7', '\x02'::bytea);
	SELECT hashtree.delete('plain', 'x', 'k8');
});
lock_update_all($a);
lock_update_all($b);

my $report_sql = q{
	SELECT coalesce(string_agg(concat_ws('|', partition, kind, prefix_a, prefix_b, encode(key, 'hex'), repaired),
							   E'\n' ORDER BY partition, kind, key), '')
	  FROM hashtree.exchange('%s', NULL, '%s')};
sub report { my ($peer, $mode) = @_; return $a->safe_psql('postgres', sprintf($report_sql, $peer, $mode // 'none')); }
sub last_id { return $_[0]->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM hashtree.exchange_log'); }
# what exchange_log says of the exchanges after id: all but times, peer
# and ids (bytes and round trips are the whole exchange's, on each row)
sub log_since
{
	my ($id) = @_;
	return $a->safe_psql('postgres', qq{
		SELECT string_agg(concat_ws(' ', partition, repair, outcome, missing, remote_missing, different,
									missing_prefix, remote_missing_prefix, repaired, bytes, round_trips),
						  E'\n' ORDER BY id)
		  FROM hashtree.exchange_log WHERE id > $id});
}
# the round trips of the exchanges after id, each counted once
sub round_trips_since
{
	my ($id) = @_;
	return $a->safe_psql('postgres',
		"SELECT coalesce(sum(round_trips) FILTER (WHERE id = run), 0) FROM hashtree.exchange_log WHERE id > $id");
}
sub locks { return $_[0]->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status WHERE lock_owner IS NOT NULL'); }

# ---- the same results through the proxy ----------------------------------

my $id = last_id($a);
my $direct = report('b');
my $direct_log = log_since($id);
$id = last_id($a);
my $t0 = time;
my $proxied = report('bw');
my $proxied_ms = int((time - $t0) * 1000);
my $proxied_log = log_since($id);
my $ndiff = () = $direct =~ /\n/g;
cmp_ok($ndiff + 1, '>=', 100, 'the nodes differ (' . ($ndiff + 1) . ' differences)');
is($proxied, $direct, 'through the proxy: the same differences as directly');
is($proxied_log, $direct_log, 'and the same exchange_log (counts, bytes, round trips per partition)');
is($a->safe_psql('postgres', "SELECT count(*) FROM hashtree.exchange_log WHERE id > $id AND outcome = 'ok'"),
	'8', 'every partition compared');
is($a->safe_psql('postgres', "SELECT count(DISTINCT run) FROM hashtree.exchange_log WHERE id > $id"),
	'1', 'the partitions were exchanged together (one run)');
my $rt = round_trips_since($id);
cmp_ok($proxied_ms, '>=', $rt * 10, "the delay is paid: $rt round trips of 10 ms, ${proxied_ms} ms");

# through_proxy(SQL): in one session whose connection to bw is open, the
# proxy's counters reset, the value of SQL (a scalar query), then the
# proxy's turns and exchange_log's round trips of the exchanges it ran
sub through_proxy
{
	my ($sql) = @_;
	my $out = $a->safe_psql('postgres', qq{
		SELECT count(*) AS opened FROM (SELECT hashtree.lock('bw', 0), hashtree.release_lock('bw', 0)) s \\gset
		SELECT coalesce(max(id), 0) AS l0 FROM hashtree.exchange_log \\gset
		\\! "$^X" "$proxy_script" --ctl "$stats" reset >/dev/null
		SELECT ($sql) AS result \\gset
		\\! "$^X" "$proxy_script" --ctl "$stats" turns >"$stats.turns"
		SELECT coalesce(sum(round_trips) FILTER (WHERE id = run), 0) AS rt
		  FROM hashtree.exchange_log WHERE id > :l0 \\gset
		SELECT :rt || E'\\n' || coalesce(:'result', '');
	});
	my ($logged, $result) = split /\n/, $out, 2;
	my $turns = slurp_file("$stats.turns");
	chomp $turns;
	return ($result // '', $logged, $turns);
}

# exchange_log's round trips are the turns the proxy counts, with the
# connection to the peer opened beforehand in the same session; a whole node
# with differences in several partitions takes 3 (lock, update, top hashes
# and the prefix trees' entries of all partitions in 1, the walk of all
# their leaf trees in 2 -- two levels per round trip --, the release of the
# peer's locks sent with the walk's last request; the issue allows 16)
my $nparts = $a->safe_psql('postgres', "SELECT count(DISTINCT partition) FROM hashtree.exchange('b')");
cmp_ok($nparts, '>=', 4, "the differences are in $nparts partitions");
my ($found, $counted, $turns) = through_proxy(q{SELECT count(*) FROM hashtree.exchange('bw')});
is($found, $ndiff + 1, 'through the proxy, in a session already connected: the same differences');
is($counted, $turns, "round trips: exchange_log $counted, the proxy $turns");
is($counted, $rt, 'and as many as in the first exchange through the proxy');
cmp_ok($counted, '<=', 3, "a whole node with differences in $nparts partitions: $counted round trips (at most 3)");

# compare() of one partition (the plum_db API: the caller holds the locks on
# both nodes): the top hashes in 1 round trip, then two levels per round
# trip at each of the three depths of the tree of trees -- at most 7, fewer
# than the tree's levels
my $dp = $a->safe_psql('postgres', "SELECT min(partition) FROM hashtree.exchange('b')");
my $cmp_out = $a->safe_psql('postgres', qq{
	SELECT hashtree.lock('bw', $dp) || hashtree.lock($dp) AS locked \\gset
	\\! "$^X" "$proxy_script" --ctl "$stats" reset >/dev/null
	SELECT count(*) AS found FROM hashtree.compare($dp, 'bw') \\gset
	\\! "$^X" "$proxy_script" --ctl "$stats" turns >"$stats.turns"
	SELECT hashtree.release_lock('bw', $dp) || hashtree.release_lock($dp) AS released \\gset
	SELECT :'locked' || ' ' || :found || ' ' || :'released';
});
my $cmp_turns = slurp_file("$stats.turns");
chomp $cmp_turns;
my ($cmp_locked, $cmp_found, $cmp_released) = split / /, $cmp_out;
is("$cmp_locked $cmp_released", 'okok okok', "compare($dp) through the proxy: both nodes locked and released");
cmp_ok($cmp_found, '>', 0, "partition $dp differs ($cmp_found differences)");
cmp_ok($cmp_turns, '<=', 7, "compare() of one partition: $cmp_turns round trips (at most 7)");
is(locks($a) . locks($b), '00', 'no lock left on either node');

proxy_ctl('reset');
$a->safe_psql('postgres', q{SELECT hashtree.lock('bw', 0), hashtree.release_lock('bw', 0)});
note('a new session: connection, lock, release and close cost ' . proxy_ctl('turns') . ' turns');

# ---- repairs through the proxy: the rows a direct report lists -----------

my $rows_sql = q{SELECT md5(string_agg(id || ':' || owner || ':' || balance, ',' ORDER BY id)) FROM acct};
# a repair adds at most 4 round trips to the exchange that finds the
# differences (2: the peer's registry, then the rows of every partition
# fetched or applied in one batch)
(my $as_repaired = $direct) =~ s/\|f$/|t/mg;
my ($pulled, $pull_rt, $pull_turns) = through_proxy(sprintf($report_sql, 'bw', 'pull'));
is($pulled, $as_repaired, 'pull through the proxy: the direct report\'s rows, all repaired');
cmp_ok($pull_rt, '<=', $counted + 4, "pull: $pull_rt round trips, at most 4 more than the exchange's $counted");
cmp_ok($pull_turns, '<=', $counted + 4, "pull: the proxy counted $pull_turns turns");
is($a->safe_psql('postgres', $rows_sql), $b->safe_psql('postgres', $rows_sql), 'pull: a has b\'s rows');
is(report('b'), '', 'pull: a direct exchange finds nothing left');

$a->safe_psql('postgres', q{
	DELETE FROM acct WHERE id BETWEEN 100 AND 130;
	UPDATE acct SET owner = 'pushed' WHERE id BETWEEN 200 AND 250;
	INSERT INTO acct SELECT i, 'p', 0 FROM generate_series(9000, 9060) i;
});
my $to_push = report('b');
my ($found_push, $push_found_rt) = through_proxy(q{SELECT count(*) FROM hashtree.exchange('bw')});
($as_repaired = $to_push) =~ s/\|f$/|t/mg;
my ($pushed, $push_rt, $push_turns) = through_proxy(sprintf($report_sql, 'bw', 'push'));
is($pushed, $as_repaired, 'push through the proxy: the direct report\'s rows, all repaired');
cmp_ok($push_rt, '<=', $push_found_rt + 4,
	"push: $push_rt round trips, at most 4 more than the exchange's $push_found_rt");
cmp_ok($push_turns, '<=', $push_found_rt + 4, "push: the proxy counted $push_turns turns");
is($b->safe_psql('postgres', $rows_sql), $a->safe_psql('postgres', $rows_sql), 'push: b has a\'s rows');
is(report('b'), '', 'push: a direct exchange finds nothing left');
is(locks($a) . locks($b), '00', 'no lock left on either node');

# ---- equal nodes; a partition locked on the peer --------------------------

my ($none, $equal_rt, $equal_turns) = through_proxy(q{SELECT count(*) FROM hashtree.exchange('bw')});
is($none, '0', 'equal nodes: no difference');
cmp_ok($equal_rt, '<=', 6, "equal nodes: $equal_rt round trips for the whole node (at most 6)");
is($equal_turns, $equal_rt, "equal nodes: the proxy counted $equal_turns turns");

# another session holds partition 3 on the peer: that partition is skipped
# (never "no differences"), the others are compared, in as few round trips
my $holder = $b->background_psql('postgres');
$holder->query_safe('SELECT hashtree.lock(3)');
$id = last_id($a);
my ($kinds, $held_rt, $held_turns) = through_proxy(
	q{SELECT string_agg(partition || ':' || kind, ',' ORDER BY partition) FROM hashtree.exchange('bw')});
is($kinds, '3:skipped_locked', 'a partition locked on the peer: reported skipped_locked');
is($a->safe_psql('postgres', qq{SELECT string_agg(partition || ' ' || outcome || coalesce(' ' || message, ''), ',' ORDER BY partition)
	FROM hashtree.exchange_log WHERE id > $id}),
	'0 ok,1 ok,2 ok,3 skipped_locked partition 3 is locked on peer "bw",4 ok,5 ok,6 ok,7 ok',
	'a partition locked on the peer: the others compared');
cmp_ok($held_rt, '<=', 6, "a partition locked on the peer: $held_rt round trips");
is($held_turns, $held_rt, "a partition locked on the peer: the proxy counted $held_turns turns");
is($b->safe_psql('postgres', 'SELECT string_agg(partition::text, \',\') FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'3', 'the other session\'s lock is still there, no other lock on the peer');
$holder->query_safe('SELECT hashtree.release_lock(3)');
$holder->quit;
is(locks($a) . locks($b), '00', 'no lock left on either node');

# ---- the link lost in the middle of the descent ---------------------------

# differences in every partition, so that every partition descends
$b->safe_psql('postgres', 'UPDATE acct SET balance = balance + 1 WHERE id % 7 = 0');
lock_update_all($b);
stop_proxy();
start_proxy(50);
$id = last_id($a);
my $s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{SET hashtree.statement_timeout = 0;
\echo started
SELECT 'kinds=' || string_agg(DISTINCT kind, ',') FROM hashtree.exchange('bw');
});
# connecting takes 4 turns (SSL request, startup, session settings, hello),
# the lock, update and top hashes of all partitions 1 more: at the 6th turn
# the walk is descending the trees of all partitions (its first request of
# two; the second carries the release)
my $deadline = time + 30;
sleep 0.005 while (proxy_stats()->{turns} // 0) < 6 && time < $deadline;
note("lost link: the proxy killed at turn " . proxy_stats()->{turns});
stop_proxy('KILL');
ok($a->poll_query_until('postgres', "SELECT count(*) = 8 FROM hashtree.exchange_log WHERE id > $id"),
	'lost link: every partition logged');
$s->quit;
like($s->{stdout}, qr/kinds=error$/m, 'lost link: exchange() reports errors');
my $first = $a->safe_psql('postgres',
	"SELECT outcome || ': ' || message FROM hashtree.exchange_log WHERE id = $id + 1");
like($first, qr/^error: .*(connection|lost)/, "lost link: partition 0 failed with the lost connection ($first)");
is($a->safe_psql('postgres', "SELECT string_agg(DISTINCT outcome || ': ' || message, ' | ') FROM hashtree.exchange_log WHERE id > $id"),
	$first, 'lost link: so did every partition in the exchange');
is($a->safe_psql('postgres', "SELECT sum(missing + remote_missing + different) FROM hashtree.exchange_log WHERE id > $id"),
	'0', 'lost link: no differences claimed');
is(locks($a), '0', 'lost link: no lock left here');
ok($b->poll_query_until('postgres', 'SELECT count(*) = 0 FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'lost link: none left on the peer');

# ---- the peer silent (the proxy stopped) in the middle of the descent ----

start_proxy(50);
$id = last_id($a);
$s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{SET hashtree.statement_timeout = '1s';
\echo started
SELECT 'kinds=' || string_agg(DISTINCT kind, ',') FROM hashtree.exchange('bw');
});
$deadline = time + 30;
sleep 0.005 while (proxy_stats()->{turns} // 0) < 6 && time < $deadline;
kill('STOP', $proxy_pid);
ok($a->poll_query_until('postgres', "SELECT count(*) = 8 FROM hashtree.exchange_log WHERE id > $id"),
	'silent peer: every partition logged');
$s->quit;
like($s->{stdout}, qr/kinds=error$/m, 'silent peer: exchange() reports errors');
like($a->safe_psql('postgres', "SELECT message FROM hashtree.exchange_log WHERE id = $id + 1"),
	qr/canceling statement on peer "bw" due to statement timeout/, 'silent peer: the timeout is recorded');
is($a->safe_psql('postgres', "SELECT sum(missing + remote_missing + different) || ' ' || count(*) FILTER (WHERE outcome = 'ok') FROM hashtree.exchange_log WHERE id > $id"),
	'0 0', 'silent peer: no differences claimed, no partition ok');
is(locks($a), '0', 'silent peer: no lock left here');
# the peer's lock lasts as long as its connection: the proxy, resumed,
# passes on that this node closed it
kill('CONT', $proxy_pid);
ok($b->poll_query_until('postgres', 'SELECT count(*) = 0 FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'silent peer: none left on the peer once the link carries the close');

# ---- back: the next exchange through the proxy works ---------------------

stop_proxy();
start_proxy(5);
my $expected = report('b');
isnt($expected, '', 'the differences made before the faults are still there');
is(report('bw'), $expected, 'with the proxy back, the exchange through it finds them');

# a peer's error in a pipeline of requests (the walk's first request of a
# depth is two statements: the peer's buckets, then the descent) is relayed
# once the pipeline is read: the connection stays, with the lock it holds
my $p = $a->safe_psql('postgres', "SELECT min(partition) FROM hashtree.exchange('b')");
my $descend = 'hashtree._descend_m(int[], int, text[], text[], int, bigint[], bigint, int, bytea[])';
$b->safe_psql('postgres', "ALTER FUNCTION $descend RENAME TO _descend_m_gone");
my ($ret, $out, $err) = $a->psql('postgres', qq{
	SELECT hashtree.lock('bw', $p) || ' ' || hashtree.lock($p);
	SELECT count(*) FROM hashtree.compare($p, 'bw');
	SELECT 'released ' || hashtree.release_lock('bw', $p) || ' ' || hashtree.release_lock($p);},
	on_error_stop => 0);
$b->safe_psql('postgres', 'ALTER FUNCTION hashtree._descend_m_gone(int[], int, text[], text[], int,'
	. ' bigint[], bigint, int, bytea[]) RENAME TO _descend_m');
like($err, qr/_descend_m\(.*does not exist.*\n.*on peer "bw"/s,
	'a peer\'s error in the middle of a pipeline: relayed as the peer\'s');
like($out, qr/^released ok ok$/m, 'and the connection stays, with the lock it holds on the peer');
is(locks($a) . locks($b), '00', 'no lock left on either node');
($as_repaired = $expected) =~ s/\|f$/|t/mg;
is(report('bw', 'pull'), $as_repaired, 'and pulls them');
is(report('b'), '', 'nothing left');
is(locks($a) . locks($b), '00', 'no lock left on either node');
stop_proxy();

done_testing();
