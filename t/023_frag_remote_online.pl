# Online add_frag and del_frag with fragments on other servers (issue 15,
# DESIGN §19, "Online composites"): the targets are created where their
# fragments go and filled from the sources wherever they are, while a
# writer works through the parent; it waits only for the swaps.  After
# every step: the placement, every row where key_to_frag_number says, the
# rows of a remote fragment physically in its table on its peer, counts
# and hashes equal to a plain reference table that got the same writes.
# Then failures during an online split of a remote fragment: the target
# peer killed in the copy, a cancel while the source peer does not answer,
# this node killed in the copy: the table stays whole and in place, and the
# next operation rolls back what was left here and drops what was left on
# the peers.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use IPC::Run;
use Time::HiRes qw(time);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $quiet = "log_parameter_max_length = 0\nlog_parameter_max_length_on_error = 0\n";
my $a = ht_node('a', conf => "max_connections = 40\nrestart_after_crash = on\n$quiet");
my $b = ht_node('b', conf => $quiet);
my $c = ht_node('c', conf => $quiet);
my %peer = (b => $b, c => $c);
$a->safe_psql('postgres', 'CREATE EXTENSION postgres_fdw');
foreach my $name (sort keys %peer)
{
	$a->safe_psql('postgres', sprintf(q{SELECT hashtree.add_peer('%s', 'host=%s port=%d dbname=postgres')},
		$name, $peer{$name}->host, $peer{$name}->port));
}

$a->safe_psql('postgres', q{
	CREATE ROLE owner LOGIN;
	CREATE ROLE reader LOGIN;
	GRANT CREATE ON SCHEMA public TO owner;
	GRANT USAGE ON SCHEMA hashtree TO owner;
	GRANT EXECUTE ON FUNCTION hashtree.move_frag TO owner;
	SET ROLE owner;
	CREATE TABLE t (id bigint PRIMARY KEY, n numeric NOT NULL DEFAULT 0, v text, f float8,
					ts timestamptz, j jsonb, arr int[], by bytea) PARTITION BY HASH (id);
	SELECT hashtree.frag_init('t', 4);
	CREATE TABLE ref (LIKE t INCLUDING ALL);
	CREATE SEQUENCE ids START 1000000;
	INSERT INTO t SELECT g, g / 7.0,
		CASE g % 5 WHEN 0 THEN NULL WHEN 1 THEN 'quote " back \ comma , paren ( ) brace { }'
				   WHEN 2 THEN E'new\nline\ttab' WHEN 3 THEN 'ünïcødé €' ELSE '' END,
		CASE g % 6 WHEN 0 THEN 'NaN' WHEN 1 THEN '-Infinity' WHEN 2 THEN '-0' WHEN 3 THEN 1e-300
				   WHEN 4 THEN 0.1 ELSE g / 3.0 END,
		'2000-01-01 00:00:00+00'::timestamptz + g * interval '1 min 1.123456 s',
		jsonb_build_object('g', g, 's', 'x"y'),
		CASE WHEN g % 3 = 0 THEN ARRAY[g, NULL, -g] END,
		decode(md5(g::text), 'hex')
	  FROM generate_series(1, 8000) g;
	INSERT INTO ref SELECT * FROM t;
	GRANT SELECT, INSERT, UPDATE, DELETE ON t, ref TO reader;
	GRANT USAGE ON SEQUENCE ids TO reader;
});

sub sql { my ($node, $sql) = @_; return $node->safe_psql('postgres', $sql); }

sub placement
{
	return sql($a, q{SELECT string_agg(fragment || '@' || node, ' ' ORDER BY fragment)
					 FROM hashtree.fragments WHERE "table" = 't'::regclass});
}

sub remote_table
{
	my ($k) = @_;
	return sql($a, qq{SELECT option_value FROM pg_options_to_table((SELECT ftoptions FROM pg_foreign_table
					 WHERE ftrelid = (SELECT relation FROM hashtree.fragments
									   WHERE "table" = 't'::regclass AND fragment = $k)))
					 WHERE option_name = 'table_name'});
}

sub remote_tables
{
	my ($node) = @_;
	return sql($node, q{SELECT count(*) FROM pg_tables WHERE schemaname = 'hashtree_fragments'});
}

