# exchange() between two real clusters: a report lists exactly the
# differences (tracked rows and plain entries, both directions); pull and
# push make the nodes equal; and the three faults (a peer that refuses
# connections, one that accepts and never answers, one killed in the
# middle of an exchange) end as errors in exchange_log, never as "no
# differences", with the locks released on both sides and the next
# exchange working.  A lost peer (killed, or terminating our session) ends
# the exchange; a peer that reports an ordinary error does not.
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
my $a_conn = $a->connstr('postgres');
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b', \$\$$b_conn\$\$)");
$b->safe_psql('postgres', "SELECT hashtree.add_peer('a', \$\$$a_conn\$\$)");

# the same table on both nodes, columns in another order on b
$a->safe_psql('postgres', q{
	CREATE TABLE acct (id int PRIMARY KEY, owner text, balance numeric, tags text[]);
	SELECT hashtree.track('acct');
	INSERT INTO acct SELECT i, 'owner ' || i, i * 10, ARRAY['t' || (i % 7)] FROM generate_series(1, 5000) i;
	SELECT count(*) FROM (SELECT hashtree.insert('plain', 'x', 'k' || i, '\x01'::bytea)
							FROM generate_series(1, 10) i) s;
	SELECT count(*) FROM (SELECT hashtree.insert('plain', 'x', 'common' || i, '\x01'::bytea)
							FROM generate_series(1, 100) i) s;
});
$b->safe_psql('postgres', q{
	CREATE TABLE acct (tags text[], balance numeric, owner text, id int PRIMARY KEY);
	SELECT hashtree.track('acct');
	INSERT INTO acct SELECT ARRAY['t' || (i % 7)], i * 10, 'owner ' || i, i FROM generate_series(1, 5000) i;
	SELECT count(*) FROM (SELECT hashtree.insert('plain', 'x', 'k' || i, '\x01'::bytea)
							FROM generate_series(5, 15) i) s;
	SELECT count(*) FROM (SELECT hashtree.insert('plain', 'x', 'common' || i, '\x01'::bytea)
							FROM generate_series(1, 100) i) s;
});

# random divergence, remembered as the differences a must report
srand(20261121);
my %expected;
my %used;
sub pick { my $id; do { $id = 1 + int(rand(5000)) } while $used{$id}; $used{$id} = 1; return $id; }
my (@only_b, @gone_on_b, @changed_on_a, @changed_on_b);
push @only_b, 6000 + $_ for 1 .. 40;
push @gone_on_b, pick() for 1 .. 30;
push @changed_on_a, pick() for 1 .. 20;
push @changed_on_b, pick() for 1 .. 20;
$expected{"missing|public|acct|$_"} = 1 for @only_b;
$expected{"remote_missing|public|acct|$_"} = 1 for @gone_on_b;
$expected{"different|public|acct|$_"} = 1 for @changed_on_a, @changed_on_b;
$expected{"remote_missing|plain|x|k$_"} = 1 for 1 .. 4;
$expected{"missing|plain|x|k$_"} = 1 for 11 .. 15;
$expected{"different|plain|x|k7"} = 1;

$b->safe_psql('postgres', sprintf(q{
	INSERT INTO acct (id, owner, balance, tags) SELECT i, 'new ' || i, 1, '{}' FROM unnest('{%s}'::int[]) i;
	DELETE FROM acct WHERE id = ANY ('{%s}');
	UPDATE acct SET tags = tags || 'b'::text WHERE id = ANY ('{%s}');
	SELECT hashtree.insert('plain', 'x', 'k7', '\x02'::bytea);
}, join(',', @only_b), join(',', @gone_on_b), join(',', @changed_on_b)));
$a->safe_psql('postgres', sprintf(q{UPDATE acct SET balance = -balance WHERE id = ANY ('{%s}')},
	join(',', @changed_on_a)));

# the report, as "kind|prefix_a|prefix_b|id-or-key"
my $report_sql = q{
	SELECT string_agg(line, E'\n' ORDER BY line COLLATE "C") FROM (
		SELECT kind || '|' || prefix_a || '|' || prefix_b || '|' ||
			CASE WHEN prefix_a = 'plain' THEN convert_from(key, 'UTF8')
				 ELSE (('x' || encode(substr(key, 5), 'hex'))::bit(32)::int)::text END AS line
		  FROM hashtree.exchange('%s', NULL, '%s')) r};
