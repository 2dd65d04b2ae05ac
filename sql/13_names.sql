--
-- Names that need quoting everywhere: a single quote, a double quote,
-- spaces, upper case and non-ASCII letters in the schema, table, column,
-- index, sequence and trigger names, through every function that builds
-- SQL from them (fragmented and tracked tables).
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS hashtree CASCADE;
CREATE EXTENSION hashtree;
RESET client_min_messages;

CREATE SCHEMA "S'q ""D"" Ü";
SET search_path = "S'q ""D"" Ü", public;
CREATE FUNCTION "S'q ""D"" Ü".update_all() RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(DISTINCT hashtree.lock(p) || '/' || hashtree.update(p), ',')
	  FROM generate_series(0, 7) p
$$;
CREATE FUNCTION "S'q ""D"" Ü".prefix_hashes(s text, t text) RETURNS text LANGUAGE sql AS $$
	SELECT string_agg(coalesce(encode(hashtree.prefix_hash(p, s, t), 'hex'), '-'), ',' ORDER BY p)
	  FROM generate_series(0, 7) p
$$;

-- ---- frag_init on a hash-partitioned table ----------------------------------
CREATE SEQUENCE "Se'q ""N"" Ö";
CREATE TABLE "T'ab ""X"" Ä b" (
	"K'ey ""1""" int NOT NULL DEFAULT nextval('"S''q ""D"" Ü"."Se''q ""N"" Ö"'),
	"Wh'en ""2""" text NOT NULL,
	"V'al ß" text,
	PRIMARY KEY ("K'ey ""1""", "Wh'en ""2""")
) PARTITION BY HASH ("K'ey ""1""", "Wh'en ""2""");
ALTER SEQUENCE "Se'q ""N"" Ö" OWNED BY "T'ab ""X"" Ä b"."K'ey ""1""";
SELECT * FROM hashtree.frag_init('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', 3);
CREATE INDEX "I'x ""V"" é" ON "T'ab ""X"" Ä b" ("V'al ß");
INSERT INTO "T'ab ""X"" Ä b" ("Wh'en ""2""", "V'al ß")
	SELECT 'w''' || (g % 7), 'v "' || g FROM generate_series(1, 300) g;
SELECT * FROM hashtree.frag_state('"S''q ""D"" Ü"."T''ab ""X"" Ä b"');
SELECT * FROM hashtree.frag_names('"S''q ""D"" Ü"."T''ab ""X"" Ä b"');

-- tracked: track, the registry view, the encodings, the trees
SELECT hashtree.track('"S''q ""D"" Ü"."T''ab ""X"" Ä b"');
SELECT relation, schema_name, table_name, key_columns FROM hashtree.tracked;
SELECT count(*) AS wrong_entries
  FROM "T'ab ""X"" Ä b" t
  FULL JOIN (SELECT key, hash FROM hashtree.leaf_entry
			  WHERE pa = 'S''q "D" Ü' AND pb = 'T''ab "X" Ä b') e
	ON e.key = hashtree.row_key('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', t)
 WHERE e.key IS NULL OR t IS NULL OR e.hash <> hashtree.row_hash('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', t);
SELECT update_all();
SELECT prefix_hashes('S''q "D" Ü', 'T''ab "X" Ä b') AS before \gset

-- a trigger of one fragment is copied to both halves when it is split (2 -> 2, 4)
CREATE FUNCTION "S'q ""D"" Ü"."tr'g ""F"""() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NEW; END $$;
CREATE TRIGGER "Tr'g ""F"" ï" BEFORE UPDATE ON "T'ab ""X"" Ä b_frag2"
	FOR EACH ROW EXECUTE FUNCTION "S'q ""D"" Ü"."tr'g ""F"""();

-- add_frag / del_frag in both modes
SELECT n_fragments, next_n_to_split, n_doubles, iter_frags, additional_lock_frags
  FROM hashtree.add_frag('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', 'online');
SELECT n_fragments FROM hashtree.add_frag('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', 'block_writes');
SELECT n_fragments FROM hashtree.add_frag('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', 'online');
SELECT n_fragments FROM hashtree.del_frag('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', 'online');
SELECT n_fragments FROM hashtree.del_frag('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', 'block_writes');
INSERT INTO "T'ab ""X"" Ä b" ("Wh'en ""2""", "V'al ß") VALUES ('after', 'a');

