# Two-way repair, exchange(..., repair => 'newest') (issue 14, DESIGN §20),
# on real clusters with track_commit_timestamp = on:
# 1. two nodes written one after the other (a known commit order) with
#    overlapping keys: updates, deletes, inserts again after deletes, key
#    changes; after one exchange both hold exactly the rows the test
#    computes from the write history (the last write of each key wins,
#    deletes included), and a second exchange finds nothing;
# 2. the same with three nodes (the version a repair copied is the
#    winner's, not the time of the copy: a later write on the third node
#    still wins);
# 3. tombstones expire after hashtree.tombstone_ttl on both nodes (the
#    trees stay equal); a node out of contact longer gets its row back
#    (documented: re-synchronise it with pull or push);
# 4. a peer killed in the middle of the repair's writes: every row is the
#    old or the new one, and the next exchange finishes the work.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my %nodes;
for my $n (qw(a b c))
{
	$nodes{$n} = ht_node($n, conf => "track_commit_timestamp = on\n");
}
for my $x (keys %nodes)
{
	for my $y (keys %nodes)
	{
		next if $x eq $y;
		my $conn = $nodes{$y}->connstr('postgres');
		$nodes{$x}->safe_psql('postgres', "SELECT hashtree.add_peer('$y', \$\$$conn\$\$)");
	}
}

# the same table on every node, with tombstones, and the same first rows
for my $n (values %nodes)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE kv (id int PRIMARY KEY, v text NOT NULL);
		SELECT hashtree.track('kv');
		SELECT hashtree.tombstones('kv');
		INSERT INTO kv SELECT g, 'init' || g FROM generate_series(1, 200) g;
	});
	lock_update_all($n);
}

