# Fragmented tables under load: pgbench clients insert and update through
# the parent while add_frag and del_frag run again and again, in both
# modes.  Afterwards: no failed client transaction, no committed row lost or
# duplicated, every row in the fragment key_to_frag_number names, the
# bounds those of the state.  Then: a cancel during an online split, and a
# kill -9 in the middle of one, leave the table whole; the next add_frag
# rolls back the leftovers and works.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $node = ht_node('n', conf => "max_connections = 40\nrestart_after_crash = on\n");
$node->safe_psql('postgres', q{
	CREATE TABLE acct (id bigint PRIMARY KEY, bal bigint NOT NULL, note text) PARTITION BY HASH (id);
	SELECT hashtree.frag_init('acct', 3);
	INSERT INTO acct SELECT g, 0, 'initial' FROM generate_series(1, 20000) g;
	-- what clients committed, outside the fragmented table
	CREATE TABLE journal (id bigint, kind text);
	CREATE SEQUENCE new_ids START 1000000;
});

# the checks run after each phase
sub check_table
{
	my ($what) = @_;
	is($node->safe_psql('postgres', q{
		SELECT count(*) = count(DISTINCT id) FROM acct}), 't', "$what: no duplicated row");
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM journal j WHERE j.kind = 'insert' AND NOT EXISTS (SELECT 1 FROM acct a WHERE a.id = j.id)}),
		'0', "$what: no committed insert lost");
	is($node->safe_psql('postgres', q{
		SELECT (SELECT count(*) FROM acct) = 20000 + (SELECT count(*) FROM journal WHERE kind = 'insert')}),
		't', "$what: no row from nowhere");
	is($node->safe_psql('postgres', q{
		SELECT (SELECT sum(bal) FROM acct) = (SELECT count(*) FROM journal WHERE kind = 'update')}),
		't', "$what: every committed update there once");
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM acct a JOIN hashtree.fragments f ON f.relation = a.tableoid
		 WHERE f.fragment <> hashtree.key_to_frag_number('acct', a.id)}), '0',
		"$what: every row where key_to_frag_number says");
	is($node->safe_psql('postgres', q{
		SELECT count(*) FROM hashtree.fragments f, hashtree.frag_state('acct') s
		 WHERE f."table" = 'acct'::regclass
		   AND (f.modulus, f.remainder) IS DISTINCT FROM
			   (CASE WHEN f.fragment < s.next_n_to_split OR f.fragment > (1 << s.n_doubles)
					 THEN 1 << (s.n_doubles + 1) ELSE 1 << s.n_doubles END, f.fragment - 1)}),
		'0', "$what: bounds follow the state");
	is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_class WHERE relname LIKE 'hashtree\_frag\_%'}),
		'0', "$what: no leftover tables");
}

# pgbench clients through the parent: inserts and updates, each journaled
# in the same transaction
my $script = $node->basedir . '/writers.sql';
open(my $fh, '>', $script) or die;
print $fh <<'EOF';
\set k random(1, 20000)
BEGIN;
WITH i AS (INSERT INTO acct VALUES (nextval('new_ids'), 0, 'new') RETURNING id)
INSERT INTO journal SELECT id, 'insert' FROM i;
UPDATE acct SET bal = bal + 1 WHERE id = :k;
INSERT INTO journal VALUES (:k, 'update');
COMMIT;
EOF
close($fh);

sub start_pgbench
{
	my ($seconds) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '6', '-j', '3', '-T', $seconds, '-f', $script,
		  '-h', $node->host, '-p', $node->port, 'postgres' ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

sub finish_pgbench
{
	my ($run, $what) = @_;
	$run->{h}->finish;
	my $out = ${ $run->{out} };
	my ($done) = $out =~ /number of transactions actually processed: (\d+)/;
	ok(defined $done && $done > 0, "$what: clients committed " . ($done // 'no') . ' transactions');
	unlike(${ $run->{err} }, qr/ERROR|deadlock/, "$what: no client error");
	like($out, qr/number of failed transactions: 0 /, "$what: no failed client transaction")
	  if $out =~ /number of failed transactions/;
	is($run->{h}->result(0), 0, "$what: pgbench exit status 0");
}

# 1. repeated splits and merges under load, both modes, spread over the run
my $run = start_pgbench(25);
sleep 1;
my @ops = (qw(add add add del add del del add add del));
my $i = 0;
foreach my $round (1 .. 4)
{
	foreach my $op (@ops)
	{
		my $mode = ($i++ % 2) ? 'block_writes' : 'online';
		my $state = $node->safe_psql('postgres',
			"SELECT n_fragments || ' ' || moved_rows FROM hashtree.${op}_frag('acct', '$mode')");
		note("${op}_frag $mode -> $state");
		select(undef, undef, undef, 0.3);
	}
}
finish_pgbench($run, 'splits and merges under load');
is($node->safe_psql('postgres', q{SELECT n_fragments FROM hashtree.frag_state('acct')}), '11',
	'the state after 24 splits and 16 merges');
check_table('under load');

# 2. a cancel in the middle of an online split (rows enough for a copy that lasts)
$node->safe_psql('postgres', q{INSERT INTO acct SELECT g, 0, 'bulk' FROM generate_series(3000001, 4600000) g;
	INSERT INTO journal SELECT g, 'insert' FROM generate_series(3000001, 4600000) g});
my $s = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{\echo started
SELECT * FROM hashtree.add_frag('acct', 'online');
});
ok($node->poll_query_until('postgres', q{SELECT op_phase = 'preparing' FROM hashtree.frag_table}),
	'cancel: the copy is under way');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM hashtree.del_frag('acct', 'block_writes')});
like($err, qr/another fragment operation is under way on table "acct"/, 'one operation at a time');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'cancel: the split was canceled');
is($node->safe_psql('postgres', q{SELECT n_fragments FROM hashtree.frag_state('acct')}), '11',
	'cancel: the state did not change');
is($node->safe_psql('postgres', q{SELECT n_fragments || ' ' || (moved_rows > 0) FROM hashtree.add_frag('acct', 'online')}),
	'12 true', 'cancel: the next add_frag rolls back the leftovers and works');
check_table('after a cancel');

# 3. kill -9 in the middle of an online split (its copy under way)
$s = $node->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{\echo started
SELECT * FROM hashtree.add_frag('acct', 'online');
});
ok($node->poll_query_until('postgres', q{SELECT op_phase = 'preparing' FROM hashtree.frag_table}),
	'crash: the copy is under way');
crash($node);
eval { $s->quit };
$node->start;
is($node->safe_psql('postgres', q{SELECT n_fragments FROM hashtree.frag_state('acct')}), '12',
	'crash: the state did not change');
is($node->safe_psql('postgres', q{SELECT count(*) FROM acct}),
	$node->safe_psql('postgres', q{SELECT 20000 + count(*) FROM journal WHERE kind = 'insert'}),
	'crash: the table is whole');
my $next = $node->safe_psql('postgres', q{SELECT n_fragments FROM hashtree.add_frag('acct', 'online')});
is($next, '13', 'crash: the next add_frag works');
check_table('after a crash');

done_testing();
