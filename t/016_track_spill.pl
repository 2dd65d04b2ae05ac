# track() of a table whose entries do not fit in maintenance_work_mem: the
# pack builder writes sorted runs to temporary files and merges them once
# (src/pack.c).  The trees and entries are those of a build in memory, the
# backend's memory stays bounded, and a cancel during the merge leaves
# nothing behind.  The same with parallel workers sharing the scan
# (src/rehash.c): the same packs, byte for byte.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HashtreeTest;

# (small shared buffers: the peak resident set is then mostly the backend's
# own memory)
my $node = ht_node('n', conf => "shared_buffers = '16MB'\n");
my $rows = 300000;
$node->safe_psql('postgres', qq{
	CREATE TABLE spill (id text PRIMARY KEY, v int);
	INSERT INTO spill SELECT 'key-' || lpad(i::text, 100, '0'), i FROM generate_series(1, $rows) i;
	VACUUM ANALYZE spill});

my $entries = q{SELECT count(*) || ' ' || md5(string_agg(part || ':' || seg || ':' || encode(key, 'hex') || ':' ||
						encode(hash, 'hex'), ',' ORDER BY part, seg, key))
				  FROM hashtree.leaf_entry WHERE pb = 'spill'};
my $packs = q{SELECT count(*) || ' ' || md5(string_agg(part || ':' || lo || ':' || span || ':' || n || ':' ||
					 encode(data, 'hex'), ',' ORDER BY part, lo))
				FROM hashtree.entry_pack WHERE pb = 'spill'};
my $nothing = q{SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = 'spill'::regclass) || ' ' ||
					   (SELECT count(*) FROM hashtree.tracked_table) || ' ' ||
					   (SELECT count(*) FROM hashtree.entry_pack WHERE pb = 'spill') || ' ' ||
					   (SELECT count(*) FROM hashtree.leaf_entry WHERE pb = 'spill')};
my $tmpfiles = q{SELECT count(*) FROM pg_ls_tmpdir()};

# track() in a session of its own at maintenance_work_mem $mwm; returns the
# peak resident set of its backend (kB)
sub track_peak
{
	my ($mwm) = @_;
	my $s = $node->background_psql('postgres');
	my $pid = $s->query_safe('SELECT pg_backend_pid()');
	$s->query_safe("SET maintenance_work_mem = '$mwm'");
	# (this backend's memory alone: no parallel workers sharing the budget)
	$s->query_safe("SET max_parallel_maintenance_workers = 0");
	# (no progress NOTICE: query_safe takes any output on stderr for a failure)
	$s->query_safe('SET client_min_messages = warning');
	my $n = $s->query_safe(q{SELECT hashtree.track('spill')});
	open(my $fh, '<', "/proc/$pid/status") or die "cannot read /proc/$pid/status: $!";
	my ($hwm) = map { /^VmHWM:\s+(\d+)/ ? $1 : () } <$fh>;
	close $fh;
	$s->quit;
	is($n, $rows, "track() at maintenance_work_mem $mwm hashes every row");
	return $hwm;
}

# spilled: several runs merged
my $files0 = $node->safe_psql('postgres',
	q{SELECT temp_files FROM pg_stat_database WHERE datname = current_database()});
my $peak_small = track_peak('1MB');
ok($node->poll_query_until('postgres',
	"SELECT temp_files >= $files0 + 10 FROM pg_stat_database WHERE datname = current_database()"),
	'the 1MB build wrote sorted runs');
is($node->safe_psql('postgres', $tmpfiles), '0', 'its temporary files are gone');
my $e_small = $node->safe_psql('postgres', $entries);
my $p_small = $node->safe_psql('postgres', $packs);
is(lock_update_all($node), 'ok/ok', 'built');
my $t_small = tops($node);
is(check_trees($node), '0', 'check_tree finds nothing after a spilled build');
$node->safe_psql('postgres', q{SELECT hashtree.untrack('spill')});

