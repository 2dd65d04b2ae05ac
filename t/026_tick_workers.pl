# Tick jobs (hashtree.tick_workers > 1) on a real cluster: the launcher
# keeps tick_workers - 1 of them, each updating its share of the
# partitions at every tick.  With writes coming, every partition is folded
# and the trees equal those of the same rows tracked from scratch; a
# partition a session holds is skipped by its job and folded once
# released; a terminated tick job is replaced at the next tick; lowering
# tick_workers with a reload makes the extra jobs leave, and the launcher
# alone folds everything again.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $node = ht_node('ticks', conf => <<'EOF');
hashtree.database = 'postgres'
hashtree.tick_interval = 1
hashtree.exchange_interval = 0
hashtree.tick_workers = 3
EOF
my $log_start = -s $node->logfile;
my $jobs = q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'hashtree tick'};

ok($node->poll_query_until('postgres', "SELECT ($jobs) = 2"),
	'tick_workers = 3: two tick jobs beside the launcher');

$node->safe_psql('postgres', q{
	CREATE TABLE "Tick t" (id int PRIMARY KEY, v text);
	SELECT hashtree.track('"Tick t"');
});

# writes while the workers tick
foreach my $r (1 .. 6)
{
	$node->safe_psql('postgres', qq{
		INSERT INTO "Tick t" SELECT i, 'r$r' FROM generate_series(($r - 1) * 3000 + 1, $r * 3000) i;
		UPDATE "Tick t" SET v = v || '+' WHERE id % 7 = $r;
		DELETE FROM "Tick t" WHERE id % 11 = $r;
	});
	select(undef, undef, undef, 0.3);
}
ok(wait_for_value($node, 'SELECT count(*) FROM hashtree.dirty_key', '0'),
	'the launcher and the tick jobs fold every partition');
is($node->safe_psql('postgres', 'SELECT bool_and(updates > 0) FROM hashtree.status'), 't',
	'each partition was updated by the workers');
is(check_trees($node), '0', 'the trees are consistent');

# the same rows tracked from scratch in another database: the same trees
sub fresh_tops
{
	my $file = $node->basedir . '/rows.copy';
	$node->safe_psql('postgres', qq{COPY "Tick t" TO '$file'});
	$node->safe_psql('postgres', 'DROP DATABASE IF EXISTS fresh');
	$node->safe_psql('postgres', 'CREATE DATABASE fresh');
	$node->safe_psql('fresh', qq{
		CREATE EXTENSION hashtree;
		CREATE TABLE "Tick t" (id int PRIMARY KEY, v text);
		COPY "Tick t" FROM '$file';
		SELECT hashtree.track('"Tick t"');
	});
	return tops($node, 'fresh');
}
is(tops($node), fresh_tops(), 'the folded trees equal a fresh track of the same rows');

# a partition held by a session: its job skips it, the others are folded
my $h = $node->background_psql('postgres');
is($h->query_safe('SELECT hashtree.lock(1)'), 'ok', 'a session holds partition 1');
$node->safe_psql('postgres', q{UPDATE "Tick t" SET v = 'x' || v});
ok(wait_for_value($node, 'SELECT string_agg(DISTINCT part::text, \',\') FROM hashtree.dirty_key', '1'),
	'the partitions nobody holds are folded, the held one waits');
$h->query_safe('SELECT hashtree.release_lock(1)');
$h->quit;
ok(wait_for_value($node, 'SELECT count(*) FROM hashtree.dirty_key', '0'),
	'and is folded once released');

# a terminated tick job is replaced at the next tick
my $victim = $node->safe_psql('postgres',
	q{SELECT min(pid) FROM pg_stat_activity WHERE backend_type = 'hashtree tick'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($victim)");
ok($node->poll_query_until('postgres',
	qq{SELECT count(*) = 2 AND bool_and(pid <> $victim) FROM pg_stat_activity
	    WHERE backend_type = 'hashtree tick'}),
	'a terminated tick job is replaced');

# fewer shares after a reload: the extra jobs leave
$node->append_conf('postgresql.conf', "hashtree.tick_workers = 1\n");
$node->reload;
ok($node->poll_query_until('postgres', "SELECT ($jobs) = 0"),
	'tick_workers = 1: the tick jobs leave');
$node->safe_psql('postgres', q{
	INSERT INTO "Tick t" SELECT i, 'late' FROM generate_series(20001, 24000) i;
	DELETE FROM "Tick t" WHERE id % 13 = 0;
});
ok(wait_for_value($node, 'SELECT count(*) FROM hashtree.dirty_key', '0'),
	'the launcher alone folds every partition');
is(tops($node), fresh_tops(), 'and the trees still equal a fresh track');

my $log = slurp_file($node->logfile, $log_start);
unlike($log, qr/tick of partition \d+ failed/, 'no tick failed');
$log_start = -s $node->logfile;
$node->append_conf('postgresql.conf', "hashtree.tick_workers = 4\n");
$node->reload;
ok($node->poll_query_until('postgres', "SELECT ($jobs) = 3"), 'tick_workers = 4: three tick jobs');
$node->stop('fast');
$log = slurp_file($node->logfile, $log_start);
like($log, qr/hashtree launcher shutting down/, 'the server stopped');
unlike($log, qr/FATAL|"hashtree tick[^"]*" \(PID \d+\) exited with exit code [1-9]/,
	'the tick jobs exit cleanly on shutdown');

done_testing();