sub report { my ($node, $peer, $mode) = @_; return $node->safe_psql('postgres', sprintf($report_sql, $peer, $mode // 'none')); }

my $got = report($a, 'b');
is($got, join("\n", sort keys %expected), 'a manual exchange reports exactly the differences');
is($a->safe_psql('postgres', q{SELECT sum(missing) || ' ' || sum(remote_missing) || ' ' || sum(different)
	|| ' ' || sum(missing_prefix + remote_missing_prefix) || ' ' || bool_and(outcome = 'ok')::int || ' ' || count(*)
	FROM hashtree.exchange_log}),
	'45 34 41 0 1 8', 'exchange_log counts the differences by kind');
my %mirror = (missing => 'remote_missing', remote_missing => 'missing', different => 'different');
my $from_b = join("\n", sort map { my @f = split /\|/; $f[0] = $mirror{$f[0]}; join('|', @f) } keys %expected);
is(report($b, 'a'), $from_b, 'and from the other side, the mirror image');
is($a->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status WHERE lock_owner IS NOT NULL')
	 . $b->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'00', 'no lock left on either side');

# batched compare: round trips per partition are bounded by the tree depth
ok($a->safe_psql('postgres', 'SELECT max(round_trips) <= 20 FROM hashtree.exchange_log') eq 't',
	'at most a few round trips per partition');

# pull on a: a becomes b (rows compared by column name, not position)
my $rows_sql = q{SELECT md5(string_agg(id || ':' || owner || ':' || balance || ':' || tags::text, ',' ORDER BY id)) FROM acct};
report($a, 'b', 'pull');
is($a->safe_psql('postgres', $rows_sql), $b->safe_psql('postgres', $rows_sql), 'pull: a has b\'s rows');
is(report($a, 'b'), '', 'pull: nothing left to report');
is(tops($a), tops($b), 'pull: equal top hashes after the next update');

# push from b after new changes on b
$b->safe_psql('postgres', q{
	DELETE FROM acct WHERE id BETWEEN 100 AND 140;
	UPDATE acct SET owner = 'pushed' WHERE id BETWEEN 200 AND 230;
	INSERT INTO acct (id, owner, balance, tags) SELECT i, 'p', 0, '{}' FROM generate_series(9000, 9100) i;
	SELECT hashtree.delete('plain', 'x', 'k5');
});
report($b, 'a', 'push');
is($a->safe_psql('postgres', $rows_sql), $b->safe_psql('postgres', $rows_sql), 'push: a has b\'s rows');
is(report($b, 'a'), '', 'push: nothing left to report');
lock_update_all($a);
lock_update_all($b);
is(tops($a), tops($b), 'push: equal top hashes');
is(check_trees($a), '0', 'a\'s trees are consistent after the repairs');

# names that need quoting (quotes, spaces, upper case, unicode) in the schema,
# table and key columns: found, pulled and pushed
for my $n ($a, $b)
{
	$n->safe_psql('postgres', q{
		CREATE SCHEMA "S'q ""D"" Ü";
		CREATE TABLE "S'q ""D"" Ü"."T'ab ""X"" Ä b" ("K'ey ""1""" int, "Wh'en ""2""" text, "V'al ß" text,
			PRIMARY KEY ("K'ey ""1""", "Wh'en ""2"""));
		SELECT hashtree.track('"S''q ""D"" Ü"."T''ab ""X"" Ä b"');
		INSERT INTO "S'q ""D"" Ü"."T'ab ""X"" Ä b" SELECT g, 'w''' || g, 'v "' || g FROM generate_series(1, 200) g;
	});
}
$b->safe_psql('postgres', q{
	DELETE FROM "S'q ""D"" Ü"."T'ab ""X"" Ä b" WHERE "K'ey ""1""" <= 10;
	UPDATE "S'q ""D"" Ü"."T'ab ""X"" Ä b" SET "V'al ß" = 'changed' WHERE "K'ey ""1""" BETWEEN 11 AND 20;
	INSERT INTO "S'q ""D"" Ü"."T'ab ""X"" Ä b" SELECT g, 'new', 'n' FROM generate_series(300, 309) g;
});
my $odd_rows = q{SELECT md5(string_agg(t::text, ',' ORDER BY "K'ey ""1""", "Wh'en ""2"""))
	FROM "S'q ""D"" Ü"."T'ab ""X"" Ä b" t};
my $odd_exchange = q{SELECT string_agg(DISTINCT prefix_a || '.' || prefix_b, ',') || ' ' || count(*)
	|| ' ' || count(*) FILTER (WHERE repaired) FROM hashtree.exchange('b', NULL, '%s')};
is($a->safe_psql('postgres', sprintf($odd_exchange, 'pull')), q{S'q "D" Ü.T'ab "X" Ä b 30 30},
	'odd names: the 30 differences found and pulled');
is($a->safe_psql('postgres', $odd_rows), $b->safe_psql('postgres', $odd_rows), 'odd names: a has b\'s rows');
$a->safe_psql('postgres', q{UPDATE "S'q ""D"" Ü"."T'ab ""X"" Ä b" SET "V'al ß" = 'pushed' WHERE "K'ey ""1""" <= 15});
is($a->safe_psql('postgres', sprintf($odd_exchange, 'push')), q{S'q "D" Ü.T'ab "X" Ä b 5 5},
	'odd names: pushed');
is($a->safe_psql('postgres', $odd_rows), $b->safe_psql('postgres', $odd_rows), 'odd names: b has a\'s rows');

# ---- faults ---------------------------------------------------------------

# the distinct messages of the log rows after id
sub messages_after
{
	my ($node, $id) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(DISTINCT message, ' | ') FROM hashtree.exchange_log WHERE id > $id");
}

sub log_since
{
	my ($node, $id) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT string_agg(DISTINCT outcome, ',') || ' ' || sum(missing + remote_missing + different
			+ missing_prefix + remote_missing_prefix) || ' ' || count(*)
		  FROM hashtree.exchange_log WHERE id > $id});
}
sub last_id { return $_[0]->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM hashtree.exchange_log'); }
sub locks { return $_[0]->safe_psql('postgres', 'SELECT count(*) FROM hashtree.status WHERE lock_owner IS NOT NULL'); }

# 1. a peer that refuses connections
my $c = ht_node('c');
my $c_conn = $c->connstr('postgres');
$c->stop;
$a->safe_psql('postgres', "SELECT hashtree.add_peer('refusing', \$\$$c_conn\$\$)");
my $id = last_id($a);
my ($ret, $out, $err) = $a->psql('postgres',
	q{SELECT string_agg(DISTINCT kind, ',') FROM hashtree.exchange('refusing')});
is($out, 'error', 'refusing peer: every partition is an error');
like($err, qr/could not connect to peer "refusing"/, 'with the reason');
is(log_since($a, $id), 'error 0 8', 'refusing peer: logged as errors, no differences claimed');
is(locks($a), '0', 'refusing peer: no lock left');

# 2. a peer that accepts and never answers
my $mute = IO::Socket::INET->new(Listen => 5, LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp')
  or die "cannot listen: $!";
my $mute_port = $mute->sockport;
$a->safe_psql('postgres', "SELECT hashtree.add_peer('mute', 'host=127.0.0.1 port=$mute_port dbname=x')");
$id = last_id($a);
my $t0 = time;
($ret, $out, $err) = $a->psql('postgres',
	q{SET hashtree.connect_timeout = '1s'; SELECT string_agg(DISTINCT kind, ',') FROM hashtree.exchange('mute')});
ok(time - $t0 < 20, 'mute peer: the exchange does not hang');
is($out, 'error', 'mute peer: every partition is an error');
like($a->safe_psql('postgres', "SELECT message FROM hashtree.exchange_log WHERE id = $id + 1"),
	qr/timeout expired/, 'mute peer: the timeout is recorded');
is(locks($a), '0', 'mute peer: no lock left');

# 2b. a peer that answers, then stops answering in the middle (its update waits)
my $blocker = $b->background_psql('postgres');
$blocker->query_safe('BEGIN; LOCK TABLE hashtree.dirty IN ACCESS EXCLUSIVE MODE');
$id = last_id($a);
$t0 = time;
($ret, $out, $err) = $a->psql('postgres',
	q{SET hashtree.statement_timeout = '1s'; SELECT string_agg(DISTINCT kind, ',') FROM hashtree.exchange('b', 0)});
ok(time - $t0 < 20, 'silent peer: bounded by the statement timeout');
is($out, 'error', 'silent peer: an error, not a clean result');
like($a->safe_psql('postgres', "SELECT message FROM hashtree.exchange_log WHERE id > $id"),
	qr/canceling statement on peer "b" due to statement timeout/, 'silent peer: recorded');
is(locks($a), '0', 'silent peer: no lock left here');
$blocker->query_safe('COMMIT');
ok($b->poll_query_until('postgres', 'SELECT count(*) = 0 FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'silent peer: its lock went with the connection');
is($a->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange('b', 0)}), '0',
	'the next exchange works');

# 3. a peer killed in the middle of an exchange
$blocker = $b->background_psql('postgres');
$blocker->query_safe('BEGIN; LOCK TABLE hashtree.dirty IN ACCESS EXCLUSIVE MODE');
$id = last_id($a);
my $s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{SET hashtree.statement_timeout = 0;
\echo started
SELECT 'kinds=' || string_agg(DISTINCT kind, ',') FROM hashtree.exchange('b', NULL, 'pull');
});
ok($b->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'hashtree' AND wait_event_type = 'Lock'}),
	'killed peer: the exchange is waiting on the peer');