# in memory
my $peak_large = track_peak('256MB');
is($node->safe_psql('postgres', $entries), $e_small, 'same leaf entries as in memory');
is($node->safe_psql('postgres', $packs), $p_small, 'same packs, byte for byte');
is(lock_update_all($node), 'ok/ok', 'built');
is(tops($node), $t_small, 'same top hash in every partition');
is(check_trees($node), '0', 'check_tree finds nothing after a build in memory');
note("peak resident set of track(): ${peak_small} kB at 1MB, ${peak_large} kB at 256MB");
cmp_ok($peak_small, '<', 0.6 * $peak_large, 'memory bounded by maintenance_work_mem');

# every file under pgsql_tmp (the parallel workers' runs are in a directory)
sub tmp_left
{
	my $dir = $node->data_dir . '/base/pgsql_tmp';
	return 0 unless -d $dir;
	my $n = 0;
	my @todo = ($dir);
	while (my $d = shift @todo)
	{
		opendir(my $dh, $d) or die "cannot open $d: $!";
		for my $f (grep { !/^\.\.?$/ } readdir $dh)
		{
			$n++;
			push @todo, "$d/$f" if -d "$d/$f";
		}
		closedir $dh;
	}
	return $n;
}

# the scan shared with parallel workers (forced on this small table), with
# and without spilling, against the scan by one backend
for my $mwm ('1MB', '256MB')
{
	for my $workers (0, 2)
	{
		$node->safe_psql('postgres', q{SELECT hashtree.untrack('spill')});
		my ($ret, $out, $err) = $node->psql('postgres', qq{
			SET maintenance_work_mem = '$mwm';
			SET max_parallel_maintenance_workers = $workers;
			SET min_parallel_table_scan_size = 0;
			SET client_min_messages = debug1;
			SELECT hashtree.track('spill')});
		is($out, $rows, "track() at $mwm with $workers workers");
		if ($workers)
		{
			like($err, qr/re-hash of spill with [12] parallel workers/, 'the scan was shared');
		}
		else
		{
			unlike($err, qr/parallel workers/, 'the scan was not shared');
		}
		is($node->safe_psql('postgres', $packs), $p_small, 'the same packs, byte for byte');
		is(tmp_left(), 0, 'no temporary file or directory left');
	}
}
is(lock_update_all($node), 'ok/ok', 'built');
is(tops($node), $t_small, 'the same trees');
is(check_trees($node), '0', 'check_tree finds nothing');

# a partitioned table: one builder fed by a parallel scan of each leaf, the
# workers' runs of every scan kept apart (run files named per scan)
$node->safe_psql('postgres', q{
	CREATE TABLE pspill (id text PRIMARY KEY, v int) PARTITION BY HASH (id);
	CREATE TABLE pspill_0 PARTITION OF pspill FOR VALUES WITH (MODULUS 2, REMAINDER 0)
		WITH (parallel_workers = 2);
	CREATE TABLE pspill_1 PARTITION OF pspill FOR VALUES WITH (MODULUS 2, REMAINDER 1)
		WITH (parallel_workers = 2);
	INSERT INTO pspill SELECT 'key-' || lpad(i::text, 100, '0'), i FROM generate_series(1, 200000) i;
	VACUUM ANALYZE pspill});
my $ppacks = q{SELECT count(*) || ' ' || md5(string_agg(part || ':' || lo || ':' || n || ':' ||
					  encode(data, 'hex'), ',' ORDER BY part, lo))
				 FROM hashtree.entry_pack WHERE pb = 'pspill'};
