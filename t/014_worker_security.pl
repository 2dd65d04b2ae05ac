# Workers and peer sessions against a hostile database owner, and a
# launcher that cannot be stopped by accident.
#
# Two real clusters; the workers run in database "victim", owned by a
# non-superuser "owner" who (as PostgreSQL 15 allows a database owner) sets
# ALTER DATABASE victim SET search_path = public, pg_catalog and creates in
# public functions, aggregates and operators with the names and argument
# types the extension's SQL uses (unnest, count(*), array_agg, max, now,
# =, >, <=).  Each one tries ALTER ROLE owner SUPERUSER when it runs as a
# superuser.  A control shows the trap works on a plain superuser session;
# then ticks, a rebuild, the workers' exchanges (pull repairs) and an
# exchange() from the other node run, and "owner" must still not be a
# superuser on either node.  Also: a launcher ended with
# pg_terminate_backend() comes back and works.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $conf = <<'EOF';
hashtree.database = 'victim'
hashtree.tick_interval = 1
hashtree.exchange_interval = 1
hashtree.connect_timeout = '5s'
hashtree.statement_timeout = '30s'
EOF
# b pulls from a; a only compares (two pulling nodes would race)
my @nodes = map
{
	ht_node($_, conf => $conf . "hashtree.repair = '" . ($_ eq 'b' ? 'pull' : 'none') . "'\n",
		no_extension => 1)
} qw(a b);
my ($a, $b) = @nodes;

# the test's own sessions: a search_path of their own (client options win
# over the database's setting); PGOPTIONS is set only around them, never
# for a server process
my $safe = '-c search_path=pg_catalog';

sub adm
{
	my ($node, $sql) = @_;
	local $ENV{PGOPTIONS} = $safe;
	return $node->safe_psql('victim', $sql);
}