crash($b);
eval { $blocker->quit };
ok($a->poll_query_until('postgres', "SELECT count(*) = 8 FROM hashtree.exchange_log WHERE id > $id"),
	'killed peer: every partition logged');
$s->quit;
like($s->{stdout}, qr/kinds=error$/m, 'killed peer: reported as errors');
like($a->safe_psql('postgres', "SELECT message FROM hashtree.exchange_log WHERE id = $id + 1"),
	qr/connection to peer "b"|lost connection/, 'killed peer: the lost connection is recorded');
is(messages_after($a, $id), $a->safe_psql('postgres', "SELECT message FROM hashtree.exchange_log WHERE id = $id + 1"),
	'killed peer: the error of every partition in the exchange');
is(log_since($a, $id), 'error 0 8', 'killed peer: no differences claimed');
is(locks($a), '0', 'killed peer: no lock left here');
$b->start;
is(locks($b), '0', 'killed peer: no lock left there after its restart');
is($a->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange('b')}), '0',
	'killed peer: the next exchange works (and finds the nodes equal)');

# 4. the peer terminates the session serving the exchange (pg_terminate_backend
# on the peer: its FATAL error arrives, then the connection closes): the peer
# is lost, not this backend shut down; exchange() returns its rows
$blocker = $b->background_psql('postgres');
$blocker->query_safe('BEGIN; LOCK TABLE hashtree.dirty IN ACCESS EXCLUSIVE MODE');
$id = last_id($a);
$s = $a->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{SET hashtree.statement_timeout = 0;
\echo started
SELECT 'kinds=' || string_agg(DISTINCT kind, ',') FROM hashtree.exchange('b');
});
ok($b->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'hashtree' AND wait_event_type = 'Lock'}),
	'terminated session: the exchange is waiting on the peer');