my %pp;
for my $workers (0, 2)
{
	my ($ret, $out, $err) = $node->psql('postgres', qq{
		SET maintenance_work_mem = '1MB';
		SET max_parallel_maintenance_workers = $workers;
		SET min_parallel_table_scan_size = 0;
		SET client_min_messages = debug1;
		SELECT hashtree.track('pspill')});
	is($out, '200000', "partitioned table tracked with $workers workers");
	my @scans = ($err =~ /re-hash of pspill_\d with [12] parallel workers/g);
	is(scalar(@scans), $workers ? 2 : 0, "$workers workers: each leaf's scan shared, or none");
	$pp{$workers} = $node->safe_psql('postgres', $ppacks);
	is(check_trees($node), '0', 'check_tree finds nothing');
	is(tmp_left(), 0, 'no temporary file or directory left');
	$node->safe_psql('postgres', q{SELECT hashtree.untrack('pspill')});
}
is($pp{2}, $pp{0}, 'the same packs, byte for byte, with the leaves scanned in parallel');
$node->safe_psql('postgres', q{DROP TABLE pspill});

# a cancel during the merge: the first pack it inserts waits for an
# uncommitted pack of the same key (inserted with the guard trigger off),
# so the backend is caught in the merge deterministically
my ($part, $lo, $span) = split /\|/, $node->safe_psql('postgres',
	q{SELECT part, lo, span FROM hashtree.entry_pack WHERE pb = 'spill' ORDER BY part, lo LIMIT 1});
$node->safe_psql('postgres', q{SELECT hashtree.untrack('spill')});
is($node->safe_psql('postgres', $nothing), '0 0 0 0', 'untracked');
my $blocker = $node->background_psql('postgres');
$blocker->query_safe(qq{BEGIN; SET LOCAL session_replication_role = replica;
	INSERT INTO hashtree.entry_pack (part, lo, span, n, pa, pb, data)
	VALUES ($part, $lo, $span, 1, 'public', 'spill', '\\x00')});

my $s = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $s->query_safe('SELECT pg_backend_pid()');
$s->query_safe("SET maintenance_work_mem = '1MB'");
# (with parallel workers: their runs are in the shared files being merged)
$s->query_safe("SET min_parallel_table_scan_size = 0");
$s->query_until(qr/started/, q{\echo started
SELECT hashtree.track('spill');
});
ok($node->poll_query_until('postgres',
	"SELECT wait_event_type = 'Lock' AND wait_event = 'transactionid' FROM pg_stat_activity WHERE pid = $pid"),
	'track() waits in the merge');
cmp_ok($node->safe_psql('postgres', $tmpfiles), '>=', 3, 'with its runs in temporary files');
cmp_ok(tmp_left(), '>=', 10, 'and the workers\' runs in shared ones');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
ok($node->poll_query_until('postgres', "SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $pid"),
	'track canceled');
$s->quit;
like($s->{stderr}, qr/canceling statement due to user request/, 'track reports the cancel');
$blocker->query_safe('ROLLBACK');
$blocker->quit;
is($node->safe_psql('postgres', $nothing), '0 0 0 0', 'no trigger, no registration, no pack, no entry left');
is($node->safe_psql('postgres', $tmpfiles), '0', 'no temporary file left');
is(tmp_left(), 0, 'nor any directory of them');

# and track() works again
is($node->safe_psql('postgres',
	q{SET maintenance_work_mem = '1MB'; SELECT hashtree.track('spill')}), $rows, 'track() again');
is($node->safe_psql('postgres', $packs), $p_small, 'the same packs');
is(lock_update_all($node), 'ok/ok', 'built');
is(tops($node), $t_small, 'the same trees');
is(check_trees($node), '0', 'check_tree finds nothing');