sub adm_poll
{
	my ($node, $sql, $expected) = @_;
	local $ENV{PGOPTIONS} = $safe;
	return $node->poll_query_until('victim', $sql, $expected // 't');
}

sub owner_is_superuser
{
	my ($node) = @_;
	return adm($node, q{SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = 'owner'});
}

# the hostile objects, created by the database owner
my $hostile = <<'EOF';
ALTER DATABASE victim SET search_path = public, pg_catalog;
CREATE FUNCTION public.trap(what text) RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
	RAISE LOG 'hashtree test trap: % run by %', what, current_user;
	IF pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on' THEN
		EXECUTE 'ALTER ROLE owner SUPERUSER';
	END IF;
END $f$;
CREATE FUNCTION public.unnest(int4[]) RETURNS SETOF int4 LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('unnest(int4[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
CREATE FUNCTION public.unnest(int8[]) RETURNS SETOF int8 LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('unnest(int8[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('unnest(text[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
CREATE FUNCTION public.unnest(bytea[]) RETURNS SETOF bytea LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('unnest(bytea[])'); RETURN QUERY SELECT pg_catalog.unnest($1); END $f$;
CREATE FUNCTION public.count_sf(int8) RETURNS int8 LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('count(*)'); RETURN $1 OPERATOR(pg_catalog.+) 1; END $f$;
CREATE AGGREGATE public.count(*) (SFUNC = public.count_sf, STYPE = int8, INITCOND = '0');
CREATE FUNCTION public.agg_sf(int4[], int4) RETURNS int4[] LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('array_agg(int4)'); RETURN pg_catalog.array_append($1, $2); END $f$;
CREATE AGGREGATE public.array_agg(int4) (SFUNC = public.agg_sf, STYPE = int4[]);
CREATE FUNCTION public.max_sf(int8, int8) RETURNS int8 LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('max(int8)'); RETURN pg_catalog.int8larger($1, $2); END $f$;
CREATE AGGREGATE public.max(int8) (SFUNC = public.max_sf, STYPE = int8);
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('now()'); RETURN pg_catalog.now(); END $f$;
CREATE FUNCTION public.text_eq(text, text) RETURNS bool LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('=(text, text)'); RETURN pg_catalog.texteq($1, $2); END $f$;
CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);
CREATE FUNCTION public.int4_eq(int4, int4) RETURNS bool LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('=(int4, int4)'); RETURN pg_catalog.int4eq($1, $2); END $f$;
CREATE OPERATOR public.= (LEFTARG = int4, RIGHTARG = int4, FUNCTION = public.int4_eq);
CREATE FUNCTION public.int8_gt(int8, int8) RETURNS bool LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('>(int8, int8)'); RETURN pg_catalog.int8gt($1, $2); END $f$;
CREATE OPERATOR public.> (LEFTARG = int8, RIGHTARG = int8, FUNCTION = public.int8_gt);
CREATE FUNCTION public.tstz_le(timestamptz, timestamptz) RETURNS bool LANGUAGE plpgsql AS $f$
BEGIN PERFORM public.trap('<=(timestamptz, timestamptz)'); RETURN pg_catalog.timestamptz_le($1, $2); END $f$;
CREATE OPERATOR public.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = public.tstz_le);
EOF

foreach my $n (@nodes)
{
	$n->safe_psql('postgres', q{
		CREATE ROLE owner LOGIN;
		CREATE DATABASE victim OWNER owner;
	});
	adm($n, q{
		CREATE EXTENSION hashtree;
		CREATE TABLE public.acct (id int4 PRIMARY KEY, note text);
		SELECT hashtree.track('public.acct');
		INSERT INTO public.acct SELECT i, 'n' || i FROM pg_catalog.generate_series(1, 200) i;
	});
	local $ENV{PGOPTIONS} = $safe;
	$n->safe_psql('victim', $hostile, extra_params => [ '-U', 'owner' ]);
}
foreach my $pair ([ $a, $b ], [ $b, $a ])
{
	my ($n, $peer) = @$pair;
	my $conn = $peer->connstr('victim') . ' user=postgres';
	adm($n, qq{SELECT hashtree.add_peer('@{[$peer->name]}', \$\$$conn\$\$)});
}

# 1. the trap works: a superuser session with the database's path
is(owner_is_superuser($a), 'f', 'owner starts as a non-superuser');
$a->safe_psql('victim', 'SELECT count(*) FROM pg_class');
is(owner_is_superuser($a), 't', 'control: the trap makes owner superuser in a plain superuser session');
adm($a, 'ALTER ROLE owner NOSUPERUSER');
is(owner_is_superuser($a), 'f', 'control undone');
my $log_offset = -s $a->logfile;

# 2. a launcher ended with pg_terminate_backend() comes back (and the new
# one connects with the hostile database setting in place)
foreach my $n (@nodes)
{
	ok(adm_poll($n, q{SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 1 FROM pg_catalog.pg_stat_activity
		WHERE backend_type OPERATOR(pg_catalog.=) 'hashtree launcher'}), $n->name . ': the launcher runs');
	my $pid = adm($n, q{SELECT pid FROM pg_catalog.pg_stat_activity
		WHERE backend_type OPERATOR(pg_catalog.=) 'hashtree launcher'});
	is(adm($n, "SELECT pg_catalog.pg_terminate_backend($pid)"), 't', $n->name . ': launcher terminated');
	ok(adm_poll($n, qq{SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 1 FROM pg_catalog.pg_stat_activity
		WHERE backend_type OPERATOR(pg_catalog.=) 'hashtree launcher' AND pid OPERATOR(pg_catalog.<>) $pid}),
		$n->name . ': a new launcher runs');
}

# 3. ticks: keys logged on a are folded by the new launcher
my $updates = adm($a, 'SELECT pg_catalog.sum(updates) FROM hashtree.partition');
adm($a, q{INSERT INTO public.acct SELECT i, 'a' || i FROM pg_catalog.generate_series(201, 300) i;
	UPDATE public.acct SET note = 'changed' WHERE id OPERATOR(pg_catalog.<) 20;
	DELETE FROM public.acct WHERE id OPERATOR(pg_catalog.>) 190 AND id OPERATOR(pg_catalog.<=) 200});
ok(adm_poll($a, qq{SELECT pg_catalog.sum(updates) OPERATOR(pg_catalog.>) $updates
	AND NOT EXISTS (SELECT FROM hashtree.dirty_key) FROM hashtree.partition}),
	'a: the workers folded the logged keys');
is(check_trees_safe($a), '0', 'a: trees right after the ticks');

# 4. the workers' exchanges pull a's rows into b
ok(adm_poll($b, q{SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 290
	AND pg_catalog.count(*) FILTER (WHERE note OPERATOR(pg_catalog.=) 'changed') OPERATOR(pg_catalog.=) 19
	FROM public.acct}), 'b: the workers repaired b from a');
ok(adm_poll($b, q{SELECT EXISTS (SELECT FROM hashtree.exchange_log WHERE worker AND repaired OPERATOR(pg_catalog.>) 0)}),
	'b: a worker exchange logged its repairs');

# the workers stop exchanging (every second on both nodes, their locks
# would keep the rebuild job of step 5 waiting for minutes, and step 6
# wants exchange() alone)
foreach my $n (@nodes)
{
	adm($n, 'ALTER SYSTEM SET hashtree.exchange_interval = 0');
	$n->reload;
}
sleep 2;

# 5. a rebuild by a job
my $builds = adm($a, 'SELECT builds FROM hashtree.partition WHERE part OPERATOR(pg_catalog.=) 1');
adm($a, q{UPDATE hashtree.partition SET built_at = pg_catalog.now() OPERATOR(pg_catalog.-) interval '30 days'
	WHERE part OPERATOR(pg_catalog.=) 1});
ok(adm_poll($a, qq{SELECT builds OPERATOR(pg_catalog.>) $builds FROM hashtree.partition
	WHERE part OPERATOR(pg_catalog.=) 1}), 'a: the workers rebuilt an expired partition');

# 6. exchange() from b's session (hostile path) into a (hostile path):
# workers stopped exchanging (above), so this call does the repair
adm($b, q{INSERT INTO public.acct SELECT i, 'b' || i FROM pg_catalog.generate_series(1001, 1010) i});
# (a partition a's tick holds at that moment is skipped: call again)
my $pushed = 0;
foreach my $try (1 .. 10)
{
	$pushed += $b->safe_psql('victim',
		q{SELECT pg_catalog.count(*) FILTER (WHERE r.repaired) FROM hashtree.exchange('a', NULL, 'push') r});
	last if adm($a, q{SELECT pg_catalog.count(*) FROM public.acct WHERE id OPERATOR(pg_catalog.>) 1000}) eq '10';
	sleep 1;
}
is($pushed, 10, 'exchange() from b pushed 10 rows into a');
is(adm($a, q{SELECT pg_catalog.count(*) FROM public.acct WHERE id OPERATOR(pg_catalog.>) 1000}), '10',
	'a has the pushed rows');

# 7. a long tick does not hold exchanges back: 300k keys logged on a (and
# the same rows on b, so the exchanges find little to report), then ticks
# enabled, and exchanges once the tick runs; an exchange starts while the
# tick runs.  (Enabled together, an exchange that starts first locks every
# partition and folds them itself: the tick then has nothing to do.)
adm($a, 'ALTER SYSTEM SET hashtree.tick_interval = 3600');
$a->reload;
sleep 2;
foreach my $n (@nodes)
{
	adm($n, q{INSERT INTO public.acct SELECT i, 'big' FROM pg_catalog.generate_series(100001, 400000) i});
}
adm($a, 'ALTER SYSTEM SET hashtree.tick_interval = 1');
$a->reload;
ok(adm_poll($a, q{SELECT pg_catalog.count(*) OPERATOR(pg_catalog.=) 1 FROM pg_catalog.pg_stat_activity
	WHERE backend_type OPERATOR(pg_catalog.=) 'hashtree launcher'
	 AND query OPERATOR(pg_catalog.~) '^tick of partition [0-9]'}), 'a: a long tick started');
my $t0 = adm($a, 'SELECT pg_catalog.now()');
adm($a, 'ALTER SYSTEM SET hashtree.exchange_interval = 1');
$a->reload;
ok(adm_poll($a, q{SELECT NOT EXISTS (SELECT FROM pg_catalog.pg_stat_activity
	WHERE backend_type OPERATOR(pg_catalog.=) 'hashtree launcher'
	 AND query OPERATOR(pg_catalog.~) '^tick of partition [0-9]')}), 'a: the tick ended');
my $t1 = adm($a, 'SELECT pg_catalog.now()');
# (an exchange's rows are written when it ends, maybe after the tick)
ok(adm_poll($a, qq{SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0 FROM hashtree.exchange_log
	WHERE worker AND started OPERATOR(pg_catalog.>) '$t0'::timestamptz
	 AND started OPERATOR(pg_catalog.<) '$t1'::timestamptz}), 'a: exchanges ran while the tick went on');
note("tick from $t0 to $t1");

foreach my $n (@nodes)
{
	is(owner_is_superuser($n), 'f',
		$n->name . ': owner is not superuser after ticks, rebuilds and exchanges');
	is(check_trees_safe($n), '0', $n->name . ': trees right at the end');
}
# the trap ran only where it was meant to (the control on a)
my $log_a = substr(slurp_file($a->logfile), $log_offset);
my $log_b = slurp_file($b->logfile);
my @traps_a = $log_a =~ /hashtree test trap: (.*) run by postgres/g;
my @traps_b = $log_b =~ /hashtree test trap: (.*) run by postgres/g;
is(scalar(@traps_a), 0, 'no shadowing object ran as superuser on a after the control')
  or diag(join("\n", @traps_a));
is(scalar(@traps_b), 0, 'no shadowing object ran as superuser on b')
  or diag(join("\n", @traps_b));
unlike($log_a, qr/launcher.*exited with exit code [^01]/, 'the launcher never crashed');

sub check_trees_safe
{
	my ($node) = @_;
	return adm($node,
		q{SELECT pg_catalog.count(*) FROM hashtree.status s, hashtree.check_tree(s.partition) c});
}

done_testing();