sub rows
{
	my ($node, $tbl) = @_;
	return $node->safe_psql('postgres',
		"SELECT coalesce(string_agg(id || '=' || v, ',' ORDER BY id), '') FROM " . ($tbl // 'kv'));
}

sub exchange
{
	my ($from, $to, $mode) = @_;
	return $nodes{$from}->safe_psql('postgres',
		"SELECT count(*) FROM hashtree.exchange('$to', NULL, '$mode')");
}

# the model: each node's rows, and the last write of each key
my %state;
for my $n (keys %nodes)
{
	$state{$n}{$_} = "init$_" for 1 .. 200;
}
my %last;	# key => [step, value or undef (deleted)]
my $step = 0;

# one write on one node, its own transaction (so the commit order is the
# order of the steps); returns false when it does not apply there
sub write_op
{
	my ($n, $kind, $k, $k2) = @_;
	my $st = $state{$n};
	my $node = $nodes{$n};
	my $v = "$n$step";
	if ($kind eq 'update')
	{
		return 0 unless defined $st->{$k};
		$node->safe_psql('postgres', "UPDATE kv SET v = '$v' WHERE id = $k");
		$st->{$k} = $v;
		$last{$k} = [ $step, $v ];
	}
	elsif ($kind eq 'delete')
	{
		return 0 unless defined $st->{$k};
		$node->safe_psql('postgres', "DELETE FROM kv WHERE id = $k");
		delete $st->{$k};
		$last{$k} = [ $step, undef ];
	}
	elsif ($kind eq 'insert')
	{
		return 0 if defined $st->{$k};
		$node->safe_psql('postgres', "INSERT INTO kv VALUES ($k, '$v')");
		$st->{$k} = $v;
		$last{$k} = [ $step, $v ];
	}
	else	# a key changed: the old key is deleted, the new one written
	{
		return 0 unless defined $st->{$k} && !defined $st->{$k2};
		$node->safe_psql('postgres', "UPDATE kv SET id = $k2 WHERE id = $k");
		$st->{$k2} = delete $st->{$k};
		$last{$k} = [ $step, undef ];
		$last{$k2} = [ $step, $st->{$k2} ];
	}
	$step++;
	return 1;
}

sub history
{
	my ($n_ops, @on) = @_;
	my @kinds = (('update') x 8, ('delete') x 5, ('insert') x 4, ('keychange') x 3);
	my $done = 0;
	while ($done < $n_ops)
	{
		my $n = $on[ int(rand(@on)) ];
		my $kind = $kinds[ int(rand(@kinds)) ];
		my $k = 1 + int(rand(260));
		my $k2 = 1 + int(rand(260));
		$done += write_op($n, $kind, $k, $k2);
	}
}

# the rows every node must hold: the last write of each key
sub expected
{
	my @r;
	for my $k (1 .. 260)
	{
		my $v = exists $last{$k} ? $last{$k}[1] : ($k <= 200 ? "init$k" : undef);
		push @r, "$k=$v" if defined $v;
	}
	return join(',', @r);
}

# after a repair: the nodes hold the expected rows
sub synced
{
	my (@on) = @_;
	my %rows = map { split /=/, $_, 2 } split /,/, expected();
	$state{$_} = {%rows} for @on;
}

sub tomb_count
{
	my ($n) = @_;
	return $nodes{$n}->safe_psql('postgres', 'SELECT count(*) FROM hashtree.tombstone');
}

srand(20261202);

# ---- 1. two nodes -------------------------------------------------------------
# a fixed pattern first: deleted on a then updated on b (the update wins),
# updated on b then deleted on a (the delete wins), deleted on both,
# inserted on b only, inserted on b and deleted there, then the random rest
write_op('a', 'delete', 1);
write_op('b', 'update', 1);
write_op('b', 'update', 2);
write_op('a', 'delete', 2);
write_op('a', 'delete', 3);
write_op('b', 'delete', 3);
write_op('b', 'insert', 201);
write_op('b', 'insert', 202);
write_op('b', 'delete', 202);
write_op('a', 'keychange', 4, 203);
history(150, 'a', 'b');

my $expected = expected();
isnt(rows($nodes{a}), $expected, 'a differs from the expected rows before the exchange');
# repair none reports the side that would win each difference
{
	my %exp = map { split /=/, $_, 2 } split /,/, $expected;
	my ($checked, $wrong) = (0, 0);
	for my $line (split /\n/, $nodes{a}->safe_psql('postgres', q{
		SELECT (('x' || encode(substr(key, 5), 'hex'))::bit(32)::int) || '|' || coalesce(winner, '-')
		  FROM hashtree.exchange('b', NULL, 'none') WHERE key IS NOT NULL}))
	{
		my ($k, $w) = split /\|/, $line;
		my ($e, $av, $bv) = map { $_ // '' } ($exp{$k}, $state{a}{$k}, $state{b}{$k});
		my $want = ($av eq $e && $bv ne $e) ? 'local' : ($bv eq $e && $av ne $e) ? 'remote' : undef;
		next unless defined $want;
		$checked++;
		$wrong++ if $w ne $want;
	}
	ok($checked > 50, "repair none: winners checked ($checked)");
	is($wrong, 0, 'repair none: every winner is the side whose version is the newest');
}
my $log0 = $nodes{a}->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM hashtree.exchange_log');
my $ndiff = exchange('a', 'b', 'newest');
ok($ndiff > 0, "the exchange found $ndiff differences");
is(rows($nodes{a}), $expected, 'a holds the newest version of every row');
is(rows($nodes{b}), $expected, 'b holds the newest version of every row');
my ($rl, $rr, $rep) = split /\|/, $nodes{a}->safe_psql('postgres',
	"SELECT sum(rows_local), sum(rows_remote), sum(repaired) FROM hashtree.exchange_log WHERE id > $log0");
ok($rl > 0 && $rr > 0, "rows written on both sides ($rl here, $rr on the peer)");
is($rep, $ndiff, 'every difference repaired');
is(exchange('a', 'b', 'none'), '0', 'a second exchange finds nothing');
is(exchange('b', 'a', 'newest'), '0', 'nor one run from the other node');
synced('a', 'b');
is(tomb_count('a'), tomb_count('b'), 'the same tombstones on both nodes');
ok(tomb_count('a') > 0, 'deletes left tombstones');
is(check_trees($nodes{$_}), '0', "trees of $_ check") for qw(a b);
# a rebuild gives the same trees
my $tops = tops($nodes{a});
reset_all($nodes{a});
is(tops($nodes{a}), $tops, 'a rebuild of a gives the same trees');
is(tops($nodes{b}), $tops, 'and they are b\'s');

# ---- 2. three nodes -----------------------------------------------------------
# c was left out so far: it holds the first rows, older than every write
# above (the model's state of c is still the first rows)
# a copy must keep the winner's version: b writes k, the repair a<->b
# copies it to a; c writes k later; then a<->c: c's later write wins
write_op('b', 'update', 10);
write_op('b', 'update', 11);
write_op('c', 'update', 10);	# later than b's, before the copy to a
history(120, 'a', 'b', 'c');
is(rows($nodes{a}) eq rows($nodes{b}) && rows($nodes{b}) eq rows($nodes{c}), '',
	'the three nodes differ');
exchange('a', 'b', 'newest');
exchange('b', 'c', 'newest');
exchange('a', 'c', 'newest');
exchange('a', 'b', 'newest');
$expected = expected();
is(rows($nodes{$_}), $expected, "three nodes: $_ holds the newest version of every row")
  for qw(a b c);
is(exchange($_->[0], $_->[1], 'none'), '0', "three nodes: $_->[0] and $_->[1] are equal")
  for ([ 'a', 'b' ], [ 'b', 'c' ], [ 'a', 'c' ]);

# ---- 3. expiry ----------------------------------------------------------------
for my $n (qw(a b))
{
	$nodes{$n}->safe_psql('postgres',
		"ALTER SYSTEM SET hashtree.tombstone_ttl = '3s'; SELECT pg_reload_conf()");
}
my $gone = (grep { defined $state{a}{$_} } 1 .. 260)[0];
$nodes{a}->safe_psql('postgres', "DELETE FROM kv WHERE id = $gone");
exchange('a', 'b', 'newest');
is($nodes{b}->safe_psql('postgres', "SELECT count(*) FROM kv WHERE id = $gone"), '0',
	'the delete reached b');
my $tomb_sql = "SELECT count(*) FROM hashtree.tombstone WHERE key = hashtree.row_key('kv', ROW($gone, '')::kv)";
is($nodes{$_}->safe_psql('postgres', $tomb_sql), '1', "$_ has its tombstone") for qw(a b);
sleep 4;
lock_update_all($nodes{$_}) for qw(a b);
is(tomb_count($_), '0', "$_: every tombstone expired") for qw(a b);
is(exchange('a', 'b', 'none'), '0', 'the trees are equal after the expiry');
is(check_trees($nodes{$_}), '0', "trees of $_ check after the expiry") for qw(a b);
# c never heard of the delete and the tombstone is gone: its row wins
# (documented: a node out of contact longer than the TTL must be
# re-synchronised with pull or push)
exchange('a', 'c', 'newest');
is($nodes{a}->safe_psql('postgres', "SELECT count(*) FROM kv WHERE id = $gone"), '1',
	'a late node brings an expired delete back (documented)');
$nodes{a}->safe_psql('postgres', "DELETE FROM kv WHERE id = $gone");
exchange('a', 'c', 'push');
is($nodes{c}->safe_psql('postgres', "SELECT count(*) FROM kv WHERE id = $gone"), '0',
	'push re-synchronises it');
for my $n (qw(a b))
{
	$nodes{$n}->safe_psql('postgres',
		"ALTER SYSTEM RESET hashtree.tombstone_ttl; SELECT pg_reload_conf()");
}
# a row whose version is unknown (written while b had commit timestamps
# off) copied to a stays unknown there: it loses to c's known version
# written before the copy (with the copy's own commit time it had won)
for my $n (qw(a b c))
{
	$nodes{$n}->safe_psql('postgres', q{CREATE TABLE uv (id int PRIMARY KEY, v text);
		SELECT hashtree.track('uv'); SELECT hashtree.tombstones('uv')});
}
$nodes{c}->safe_psql('postgres', q{INSERT INTO uv VALUES (1, 'c, known')});
$nodes{b}->append_conf('postgresql.conf', "track_commit_timestamp = off\n");
$nodes{b}->restart;
$nodes{b}->safe_psql('postgres', q{INSERT INTO uv VALUES (1, 'b, unknown')});
$nodes{b}->append_conf('postgresql.conf', "track_commit_timestamp = on\n");
$nodes{b}->restart;
exchange('a', 'b', 'newest');
is($nodes{a}->safe_psql('postgres', q{SELECT v FROM uv WHERE id = 1}), 'b, unknown',
	'a row of unknown version copied from b');
is($nodes{a}->safe_psql('postgres', q{SELECT version FROM hashtree.row_version WHERE pb = 'uv'}),
	'-infinity', 'its version recorded as unknown');
exchange('a', 'c', 'newest');
is($nodes{a}->safe_psql('postgres', q{SELECT v FROM uv WHERE id = 1}) . ' / ' .
   $nodes{c}->safe_psql('postgres', q{SELECT v FROM uv WHERE id = 1}), 'c, known / c, known',
	'the known version wins over the copy of unknown version, on both nodes');

$nodes{c}->stop;
exchange('a', 'b', 'newest');	# (the delete of $gone again, to b)

# ---- 4. a peer killed in the middle of the writes -----------------------------
my ($na, $nb) = ($nodes{a}, $nodes{b});
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE kv2 (id int PRIMARY KEY, v text NOT NULL);
		SELECT hashtree.track('kv2');
		SELECT hashtree.tombstones('kv2');
		INSERT INTO kv2 SELECT g, 'init' || g FROM generate_series(1, 100) g;
	});
}
is(exchange('a', 'b', 'newest'), '0', 'kv and kv2 equal on a and b');
$nb->safe_psql('postgres', q{UPDATE kv SET v = v || ' old b' WHERE id <= 120;
	UPDATE kv2 SET v = 'old b' || id WHERE id <= 50});