# built on return: track() brings the trees of the partitions that nobody
# else holds up to date; a partition locked by another session keeps its
# rebuild marker for its next update
$node->safe_psql('postgres', q{SELECT hashtree.untrack('spill')});
is(lock_update_all($node), 'ok/ok', 'untracked and updated');
my $holder = $node->background_psql('postgres');
$holder->query_safe('SELECT hashtree.lock(0)');
is($node->safe_psql('postgres', q{SELECT hashtree.track('spill')}), $rows, 'tracked again');
my @want = split / /, $t_small;
my @got = split / /, tops($node);
is("@got[1 .. $#got]", "@want[1 .. $#want]", 'the partitions nobody held are built on return');
isnt($got[0], $want[0], 'the partition locked by another session is not');
is($node->safe_psql('postgres', q{SELECT string_agg(dirty_segments::text, ',' ORDER BY partition)
								   FROM hashtree.status}), '1,0,0,0,0,0,0,0', 'it keeps its rebuild marker');
is($holder->query_safe('SELECT hashtree.update(0) || hashtree.release_lock(0)'), 'okok',
	'its lock owner updates it');
$holder->quit;
is(tops($node), $t_small, 'then every tree is that of the first build');
is(check_trees($node), '0', 'and check_tree finds nothing');

# packs of one sub-bucket (the span of big trees, forced here by a small
# hashtree.pack_target): a compare takes their stored terms for the
# sub-bucket hashes.  Against the same rows in wide packs an exchange
# finds nothing, then exactly the rows changed.
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', qq{CREATE EXTENSION hashtree;
	CREATE TABLE spill (id text PRIMARY KEY, v int);
	INSERT INTO spill SELECT 'key-' || lpad(i::text, 100, '0'), i FROM generate_series(1, $rows) i});
is($node->safe_psql('other', q{SET client_min_messages = warning; SET hashtree.pack_target = 1;
	SELECT hashtree.track('spill')}), $rows, 'tracked in packs of 32 segments');
is($node->safe_psql('other', q{SELECT min(span) || ' ' || max(span) FROM hashtree.entry_pack}),
	'32 32', 'every pack one sub-bucket');
is($node->safe_psql('postgres', q{SELECT min(span) > 32 FROM hashtree.entry_pack}), 't',
	'the other node has wide packs');
is(tops($node, 'other'), $t_small, 'the same top hashes');
is(check_trees($node, 'other'), '0', 'check_tree finds nothing (stored pack terms included)');
# every sub-bucket hash, as the compare reads them, on both
# (one request per bucket, as the compare asks)
my $subs = q{SELECT md5(string_agg(encode(n.children, 'hex'), ',' ORDER BY s.p, n.i))
			   FROM hashtree.status s(p), hashtree._nodes(s.p, 2, array_fill('public'::text, ARRAY[1024]),
				   array_fill('spill'::text, ARRAY[1024]), 4,
				   ARRAY(SELECT g * 32::int8 FROM generate_series(0, 1023) g), 32, 32) n};
is($node->safe_psql('other', $subs), $node->safe_psql('postgres', $subs),
	'the same sub-bucket hashes, read from stored terms and from decoded packs');
# the level-2 rows of a tree of such packs keep their sub-bucket hashes
# (node.subs), which the compare reads instead of the bucket's 32 packs
my $kept = q{SELECT count(*) || ' ' || count(*) FILTER (WHERE n.subs IS NOT NULL AND length(n.subs) = 33 * p.k)
			   FROM hashtree.node n
			   LEFT JOIN (SELECT part, lo >> 10 AS b, count(DISTINCT lo >> 5) FILTER (WHERE sum IS NOT NULL) AS k
							FROM hashtree.entry_pack WHERE pb = 'spill' GROUP BY 1, 2) p
					  ON p.part = n.part AND p.b = n.child
			  WHERE n.depth = 2 AND n.level = 2 AND n.pb = 'spill'};
my ($nbuckets, $nkept) = split / /, $node->safe_psql('other', $kept);
cmp_ok($nbuckets, '>', 0, "$nbuckets level-2 rows");
is($nkept, $nbuckets, 'each keeps the hashes of its sub-buckets, one per pack');
is($node->safe_psql('postgres', q{SELECT count(*) FROM hashtree.node WHERE subs IS NOT NULL}), '0',
	'wide packs: no level-2 row keeps any');
