# Background workers on three real clusters: with tracked tables diverging
# at random (inserts, updates, deletes, a table missing on one node), the
# exchanges the workers start converge the nodes (equal rows, equal top
# hashes) within a bounded time, with repair = pull and, after a SIGHUP,
# with repair = push.  Then: expired and unbuilt trees are rebuilt, an
# unreachable or mute peer is backed off without flooding the log or
# hanging a worker, the launcher is restarted after a crash and exits
# cleanly on shutdown.
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
my $conf = <<'EOF';
hashtree.database = 'postgres'
hashtree.tick_interval = 1
hashtree.exchange_interval = 1
hashtree.max_exchanges = 2
hashtree.repair = 'pull'
hashtree.connect_timeout = '2s'
hashtree.statement_timeout = '10s'
EOF
# (the test framework turns restart_after_crash off; a's launcher crashes below)
my @nodes = map { ht_node($_, conf => $conf . ($_ eq 'a' ? "restart_after_crash = on\n" : '')) } qw(a b c);
my ($a, $b, $c) = @nodes;

foreach my $n (@nodes)
{
	ok($n->poll_query_until('postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'hashtree launcher'}),
		$n->name . ': the launcher runs');
}

# the schema: acct has its columns in another order on b; extra is
# missing on c
foreach my $n (@nodes)
{
	my $cols = $n->name eq 'b'
	  ? 'balance numeric, note text, id int PRIMARY KEY'
	  : 'id int PRIMARY KEY, note text, balance numeric';
	$n->safe_psql('postgres', qq{
		CREATE TABLE acct ($cols);
		CREATE TABLE tags (k text, n int, v jsonb, PRIMARY KEY (k, n));
		SELECT hashtree.track('acct'), hashtree.track('tags');
		INSERT INTO acct (id, note, balance) SELECT i, 'n' || i, i FROM generate_series(1, 3000) i;
		INSERT INTO tags SELECT 'k' || (i % 50), i, jsonb_build_object('i', i) FROM generate_series(1, 1000) i;
	});
	next if $n->name eq 'c';
	$n->safe_psql('postgres', q{
		CREATE TABLE extra (id uuid PRIMARY KEY, payload bytea);
		SELECT hashtree.track('extra');
		INSERT INTO extra SELECT md5(i::text)::uuid, sha256(i::text::bytea) FROM generate_series(1, 200) i;
	});
}

# random divergence on every node
srand(4242);
foreach my $n (@nodes)
{
	my @sql;
	foreach (1 .. 60)
	{
		my $r = rand();
		my $id = 1 + int(rand(4000));
		if ($r < 0.35)
		{
			push @sql, "INSERT INTO acct (id, note, balance) VALUES ($id, 'ins', $id) ON CONFLICT (id) DO UPDATE SET note = 'ins2'";
		}
		elsif ($r < 0.7)
		{
			push @sql, "UPDATE acct SET balance = balance + 1 WHERE id = $id";
		}
		else
		{
			push @sql, "DELETE FROM acct WHERE id = $id";
		}
	}
	my $k = int(rand(50));
	push @sql, "UPDATE tags SET v = v || '{\"x\": 1}' WHERE k = 'k$k'";
	push @sql, "DELETE FROM tags WHERE n % 97 = " . int(rand(97));
	push @sql, "DELETE FROM extra WHERE payload < '\\x10'" if $n->name ne 'c';
	$n->safe_psql('postgres', join(";\n", @sql));
}

# the peers: everybody knows everybody
foreach my $n (@nodes)
{
	foreach my $p (@nodes)
	{
		next if $p == $n;
		my $conn = $p->connstr('postgres');
		$n->safe_psql('postgres', sprintf(q{SELECT hashtree.add_peer('%s', $$%s$$)}, $p->name, $conn));
	}
}

# a node's tracked rows, whatever its column order
sub digest
{
	my ($n, @tables) = @_;
	return join('/', map {
		$n->safe_psql('postgres', sprintf(q{SELECT coalesce(md5(string_agg(encode(hashtree.row_hash('%s', t), 'hex'), ','
			ORDER BY encode(hashtree.row_key('%s', t), 'hex'))), 'empty') FROM %s t}, $_, $_, $_))
	} @tables);
}

# wait until the nodes agree (twice in a row: nothing is moving any more)
sub converge
{
	my ($what, $timeout, @tables) = @_;
	my $start = time;
	my $stable = 0;
	while (time - $start < $timeout)
	{
		my @d = map { digest($_, @tables) } @nodes;
		my @t = map { tops($_) } @nodes;
		my $same = $d[0] eq $d[1] && $d[1] eq $d[2];
		$same &&= $t[0] eq $t[1] && $t[1] eq $t[2] if @tables == 3;
		$stable = $same ? $stable + 1 : 0;
		if ($stable >= 2)
		{
			pass(sprintf('%s: converged in %.1f s', $what, time - $start));
			return 1;
		}
		select(undef, undef, undef, 0.5);
	}
	fail("$what: no convergence within $timeout s");
	diag(join("\n", map { $_->name . ': ' . digest($_, @tables) . ' ' . tops($_) } @nodes));
	return 0;
}

# 1. pull: the tables that exist everywhere converge; the table missing on
# c is reported, never "repaired" by deleting it elsewhere
converge('pull, tables present everywhere', 120, 'acct', 'tags');
ok($c->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM hashtree.exchange_log
	   WHERE worker AND message LIKE 'table public.extra is tracked on peer % but not on this node'}),
	'the missing table is reported on c');
