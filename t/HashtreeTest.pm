# Helpers shared by the TAP tests: clusters with the extension, and
# canonical dumps of a node's trees made through the public API.
package HashtreeTest;

use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Exporter 'import';

our @EXPORT = qw(ht_node lock_update_all tree_dump tops entry_count
  wait_for_value reset_all check_trees crash);

# a started cluster with hashtree created in database "postgres"
sub ht_node
{
	my ($name, %opts) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'hashtree'\n")
	  unless $opts{no_preload};
	$node->append_conf('postgresql.conf', "hashtree.node_name = '$name'\n");
	$node->append_conf('postgresql.conf', $opts{conf}) if $opts{conf};
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION hashtree')
	  unless $opts{no_extension};
	return $node;
}

# lock and update every partition; returns the distinct results
sub lock_update_all
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		q{SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
		    FROM generate_series(0, (SELECT count(*) - 1 FROM hashtree.status)::int) p});
}

sub reset_all
{
	my ($node, $db) = @_;
	$node->safe_psql($db // 'postgres',
		q{SELECT count(*) FROM (SELECT hashtree.reset(partition) FROM hashtree.status) s});
}

# number of mismatching rows between the stored trees and a rebuild
sub check_trees
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		q{SELECT count(*) FROM hashtree.status s, hashtree.check_tree(s.partition) c});
}

# every bucket of every tree, and every entry of every non-empty segment,
# read with get_bucket and key_hashes: two nodes with the same entries
# must give the same text
sub tree_dump
{
	my ($node, $db) = @_;
	$node->safe_psql($db // 'postgres', 'ANALYZE hashtree.node, hashtree.entry');
	return $node->safe_psql($db // 'postgres', q{
		WITH trees AS (
			SELECT DISTINCT part, depth, pa, pb,
				   CASE depth WHEN 0 THEN '{}'::text[] WHEN 1 THEN ARRAY[pa] ELSE ARRAY[pa, pb] END AS prefixes,
				   CASE depth WHEN 0 THEN 8 WHEN 1 THEN 9 ELSE 10 END AS wbits
			  FROM hashtree.node),
		buckets AS (
			SELECT t.*, 1 AS level, 0::int8 AS bucket FROM trees t
			UNION ALL SELECT t.*, 2, 0 FROM trees t
			UNION ALL SELECT DISTINCT t.*, 3, n.child FROM trees t
			  JOIN hashtree.node n ON n.part = t.part AND n.depth = t.depth
			   AND n.pa = t.pa AND n.pb = t.pb AND n.level = 2),
		segs AS (
			SELECT b.part, b.prefixes, g.child AS seg FROM buckets b
			 CROSS JOIN LATERAL hashtree.get_bucket(NULL, b.part, b.prefixes, 3, b.bucket) g
			 WHERE b.level = 3)
		SELECT string_agg(line, E'\n' ORDER BY line) FROM (
			SELECT format('B %s %s %s %s: %s', b.part, b.prefixes, b.level, b.bucket,
				   (SELECT string_agg(g.child || '=' || encode(g.hash, 'hex'), ' ' ORDER BY g.child)
					  FROM hashtree.get_bucket(NULL, b.part, b.prefixes, b.level, b.bucket) g)) AS line
			  FROM buckets b
			UNION ALL
			SELECT format('K %s %s %s: %s', s.part, s.prefixes, s.seg,
				   (SELECT string_agg(encode(k.key, 'hex') || '=' || encode(k.hash, 'hex'), ' ' ORDER BY k.key)
					  FROM hashtree.key_hashes(NULL, s.part, s.prefixes, s.seg) k))
			  FROM segs s) x});
}

# top hash of every partition, one line each
sub tops
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		q{SELECT string_agg(partition || '=' || coalesce(encode(hashtree.top_hash(partition), 'hex'), '-'),
		                    ' ' ORDER BY partition) FROM hashtree.status});
}

sub entry_count
{
	my ($node, $db) = @_;
	return $node->safe_psql($db // 'postgres',
		q{SELECT count(*) FROM hashtree.leaf_entry});
}

# kill -9 the postmaster and wait until it is gone
sub crash
{
	my ($node) = @_;
	my $pid = $node->{_pid};
	$node->kill9;
	foreach my $i (1 .. 600)
	{
		last unless kill(0, $pid);
		select(undef, undef, undef, 0.05);
	}
	return;
}

# poll a query until it returns the expected value (or time out)
sub wait_for_value
{
	my ($node, $sql, $expected, $db) = @_;
	my $got;
	foreach my $i (1 .. 300)
	{
		$got = $node->safe_psql($db // 'postgres', $sql);
		return 1 if $got eq $expected;
		select(undef, undef, undef, 0.1);
	}
	diag("waited for '$expected', last got '$got'");
	return 0;
}

1;