$na->safe_psql('postgres', q{UPDATE kv SET v = v || ' new a' WHERE id <= 120;
	UPDATE kv2 SET v = 'new a' || id WHERE id <= 50});
my $a_rows = rows($na) . '|' . rows($na, 'kv2');
my %old_b = map { split /=/, $_, 2 } map { my $t = $_; map { "$t:$_" } split /,/, rows($nb, $t) } qw(kv kv2);
my %new = map { split /=/, $_, 2 } map { my $t = $_; map { "$t:$_" } split /,/, rows($na, $t) } qw(kv kv2);

my $blocker = $nb->background_psql('postgres');
$blocker->query_safe('BEGIN; SELECT * FROM kv2 WHERE id = 25 FOR UPDATE');
my $id = $na->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM hashtree.exchange_log');
my $s = $na->background_psql('postgres', on_error_stop => 0);
$s->query_until(qr/started/, q{SET hashtree.statement_timeout = 0;
\echo started
SELECT 'kinds=' || string_agg(DISTINCT kind, ',') FROM hashtree.exchange('b', NULL, 'newest');
});
ok($nb->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'hashtree'
	    AND wait_event_type = 'Lock' AND query LIKE '%_newest_apply%'}),
	'the repair is writing on b (waiting for a row)');
crash($nb);
eval { $blocker->quit };
ok($na->poll_query_until('postgres', "SELECT count(*) = 8 FROM hashtree.exchange_log WHERE id > $id"),
	'killed peer: the exchange ended');