$b->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hashtree'});
$blocker->query_safe('COMMIT');
$blocker->quit;
ok($a->poll_query_until('postgres', "SELECT count(*) = 8 FROM hashtree.exchange_log WHERE id > $id"),
	'terminated session: every partition logged');
$s->quit;
like($s->{stdout}, qr/kinds=error$/m, 'terminated session: exchange() returned, every partition an error');
like($a->safe_psql('postgres', "SELECT message FROM hashtree.exchange_log WHERE id = $id + 1"),
	qr/terminating connection due to administrator command/, 'terminated session: the peer\'s reason is recorded');
is(messages_after($a, $id), $a->safe_psql('postgres', "SELECT message FROM hashtree.exchange_log WHERE id = $id + 1"),
	'terminated session: the peer is lost, the error of every partition in the exchange');
is(locks($a), '0', 'terminated session: no lock left here');
ok($b->poll_query_until('postgres', 'SELECT count(*) = 0 FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'terminated session: no lock left there');

# 5. the peer reports ordinary SQL errors and keeps the connection (its
# lock_timeout, its statement_timeout cancelling its update): each is that
# partition's error, the peer is not lost, every partition is attempted
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b_lt', \$\$$b_conn options='-c lock_timeout=200'\$\$)");
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b_st', \$\$$b_conn options='-c statement_timeout=300'\$\$)");
$blocker = $b->background_psql('postgres');
$blocker->query_safe('BEGIN; LOCK TABLE hashtree.dirty IN ACCESS EXCLUSIVE MODE');
foreach my $case (['b_lt', 'canceling statement due to lock timeout'],
	['b_st', 'canceling statement due to statement timeout'])
{
	my ($peer, $msg) = @$case;
	$id = last_id($a);
	($ret, $out, $err) = $a->psql('postgres',
		qq{SET hashtree.statement_timeout = '1min'; SELECT string_agg(DISTINCT kind, ',') FROM hashtree.exchange('$peer')});
	is($ret . ' ' . $out, '0 error', "$peer: exchange() returns, every partition an error");
	is(log_since($a, $id), 'error 0 8', "$peer: every partition logged, no differences claimed");
	is(messages_after($a, $id), $msg, "$peer: each partition failed with the peer's error, none was skipped as lost");
	is(locks($a), '0', "$peer: no lock left here");
}
$blocker->query_safe('COMMIT');
$blocker->quit;
ok($b->poll_query_until('postgres', 'SELECT count(*) = 0 FROM hashtree.status WHERE lock_owner IS NOT NULL'),
	'peer errors: no lock left there');
is($a->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange('b_st')}), '0',
	'peer errors: the next exchange works');

