# Two-way repair of plain entries (issue 14 item 3, DESIGN §20), on two real
# clusters with track_commit_timestamp = on:
# 1. a prefix that keeps tombstones (tombstones(prefix_a, prefix_b)) written
#    on both nodes one write after the other (a known order): inserts and
#    deletes, with the caller's version (clock_timestamp()) or without it
#    (the commit time; a delete's time of the call); repair 'none' names
#    the winners; after one exchange with 'newest' both nodes hold exactly
#    the entries and tombstones the test computes from the history (the
#    last write of each key wins, deletes included), a second exchange
#    finds nothing, a rebuild gives the same trees;
# 2. the caller's versions decide against the order of the writes, with
#    the ties of rows (a tombstone beats an entry, then the larger hash);
# 3. a prefix without tombstones: the newest version of each entry wins,
#    an entry one node lacks is copied (a delete there is not known);
# 4. pull and push of a prefix that keeps tombstones copy its tombstones;
# 5. tombstones expire after hashtree.tombstone_ttl on both nodes, with
#    their entries: the trees stay equal.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use Digest::MD5 qw(md5_hex);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my %nodes;
for my $n (qw(a b))
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
my ($na, $nb) = ($nodes{a}, $nodes{b});

# the same first entries on both nodes, with the same (old) version
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', q{
		SELECT hashtree.tombstones('app', 'objs');
		SELECT hashtree.insert('app', 'objs', 'k' || g, decode(md5('init' || g), 'hex'), false,
							   '2020-01-01 00:00:00+00') FROM generate_series(1, 150) g;
		SELECT hashtree.insert('app', 'plain', 'p' || g, decode(md5('init' || g), 'hex'), false,
							   '2020-01-01 00:00:00+00') FROM generate_series(1, 20) g;
	});
	lock_update_all($n);
}

sub exchange
{
	my ($from, $to, $mode) = @_;
	return $nodes{$from}->safe_psql('postgres',
		"SELECT count(*) FROM hashtree.exchange('$to', NULL, '$mode')");
}

# the live entries of a prefix (key=hash), and its tombstones (key@µs)
sub entries
{
	my ($node, $pb) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT coalesce(string_agg(convert_from(e.key, 'UTF8') || '=' || encode(e.hash, 'hex'),
								   ',' ORDER BY e.key), '')
		  FROM hashtree.entry e
		 WHERE e.depth = 2 AND e.pa = 'app' AND e.pb = '$pb'
		   AND NOT EXISTS (SELECT 1 FROM hashtree.tombstone t WHERE t.part = e.part
							AND t.pa = e.pa AND t.pb = e.pb AND t.key = e.key)});
}

sub tombs
{
	my ($node, $pb) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT coalesce(string_agg(convert_from(key, 'UTF8') || '\@'
								   || (extract(epoch FROM deleted_at) * 1000000)::int8,
								   ',' ORDER BY key), '')
		  FROM hashtree.tombstone WHERE pa = 'app' AND pb = '$pb'});
}

# tombstones whose entry is not (key, T(deleted_at)), T recomputed in core SQL
sub bad_tombs
{
	my ($node) = @_;
	return $node->safe_psql('postgres', q{
		SELECT count(*) FROM hashtree.tombstone t
		  LEFT JOIN hashtree.entry e ON e.part = t.part AND e.depth = 2 AND e.pa = t.pa
			AND e.pb = t.pb AND e.key = t.key
		 WHERE e.hash IS DISTINCT FROM substring(sha256('\x04'::bytea ||
			int8send((extract(epoch FROM t.deleted_at - '2000-01-01 00:00:00+00') * 1000000)::int8))
			FOR 16)});
}

# ---- 1. a history of writes on both nodes -------------------------------------
my %last;	# key => [node, hash or undef (deleted)]
my $step = 0;