$s->quit;
like($s->{stdout}, qr/kinds=error$/m, 'killed peer: reported as errors');
$nb->start;
is(rows($na) . '|' . rows($na, 'kv2'), $a_rows, 'a: nothing written (its writes come after the peer\'s)');
my ($old, $new, $mixed) = (0, 0, 0);
for my $t (qw(kv kv2))
{
	for my $r (split /,/, rows($nb, $t))
	{
		my ($k, $v) = split /=/, $r, 2;
		if ($v eq $new{"$t:$k"}) { $new++ }
		elsif ($v eq $old_b{"$t:$k"}) { $old++ }
		else { $mixed++ }
	}
}
is($mixed, 0, "b: every row is the old or the new one ($old old, $new new)");
ok($old > 0, 'b: the writes not committed were lost with the crash');
ok(exchange('a', 'b', 'newest') > 0, 'the next exchange repairs the rest');
is(rows($nb) . '|' . rows($nb, 'kv2'), $a_rows, 'b holds a\'s newer rows');
is(rows($na) . '|' . rows($na, 'kv2'), $a_rows, 'and a kept them');
is(exchange('a', 'b', 'none'), '0', 'then nothing differs');

# ---- 4b. pull and push of a table with tombstones copy them ------------------
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE pt (id int PRIMARY KEY, v text NOT NULL);
		SELECT hashtree.track('pt');
		SELECT hashtree.tombstones('pt');
		INSERT INTO pt SELECT g, 'init' || g FROM generate_series(1, 50) g;
	});
}
$na->safe_psql('postgres', 'DELETE FROM pt WHERE id IN (1, 3, 5)');
$nb->safe_psql('postgres', 'DELETE FROM pt WHERE id IN (1, 2, 6)');	# 1: later than a's
$na->safe_psql('postgres', q{INSERT INTO pt VALUES (100, 'only a'); UPDATE pt SET v = 'a' WHERE id = 7});
$nb->safe_psql('postgres', q{DELETE FROM pt WHERE id = 5; INSERT INTO pt VALUES (101, 'only b')});
my $tombs = q{SELECT string_agg(encode(key, 'hex') || '@' || deleted_at, ',' ORDER BY key)
	FROM hashtree.tombstone WHERE pb = 'pt'};
