# Fragments on other servers (issue 15, DESIGN §19): a fragmented table on
# node a with fragments moved to peers b and c and back, while a writer
# works through the parent.  After every step: the placement the view
# shows, every row in the fragment key_to_frag_number names, the rows of a
# remote fragment physically in its table on the peer (and only there),
# counts and hashes equal to a plain reference table that got the same
# writes.  Then failures: a peer killed in the middle of a copy, this node
# killed in the middle of one, a cancel, a swap that fails after the peer
# committed: the table stays whole and in place, and the next move removes
# what was left on the peers.
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

# (the rows travel as statement parameters: not into the logs)
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

# the table, its owner an ordinary role who may move fragments, and a
# reference table with the same rows (values that are hard to carry as text)
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

# the table of fragment k on its peer
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

sub check_table
{
	my ($what, $expect) = @_;
	is(placement(), $expect, "$what: placement $expect");
	# the same rows as the reference table: count, text, hashtree's digest
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
	# a remote fragment's rows are in its table on the peer, exactly
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

# a writer through the parent, and the same writes to the reference table
my $script = $a->basedir . '/writer.sql';
open(my $fh, '>', $script) or die;
print $fh <<'EOF';
\set k random(1, 8000)
BEGIN;
UPDATE t SET n = n + 1 WHERE id = :k;
UPDATE ref SET n = n + 1 WHERE id = :k;
SELECT nextval('ids') AS nid \gset
INSERT INTO t (id, v) VALUES (:nid, 'new');
INSERT INTO ref (id, v) VALUES (:nid, 'new');
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

# the longest writer transaction of a pgbench log, in seconds
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

# 1. fragments 2 and 3 to b and c while the writer works through the parent
my $w = start_writer(6);
sleep 1;
is(move(2, 'b', 'block_writes') > 0, 1, 'fragment 2 moved to b');
is(move(3, 'c', 'block_writes') > 0, 1, 'fragment 3 moved to c');
finish_writer($w, 'moves to peers');
check_table('on three servers', '1@a 2@b 3@c 4@a');
is(sql($a, q{SELECT count(*) FROM pg_constraint WHERE conrelid = 't'::regclass AND contype = 'p'}), '0',
	'the parent has no primary key any more');
is(sql($a, q{SELECT string_agg(c.relname || ':' || (SELECT count(*) FROM pg_constraint k
				WHERE k.conrelid = c.oid AND k.contype = 'p'), ' ' ORDER BY c.relname)
			 FROM pg_class c JOIN hashtree.fragments f ON f.relation = c.oid WHERE f."table" = 't'::regclass}),
	't_frag1:1 t_frag2:0 t_frag3:0 t_frag4:1', 'each local fragment has its own primary key');

# reads, writes and pruning through the parent, as another role
my $k2 = sql($a, q{SELECT min(id) FROM ref WHERE hashtree.key_to_frag_number('t', id) = 2});
my $k3 = sql($a, q{SELECT min(id) FROM ref WHERE hashtree.key_to_frag_number('t', id) = 3});
like(sql($a, qq{EXPLAIN (COSTS OFF) SELECT * FROM t WHERE id = $k2}), qr/^Foreign Scan on t_frag2 t$/,
	'a key of fragment 2: one foreign scan');
is(sql($a, qq{SELECT hashtree.match_spec_to_frag_numbers('t', 'id = $k3 OR id = $k2')}), '{2,3}',
	'match_spec_to_frag_numbers');
like(sql($a, qq{EXPLAIN (COSTS OFF) SELECT * FROM t WHERE id IN ($k2, $k3)}),
	qr/Foreign Scan on t_frag2.*Foreign Scan on t_frag3/s, 'two keys: the two foreign scans');
$a->safe_psql('postgres', qq{
	SET ROLE reader;
	UPDATE t SET v = 'changed' WHERE id % 10 = 0;  UPDATE ref SET v = 'changed' WHERE id % 10 = 0;
	DELETE FROM t WHERE id % 13 = 0;  DELETE FROM ref WHERE id % 13 = 0;
	UPDATE t SET f = f * 2 WHERE id IN ($k2, $k3);  UPDATE ref SET f = f * 2 WHERE id IN ($k2, $k3);
	INSERT INTO t (id, v) VALUES (-1, 'negative'), (-2, NULL);  INSERT INTO ref (id, v) VALUES (-1, 'negative'), (-2, NULL);
});
my ($ret, $out, $err) = $a->psql('postgres', qq{SET ROLE reader; INSERT INTO t (id) VALUES ($k2)});
like($err, qr/duplicate key value violates unique constraint/, 'the key of a remote fragment stays unique');
is(sql($a, qq{SET ROLE reader; INSERT INTO t (id) VALUES ($k3) ON CONFLICT DO NOTHING RETURNING id}), '',
	'ON CONFLICT DO NOTHING on a remote fragment');
is(sql($a, q{SELECT string_agg(fragment || '=' || rows, ' ' ORDER BY fragment) FROM hashtree.frag_size('t', true)}),
	sql($a, q{SELECT string_agg(k || '=' || n, ' ' ORDER BY k) FROM (SELECT hashtree.key_to_frag_number('t', id) k, count(*) n
			 FROM ref GROUP BY 1) s}), 'frag_size counts the remote fragments');
check_table('after writes through the parent', '1@a 2@b 3@c 4@a');

# 2. peer to peer, home, and a third place; what moves left is cleaned up
$w = start_writer(6);
is(move(3, 'b', 'online') > 0, 1, 'fragment 3 moved from c to b (online)');
is(move(2, undef, 'online') > 0, 1, 'fragment 2 moved home from b (online)');
finish_writer($w, 'moves between peers');
check_table('peer to peer, and home', '1@a 2@a 3@b 4@a');
# (3's old table on c went with the cleanup of the move that followed)
is(remote_tables($c) . ' ' . remote_tables($b), '0 2', 'the source on b waits for the next move');
is(move(4, 'c', 'block_writes') > 0, 1, 'fragment 4 moved to c');
is(remote_tables($c) . ' ' . remote_tables($b), '1 1', 'the next move dropped it');
check_table('a third place', '1@a 2@a 3@b 4@c');

# 3. the peer is killed in the middle of a copy: nothing changes, and the
# next move works
$a->safe_psql('postgres', q{SET ROLE owner;
	INSERT INTO t SELECT g, 0, 'bulk' FROM generate_series(2000001, 2400000) g;
	INSERT INTO ref SELECT g, 0, 'bulk' FROM generate_series(2000001, 2400000) g});
my $s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{\echo started
SET ROLE owner;
SELECT hashtree.move_frag('t', 1, 'b', 'block_writes');
});
ok($b->poll_query_until('postgres', q{SELECT EXISTS (SELECT FROM pg_stat_activity
		WHERE query LIKE 'INSERT INTO hashtree_fragments.%')}), 'peer killed: the copy is under way');
