# Repairs against a hostile table owner, and lossless repairs, on two real
# clusters.
#
# mallory (not a superuser) owns a tracked table whose BEFORE trigger,
# STORED generated column, index expression, CHECK constraint and domain
# check all call m.probe(), which records current_user and runs
# ALTER ROLE mallory SUPERUSER when it runs as a superuser.  Pulls and
# pushes called by a superuser and a pull by a background worker must run
# that code as mallory (recorded), and leave mallory without SUPERUSER.
# A role lacking INSERT on the target, or a peer connection's role lacking
# SELECT on the source, gets that table refused; a table with a deferred
# constraint trigger and one whose trigger changes the rows get an error,
# never repaired = t.
#
# Lossless: jsonb JSON null, json with duplicate keys and odd spacing,
# arrays with bounds, float8 -0 and 17 digits, a mixed-sign interval,
# timestamptz, numeric scale and unicode text, pulled and pushed with
# hostile output settings in both sessions, arrive byte-identical (row
# hashes and per-column send forms) and the next exchange finds nothing.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

my $conf = <<'EOF';
hashtree.database = 'postgres'
# no ticks (they would hold partitions the exchanges below want) until the
# workers' part
hashtree.tick_interval = 3600
hashtree.exchange_interval = 0
hashtree.repair = 'pull'
hashtree.connect_timeout = '5s'
hashtree.statement_timeout = '30s'
EOF
my $a = ht_node('a', conf => $conf);
my $b = ht_node('b');

# the peer sessions send with hostile output settings too
my $hostile_opts = q{-c extra_float_digits=0 -c intervalstyle=sql_standard}
  . q{ -c datestyle=SQL,DMY -c timezone=Asia/Kolkata};
my $b_conn = $b->connstr('postgres') . " options='$hostile_opts'";
my $a_conn = $a->connstr('postgres') . " options='$hostile_opts'";
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b', \$\$$b_conn\$\$)");
$b->safe_psql('postgres', "SELECT hashtree.add_peer('a', \$\$$a_conn\$\$)");