# what an online operation leaves here until it is done or rolled back
sub leftovers
{
	return sql($a, q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'hashtree_frag_capture%'}) . ' '
		. sql($a, q{SELECT count(*) FROM pg_class WHERE relname LIKE 'hashtree\_%'}) . ' '
		. sql($a, q{SELECT count(*) FROM hashtree.frag_table WHERE op IS NOT NULL});
}

sub check_table
{
	my ($what, $expect) = @_;
	is(placement(), $expect, "$what: placement $expect");
	is(sql($a, q{SELECT count(*) || ' ' || md5(string_agg(x::text, ',' ORDER BY id)) FROM t x}),
		sql($a, q{SELECT count(*) || ' ' || md5(string_agg(x::text, ',' ORDER BY id)) FROM ref x}),
		"$what: the rows of the reference table");
	is(sql($a, q{SELECT encode(hashtree._entry_sum(hashtree.row_key('ref', s.r), hashtree.row_hash('ref', s.r)), 'hex')
				 FROM (SELECT x::text::ref AS r FROM t x) s}),
		sql($a, q{SELECT encode(hashtree._entry_sum(hashtree.row_key('ref', r), hashtree.row_hash('ref', r)), 'hex')
				 FROM ref r}),
		"$what: the row hashes of the reference table");
	is(sql($a, q{SELECT count(*) FROM t JOIN hashtree.fragments f ON f.relation = t.tableoid
				WHERE f.fragment <> hashtree.key_to_frag_number('t', t.id)}), '0',
		"$what: every row where key_to_frag_number says");
	foreach my $f (split / /, $expect)
	{
		my ($k, $node) = split /@/, $f;
		next if $node eq 'a';
		my $rt = remote_table($k);
		is(sql($peer{$node}, qq{SELECT count(*) || ' ' || md5(string_agg(id::text, ',' ORDER BY id))
								FROM hashtree_fragments."$rt"}),
			sql($a, qq{SELECT count(*) || ' ' || md5(string_agg(id::text, ',' ORDER BY id))
					   FROM ref WHERE hashtree.key_to_frag_number('t', id) = $k}),
			"$what: fragment $k is on $node, all of it");
	}
}

sub move
{
	my ($k, $node, $mode) = @_;
	$node = defined $node ? "'$node'" : 'NULL';
	return sql($a, qq{SET ROLE owner; SELECT hashtree.move_frag('t', $k, $node, '$mode')});
}

# add_frag (node: where N + 1 goes) or del_frag, online; returns N after it
sub change
{
	my ($add, $node) = @_;
	$node = defined $node ? "'$node'" : 'NULL';
	return sql($a, $add
		? qq{SET ROLE owner; SELECT n_fragments FROM hashtree.add_frag('t', 'online', $node)}
		: q{SET ROLE owner; SELECT n_fragments FROM hashtree.del_frag('t', 'online')});
}

my $script = $a->basedir . '/writer.sql';
open(my $fh, '>', $script) or die;
print $fh <<'EOF';
\set k random(1, 8000)
\set d random(1, 8000)
BEGIN;
UPDATE t SET n = n + 1 WHERE id = :k;
UPDATE ref SET n = n + 1 WHERE id = :k;
SELECT nextval('ids') AS nid \gset
INSERT INTO t (id, v) VALUES (:nid, 'new');
INSERT INTO ref (id, v) VALUES (:nid, 'new');
DELETE FROM t WHERE id = :d;
DELETE FROM ref WHERE id = :d;
COMMIT;
EOF
close($fh);