$b->stop('immediate');
$s->quit;
like($s->{stderr}, qr/ERROR/, 'peer killed: the move failed');
$b->start;
check_table('peer killed', '1@a 2@a 3@b 4@c');
is(remote_tables($b), '1', 'peer killed: nothing of the copy on the peer');
is(move(1, 'b', 'block_writes') > 0, 1, 'peer killed: the next move works');
check_table('peer killed, moved', '1@b 2@a 3@b 4@c');

# 4. this node is killed in the middle of a copy
$s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{\echo started
SET ROLE owner;
SELECT hashtree.move_frag('t', 1, 'c', 'block_writes');
});
ok($c->poll_query_until('postgres', q{SELECT EXISTS (SELECT FROM pg_stat_activity
		WHERE query LIKE 'INSERT INTO hashtree_fragments.%')}), 'node killed: the copy is under way');
crash($a);
eval { $s->quit };
$a->start;
check_table('node killed', '1@b 2@a 3@b 4@c');
ok($c->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_tables WHERE schemaname = 'hashtree_fragments'}),
	'node killed: the peer rolled its part back');

# 4b. online: a fragment of ~100k rows there and back while the writer
# works: it waits only for the swaps, not for the copies
foreach my $to ('c', undef)
{
	my $log = $a->basedir . '/latency';
	$w = start_writer(4, $log);
	sleep 1;
	my $t0 = time();
	is(move(2, $to, 'online') > 100000, 1, 'online: fragment 2 moved to ' . ($to // 'a') . ' under the writer');
	my $took = time() - $t0;
	finish_writer($w, 'online move of a big fragment');
	my $max = max_latency($log);
	diag(sprintf('online move: %.2f s, longest writer transaction %.3f s', $took, $max));
	ok($max < $took / 2 || $took < 0.5, 'online: the writer did not wait for the copy');
	check_table('online, big', defined $to ? '1@b 2@c 3@b 4@c' : '1@b 2@a 3@b 4@c');
}

# (the bulk was there for copies that last)
$a->safe_psql('postgres', q{DELETE FROM t WHERE id > 2000000; DELETE FROM ref WHERE id > 2000000});

# 5. a cancel while the peer does not answer (its table is locked there)
my $lock = $b->background_psql('postgres', on_error_stop => 0);
$lock->query_safe(sprintf(q{BEGIN; LOCK TABLE hashtree_fragments."%s" IN ACCESS EXCLUSIVE MODE},
	remote_table(1)));
$s = $a->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{\echo started
SET ROLE owner;
SELECT hashtree.move_frag('t', 1, NULL, 'block_writes');
});
ok($a->poll_query_until('postgres', qq{SELECT wait_event = 'Extension' FROM pg_stat_activity
		WHERE pid = $pid}), 'cancel: the move waits for the peer');
$a->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'cancel: the move was canceled');
$lock->quit;
check_table('canceled', '1@b 2@a 3@b 4@c');
ok($b->poll_query_until('postgres', q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity
		WHERE application_name = 'hashtree')}), 'cancel: the peer session is gone');