-- every row where key_to_frag_number says, found by the pruning rule
SELECT count(*) AS rows, max("K'ey ""1""") AS max_key,
	   count(*) FILTER (WHERE hashtree.key_to_frag_number('"S''q ""D"" Ü"."T''ab ""X"" Ä b"',
															"K'ey ""1""", "Wh'en ""2""")
					   <> f.fragment) AS misplaced,
	   count(*) FILTER (WHERE hashtree.match_spec_to_frag_numbers('"S''q ""D"" Ü"."T''ab ""X"" Ä b"',
			format('%I = %s AND %I = %L', 'K''ey "1"', "K'ey ""1""", 'Wh''en "2"', "Wh'en ""2"""))
					   <> ARRAY[f.fragment]) AS not_pruned
  FROM "T'ab ""X"" Ä b" t JOIN hashtree.fragments f ON f.relation = t.tableoid;
SELECT "table", fragment, relation, modulus, remainder FROM hashtree.fragments ORDER BY fragment;
SELECT fragment, relation, rows FROM hashtree.frag_size('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', true);
SELECT c.relname AS fragment, t.tgname AS copied_trigger FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE t.tgname = 'Tr''g "F" ï' ORDER BY 1;
SELECT c.relname AS fragment, i.relname AS index FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class c ON c.oid = x.indrelid
 WHERE c.relnamespace = '"S''q ""D"" Ü"'::regnamespace AND c.relispartition ORDER BY 1, 2;
SELECT pg_get_serial_sequence('"S''q ""D"" Ü"."T''ab ""X"" Ä b"', 'K''ey "1"') AS sequence_owned_by_parent;

-- the tracked fragmented table kept its prefix hash
SELECT count(*) FROM (SELECT hashtree.update(p) FROM generate_series(0, 7) p) s;
DELETE FROM "T'ab ""X"" Ä b" WHERE "Wh'en ""2""" = 'after';
SELECT count(*) FROM (SELECT hashtree.update(p) FROM generate_series(0, 7) p) s;
SELECT prefix_hashes('S''q "D" Ü', 'T''ab "X" Ä b') = :'before' AS same_prefix_hash;
SELECT count(*) FROM generate_series(0, 7) p, hashtree.check_tree(p);
SELECT count(*) FROM (SELECT hashtree.release_lock(p) FROM generate_series(0, 7) p) s;
SELECT hashtree.untrack('"S''q ""D"" Ü"."T''ab ""X"" Ä b"');
SELECT count(*) AS entries_left FROM hashtree.leaf_entry WHERE pa = 'S''q "D" Ü';

-- ---- frag_activate of a plain table (serial and identity sequences) -----------
CREATE TABLE "Pl'ain ""P"" Ω" (
	"I'd ""s""" serial PRIMARY KEY,
	"Ide'nt ""i""" int GENERATED BY DEFAULT AS IDENTITY,
	"V'al" text
);
INSERT INTO "Pl'ain ""P"" Ω" ("V'al") SELECT 'p' || g FROM generate_series(1, 50) g;
SELECT * FROM hashtree.frag_activate('"S''q ""D"" Ü"."Pl''ain ""P"" Ω"');
SELECT hashtree.track('"S''q ""D"" Ü"."Pl''ain ""P"" Ω"');
SELECT n_fragments FROM hashtree.add_frag('"S''q ""D"" Ü"."Pl''ain ""P"" Ω"', 'online');
INSERT INTO "Pl'ain ""P"" Ω" ("V'al") VALUES ('after');
SELECT count(*), max("I'd ""s""") AS max_id, max("Ide'nt ""i""") AS max_identity
  FROM "Pl'ain ""P"" Ω";
SELECT pg_get_serial_sequence('"S''q ""D"" Ü"."Pl''ain ""P"" Ω"', 'I''d "s"') IS NOT NULL AS serial_kept,
	   pg_get_serial_sequence('"S''q ""D"" Ü"."Pl''ain ""P"" Ω"', 'Ide''nt "i"') IS NOT NULL AS identity_kept;
SELECT relation FROM hashtree.fragments
 WHERE "table" = '"S''q ""D"" Ü"."Pl''ain ""P"" Ω"'::regclass ORDER BY fragment;
SELECT update_all();
SELECT relation, rows FROM hashtree.tracked;
SELECT hashtree.untrack('"S''q ""D"" Ü"."Pl''ain ""P"" Ω"');

-- nothing left behind
SELECT count(*) AS leftovers FROM pg_class WHERE relname LIKE 'hashtree\_frag\_%' AND relkind <> 'S';

RESET search_path;
SET client_min_messages = warning;
DROP SCHEMA "S'q ""D"" Ü" CASCADE;
RESET client_min_messages;