my $schema = q{
	CREATE ROLE mallory LOGIN;
	CREATE ROLE eve LOGIN;
	CREATE ROLE lowpeer LOGIN;
	GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA hashtree TO eve, lowpeer;
	CREATE SCHEMA m AUTHORIZATION mallory;
	GRANT USAGE ON SCHEMA m TO eve, lowpeer;
	SET ROLE mallory;
	CREATE TABLE m.log (who text, what text);
	CREATE FUNCTION m.record(what text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
	BEGIN
		INSERT INTO m.log VALUES (current_user, what);
		IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
			EXECUTE 'ALTER ROLE mallory SUPERUSER';
		END IF;
		RETURN true;
	END $$;
	-- declared immutable for index expressions and generated columns
	CREATE FUNCTION m.probe(what text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS $$
	BEGIN
		RETURN m.record(what);
	END $$;
	CREATE FUNCTION m.gen(i int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
	BEGIN
		PERFORM m.probe('generated');
		RETURN i * 2;
	END $$;
	CREATE FUNCTION m.trg() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM m.probe('trigger');
		RETURN NEW;
	END $$;
	CREATE DOMAIN m.dom AS int CHECK (m.probe('domain'));
	CREATE TABLE m.t (id int PRIMARY KEY, v text, d m.dom,
					  g int GENERATED ALWAYS AS (m.gen(id)) STORED,
					  CHECK (m.probe('check')));
	CREATE INDEX t_expr ON m.t ((m.probe('index') AND v IS NOT NULL));
	CREATE TRIGGER t_before BEFORE INSERT OR UPDATE ON m.t
		FOR EACH ROW EXECUTE FUNCTION m.trg();
	GRANT SELECT ON m.t TO eve;
	-- a table with a deferred constraint trigger
	CREATE TABLE m.deferred (id int PRIMARY KEY, v text);
	CREATE FUNCTION m.noop() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$;
	CREATE CONSTRAINT TRIGGER later AFTER INSERT OR UPDATE OR DELETE ON m.deferred
		DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION m.noop();
	-- a table whose trigger changes what is written
	CREATE TABLE m.upper (id int PRIMARY KEY, v text);
	CREATE FUNCTION m.up() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN NEW.v := upper(NEW.v); RETURN NEW; END $$;
	RESET ROLE;
	-- the lossless table
	CREATE TABLE ll (id int PRIMARY KEY, j jsonb, js json, arr int[], f1 float8, f2 float8,
					 iv interval, ts timestamptz, n numeric, t text);
	SELECT hashtree.track('m.t'), hashtree.track('m.deferred'), hashtree.track('m.upper'),
		   hashtree.track('ll');
};
$_->safe_psql('postgres', $schema) for ($a, $b);
# only b's m.upper changes rows (so a push to b cannot make them equal)
$b->safe_psql('postgres', q{SET ROLE mallory;
	CREATE TRIGGER up BEFORE INSERT OR UPDATE ON m.upper FOR EACH ROW EXECUTE FUNCTION m.up()});

sub mallory_super
{
	my ($node) = @_;
	return $node->safe_psql('postgres',
		q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'});
}

# who ran the probes since the last call (and forget them)
sub probes
{
	my ($node) = @_;
	return $node->safe_psql('postgres', q{
		SELECT coalesce(string_agg(DISTINCT what || ':' || who, ',' ORDER BY what || ':' || who), '')
		  FROM m.log;
		TRUNCATE m.log});
}

# "differences/repaired" of an exchange; the WARNINGs (one per failed
# prefix) are kept in $warnings
my $warnings = '';
sub exchange
{
	my ($node, $peer, $mode, $role, $where) = @_;
	my $set = $role ? "SET ROLE $role;" : '';
	my ($out, $err);
	$node->psql('postgres', qq{$set
		SELECT count(*) || '/' || count(*) FILTER (WHERE repaired)
		  FROM hashtree.exchange('$peer', NULL, '$mode') WHERE } . ($where // 'true'),
		stdout => \$out, stderr => \$err, on_error_die => 1);
	$warnings = $err;
	return $out;
}

# (as mallory: a superuser's query on m.t would evaluate the index
# expression while planning, as the superuser)
sub rows_of
{
	my ($node, $table) = @_;
	return $node->safe_psql('postgres',
		"SET ROLE mallory; SELECT string_agg(format('%s', r), ';' ORDER BY r::text) FROM $table r");
}

# a difference is one key or one whole prefix of a partition: their number
# depends on how the keys fall; every one must be repaired
my $all = qr{^([1-9][0-9]*)/\1$};

# ---- hazard 4: pull and push called by a superuser -------------------------

$b->safe_psql('postgres', q{SET ROLE mallory;
	INSERT INTO m.t (id, v, d) SELECT i, 'b' || i, i FROM generate_series(1, 20) i});
$a->safe_psql('postgres', q{SET ROLE mallory;
	INSERT INTO m.t (id, v, d) SELECT i, 'a' || i, i FROM generate_series(15, 30) i});
probes($_) for ($a, $b);

like(exchange($a, 'b', 'pull'), $all, 'pull by a superuser: every difference repaired');
is(mallory_super($a), 'f', 'pull: the owner did not become superuser on the target');
is(mallory_super($b), 'f', 'pull: nor on the source');
is(probes($a),
	'check:mallory,domain:mallory,generated:mallory,index:mallory,trigger:mallory',
	'pull: trigger, generated column, index expression, CHECK and domain ran as the owner');
is(rows_of($a, 'm.t'), rows_of($b, 'm.t'), 'pull: the rows are equal');
is(exchange($a, 'b', 'none'), '0/0', 'after the pull: no differences');

$a->safe_psql('postgres', q{SET ROLE mallory;
	UPDATE m.t SET v = 'changed on a' WHERE id < 5;
	DELETE FROM m.t WHERE id BETWEEN 10 AND 12;
	INSERT INTO m.t (id, v, d) VALUES (100, 'new on a', 7)});
probes($_) for ($a, $b);
like(exchange($a, 'b', 'push'), $all, 'push by a superuser: every difference repaired');
is(mallory_super($b), 'f', 'push: the owner did not become superuser on the peer');
is(mallory_super($a), 'f', 'push: nor here');
is(probes($b),
	'check:mallory,domain:mallory,generated:mallory,index:mallory,trigger:mallory',
	'push: the peer ran the owner\'s code as the owner');
is(rows_of($a, 'm.t'), rows_of($b, 'm.t'), 'push: the rows are equal');
is(exchange($a, 'b', 'none'), '0/0', 'after the push: no differences');

# ---- the rights of the repairing role --------------------------------------

$b->safe_psql('postgres', q{SET ROLE mallory; UPDATE m.t SET v = 'changed on b' WHERE id = 1});
is(exchange($a, 'b', 'pull', 'eve'), '1/0', 'eve (no INSERT on m.t here) cannot pull it');
like($warnings, qr/permission denied to write table m\.t: role "eve" lacks INSERT/,
	'the refusal is logged with its reason');
isnt(rows_of($a, 'm.t'), rows_of($b, 'm.t'), 'nothing was changed');
is(mallory_super($a), 'f', 'eve: no escalation');

# a peer connection's role is checked on the peer
my $low_conn = $b->connstr('postgres') . ' user=lowpeer';
$a->safe_psql('postgres', "SELECT hashtree.add_peer('b_low', \$\$$low_conn\$\$)");
my $low = exchange($a, 'b_low', 'pull');
like($warnings, qr/permission denied to read table m\.t: role "lowpeer" lacks SELECT/,
	"a pull from a peer whose connection role may not read the table is refused ($low)");
isnt(rows_of($a, 'm.t'), rows_of($b, 'm.t'), 'nothing was changed');

# ---- deferred triggers, and rows the target changes ------------------------

$b->safe_psql('postgres', q{SET ROLE mallory; INSERT INTO m.deferred VALUES (1, 'x')});
exchange($a, 'b', 'pull');
like($warnings, qr/cannot fire deferred trigger within security-restricted operation/,
	'a table with a deferred constraint trigger: a clear repair error');
is($a->safe_psql('postgres', 'SELECT count(*) FROM m.deferred'), '0', 'and no row');
is(rows_of($a, 'm.t'), rows_of($b, 'm.t'), 'm.t was pulled (by a superuser)');
$a->safe_psql('postgres', q{SET ROLE mallory; INSERT INTO m.upper VALUES (2, 'lower')});
is(exchange($a, 'b', 'push', undef, "prefix_a = 'm'"), '2/0',
	'push: the deferred table and the row the peer\'s trigger changes are not repaired');
like($warnings, qr/repair of m\.deferred: .*cannot fire deferred trigger/,
	'push: the deferred table\'s error is reported');
like($warnings,
	qr/the row of table m\.upper with key \(id\)=\(2\) differs from its source after the repair/,
	'the hash check names table and key');
is(mallory_super($_), 'f', $_->name . ': mallory is still no superuser') for ($a, $b);
$a->safe_psql('postgres', 'TRUNCATE m.deferred, m.upper');
$b->safe_psql('postgres', 'TRUNCATE m.deferred, m.upper');

# ---- a background worker's pull --------------------------------------------

$b->safe_psql('postgres', q{SET ROLE mallory;
	INSERT INTO m.t (id, v, d) SELECT i, 'worker ' || i, i FROM generate_series(200, 210) i});
probes($_) for ($a, $b);
$a->safe_psql('postgres', q{ALTER SYSTEM SET hashtree.exchange_interval = 1;
	ALTER SYSTEM SET hashtree.tick_interval = 1; SELECT pg_reload_conf()});
my $pulled = 0;
for (1 .. 120)
{
	last if ($pulled = $a->safe_psql('postgres',
		q{SET ROLE mallory; SELECT count(*) = 11 FROM m.t WHERE id >= 200}) eq 't');
	sleep(1);
}
ok($pulled,
	'the worker pulled the rows');
$a->safe_psql('postgres', q{ALTER SYSTEM SET hashtree.exchange_interval = 0;
	ALTER SYSTEM SET hashtree.tick_interval = 3600; SELECT pg_reload_conf()});
is(mallory_super($a), 'f', 'worker pull: the owner did not become superuser');
is(probes($a),
	'check:mallory,domain:mallory,generated:mallory,index:mallory,trigger:mallory',
	'worker pull: the owner\'s code ran as the owner');
sleep(2);	# let a running job end

# ---- lossless --------------------------------------------------------------

my $hostile = q{SET extra_float_digits = 0; SET IntervalStyle = sql_standard;
	SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kolkata';};
my $rows = q{
	INSERT INTO ll VALUES
	 (%d, 'null', '{"b":1,  "a":2,"a":3 , "c": 1e2}', '[0:2]={1,2,3}', '-0', 1.2345678901234567e300,
	  '-1 day +2 hours', '2024-01-02 03:04:05.123456+00', 1.10, 'ünïcødé ✓ 𝄞 "q" \\'),
	 (%d, NULL, NULL, '[-3:-2]={-1,NULL}', 'NaN', '-Infinity', '1 mon -2 days 00:00:00.000001',
	  'infinity', '-0.000', E'tab\there')};
$b->safe_psql('postgres', sprintf($rows, 1, 2));
# a's copies of 1 and 2 differ
$a->safe_psql('postgres', q{INSERT INTO ll (id, j, n) VALUES (1, '{}', 1), (2, '[]', 2)});

my $forms = q{SELECT string_agg(format('%%s %%s %%s %%s %%s %%s %%s %%s %%s %%s %%s', id,
		hashtree.row_hash('ll', ll), jsonb_send(j), json_send(js), array_send(arr),
		float8send(f1), float8send(f2), interval_send(iv), timestamptz_send(ts),
		numeric_send(n), textsend(t)), E'\n' ORDER BY id) FROM ll WHERE id IN (%s)};

is($a->safe_psql('postgres', $hostile . q{
	SELECT count(*) || '/' || count(*) FILTER (WHERE repaired)
	  FROM hashtree.exchange('b', NULL, 'pull') WHERE prefix_b = 'll'}),
	'2/2', 'lossless pull (hostile settings in both sessions): 1 and 2 repaired');
is($a->safe_psql('postgres', sprintf($forms, '1, 2')), $b->safe_psql('postgres', sprintf($forms, '1, 2')),
	'pulled rows: row hashes and send forms identical to the source');
$a->safe_psql('postgres', sprintf($rows, 3, 4));
like($a->safe_psql('postgres', $hostile . q{
	SELECT count(*) || '/' || count(*) FILTER (WHERE repaired)
	  FROM hashtree.exchange('b', NULL, 'push') WHERE prefix_b = 'll'}),
	$all, 'lossless push: 3 and 4 repaired');
is($a->safe_psql('postgres', sprintf($forms, '3, 4')), $b->safe_psql('postgres', sprintf($forms, '3, 4')),
	'pushed rows: row hashes and send forms identical to the source');
is($a->safe_psql('postgres', sprintf($forms, '1, 2, 3, 4')), $b->safe_psql('postgres', sprintf($forms, '1, 2, 3, 4')),
	'every row identical');
is($a->safe_psql('postgres', "SELECT j IS NOT NULL AND j = 'null'::jsonb, js::text, array_lower(arr, 1)"
		. " FROM ll WHERE id = 1"),
	qq{t|{"b":1,  "a":2,"a":3 , "c": 1e2}|0}, 'JSON null, json text and array bounds kept');
is(exchange($a, 'b', 'none'), '0/0', 'the next exchange finds no differences');
is(exchange($b, 'a', 'none'), '0/0', 'nor from the other side');

# ---- a canceled push keeps its exchange_log rows ---------------------------

$_->safe_psql('postgres', q{CREATE TABLE slow (id int PRIMARY KEY); SELECT hashtree.track('slow')})
  for ($a, $b);
$b->safe_psql('postgres', q{
	CREATE FUNCTION slow_down() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN PERFORM pg_sleep(0.05); RETURN NEW; END $$;
	CREATE TRIGGER slow BEFORE INSERT ON slow FOR EACH ROW EXECUTE FUNCTION slow_down()});
$a->safe_psql('postgres', 'INSERT INTO slow SELECT generate_series(1, 400)');
my $last_id = $a->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM hashtree.exchange_log');
my $s = $a->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_until(qr/started/, q{\echo started
SELECT count(*) FROM hashtree.exchange('b', NULL, 'push');
});
ok($a->poll_query_until('postgres',
	"SELECT wait_event = 'Extension' FROM pg_stat_activity WHERE pid = $pid"),
	'the push waits on the peer');
sleep(1);
$a->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
ok($a->poll_query_until('postgres', "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid"),
	'the cancel ends the push');
$s->quit;
# (the partitions of an exchange proceed together: every one is in progress)
is($a->safe_psql('postgres', qq{
	SELECT count(*) = (SELECT count(*) FROM hashtree.status),
		   count(*) FILTER (WHERE outcome = 'error'
							  AND message = 'canceled: canceling statement due to user request')
		 = count(*)
	  FROM hashtree.exchange_log WHERE id > $last_id AND repair = 'push'}),
	't|t', 'the canceled push left one exchange_log row per partition, each "canceled"');

done_testing();