# 5b. the same, online: the caller's cancel stops the worker; what it left
# (capture trigger, log, the operation in the registry) goes with the next move
$lock = $b->background_psql('postgres', on_error_stop => 0);
$lock->query_safe(sprintf(q{BEGIN; LOCK TABLE hashtree_fragments."%s" IN ACCESS EXCLUSIVE MODE},
	remote_table(1)));
$s = $a->background_psql('postgres', on_error_stop => 0);
$pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{\echo started
SET ROLE owner;
SELECT hashtree.move_frag('t', 1, NULL, 'online');
});
ok($a->poll_query_until('postgres', q{SELECT op_phase = 'preparing' FROM hashtree.frag_table
		WHERE parent = 't'::regclass}), 'online cancel: the copy is under way');
$a->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'online cancel: the move was canceled');
$lock->quit;
ok($a->poll_query_until('postgres', q{SELECT NOT EXISTS (SELECT FROM pg_stat_activity
		WHERE backend_type = 'hashtree fragment move')}), 'online cancel: the worker is gone');
check_table('online, canceled', '1@b 2@a 3@b 4@c');
is(move(4, undef, 'online') > 0, 1, 'online cancel: the next move works');
is(sql($a, q{SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'hashtree_frag_capture%'}) . ' '
	. sql($a, q{SELECT count(*) FROM pg_class WHERE relname LIKE 'hashtree\_%'}) . ' '
	. sql($a, q{SELECT count(*) FROM hashtree.frag_table WHERE op IS NOT NULL}),
	'0 0 0', 'online cancel: and rolled back what the canceled one left');
check_table('online, after a cancel', '1@b 2@a 3@b 4@a');
is(move(4, 'c', 'online') > 0, 1, 'online: fragment 4 back to c');

# 6. the swap fails after the peer committed the copy: its table is left
# there, unreferenced, and the next move drops it
$a->safe_psql('postgres', q{
	CREATE FUNCTION no_foreign_tables() RETURNS event_trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'no foreign table today'; END $$;
	CREATE EVENT TRIGGER no_foreign_tables ON ddl_command_end WHEN TAG IN ('CREATE FOREIGN TABLE')
		EXECUTE FUNCTION no_foreign_tables();
});
($ret, $out, $err) = $a->psql('postgres', q{SET ROLE owner; SELECT hashtree.move_frag('t', 2, 'c', 'block_writes')});
like($err, qr/no foreign table today/, 'failed swap: the move failed');
is(remote_tables($c), '2', 'failed swap: the copy stays on the peer');
check_table('failed swap', '1@b 2@a 3@b 4@c');
$a->safe_psql('postgres', 'DROP EVENT TRIGGER no_foreign_tables');
is(move(2, 'c', 'block_writes') > 0, 1, 'failed swap: the next move works');
is(remote_tables($c), '2', 'failed swap: and dropped the copy left before');
check_table('after a failed swap', '1@b 2@c 3@b 4@c');