my $nd = $na->safe_psql('postgres', q{SELECT count(*) FROM hashtree.exchange('b', NULL, 'pull')});
ok($nd > 0, "pull of a table with tombstones: $nd differences");
is(rows($na, 'pt'), rows($nb, 'pt'), 'pull: a holds b\'s rows');
lock_update_all($_) for ($na, $nb);	# (the fold of what the repair wrote)
is($na->safe_psql('postgres', $tombs), $nb->safe_psql('postgres', $tombs), 'pull: and b\'s tombstones');
is(exchange('a', 'b', 'none'), '0', 'pull: then nothing differs');
$na->safe_psql('postgres', q{DELETE FROM pt WHERE id IN (10, 11); INSERT INTO pt VALUES (1, 'back on a')});
$nb->safe_psql('postgres', q{DELETE FROM pt WHERE id = 10; INSERT INTO pt VALUES (102, 'only b')});
ok(exchange('a', 'b', 'push') > 0, 'push of a table with tombstones');
is(rows($nb, 'pt'), rows($na, 'pt'), 'push: b holds a\'s rows');
lock_update_all($_) for ($na, $nb);
is($nb->safe_psql('postgres', $tombs), $na->safe_psql('postgres', $tombs), 'push: and a\'s tombstones');
is(exchange('a', 'b', 'none'), '0', 'push: then nothing differs');

# ---- 4c. versions from a column of the table ---------------------------------
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE vc (id int PRIMARY KEY, v text, updated_at timestamptz);
		SELECT hashtree.track('vc');
		SELECT hashtree.tombstones('vc');
		SELECT hashtree.version_column('vc', 'updated_at');
		INSERT INTO vc SELECT g, 'init', '2020-01-01' FROM generate_series(1, 10) g;
	});
}
# commit order and the column's order disagree: the column decides
$na->safe_psql('postgres', q{UPDATE vc SET v = 'a', updated_at = '2020-01-03' WHERE id = 1});
$nb->safe_psql('postgres', q{UPDATE vc SET v = 'b', updated_at = '2020-01-02' WHERE id = 1});
$nb->safe_psql('postgres', q{UPDATE vc SET v = 'b', updated_at = '2020-01-05' WHERE id = 2});
$na->safe_psql('postgres', q{UPDATE vc SET v = 'a', updated_at = '2020-01-04' WHERE id = 2});
# a delete is versioned by the deleted row's version: it loses to a later
# update of the other node (3), beats an earlier one (4), and a row of the
# same version (5)
$nb->safe_psql('postgres', q{UPDATE vc SET v = 'b', updated_at = '2020-01-06' WHERE id = 3});
$na->safe_psql('postgres', q{DELETE FROM vc WHERE id = 3});
$na->safe_psql('postgres', q{UPDATE vc SET v = 'a', updated_at = '2020-01-07' WHERE id = 4});
$nb->safe_psql('postgres', q{UPDATE vc SET v = 'b', updated_at = '2020-01-05' WHERE id = 4});
$na->safe_psql('postgres', q{DELETE FROM vc WHERE id = 4});
$na->safe_psql('postgres', q{DELETE FROM vc WHERE id = 5});
ok(exchange('a', 'b', 'newest') > 0, 'version column: the differences repaired');
is(rows($na, 'vc'), '1=a,2=b,3=b,6=init,7=init,8=init,9=init,10=init',
	'version column: the larger updated_at wins, whatever the commit order, deletes included');
is(rows($nb, 'vc'), rows($na, 'vc'), 'version column: on both nodes');
is(exchange('a', 'b', 'none'), '0', 'version column: then nothing differs');

