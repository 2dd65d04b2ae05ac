/* hashtree--0.1--1.0.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION hashtree UPDATE TO '1.0'" to load this file. \quit

-- The SQL objects of 1.0 are those of 0.1.  Every later change of an object
-- (a table, function, view, trigger, grant) made in hashtree--1.0.sql before
-- 1.0 is released is made here too; t/017_upgrade.pl compares an upgraded
-- database with a fresh 1.0 install, privileges included.

-- Trees are stored differently by 1.0 (docs/DESIGN.md §4): the node rows
-- written by 0.1 are not trusted.  Every partition becomes not built, as
-- after a restore: update() answers not_built and exchanges skip it until
-- its trees are rebuilt, by the workers or by hashtree.reset(partition)
-- (§7), from the leaf entries.  (A change of the entries' own layout would
-- have to convert them here.)
UPDATE @extschema@.partition SET built = false WHERE built;