# 7. everything home again; the key goes back to the parent without a build
foreach my $k (1 .. 4)
{
	move($k, undef, 'block_writes');
}
check_table('home', '1@a 2@a 3@a 4@a');
$a->safe_psql('postgres', 'SET ROLE owner; ALTER TABLE t ADD PRIMARY KEY (id)');
is(sql($a, q{SELECT count(*) FROM pg_inherits WHERE inhparent = 't_pkey'::regclass}), '4',
	'the parent has its primary key again, made of the fragments\'');
is(move(1, 'b', 'block_writes') > 0, 1, 'and a fragment can leave again');
is(remote_tables($b) . ' ' . remote_tables($c), '1 0', 'the last leftovers are gone');
check_table('again', '1@b 2@a 3@a 4@a');

# 8. a TRUNCATE during an online copy, of a fragment here (the capture's
# marker) and of one on a peer (its table's relfilenode): the swap copies
# again what is left
$a->safe_psql('postgres', q{SET ROLE owner;
	CREATE TABLE u (id int PRIMARY KEY, v text) PARTITION BY HASH (id);
	SELECT hashtree.frag_init('u', 2);
	INSERT INTO u SELECT g, 'u' || g FROM generate_series(1, 150000) g});
foreach my $to ('c', undef)
{
	$s = $a->background_psql('postgres', on_error_stop => 0);
	$s->query_until(qr/started/, sprintf(q{\echo started
SET ROLE owner;
SELECT hashtree.move_frag('u', 1, %s, 'online');
}, defined $to ? "'$to'" : 'NULL'));
	ok($a->poll_query_until('postgres', q{SELECT op_phase = 'preparing' FROM hashtree.frag_table
			WHERE parent = 'u'::regclass}), 'truncate: the copy is under way');
	$a->safe_psql('postgres', q{TRUNCATE u; INSERT INTO u SELECT g, 'again' FROM generate_series(1, 100) g});
	$s->quit;
	is($s->{stderr}, '', 'truncate: the move went through');
	is(sql($a, q{SELECT string_agg(fragment || '@' || node, ' ' ORDER BY fragment) FROM hashtree.fragments
				 WHERE "table" = 'u'::regclass}), '1@' . ($to // 'a') . ' 2@a', 'truncate: the placement');
	is(sql($a, q{SELECT count(*) || ' ' || bool_and(v = 'again') || ' '
				 || bool_and(hashtree.key_to_frag_number('u', id) = (SELECT fragment FROM hashtree.fragments f
					 WHERE f.relation = u.tableoid)) FROM u}), '100 true true',
		'truncate: the rows written after it, and only those');
	$a->safe_psql('postgres', q{TRUNCATE u; INSERT INTO u SELECT g, 'u' || g FROM generate_series(1, 150000) g});
}

# 9. grown 4 -> 9 over the three servers and shrunk back, the writer
# working through the parent (add_frag places the new fragment; splits and
# merges of fragments elsewhere move them here and back)
my %place = map { split /@/ } split / /, placement();
my @nodes = ('b', 'c', 'a', 'c', 'b');
$w = start_writer(8);
foreach my $node (@nodes)
{
	my $n = sql($a, qq{SET ROLE owner;
		SELECT n_fragments FROM hashtree.add_frag('t', 'block_writes', node => '$node')});
	$place{$n} = $node;
}
finish_writer($w, 'grown under the writer');
check_table('grown to 9', join(' ', map { "$_\@$place{$_}" } sort { $::a <=> $::b } keys %place));
$w = start_writer(8);
foreach my $i (1 .. 5)
{
	my $n = sql($a, q{SET ROLE owner; SELECT n_fragments FROM hashtree.del_frag('t', 'block_writes')});
	delete $place{$n + 1};
}
finish_writer($w, 'shrunk under the writer');
check_table('shrunk to 4', join(' ', map { "$_\@$place{$_}" } sort { $::a <=> $::b } keys %place));

done_testing();