sub start_writer
{
	my ($seconds, $log) = @_;
	my ($out, $err) = ('', '');
	my @log = $log ? ('-l', "--log-prefix=$log") : ();
	my $h = IPC::Run::start(
		[ 'pgbench', '-n', '-c', '2', '-T', $seconds, @log, '-f', $script,
		  '-h', $a->host, '-p', $a->port, '-U', 'reader', 'postgres' ],
		'>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err };
}

sub max_latency
{
	my ($log) = @_;
	my $max = 0;
	foreach my $f (glob("$log.*"))
	{
		open(my $in, '<', $f) or die;
		while (<$in>)
		{
			my @c = split / /;
			$max = $c[2] if $c[2] > $max;
		}
		close($in);
		unlink $f;
	}
	return $max / 1e6;
}

sub finish_writer
{
	my ($run, $what) = @_;
	$run->{h}->finish;
	my ($done) = ${ $run->{out} } =~ /number of transactions actually processed: (\d+)/;
	ok(defined $done && $done > 0, "$what: the writer committed " . ($done // 'no') . ' transactions');
	unlike(${ $run->{err} }, qr/ERROR|deadlock/, "$what: no writer error");
	is($run->{h}->result(0), 0, "$what: the writer's exit status is 0");
}

check_table('initial', '1@a 2@a 3@a 4@a');

# 1. grown 4 -> 9 over the three servers and shrunk back online, the
# writer working through the parent: every kind of composite (a split of a
# fragment here with the new one on a peer, of one on a peer with the new
# one here or on the same or another peer; merges here into a peer, from a
# peer into here, between peers)
is(move(2, 'b', 'block_writes') > 0, 1, 'fragment 2 to b');
is(move(3, 'c', 'block_writes') > 0, 1, 'fragment 3 to c');
my %place = (1 => 'a', 2 => 'b', 3 => 'c', 4 => 'a');
my @nodes = ('b', 'c', 'a', 'b', 'c');
my $w;
foreach my $node (@nodes)
{
	$w = start_writer(3);
	select(undef, undef, undef, 0.3);
	my $n = change(1, $node);
	$place{$n} = $node;
	finish_writer($w, "online split to $n");
	check_table("online split to $n", join(' ', map { "$_\@$place{$_}" } sort { $::a <=> $::b } keys %place));
}
is(leftovers(), '0 0 0', 'grown online: nothing left here');
foreach my $i (1 .. 5)
{
	$w = start_writer(3);
	select(undef, undef, undef, 0.3);
	my $n = change(0);
	delete $place{$n + 1};
	finish_writer($w, "online merge to $n");
	check_table("online merge to $n", join(' ', map { "$_\@$place{$_}" } sort { $::a <=> $::b } keys %place));
}
check_table('shrunk to 4 online', '1@a 2@b 3@c 4@a');
is(leftovers(), '0 0 0', 'shrunk online: nothing left here');

# 2. a big remote fragment split online under the writer, the new fragment
# on another peer: the writer waits only for the swap
$a->safe_psql('postgres', q{SET ROLE owner;
	INSERT INTO t SELECT g, 0, 'bulk' FROM generate_series(2000001, 2400000) g;
	INSERT INTO ref SELECT g, 0, 'bulk' FROM generate_series(2000001, 2400000) g});
# (4 fragments, P = 1: fragment 1 to b first, then split it with 5 going to c)
is(move(1, 'b', 'block_writes') > 100000, 1, 'fragment 1 (100k rows) to b');
{
	my $log = $a->basedir . '/latency';
	$w = start_writer(6, $log);
	sleep 1;
	my $t0 = time();
	is(change(1, 'c'), '5', 'online: fragment 1 (on b) split, 5 on c, under the writer');
	my $took = time() - $t0;
	finish_writer($w, 'online split of a big remote fragment');
	my $max = max_latency($log);
	diag(sprintf('online add_frag to a peer: %.2f s, longest writer transaction %.3f s', $took, $max));
	ok($max < $took / 2 || $took < 0.5, 'online split: the writer did not wait for the copy');
	check_table('online split, big', '1@b 2@b 3@c 4@a 5@c');
	$w = start_writer(6, $log);
	sleep 1;
	$t0 = time();
	is(change(0), '4', 'online: 5 (on c) merged into 1 (on b) under the writer');
	$took = time() - $t0;
	finish_writer($w, 'online merge of big remote fragments');
	$max = max_latency($log);
	diag(sprintf('online del_frag between peers: %.2f s, longest writer transaction %.3f s', $took, $max));
	ok($max < $took / 2 || $took < 0.5, 'online merge: the writer did not wait for the copy');
	check_table('online merge, big', '1@b 2@b 3@c 4@a');
}

# 3. the target peer is killed in the middle of the copy of an online split
my $s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{\echo started
SET ROLE owner;
SELECT * FROM hashtree.add_frag('t', 'online', 'c');
});
ok($c->poll_query_until('postgres', q{SELECT EXISTS (SELECT FROM pg_stat_activity
		WHERE query LIKE 'INSERT INTO hashtree_fragments.%')}), 'peer killed: the copy is under way');
$c->stop('immediate');
$s->quit;
like($s->{stderr}, qr/ERROR/, 'peer killed: the split failed');
$c->start;
check_table('peer killed', '1@b 2@b 3@c 4@a');
is(leftovers(), '0 0 0', 'peer killed: the worker rolled back what it did here');
is(remote_tables($c), '1', 'peer killed: nothing of the copy on the peer');
my $btables = remote_tables($b);

# 4. a cancel while the source's peer does not answer (its table locked there)
my $lock = $b->background_psql('postgres', on_error_stop => 0);
$lock->query_safe(sprintf(q{BEGIN; LOCK TABLE hashtree_fragments."%s" IN ACCESS EXCLUSIVE MODE},
	remote_table(1)));
$s = $a->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{\echo started
SET ROLE owner;
SELECT * FROM hashtree.add_frag('t', 'online', 'c');
});
ok($a->poll_query_until('postgres', q{SELECT op_phase = 'preparing' FROM hashtree.frag_table
		WHERE parent = 't'::regclass}), 'cancel: the copy is under way');
$a->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'cancel: the split was canceled');
$lock->quit;
ok($a->poll_query_until('postgres', q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity
		WHERE backend_type = 'hashtree fragment move')}), 'cancel: the worker is gone');