sub write_op
{
	my ($n, $kind, $k, $with_version) = @_;
	my $v = "$n$step";
	my $ver = $with_version ? ', clock_timestamp()' : '';
	if ($kind eq 'insert')
	{
		$nodes{$n}->safe_psql('postgres',
			"SELECT hashtree.insert('app', 'objs', 'k$k', decode(md5('$v'), 'hex')"
			  . ($with_version ? ", false$ver" : '') . ')');
		$last{"k$k"} = [ $n, md5_hex($v) ];
	}
	else
	{
		$nodes{$n}->safe_psql('postgres',
			"SELECT hashtree.delete('app', 'objs', 'k$k'::text$ver)");
		$last{"k$k"} = [ $n, undef ];
	}
	$step++;
}

srand(20261203);
# a fixed pattern first: deleted on a then written on b (the write wins),
# written on b then deleted on a (the delete wins), deleted on both, a key
# new on b, a key new on b and deleted there, a key only deleted (never
# written) on a
write_op('a', 'delete', 1, 1);
write_op('b', 'insert', 1, 0);
write_op('b', 'insert', 2, 1);
write_op('a', 'delete', 2, 0);
write_op('a', 'delete', 3, 0);
write_op('b', 'delete', 3, 1);
write_op('b', 'insert', 151, 0);
write_op('b', 'insert', 152, 1);
write_op('b', 'delete', 152, 0);
write_op('a', 'delete', 153, 1);
for (1 .. 150)
{
	write_op(rand() < 0.5 ? 'a' : 'b', rand() < 0.6 ? 'insert' : 'delete',
		1 + int(rand(180)), rand() < 0.5);
}

sub expected_entries
{
	my %e = map { ("k$_" => md5_hex("init$_")) } 1 .. 150;
	for my $k (keys %last)
	{
		if (defined $last{$k}[1]) { $e{$k} = $last{$k}[1]; }
		else { delete $e{$k}; }
	}
	return join(',', map { "$_=$e{$_}" } sort keys %e);
}
my $n_deleted = grep { !defined $last{$_}[1] } keys %last;

my $expected = expected_entries();
isnt(entries($na, 'objs'), $expected, 'a differs from the expected entries before the exchange');
isnt(entries($nb, 'objs'), $expected, 'and so does b');

# repair none names the side whose write was the last
{
	my ($checked, $wrong) = (0, 0);
	for my $line (split /\n/, $na->safe_psql('postgres', q{
		SELECT convert_from(key, 'UTF8') || '|' || coalesce(winner, '-')
		  FROM hashtree.exchange('b', NULL, 'none') WHERE prefix_b = 'objs' AND key IS NOT NULL}))
	{
		my ($k, $w) = split /\|/, $line;
		$checked++;
		$wrong++ unless exists $last{$k} && $w eq ($last{$k}[0] eq 'a' ? 'local' : 'remote');
	}
	ok($checked > 50, "repair none: winners of plain entries checked ($checked)");
	is($wrong, 0, 'repair none: every winner is the side of the last write');
}

my $log0 = $na->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM hashtree.exchange_log');
my $ndiff = exchange('a', 'b', 'newest');
ok($ndiff > 50, "the exchange found $ndiff differences");
is(entries($na, 'objs'), $expected, 'a holds the last write of every entry');
is(entries($nb, 'objs'), $expected, 'b holds the last write of every entry');
my ($rl, $rr, $rep, $msg) = split /\|/, $na->safe_psql('postgres',
	"SELECT sum(rows_local), sum(rows_remote), sum(repaired), string_agg(message, '; ')"
	  . " FROM hashtree.exchange_log WHERE id > $log0");
ok($rl > 0 && $rr > 0, "entries written on both sides ($rl here, $rr on the peer)");
is($rep, $ndiff, 'every difference repaired') or diag($msg);
my $tombs = tombs($na, 'objs');
is(tombs($nb, 'objs'), $tombs, 'the same tombstones, with the same times, on both nodes');
is(scalar(split /,/, $tombs), $n_deleted, "a tombstone for each key deleted last ($n_deleted)");
is(bad_tombs($_), '0', $_->name . ": every tombstone's entry is T(its time)") for ($na, $nb);
is(exchange('a', 'b', 'none'), '0', 'a second exchange finds nothing');
is(exchange('b', 'a', 'newest'), '0', 'nor one run from the other node');
is(check_trees($_), '0', $_->name . ': trees check') for ($na, $nb);
my $tops = tops($na);
is(tops($nb), $tops, 'the same trees on both nodes');
reset_all($na);
is(tops($na), $tops, 'a rebuild gives the same trees');