# 6. a peer's error whose SQLSTATE reads like a lost connection or a cancel
# (a trigger of the peer's table raises 08006 or 57014 during a push): the
# peer's error for that table's repair, not a lost peer, not a cancel here
my $refusing_trigger = q{
	CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		IF NEW.owner LIKE 'poison %' THEN
			RAISE EXCEPTION 'refused by a trigger (%)', substr(NEW.owner, 8)
				USING ERRCODE = substr(NEW.owner, 8);
		END IF;
		RETURN NEW;
	END $$;
	CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON acct FOR EACH ROW EXECUTE FUNCTION refuse();
};
$b->safe_psql('postgres', $refusing_trigger);
$a->safe_psql('postgres', q{
	UPDATE acct SET owner = 'poison 08006' WHERE id BETWEEN 1 AND 20;
	UPDATE acct SET owner = 'poison 57014' WHERE id BETWEEN 21 AND 40;
});
$id = last_id($a);
($ret, $out, $err) = $a->psql('postgres',
	q{SELECT count(*) FILTER (WHERE repaired) || ' ' || count(*) FROM hashtree.exchange('b', NULL, 'push')});
is($ret . ' ' . $out, '0 0 40', 'refusing trigger: exchange() returns the 40 differences, none repaired');
is($a->safe_psql('postgres', "SELECT string_agg(DISTINCT outcome, ',') || ' ' || count(*) FROM hashtree.exchange_log WHERE id > $id"),
	'ok 8', 'refusing trigger: every partition compared, the peer not lost');
like(messages_after($a, $id), qr/^repair of public\.acct: refused by a trigger \((08006|57014)\)( \| repair of public\.acct: refused by a trigger \((08006|57014)\))*$/,
	'refusing trigger: the peer\'s error is each partition\'s repair note');
$b->safe_psql('postgres', 'DROP TRIGGER refuse ON acct');
report($a, 'b', 'push');
is($a->safe_psql('postgres', $rows_sql), $b->safe_psql('postgres', $rows_sql), 'refusing trigger: the next push repairs');

# the same trigger on this node during a pull (08006 only: a RAISE of 57014
# here cannot be told from a cancel of this backend): that table's repair
# error, not a lost peer
$a->safe_psql('postgres', $refusing_trigger);
$b->safe_psql('postgres', q{UPDATE acct SET owner = 'poison 08006' WHERE id BETWEEN 41 AND 60});
$id = last_id($a);
($ret, $out, $err) = $a->psql('postgres',
	q{SELECT count(*) FILTER (WHERE repaired) || ' ' || count(*) FROM hashtree.exchange('b', NULL, 'pull')});
is($ret . ' ' . $out, '0 0 20', 'refusing local trigger: exchange() returns the 20 differences, none repaired');
is($a->safe_psql('postgres', "SELECT string_agg(DISTINCT outcome, ',') || ' ' || count(*) FROM hashtree.exchange_log WHERE id > $id"),
	'ok 8', 'refusing local trigger: every partition compared, the peer not lost');
like(messages_after($a, $id), qr/^repair of public\.acct: refused by a trigger \(08006\)( \| repair of public\.acct: refused by a trigger \(08006\))*$/,
	'refusing local trigger: the error is each partition\'s repair note');
$a->safe_psql('postgres', 'DROP TRIGGER refuse ON acct');
report($a, 'b', 'pull');
is($a->safe_psql('postgres', $rows_sql), $b->safe_psql('postgres', $rows_sql), 'refusing local trigger: the next pull repairs');

done_testing();