my $victim = $node->safe_psql('other', q{SELECT part || ',' || child FROM hashtree.node
	WHERE depth = 2 AND level = 2 AND pb = 'spill' ORDER BY part, child LIMIT 1});
my ($vpart, $vchild) = split /,/, $victim;
$node->safe_psql('other', qq{ALTER TABLE hashtree.node DISABLE TRIGGER USER;
	UPDATE hashtree.node SET subs = set_byte(subs, 40, get_byte(subs, 40) # 1)
	 WHERE part = $vpart AND depth = 2 AND level = 2 AND pb = 'spill' AND child = $vchild;
	ALTER TABLE hashtree.node ENABLE TRIGGER USER});
isnt($node->safe_psql('other', $subs), $node->safe_psql('postgres', $subs),
	'a kept hash changed by hand: the compare reads it');
is($node->safe_psql('other', qq{SELECT level || ' ' || child FROM hashtree.check_tree($vpart)}),
	"6 $vchild", 'check_tree reports the row (level 6)');
$node->safe_psql('other', qq{ALTER TABLE hashtree.node DISABLE TRIGGER USER;
	UPDATE hashtree.node SET subs = set_byte(subs, 40, get_byte(subs, 40) # 1)
	 WHERE part = $vpart AND depth = 2 AND level = 2 AND pb = 'spill' AND child = $vchild;
	ALTER TABLE hashtree.node ENABLE TRIGGER USER});
is($node->safe_psql('other', $subs), $node->safe_psql('postgres', $subs), 'put back');
# none kept (NULL): the compare reads the packs' stored terms, the same hashes
$node->safe_psql('other', q{ALTER TABLE hashtree.node DISABLE TRIGGER USER;
	UPDATE hashtree.node SET subs = NULL WHERE subs IS NOT NULL;
	ALTER TABLE hashtree.node ENABLE TRIGGER USER});
is($node->safe_psql('other', $subs), $node->safe_psql('postgres', $subs),
	'none kept: the same sub-bucket hashes, from the packs\' terms');
is(check_trees($node, 'other'), '0', 'check_tree accepts none kept');
# (a reset re-hashes the table: packs of one sub-bucket again with the small target)
$node->safe_psql('other', q{SET client_min_messages = warning; SET hashtree.pack_target = 1;
	SELECT count(*) FROM (SELECT hashtree.reset(partition) FROM hashtree.status) s});
is($node->safe_psql('other', q{SELECT min(span) || ' ' || max(span) FROM hashtree.entry_pack}),
	'32 32', 'reset: every pack one sub-bucket again');
is($node->safe_psql('other', $kept), "$nbuckets $nbuckets", 'and every level-2 row keeps their hashes');
my $other_conn = $node->connstr('other');
$node->safe_psql('postgres', "SELECT hashtree.add_peer('other', \$\$$other_conn\$\$)");
my $diff = q{SELECT count(*) || ' ' || count(*) FILTER (WHERE kind = 'different')
			   FROM hashtree.exchange('other')};
is($node->safe_psql('postgres', $diff), '0 0', 'an exchange finds no difference');
$node->safe_psql('other', 'UPDATE spill SET v = -v WHERE v % 30000 = 0');
is(lock_update_all($node, 'other'), 'ok/ok', 'ten rows changed, updated');
is(check_trees($node, 'other'), '0', 'the fold kept the stored terms right');
is((split / /, $node->safe_psql('other', $kept))[1], $nbuckets,
	'and the kept sub-bucket hashes (check_tree compares them too)');
is($node->safe_psql('postgres', $diff), '10 10', 'an exchange finds exactly those');

# deletes that empty packs (about one entry each here): the fold drops them
# and their kept hashes (with the small target: not packed again)
$node->safe_psql($_, 'DELETE FROM spill WHERE v % 3 = 1') foreach ('postgres', 'other');
is($node->safe_psql('other', q{SET client_min_messages = warning; SET hashtree.pack_target = 1;
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p}) . ' ' . lock_update_all($node), 'ok/ok ok/ok', 'a third deleted on both');
is($node->safe_psql('other', q{SELECT min(span) || ' ' || max(span) || ' ' || (count(*) < 262144)
							   FROM hashtree.entry_pack WHERE pb = 'spill'}),
	'32 32 true', 'packs of one sub-bucket, emptied ones gone');
is(check_trees($node, 'other'), '0', 'check_tree finds nothing (kept hashes included)');
is($node->safe_psql('other', $kept), "$nbuckets $nbuckets", 'every level-2 row keeps what its packs give');
is($node->safe_psql('postgres', $diff), '10 10', 'an exchange still finds the ten');

# packs of a part of one sub-bucket (the span of trees of more than ~14M
# entries per partition, forced here by the planner's estimate of the
# table): a sub-bucket's hash is the sum of its packs' stored terms, which
# the level-2 rows keep as they do for packs of one sub-bucket
$node->safe_psql('postgres', 'CREATE DATABASE third');
$node->safe_psql('third', qq{CREATE EXTENSION hashtree;
	CREATE TABLE spill (id text PRIMARY KEY, v int);
	INSERT INTO spill SELECT 'key-' || lpad(i::text, 100, '0'), i FROM generate_series(1, $rows) i;
	UPDATE spill SET v = -v WHERE v % 30000 = 0;
	DELETE FROM spill WHERE v % 3 = 1;
	ANALYZE spill;
	UPDATE pg_class SET reltuples = 1.6e7 WHERE oid = 'spill'::regclass});
cmp_ok($node->safe_psql('third', q{SET client_min_messages = warning; SELECT hashtree.track('spill')}),
	'>', 0, 'tracked as a table of 16M rows');
is($node->safe_psql('third', q{SELECT min(span) || ' ' || max(span) FROM hashtree.entry_pack}),
	'16 16', 'every pack half a sub-bucket');
cmp_ok($node->safe_psql('third', q{SELECT count(*) FROM (SELECT part, lo >> 5 FROM hashtree.entry_pack
									 GROUP BY 1, 2 HAVING count(*) = 2) s}), '>', 100,
	'many sub-buckets have two packs');
is(tops($node, 'third'), tops($node, 'other'), 'the same top hashes as packs of one sub-bucket');
is(check_trees($node, 'third'), '0', 'check_tree finds nothing');
is($node->safe_psql('third', $subs), $node->safe_psql('other', $subs),
	'the same sub-bucket hashes, summed from two packs\' terms');
($nbuckets, $nkept) = split / /, $node->safe_psql('third', $kept);
cmp_ok($nbuckets, '>', 0, "$nbuckets level-2 rows");
is($nkept, $nbuckets, 'each keeps the hashes of its sub-buckets');
$node->safe_psql('third', q{ALTER TABLE hashtree.node DISABLE TRIGGER USER;
	UPDATE hashtree.node SET subs = NULL WHERE subs IS NOT NULL AND part % 2 = 0;
	ALTER TABLE hashtree.node ENABLE TRIGGER USER});
is($node->safe_psql('third', $subs), $node->safe_psql('other', $subs),
	'half of them not kept: the same hashes, from the packs\' terms');
is(check_trees($node, 'third'), '0', 'check_tree accepts that');
my $third_conn = $node->connstr('third');
$node->safe_psql('other', "SELECT hashtree.add_peer('third', \$\$$third_conn\$\$)");
my $diff3 = q{SELECT count(*) || ' ' || count(*) FILTER (WHERE kind = 'different')
			   FROM hashtree.exchange('third')};
is($node->safe_psql('other', $diff3), '0 0', 'an exchange with packs of one sub-bucket finds nothing');
# the fold: changes and deletes that empty packs
$node->safe_psql('third', 'DELETE FROM spill WHERE v % 3 = 2 AND v % 7 = 0;
	UPDATE spill SET v = v + 1 WHERE v % 997 = 0');
# (the small target: with ~1 entry per pack the fold would pack them again)
is($node->safe_psql('third', q{SET client_min_messages = warning; SET hashtree.pack_target = 1;
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p}), 'ok/ok', 'rows changed and deleted, updated');
is(check_trees($node, 'third'), '0', 'check_tree finds nothing (stored terms and kept hashes)');
is($node->safe_psql('third', q{SELECT min(span) || ' ' || max(span) FROM hashtree.entry_pack}),
	'16 16', 'still packs of half a sub-bucket');
is($node->safe_psql('third', $kept), "$nbuckets " . ($nbuckets - $node->safe_psql('third',
	q{SELECT count(*) FROM hashtree.node WHERE depth = 2 AND level = 2 AND pb = 'spill'
	   AND subs IS NULL})), 'the kept lists follow the fold');
my $changed = $node->safe_psql('other', q{SELECT count(*) FROM spill WHERE v % 997 = 0 OR (v % 3 = 2 AND v % 7 = 0)});
is($node->safe_psql('other', $diff3), "$changed " . $node->safe_psql('other',
	q{SELECT count(*) FROM spill WHERE v % 997 = 0 AND NOT (v % 3 = 2 AND v % 7 = 0)}),
	'an exchange finds exactly the rows changed');
# new keys where no pack is: rows of hashtree.entry, some in sub-buckets
# whose other half is a pack (the sub-bucket's hash is then the sum of its
# level-4 row and its pack's term); the other node changed the same way
$node->safe_psql('other', 'DELETE FROM spill WHERE v % 3 = 2 AND v % 7 = 0;
	UPDATE spill SET v = v + 1 WHERE v % 997 = 0');
foreach my $db ('other', 'third')
{
	$node->safe_psql($db, q{INSERT INTO spill SELECT 'new-' || i, i FROM generate_series(1, 1200) i});
	is($node->safe_psql($db, q{SET client_min_messages = warning; SET hashtree.pack_target = 1;
		SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
		  FROM generate_series(0, 7) p}), 'ok/ok', "$db: 1,200 rows added, updated");
}
is($node->safe_psql('third', q{SELECT min(span) || ' ' || max(span) FROM hashtree.entry_pack}),
	'16 16', 'not packed again');
cmp_ok($node->safe_psql('third', q{SELECT count(*) FROM hashtree.node n
	WHERE n.depth = 2 AND n.level = 4 AND n.pb = 'spill'
	  AND EXISTS (SELECT FROM hashtree.entry_pack p WHERE p.part = n.part AND p.pb = 'spill'
				   AND p.lo >> 5 = n.child)}), '>', 10, 'sub-buckets of both packs and rows');
is(check_trees($node, 'third'), '0', 'check_tree finds nothing');
is(tops($node, 'third'), tops($node, 'other'), 'the same top hashes');
is($node->safe_psql('third', $subs), $node->safe_psql('other', $subs),
	'the same sub-bucket hashes (rows and packs summed)');
is($node->safe_psql('other', $diff3), '0 0', 'an exchange finds nothing');
$node->safe_psql('third', q{SET client_min_messages = warning; SET hashtree.pack_target = 1;
	SELECT count(*) FROM (SELECT hashtree.reset(partition) FROM hashtree.status) s});
is($node->safe_psql('third', q{SELECT min(span) || ' ' || max(span) FROM hashtree.entry_pack}),
	'4 4', 'a reset with a target of one entry: packs of an eighth of a sub-bucket');
is($node->safe_psql('third', $kept), "$nbuckets $nbuckets", 'a reset: every level-2 row keeps them again');
is(check_trees($node, 'third'), '0', 'check_tree finds nothing');

done_testing();