# ---- 2. the caller's versions, against the order of the writes -----------------
my %w = (x => md5_hex('x'), y => md5_hex('y'));
my $big = $w{x} gt $w{y} ? 'x' : 'y';
$na->safe_psql('postgres', q{
	SELECT hashtree.insert('app', 'objs', 'v1', decode(md5('x'), 'hex'), false, '2031-01-02 00:00:00+00');
	SELECT hashtree.delete('app', 'objs', 'v2', timestamptz '2031-02-01 00:00:00+00');
	SELECT hashtree.insert('app', 'objs', 'v3', decode(md5('x'), 'hex'), false, '2031-01-01 00:00:00+00');
	SELECT hashtree.insert('app', 'objs', 'v4', decode(md5('x'), 'hex'), false, '2031-03-01 00:00:00+00');
});
$nb->safe_psql('postgres', q{
	SELECT hashtree.insert('app', 'objs', 'v1', decode(md5('y'), 'hex'), false, '2031-01-01 00:00:00+00');
	SELECT hashtree.insert('app', 'objs', 'v2', decode(md5('y'), 'hex'), false, '2031-01-15 00:00:00+00');
	SELECT hashtree.delete('app', 'objs', 'v3', timestamptz '2031-01-01 00:00:00+00');
	SELECT hashtree.insert('app', 'objs', 'v4', decode(md5('y'), 'hex'), false, '2031-03-01 00:00:00+00');
});
is(exchange('b', 'a', 'newest'), '4', 'four differences, written in the other order');
my $v_sql = q{SELECT string_agg(convert_from(e.key, 'UTF8') || '=' ||
		CASE WHEN t.key IS NULL THEN encode(e.hash, 'hex') ELSE 'deleted@' || t.deleted_at END,
		',' ORDER BY e.key)
	  FROM hashtree.entry e LEFT JOIN hashtree.tombstone t ON t.part = e.part AND t.pa = e.pa
		AND t.pb = e.pb AND t.key = e.key
	 WHERE e.depth = 2 AND e.pa = 'app' AND e.pb = 'objs' AND e.key LIKE 'v%'};
my $want = $na->safe_psql('postgres', q{SET timezone = 'UTC'; SELECT
	'v1=' || encode(decode(md5('x'), 'hex'), 'hex') || ',v2=deleted@' || timestamptz '2031-02-01 00:00:00+00'
	|| ',v3=deleted@' || timestamptz '2031-01-01 00:00:00+00' || ',v4='});
$want .= $w{$big};
is($na->safe_psql('postgres', "SET timezone = 'UTC'; $v_sql"), $want,
	'a: the newest version wins, a tombstone beats an entry of its time, then the larger hash');
is($nb->safe_psql('postgres', "SET timezone = 'UTC'; $v_sql"), $want, 'b: the same');
is(exchange('a', 'b', 'none'), '0', 'then nothing differs');

# ---- 3. a prefix without tombstones --------------------------------------------
$na->safe_psql('postgres', q{
	SELECT hashtree.insert('app', 'plain', 'p' || g, decode(md5('a' || g), 'hex'), false,
						   '2030-01-01 00:00:00+00'::timestamptz + g * interval '1 day')
	  FROM generate_series(1, 10) g;
	SELECT hashtree.delete('app', 'plain', 'p11'::text);
});
$nb->safe_psql('postgres', q{
	SELECT hashtree.insert('app', 'plain', 'p' || g, decode(md5('b' || g), 'hex'), false,
						   '2030-01-06 12:00:00+00')
	  FROM generate_series(1, 10) g;
	SELECT hashtree.insert('app', 'plain', 'p21', decode(md5('b21'), 'hex'));
});
is(exchange('a', 'b', 'newest'), '12', 'the prefix without tombstones: 12 differences');
{
	my %e = map { ("p$_" => md5_hex("init$_")) } 1 .. 20;
	$e{"p$_"} = md5_hex("b$_") for 1 .. 5;		# b's version is newer
	$e{"p$_"} = md5_hex("a$_") for 6 .. 10;	# a's is
	$e{p21} = md5_hex('b21');					# only b has it: copied
	my $want = join(',', map { "$_=$e{$_}" } sort keys %e);
	is(entries($na, 'plain'), $want, 'a: the newest entries; p11, deleted here, comes back');
	is(entries($nb, 'plain'), $want, 'b: the same');
}
is(tombs($na, 'plain') . tombs($nb, 'plain'), '', 'and no tombstones');
is(exchange('a', 'b', 'none'), '0', 'then nothing differs');