isnt($a->safe_psql('postgres', 'SELECT count(*) FROM extra'), '0', 'and its rows are kept elsewhere');
is($a->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange_log
	WHERE worker AND outcome = 'ok' AND repair = 'pull' AND round_trips > 0}) > 0 ? 1 : 0, 1,
	'the workers logged their exchanges');

# once the table exists on c, everything converges
$c->safe_psql('postgres', q{
	CREATE TABLE extra (id uuid PRIMARY KEY, payload bytea);
	SELECT hashtree.track('extra');
});
converge('pull, after the missing table was created', 120, 'acct', 'tags', 'extra');

# 2. push, switched on with a reload (SIGHUP)
foreach my $n (@nodes)
{
	$n->safe_psql('postgres', q{ALTER SYSTEM SET hashtree.repair = 'push'});
	$n->reload;
}
foreach my $n (@nodes)
{
	ok($n->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM hashtree.exchange_log WHERE worker AND repair = 'push'}),
		$n->name . ': the reload switched the workers to push');
}
foreach my $n (@nodes)
{
	my $base = { a => 10000, b => 20000, c => 30000 }->{ $n->name };
	$n->safe_psql('postgres', qq{
		INSERT INTO acct (id, note, balance) SELECT $base + i, 'push', 0 FROM generate_series(1, 50) i;
		DELETE FROM acct WHERE id % 37 = } . int(rand(37)) . qq{;
		UPDATE tags SET v = '{}' WHERE n % 13 = } . int(rand(13)) . q{;
		DELETE FROM extra WHERE payload > '\xf0';
	});
}
converge('push', 120, 'acct', 'tags', 'extra');
foreach my $n (@nodes)
{
	is(check_trees($n), '0', $n->name . ': trees consistent after the repairs');
}

# 3. expired trees are rebuilt (one at a time), the old tree serving meanwhile
$a->safe_psql('postgres', q{ALTER SYSTEM SET hashtree.repair = 'none'});
$a->reload;
my $before = $a->safe_psql('postgres', 'SELECT builds FROM hashtree.status WHERE partition = 3');
$a->safe_psql('postgres', q{UPDATE hashtree.partition SET built_at = now() - interval '30 days' WHERE part = 3});
ok($a->poll_query_until('postgres',
	qq{SELECT builds > $before AND next_expiry > now() FROM hashtree.status WHERE partition = 3}),
	'an expired partition is rebuilt by the workers');