check_table('canceled', '1@b 2@b 3@c 4@a');

# 5. this node is killed in the middle of the copy
$s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{\echo started
SET ROLE owner;
SELECT * FROM hashtree.add_frag('t', 'online', 'c');
});
ok($c->poll_query_until('postgres', q{SELECT EXISTS (SELECT FROM pg_stat_activity
		WHERE query LIKE 'INSERT INTO hashtree_fragments.%')}), 'node killed: the copy is under way');
crash($a);
eval { $s->quit };
$a->start;
check_table('node killed', '1@b 2@b 3@c 4@a');

# 5b. the swap fails after the peers committed the targets (an event
# trigger refuses the foreign partitions): nothing changes here, the
# targets stay on the peers, unreferenced, and the operation stays recorded
$a->safe_psql('postgres', q{
	CREATE FUNCTION no_foreign_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'no foreign table today'; END $$;
	CREATE EVENT TRIGGER no_foreign_tables ON ddl_command_end WHEN TAG IN ('CREATE FOREIGN TABLE')
		EXECUTE FUNCTION no_foreign_tables();
});
my ($bt, $ct) = (remote_tables($b), remote_tables($c));
my ($ret, $out, $err) = $a->psql('postgres', q{SET ROLE owner; SELECT * FROM hashtree.add_frag('t', 'online', 'c')});
like($err, qr/no foreign table today/, 'failed swap: the split failed');
is(remote_tables($b) . ' ' . remote_tables($c), ($bt + 1) . ' ' . ($ct + 1),
	'failed swap: its targets stay on b and c');
check_table('failed swap', '1@b 2@b 3@c 4@a');
$a->safe_psql('postgres', 'DROP EVENT TRIGGER no_foreign_tables');

# 6. the next operation rolls back what was left here and drops what was
# left on the peers, and does its work
$w = start_writer(5);
is(change(1, 'c'), '5', 'after the failures: the split works');
finish_writer($w, 'split after the failures');
check_table('after the failures', '1@b 2@b 3@c 4@a 5@c');
is(leftovers(), '0 0 0', 'after the failures: nothing left here');
# (b: the source moved away is garbage now, its leftovers gone; c: 3 and 5)
is(remote_tables($c), '2', 'after the failures: only the fragments on c');
is(move(4, 'b', 'online') > 0, 1, 'a move cleans b');
is(remote_tables($b), '3', 'after the next move: only the fragments on b');
check_table('in the end', '1@b 2@b 3@c 4@b 5@c');

done_testing();