# ---- 4. pull and push copy the tombstones ---------------------------------------
$nb->safe_psql('postgres', q{
	SELECT hashtree.delete('app', 'objs', 'k' || g, clock_timestamp()) FROM generate_series(5, 25) g;
	SELECT hashtree.insert('app', 'objs', 'k' || g, decode(md5('pull' || g), 'hex'))
	  FROM generate_series(26, 40) g;
});
# a's own writes that the pull undoes: a tombstone b lacks, an entry b lacks
$na->safe_psql('postgres', q{
	SELECT hashtree.delete('app', 'objs', 'k41'::text);
	SELECT hashtree.insert('app', 'objs', 'k190', '\x01');
});
ok(exchange('a', 'b', 'pull') > 20, 'pull of a prefix with tombstones');
is(entries($na, 'objs'), entries($nb, 'objs'), 'pull: a holds b\'s entries');
is(tombs($na, 'objs'), tombs($nb, 'objs'), 'pull: and b\'s tombstones, with their times');
is(exchange('a', 'b', 'none'), '0', 'pull: then nothing differs');
$na->safe_psql('postgres', q{
	SELECT hashtree.delete('app', 'objs', 'k' || g, clock_timestamp()) FROM generate_series(26, 30) g;
	SELECT hashtree.insert('app', 'objs', 'k' || g, decode(md5('push' || g), 'hex'))
	  FROM generate_series(5, 10) g;
});
ok(exchange('a', 'b', 'push') > 10, 'push of a prefix with tombstones');
is(entries($nb, 'objs'), entries($na, 'objs'), 'push: b holds a\'s entries');
is(tombs($nb, 'objs'), tombs($na, 'objs'), 'push: and a\'s tombstones');
is(exchange('a', 'b', 'none'), '0', 'push: then nothing differs');
is(bad_tombs($_), '0', $_->name . ": every tombstone's entry is T(its time)") for ($na, $nb);

# ---- 5. expiry ------------------------------------------------------------------
for my $n ($na, $nb)
{
	$n->safe_psql('postgres', "ALTER SYSTEM SET hashtree.tombstone_ttl = '3s'; SELECT pg_reload_conf()");
}
$na->safe_psql('postgres', q{SELECT hashtree.delete('app', 'objs', 'k100'::text)});
exchange('a', 'b', 'newest');
my $k100 = q{SELECT count(*) FROM hashtree.tombstone WHERE key = 'k100'};
is($na->safe_psql('postgres', $k100) . $nb->safe_psql('postgres', $k100), '11',
	'a delete\'s tombstone on both nodes');
sleep 4;
lock_update_all($_) for ($na, $nb);
my $old = q{SELECT count(*) FROM hashtree.tombstone WHERE deleted_at < now()};
is($na->safe_psql('postgres', $old) . $nb->safe_psql('postgres', $old), '00',
	'every tombstone of a past time expired on both nodes');
my $future = q{SELECT string_agg(convert_from(key, 'UTF8'), ',' ORDER BY key) FROM hashtree.tombstone};
is($na->safe_psql('postgres', $future) . '|' . $nb->safe_psql('postgres', $future), 'v2,v3|v2,v3',
	'those of a future time stay');
is(bad_tombs($_), '0', $_->name . ": the tombstones left have their entries") for ($na, $nb);
is(exchange('a', 'b', 'none'), '0', 'the trees are equal after the expiry');
is(check_trees($_), '0', $_->name . ': trees check after the expiry') for ($na, $nb);
is($na->safe_psql('postgres', q{SELECT count(*) FROM hashtree.entry WHERE key = 'k100'}), '0',
	'the expired delete left no entry');

done_testing();