ok(wait_for_log($a, qr/rebuilt partition 3 \(trees expired\)/), 'and the rebuild is logged');

# a foreign write marks every partition not built: the workers rebuild them
$a->safe_psql('postgres', 'DELETE FROM hashtree.dirty WHERE false');
ok($a->poll_query_until('postgres', 'SELECT bool_and(built) FROM hashtree.status'),
	'unbuilt partitions are rebuilt by the workers');
is(check_trees($a), '0', 'the rebuilt trees are right');

# 4. an unreachable peer and a mute one are backed off, and never hang a worker
my $mute = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
  or die "cannot listen: $!";
my $mute_port = $mute->sockport;
my $dead = PostgreSQL::Test::Cluster->new('dead');
my $dead_conn = $dead->connstr('postgres');		# nobody listens there
$a->safe_psql('postgres', qq{
	SELECT hashtree.drop_peer('b'), hashtree.drop_peer('c');
	SELECT hashtree.add_peer('dead', \$\$$dead_conn\$\$);
	SELECT hashtree.add_peer('mute', 'host=127.0.0.1 port=$mute_port dbname=x');
});
my $log_start = -s $a->logfile;
sleep 16;
my $log = slurp_file($a->logfile, $log_start);
my $dead_lines = () = $log =~ /exchange with peer "dead"/g;
my $mute_lines = () = $log =~ /exchange with peer "mute"/g;
# at one attempt per second without a backoff, each would have ~8 lines
ok($dead_lines >= 1 && $dead_lines <= 5, "unreachable peer backed off ($dead_lines lines in 16 s)");
ok($mute_lines >= 1 && $mute_lines <= 5, "mute peer backed off ($mute_lines lines in 16 s)");
like($log, qr/exchange with peer "mute".*8 failed.*timeout expired/, 'the mute peer ends in the connect timeout');
is($a->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange_log
	WHERE peer IN ('dead', 'mute') AND outcome <> 'error'}), '0', 'never a clean result');
# (an exchange job stays, idle, between the exchanges with its peer: only a
# job at work could hang)
is($a->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'hashtree exchange' AND state <> 'idle'
	  AND now() - state_change > interval '10 s'}), '0',
	'no exchange worker hangs');
my $updates = $a->safe_psql('postgres', 'SELECT sum(updates) FROM hashtree.status');
ok($a->poll_query_until('postgres', "SELECT sum(updates) > $updates FROM hashtree.status"),
	'the launcher keeps ticking');

# 5. restarted after a crash; clean exit on shutdown
my $launcher = $a->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'hashtree launcher'});
kill 'KILL', $launcher;
# (the server restarts every backend: a psql that finds it in recovery can
# exit before reading its query, and the harness dies of the broken pipe;
# each try is caught)
my $back = 0;
foreach (1 .. 600)
{
	my $r = eval {
		$a->safe_psql('postgres',
			qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'hashtree launcher' AND pid <> $launcher});
	};
	if (defined $r && $r eq 't')
	{
		$back = 1;
		last;
	}
	select(undef, undef, undef, 0.1);
}
ok($back, 'the launcher is back after a crash');
$log_start = -s $a->logfile;
$a->stop('fast');
$log = slurp_file($a->logfile, $log_start);
like($log, qr/hashtree launcher shutting down/, 'the launcher exits on shutdown');
unlike($log, qr/FATAL:.*hashtree launcher/, 'cleanly');

sub wait_for_log
{
	my ($node, $re) = @_;
	foreach (1 .. 300)
	{
		return 1 if slurp_file($node->logfile) =~ $re;
		select(undef, undef, undef, 0.1);
	}
	return 0;
}

done_testing();