# ---- 4d. a version column of another type (bigint), given to track() ------
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE "Vn" (id int PRIMARY KEY, v text, "ver Sion" bigint);
		SELECT hashtree.track('"Vn"', version_column => 'ver Sion');
		SELECT hashtree.tombstones('"Vn"');
		INSERT INTO "Vn" SELECT g, 'init', 1 FROM generate_series(1, 10) g;
	});
}
# the model: the larger version wins; at the same version a delete beats a
# row, and of two rows the larger row hash (the same on both nodes: checked
# by equality only); a key only one node wrote and the other deleted wins
# by its version
$nb->safe_psql('postgres', q{UPDATE "Vn" SET v = 'b', "ver Sion" = 5 WHERE id = 1});
$na->safe_psql('postgres', q{UPDATE "Vn" SET v = 'a', "ver Sion" = 3 WHERE id = 1});
$na->safe_psql('postgres', q{UPDATE "Vn" SET v = 'a', "ver Sion" = 9 WHERE id = 2});
$nb->safe_psql('postgres', q{UPDATE "Vn" SET v = 'b', "ver Sion" = 8 WHERE id = 2});
$na->safe_psql('postgres', q{UPDATE "Vn" SET "ver Sion" = 7 WHERE id = 3; DELETE FROM "Vn" WHERE id = 3});
$nb->safe_psql('postgres', q{UPDATE "Vn" SET v = 'b', "ver Sion" = 6 WHERE id = 3});
$nb->safe_psql('postgres', q{UPDATE "Vn" SET v = 'b', "ver Sion" = 4 WHERE id = 4});
$na->safe_psql('postgres', q{UPDATE "Vn" SET "ver Sion" = 4 WHERE id = 4; DELETE FROM "Vn" WHERE id = 4});
$nb->safe_psql('postgres', q{UPDATE "Vn" SET v = 'b', "ver Sion" = NULL WHERE id = 5});
$nb->safe_psql('postgres', q{INSERT INTO "Vn" VALUES (11, 'b', 2)});
ok(exchange('b', 'a', 'newest') > 0, 'bigint version: the differences repaired');
is(rows($na, '"Vn"'), '1=b,2=a,5=init,6=init,7=init,8=init,9=init,10=init,11=b',
	'bigint version: the larger version wins; a delete of the same version beats the row;'
	. ' an unknown version loses');
is(rows($nb, '"Vn"'), rows($na, '"Vn"'), 'bigint version: on both nodes');
is(exchange('a', 'b', 'none'), '0', 'bigint version: then nothing differs');
my $vtombs = q{SELECT string_agg(encode(key, 'hex') || ':' || coalesce(encode(version, 'hex'), '-'), ','
	ORDER BY key) FROM hashtree.tombstone WHERE pb = 'Vn'};
is($na->safe_psql('postgres', $vtombs), $nb->safe_psql('postgres', $vtombs),
	'bigint version: the same tombstones with the same versions');
like($na->safe_psql('postgres', $vtombs), qr/0000000400000003:0000000000000007/,
	'bigint version: a copied tombstone keeps the deleted row\'s version');

# both nodes must version the table alike
$nb->safe_psql('postgres', q{SELECT hashtree.version_column('"Vn"', NULL)});
$na->safe_psql('postgres', q{UPDATE "Vn" SET v = 'a2' WHERE id = 6});
lock_update_all($_) for ($na, $nb);
is($na->safe_psql('postgres', q{SELECT string_agg(DISTINCT repaired::text, ',')
	FROM hashtree.exchange('b', NULL, 'newest') WHERE prefix_b = 'Vn'}),
	'false', 'versioned differently on the two nodes: not repaired');
like($na->safe_psql('postgres', q{SELECT message FROM hashtree.exchange_log WHERE message IS NOT NULL ORDER BY id DESC LIMIT 1}),
	qr/versioned by a version column of type bigint on this node but by commit times on peer/,
	'... with a message that says why');
$nb->safe_psql('postgres', q{SELECT hashtree.version_column('"Vn"', 'ver Sion')});
# (b's tombstones lost their versions with the change: a's, known, win)
is(exchange('a', 'b', 'newest'), '3', 'versioned alike again: the row and the two tombstones repaired');
is($na->safe_psql('postgres', $vtombs), $nb->safe_psql('postgres', $vtombs),
	'... the tombstones with their versions again');
is(rows($nb, '"Vn"'), rows($na, '"Vn"'), '... the same rows on both nodes');

# ---- 4e. a TRUNCATE deletes what was written before it ---------------------
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', q{
		CREATE TABLE tr (id int PRIMARY KEY, v text);
		SELECT hashtree.track('tr');
		SELECT hashtree.tombstones('tr');
		INSERT INTO tr SELECT g, 'init' FROM generate_series(1, 20) g;
	});
}
# b writes before a's TRUNCATE (lost), and after it (kept); a writes again;
# a key a never saw (21) is not deleted by it, as by a DELETE of every row
$nb->safe_psql('postgres', q{UPDATE tr SET v = 'b-before' WHERE id = 1; INSERT INTO tr VALUES (21, 'b-before')});
$na->safe_psql('postgres', q{TRUNCATE tr});
$na->safe_psql('postgres', q{INSERT INTO tr VALUES (2, 'a-after')});
$nb->safe_psql('postgres', q{UPDATE tr SET v = 'b-after' WHERE id = 3; INSERT INTO tr VALUES (22, 'b-after')});
ok(exchange('a', 'b', 'newest') > 0, 'truncate: the differences repaired');
is(rows($na, 'tr'), '2=a-after,3=b-after,21=b-before,22=b-after',
	'truncate: what was written before it is gone on both nodes, what came after stays');
is(rows($nb, 'tr'), rows($na, 'tr'), 'truncate: on both nodes');
is(exchange('a', 'b', 'none'), '0', 'truncate: then nothing differs');

# a table whose rows only one node has: repair none names that node the
# winner without reading the rows
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', q{CREATE TABLE solo (id int PRIMARY KEY, v text);
		SELECT hashtree.track('solo'); SELECT hashtree.tombstones('solo')});
}
$nb->safe_psql('postgres', q{INSERT INTO solo SELECT g, 'b' || g FROM generate_series(1, 500) g});
is($na->safe_psql('postgres', q{SELECT count(*) || ' ' || string_agg(DISTINCT kind || ':' || prefix_b || ':' ||
	coalesce(winner, '-'), ',') FROM hashtree.exchange('b', NULL, 'none') WHERE prefix_b = 'solo'}),
	'8 missing_prefix:solo:remote', 'a table only the peer has rows of: the peer wins, in every partition');
is(exchange('a', 'b', 'newest'), '8', 'repair newest copies it');
is($na->safe_psql('postgres', 'SELECT count(*) FROM solo'), '500', 'all its rows');

# ---- 5. the workers with hashtree.repair = 'newest' --------------------------
$na->append_conf('postgresql.conf', q{
hashtree.database = 'postgres'
hashtree.exchange_interval = '1s'
hashtree.tick_interval = '1s'
hashtree.repair = 'newest'
});
$na->restart;
$nb->safe_psql('postgres', q{UPDATE kv SET v = 'worker b' WHERE id = 50; DELETE FROM kv2 WHERE id = 60});
$na->safe_psql('postgres', q{UPDATE kv2 SET v = 'worker a' WHERE id = 70});
ok($na->poll_query_until('postgres', q{SELECT v = 'worker b' FROM kv WHERE id = 50})
	  && $na->poll_query_until('postgres', q{SELECT count(*) = 0 FROM kv2 WHERE id = 60})
	  && $nb->poll_query_until('postgres', q{SELECT v = 'worker a' FROM kv2 WHERE id = 70}),
	'a worker exchange with repair newest wrote the winners on both sides');
ok($na->poll_query_until('postgres', q{SELECT count(*) > 0 FROM hashtree.exchange_log
	WHERE worker AND repair = 'newest' AND rows_local > 0}), 'logged as newest, with the rows written here');
ok($na->poll_query_until('postgres', q{SELECT count(*) > 0 FROM hashtree.exchange_log
	WHERE worker AND repair = 'newest' AND rows_remote > 0}), 'and those written on the peer');
like(slurp_file($na->logfile), qr/exchange with peer "b" \(repair newest\): .* repaired \(rows written: \d+ here, \d+ on the peer\)/,
	'the LOG line of a worker exchange says the rows written on each side');

$_->stop for ($na, $nb);
done_testing();
