/*-------------------------------------------------------------------------
 *
 * compare.c
 *	  Comparison of a local partition's trees with a peer's.
 *
 * plum_db walks the trees depth-first, one remote call per bucket and per
 * segment.  Here the walk is breadth-first and batched, two levels per
 * round trip: for each depth of the tree of trees (root, prefix trees,
 * leaf trees) this node sends its level-2 buckets of every differing tree
 * and the peer answers its sub-buckets (32 segments each) under the
 * buckets that differ; this node compares them with its own and sends its
 * level-3 rows (segments) under the sub-buckets that differ, and the peer
 * answers its entries of the segments that differ (hashtree._descend_m):
 * 2 round trips per depth, whatever the number of differences; an
 * exchange gets the prefix trees' entries with the top hashes, so it
 * walks the leaf trees only (2 round trips).  The trees of several
 * partitions (an exchange of a whole node) go in the same requests, each
 * request naming its partition, so the count does not grow with the
 * partitions either.  Both sides read with the same store functions, rows
 * in the same order, so each step is a merge of sorted lists.  The server side of those functions (and of _nodes and _entries,
 * their one-partition forms), which packs the rows this walk unpacks, is
 * at the end of this file.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"

#include "common.h"
#include "compare.h"
#include "partlock.h"
#include "sqlexec.h"
#include "store.h"
#include "treemath.h"

const char *const ht_diff_kind_names[HT_NKINDS] = {
	"missing", "remote_missing", "different", "missing_prefix", "remote_missing_prefix"
};

/* a set of trees of one depth, of one or more partitions, as text datums */
typedef struct TreeSet
{
	int			n;
	int			cap;
	int32	   *part;
	Datum	   *pa;
	Datum	   *pb;
} TreeSet;

static void
treeset_add(TreeSet *ts, int32 part, Datum pa, Datum pb)
{
	if (ts->n >= ts->cap)
	{
		ts->cap = ts->cap > 0 ? ts->cap * 2 : 16;
		ts->part = ts->part ? repalloc(ts->part, sizeof(int32) * ts->cap)
			: palloc(sizeof(int32) * ts->cap);
		ts->pa = ts->pa ? repalloc(ts->pa, sizeof(Datum) * ts->cap) : palloc(sizeof(Datum) * ts->cap);
		ts->pb = ts->pb ? repalloc(ts->pb, sizeof(Datum) * ts->cap) : palloc(sizeof(Datum) * ts->cap);
	}
	ts->part[ts->n] = part;
	ts->pa[ts->n] = pa;
	ts->pb[ts->n] = pb;
	ts->n++;
}

static char *
array_literal(ArrayType *a)
{
	return OidOutputFunctionCall(F_ARRAY_OUT, PointerGetDatum(a));
}

static bool
bytea_equal(const bytea *a, const bytea *b)
{
	return VARSIZE_ANY_EXHDR(a) == VARSIZE_ANY_EXHDR(b) &&
		memcmp(VARDATA_ANY(a), VARDATA_ANY(b), VARSIZE_ANY_EXHDR(a)) == 0;
}

/* a request index sent back by a peer must be one we asked for */
static int32
checked_request(HtPeer *peer, int32 i, int n)
{
	if (i < 1 || i > n)
		ereport(ERROR,
				(errcode(ERRCODE_PROTOCOL_VIOLATION),
				 errmsg("unexpected answer from peer \"%s\": request %d of %d",
						ht_peer_name(peer), i, n)));
	return i;
}

/*
 * The children rows[from .. to - 1] of one request, packed as _nodes sends
 * them: per child its gap to the previous one (the first: to base) as a
 * varint, then its hash cut to hash_bytes.
 */
static bytea *
pack_children(const HtNodeRow *rows, int from, int to, int64 base, int hash_bytes)
{
	StringInfoData buf;

	/* written in place after the header, in a buffer of the right size */
	buf.maxlen = VARHDRSZ + (to - from) * (10 + hash_bytes) + 1;
	buf.data = palloc(buf.maxlen);
	buf.len = VARHDRSZ;
	buf.data[buf.len] = '\0';
	buf.cursor = 0;
	for (int r = from; r < to; r++)
	{
		int64		gap = r == from ? rows[r].child - base : rows[r].child - rows[r - 1].child - 1;

		ht_put_varint(&buf, (uint64) gap);
		appendBinaryStringInfo(&buf, VARDATA_ANY(rows[r].hash),
							   Min(hash_bytes, VARSIZE_ANY_EXHDR(rows[r].hash)));
	}
	SET_VARSIZE(buf.data, buf.len);
	return (bytea *) buf.data;
}

/*
 * Append the children packed in one value (children first .. first + span
 * - 1, hashes of hash_bytes) to *out as rows of request i; false when the
 * value is malformed.
 */
static bool
unpack_children(const bytea *packed, int32 i, int64 first, int64 span, int hash_bytes,
				HtNodeRow **out, int *n, int *cap)
{
	const uint8 *p = (const uint8 *) VARDATA_ANY(packed);
	const uint8 *end = p + VARSIZE_ANY_EXHDR(packed);
	int64		next = first;	/* the smallest child that may come */
	int64		stop = first + span;

	while (p < end)
	{
		uint64		gap;
		bytea	   *h;

		if (!ht_get_varint(&p, end, &gap) || end - p < hash_bytes ||
			gap >= (uint64) (stop - next))
			return false;
		if (*n >= *cap)
		{
			*cap = Max(64, *cap * 2);
			*out = *out ? repalloc(*out, sizeof(HtNodeRow) * *cap) :
				palloc(sizeof(HtNodeRow) * *cap);
		}
		h = palloc(VARHDRSZ + hash_bytes);
		SET_VARSIZE(h, VARHDRSZ + hash_bytes);
		memcpy(VARDATA(h), p, hash_bytes);
		p += hash_bytes;
		(*out)[*n].i = i;
		(*out)[*n].child = next + (int64) gap;
		(*out)[*n].hash = h;
		next = (*out)[*n].child + 1;
		(*n)++;
	}
	return true;
}

/* the merge needs the peer's rows sorted, without duplicates and nulls */
static void
misordered(HtPeer *peer)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("unexpected answer from peer \"%s\": rows out of order", ht_peer_name(peer))));
}

/*
 * The batched reads of this node, for requests of several partitions: each
 * run of requests of one partition is read by the store, its request
 * indexes shifted to the run's place, so the rows stay ordered by request.
 */
static int
nodes_of(int depth, int n, const int32 *parts, Datum *pa, Datum *pb, int level,
		 const int64 *firsts, int64 span, int hash_bytes, HtNodeRow **rows)
{
	HtNodeRow  *out = NULL;
	int			nout = 0;

	for (int start = 0; start < n;)
	{
		int			end = start;
		HtNodeRow  *r;
		int			k;

		while (end < n && parts[end] == parts[start])
			end++;
		k = ht_store_nodes(parts[start], depth, end - start, pa + start, pb + start, level,
						   firsts + start, span, hash_bytes, &r);
		if (out == NULL)
		{
			out = r;
			nout = k;
		}
		else if (k > 0)
		{
			out = repalloc(out, sizeof(HtNodeRow) * (nout + k));
			memcpy(out + nout, r, sizeof(HtNodeRow) * k);
			nout += k;
		}
		for (int j = nout - k; j < nout; j++)
			out[j].i += start;
		start = end;
	}
	*rows = out;
	return nout;
}

static int
entries_of(int depth, int n, const int32 *parts, Datum *pa, Datum *pb, const int32 *segs,
		   int hash_bytes, HtEntryRow **rows)
{
	HtEntryRow *out = NULL;
	int			nout = 0;

	for (int start = 0; start < n;)
	{
		int			end = start;
		HtEntryRow *r;
		int			k;

		while (end < n && parts[end] == parts[start])
			end++;
		k = ht_store_entries(parts[start], depth, end - start, pa + start, pb + start,
							 segs + start, hash_bytes, &r);
		if (out == NULL)
		{
			out = r;
			nout = k;
		}
		else if (k > 0)
		{
			out = repalloc(out, sizeof(HtEntryRow) * (nout + k));
			memcpy(out + nout, r, sizeof(HtEntryRow) * k);
			nout += k;
		}
		for (int j = nout - k; j < nout; j++)
			out[j].i += start;
		start = end;
	}
	*rows = out;
	return nout;
}

/* the request for the peer's children firsts[i] .. firsts[i] + span - 1 of a level */
static HtPeerStatement
nodes_statement(int depth, TreeSet *ts, int level, const int64 *firsts, int64 span)
{
	const char **params = palloc(sizeof(char *) * 8);
	HtPeerStatement st;

	params[0] = array_literal(ht_array_int4(ts->part, ts->n));
	params[1] = psprintf("%d", depth);
	params[2] = array_literal(ht_array_text(ts->pa, ts->n));
	params[3] = array_literal(ht_array_text(ts->pb, ts->n));
	params[4] = psprintf("%d", level);
	params[5] = array_literal(ht_array_int8(firsts, ts->n));
	params[6] = psprintf(INT64_FORMAT, span);
	params[7] = psprintf("%d", HT_COMPARE_HASH_BYTES);
	st.sql = "SELECT i, children FROM hashtree._nodes_m($1::int4[], $2::int4,"
		" $3::text[], $4::text[], $5::int4, $6::int8[], $7::int8, $8::int4)";
	st.nparams = 8;
	st.params = params;
	st.binary = true;
	return st;
}

/* ask the peer for those children */
static void
send_nodes(HtPeer *peer, int depth, TreeSet *ts, int level, const int64 *firsts, int64 span)
{
	HtPeerStatement st = nodes_statement(depth, ts, level, firsts, span);

	ht_peer_send_pipeline(peer, 1, &st);
}

static void malformed(HtPeer *peer);

/* the peer's answer: per request, (gap to the previous child, hash) pairs */
static int
receive_nodes(HtPeer *peer, TreeSet *ts, const int64 *firsts, int64 span, HtNodeRow **rows)
{
	HtRemoteResult *res = ht_peer_receive(peer, 2);
	int			cap = 64;
	int			n = 0;
	HtNodeRow  *out = palloc(sizeof(HtNodeRow) * cap);

	for (int r = 0; r < res->nrows; r++)
	{
		int32		i = checked_request(peer, ht_remote_int4(res, r, 0), ts->n);
		bytea	   *packed = ht_remote_bytea(res, r, 1);

		if (packed == NULL || VARSIZE_ANY_EXHDR(packed) == 0 ||
			(r > 0 && i <= out[n - 1].i))
			misordered(peer);
		if (!unpack_children(packed, i, firsts[i - 1], span, HT_COMPARE_HASH_BYTES,
							 &out, &n, &cap))
			malformed(peer);
	}
	*rows = out;
	return n;
}

/*
 * The request that sends this node's children of a level (own, sorted by
 * request and child) to the peer, which compares them with its own and
 * answers the next level under the children that differ
 * (hashtree._descend_m).
 */
static HtPeerStatement
descend_statement(int depth, TreeSet *ts, int level, const int64 *firsts, int64 span,
				  const HtNodeRow *own, int nown)
{
	Datum	   *packed = palloc(sizeof(Datum) * Max(ts->n, 1));
	const char **params = palloc(sizeof(char *) * 9);
	HtPeerStatement st;
	int			r = 0;

	for (int i = 1; i <= ts->n; i++)
	{
		int			from = r;

		while (r < nown && own[r].i == i)
			r++;
		packed[i - 1] = PointerGetDatum(pack_children(own, from, r, firsts[i - 1],
													  HT_COMPARE_HASH_BYTES));
	}
	params[0] = array_literal(ht_array_int4(ts->part, ts->n));
	params[1] = psprintf("%d", depth);
	params[2] = array_literal(ht_array_text(ts->pa, ts->n));
	params[3] = array_literal(ht_array_text(ts->pb, ts->n));
	params[4] = psprintf("%d", level);
	params[5] = array_literal(ht_array_int8(firsts, ts->n));
	params[6] = psprintf(INT64_FORMAT, span);
	params[7] = psprintf("%d", HT_COMPARE_HASH_BYTES);
	params[8] = array_literal(ht_array_bytea(packed, ts->n));
	st.sql = "SELECT i, child, children, key, hash FROM hashtree._descend_m($1::int4[],"
		" $2::int4, $3::text[], $4::text[], $5::int4, $6::int8[], $7::int8, $8::int4,"
		" $9::bytea[])";
	st.nparams = 9;
	st.params = params;
	st.binary = true;
	return st;
}

static void
malformed(HtPeer *peer)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROTOCOL_VIOLATION),
			 errmsg("unexpected answer from peer \"%s\": malformed children",
					ht_peer_name(peer))));
}

/* a (request, child) whose hash differs between the two sides */
typedef struct NodeDiff
{
	int			i;				/* 1-based request index */
	int64		child;
} NodeDiff;

/*
 * The children that differ between two lists of children of the same
 * requests, each sorted by (request, child): present on one side only, or
 * with different hashes.
 */
static int
diff_rows(const HtNodeRow *l, int nl, const HtNodeRow *r, int nr, NodeDiff **out)
{
	NodeDiff   *d = palloc(sizeof(NodeDiff) * Max(nl + nr, 1));
	int			nd = 0;
	int			a = 0;
	int			b = 0;

	while (a < nl || b < nr)
	{
		int			c;

		if (a == nl)
			c = 1;
		else if (b == nr)
			c = -1;
		else if (l[a].i != r[b].i)
			c = l[a].i < r[b].i ? -1 : 1;
		else
			c = (l[a].child > r[b].child) - (l[a].child < r[b].child);

		if (c < 0)
		{
			d[nd].i = l[a].i;
			d[nd++].child = l[a++].child;
		}
		else if (c > 0)
		{
			d[nd].i = r[b].i;
			d[nd++].child = r[b++].child;
		}
		else
		{
			if (!bytea_equal(l[a].hash, r[b].hash))
			{
				d[nd].i = l[a].i;
				d[nd++].child = l[a].child;
			}
			a++;
			b++;
		}
	}
	*out = d;
	return nd;
}

/*
 * Fetch the same children on both sides and list those that differ
 * (present on one side only, or with different hashes).
 */
static int
diff_buckets(HtPeer *peer, int depth, TreeSet *ts, int level,
			 const int64 *firsts, int64 span, NodeDiff **out)
{
	HtNodeRow  *l;
	HtNodeRow  *r;
	int			nl;
	int			nr;

	/* the peer reads its children while this node reads its own */
	send_nodes(peer, depth, ts, level, firsts, span);
	nl = nodes_of(depth, ts->n, ts->part, ts->pa, ts->pb, level, firsts, span,
				  HT_COMPARE_HASH_BYTES, &l);
	nr = receive_nodes(peer, ts, firsts, span, &r);
	return diff_rows(l, nl, r, nr, out);
}

typedef struct DiffSink
{
	HtDiffCallback fn;
	void	   *arg;
	const HtPeerStatement *tail;	/* sent with the walk's last request */
	int			tail_ncols;
	HtRemoteResult *tail_result;	/* its result, once sent */
} DiffSink;

/* a child tree's name, stored as UTF-8 bytes in its parent's entry */
static Datum
child_name(bytea *key)
{
	int			len = VARSIZE_ANY_EXHDR(key);
	char	   *s = pg_any_to_server(VARDATA_ANY(key), len, PG_UTF8);

	if (s == VARDATA_ANY(key))
		return PointerGetDatum(cstring_to_text_with_len(s, len));
	return CStringGetTextDatum(s);
}

/*
 * Report an entry that differs in a tree of the given depth: a key of a
 * leaf tree, or a whole child tree (prefix) missing on one side, or a
 * child tree to descend into (added to next).
 */
static void
entry_diff(DiffSink *sink, int depth, int32 part, Datum pa, Datum pb,
		   bytea *key, int side, TreeSet *next, Datum empty)
{
	/* side: -1 only local, 1 only remote, 0 both with different hashes */
	if (depth == HT_DEPTH_LEAF)
	{
		sink->fn(sink->arg, part,
				 side < 0 ? HT_REMOTE_MISSING : side > 0 ? HT_MISSING : HT_DIFFERENT,
				 pa, pb, key);
		return;
	}
	if (depth == HT_DEPTH_PREFIX)
	{
		Datum		name = child_name(key);

		if (side == 0)
			treeset_add(next, part, pa, name);
		else
			sink->fn(sink->arg, part,
					 side < 0 ? HT_REMOTE_MISSING_PREFIX : HT_MISSING_PREFIX,
					 pa, name, NULL);
		return;
	}
	/* root: the key is a prefix_a */
	{
		Datum		name = child_name(key);

		if (side == 0)
			treeset_add(next, part, name, empty);
		else
			sink->fn(sink->arg, part,
					 side < 0 ? HT_REMOTE_MISSING_PREFIX : HT_MISSING_PREFIX,
					 name, (Datum) 0, NULL);
	}
}

bytea *
ht_compare_top(int part, int hash_bytes)
{
	Datum		empty = PointerGetDatum(cstring_to_text(""));
	int64		zero = 0;
	HtNodeRow  *rows;
	bytea	   *top;
	int			len;

	if (ht_store_nodes(part, HT_DEPTH_ROOT, 1, &empty, &empty, 1, &zero, 1,
					   hash_bytes, &rows) == 0)
		return NULL;
	len = Min(hash_bytes, VARSIZE_ANY_EXHDR(rows[0].hash));
	top = palloc(VARHDRSZ + len);
	SET_VARSIZE(top, VARHDRSZ + len);
	memcpy(VARDATA(top), VARDATA_ANY(rows[0].hash), len);
	return top;
}

/*
 * One depth of the walk: the trees given (all of that depth), two levels
 * per round trip.  This node sends its level-2 buckets of every tree; the
 * peer answers its sub-buckets under the buckets that differ; this node
 * compares them with its own and sends its segments under the sub-buckets
 * that differ; the peer answers its entries of the segments that differ
 * (for each, its entries or a row saying it has none); the entries that
 * differ are reported, or for a prefix tree, the differing child trees go
 * to next.
 */
static void
walk_depth(HtPeer *peer, DiffSink *sink, int depth, TreeSet *trees, TreeSet *next)
{
	Datum		empty = PointerGetDatum(cstring_to_text(""));
	int64	   *zeros = palloc0(sizeof(int64) * trees->n);
	int64		width = HT_WIDTH(depth);
	int64		subs = width >> HT_SUB_BITS;	/* sub-buckets per bucket */
	int64		segs_per_sub = INT64CONST(1) << HT_SUB_BITS;
	HtRemoteResult *res;
	HtNodeRow  *own;
	int			nown;
	HtNodeRow  *theirs = NULL;
	int			ntheirs = 0;
	int			cap = 0;
	NodeDiff   *d4;
	int			n4;
	TreeSet		req2 = {0};
	TreeSet		req4 = {0};
	TreeSet		req3 = {0};
	int64	   *f4;
	int64	   *f3;
	int32	   *segs;
	int		   *tree_of2;
	int		   *tree_of4;
	int		   *tree_of3;
	HtEntryRow *l;
	HtEntryRow *r;
	int			nl;
	int			nr = 0;
	int			a = 0;
	int			b = 0;
	TreeSet		guess = {0};
	int		   *guess_tree;
	int64	   *guess_f4;
	HtNodeRow  *guess_own = NULL;
	int			nguess_own;
	bool		same;

	/*
	 * 1: our buckets; the peer's sub-buckets under those that differ.  The
	 * peer's own buckets are asked for first, in the same round trip: from
	 * them this node finds the differing buckets and reads its sub-buckets
	 * under them while the peer reads its own (the two nodes' reads
	 * overlap instead of adding up).
	 */
	nown = nodes_of(depth, trees->n, trees->part, trees->pa, trees->pb, 2, zeros, width,
					HT_COMPARE_HASH_BYTES, &own);
	{
		HtPeerStatement st[2];

		st[0] = nodes_statement(depth, trees, 2, zeros, width);
		st[1] = descend_statement(depth, trees, 2, zeros, width, own, nown);
		ht_peer_send_pipeline(peer, 2, st);
	}
	{
		HtNodeRow  *peer2;
		int			npeer2 = receive_nodes(peer, trees, zeros, width, &peer2);
		NodeDiff   *d2;
		int			n2 = diff_rows(own, nown, peer2, npeer2, &d2);

		guess_tree = palloc(sizeof(int) * Max(n2, 1));
		guess_f4 = palloc(sizeof(int64) * Max(n2, 1));
		for (int k = 0; k < n2; k++)
		{
			int			t = d2[k].i - 1;

			guess_tree[k] = t;
			guess_f4[k] = d2[k].child * subs;
			treeset_add(&guess, trees->part[t], trees->pa[t], trees->pb[t]);
		}
		nguess_own = guess.n == 0 ? 0 :
			nodes_of(depth, guess.n, guess.part, guess.pa, guess.pb, HT_LEVEL_SUB, guess_f4,
					 subs, HT_COMPARE_HASH_BYTES, &guess_own);
	}
	res = ht_peer_receive(peer, 5);
	f4 = palloc(sizeof(int64) * Max(res->nrows, 1));
	tree_of2 = palloc(sizeof(int) * Max(res->nrows, 1));
	for (int k = 0; k < res->nrows; k++)
	{
		int32		i = checked_request(peer, ht_remote_int4(res, k, 0), trees->n);
		int64		bucket = ht_remote_int8(res, k, 1);
		bytea	   *packed = ht_remote_bytea(res, k, 2);

		if (packed == NULL || bucket < 0 || bucket >= width ||
			(k > 0 && (i < tree_of2[k - 1] + 1 ||
					   (i == tree_of2[k - 1] + 1 && bucket <= f4[k - 1] / subs))))
			misordered(peer);
		tree_of2[k] = i - 1;
		f4[k] = bucket * subs;
		treeset_add(&req2, trees->part[i - 1], trees->pa[i - 1], trees->pb[i - 1]);
		if (!unpack_children(packed, k + 1, f4[k], subs, HT_COMPARE_HASH_BYTES,
							 &theirs, &ntheirs, &cap))
			malformed(peer);
	}
	if (req2.n == 0)
		return;

	/*
	 * our sub-buckets there: read already when the peer's answer names the
	 * buckets found from its own (it always does, unless its tree changed
	 * in between: the exchange holds its lock, compare() may not), else
	 * now
	 */
	same = (guess.n == req2.n);
	for (int k = 0; same && k < req2.n; k++)
		same = (guess_tree[k] == tree_of2[k] && guess_f4[k] == f4[k]);
	if (same)
	{
		own = guess_own;
		nown = nguess_own;
	}
	else
		nown = nodes_of(depth, req2.n, req2.part, req2.pa, req2.pb, HT_LEVEL_SUB, f4, subs,
						HT_COMPARE_HASH_BYTES, &own);
	n4 = diff_rows(own, nown, theirs, ntheirs, &d4);
	if (n4 == 0)
		return;

	/* 2: our segments under them; the peer's entries of those that differ */
	f3 = palloc(sizeof(int64) * n4);
	tree_of4 = palloc(sizeof(int) * n4);
	for (int k = 0; k < n4; k++)
	{
		int			t = tree_of2[d4[k].i - 1];

		tree_of4[k] = t;
		treeset_add(&req4, trees->part[t], trees->pa[t], trees->pb[t]);
		f3[k] = d4[k].child << HT_SUB_BITS;
	}
	nown = nodes_of(depth, req4.n, req4.part, req4.pa, req4.pb, 3, f3, segs_per_sub,
					HT_COMPARE_HASH_BYTES, &own);
	{
		HtPeerStatement st[2];
		int			nst = 1;

		st[0] = descend_statement(depth, &req4, 3, f3, segs_per_sub, own, nown);
		/* the walk's last request: the caller's tail goes with it */
		if (depth == HT_DEPTH_LEAF && sink->tail != NULL)
			st[nst++] = *sink->tail;
		ht_peer_send_pipeline(peer, nst, st);
		res = ht_peer_receive(peer, 5);
		if (nst > 1)
			sink->tail_result = ht_peer_receive(peer, sink->tail_ncols);
	}
	segs = palloc(sizeof(int32) * Max(res->nrows, 1));
	tree_of3 = palloc(sizeof(int) * Max(res->nrows, 1));
	r = palloc(sizeof(HtEntryRow) * Max(res->nrows, 1));
	for (int k = 0; k < res->nrows; k++)
	{
		int32		i = checked_request(peer, ht_remote_int4(res, k, 0), req4.n);
		int64		seg = ht_remote_int8(res, k, 1);
		bytea	   *key = ht_remote_bytea(res, k, 3);
		bytea	   *hash = ht_remote_bytea(res, k, 4);

		if (seg < f3[i - 1] || seg >= f3[i - 1] + segs_per_sub || (key == NULL) != (hash == NULL))
			malformed(peer);
		/* the first row of a differing segment makes it a request */
		if (req3.n == 0 || segs[req3.n - 1] != (int32) seg || tree_of3[req3.n - 1] != i - 1)
		{
			if (req3.n > 0 && (i - 1 < tree_of3[req3.n - 1] ||
							   (i - 1 == tree_of3[req3.n - 1] && seg < segs[req3.n - 1])))
				misordered(peer);
			tree_of3[req3.n] = i - 1;
			segs[req3.n] = (int32) seg;
			treeset_add(&req3, req4.part[i - 1], req4.pa[i - 1], req4.pb[i - 1]);
		}
		else if (key == NULL || nr == 0 || r[nr - 1].i != req3.n ||
				 ht_bytea_cmp(key, r[nr - 1].key) <= 0)
			misordered(peer);	/* the entries of one segment: sorted, none null */
		if (key != NULL)
		{
			r[nr].i = req3.n;
			r[nr].key = key;
			r[nr++].hash = hash;
		}
	}
	if (req3.n == 0)
		return;
	/* (tree_of3 holds req4 indexes: the trees) */
	for (int k = 0; k < req3.n; k++)
		tree_of3[k] = tree_of4[tree_of3[k]];
	nl = entries_of(depth, req3.n, req3.part, req3.pa, req3.pb, segs,
					HT_COMPARE_HASH_BYTES, &l);

	while (a < nl || b < nr)
	{
		int			c;
		int			i;

		if (a == nl)
			c = 1;
		else if (b == nr)
			c = -1;
		else if (l[a].i != r[b].i)
			c = l[a].i < r[b].i ? -1 : 1;
		else
			c = ht_bytea_cmp(l[a].key, r[b].key);

		i = tree_of3[(c <= 0 ? l[a].i : r[b].i) - 1];
		if (c < 0)
			entry_diff(sink, depth, trees->part[i], trees->pa[i], trees->pb[i], l[a++].key,
					   -1, next, empty);
		else if (c > 0)
			entry_diff(sink, depth, trees->part[i], trees->pa[i], trees->pb[i], r[b++].key,
					   1, next, empty);
		else
		{
			if (!bytea_equal(l[a].hash, r[b].hash))
				entry_diff(sink, depth, trees->part[i], trees->pa[i], trees->pb[i], l[a].key,
						   0, next, empty);
			a++;
			b++;
		}
	}
}

/*
 * Walk the trees of seed[depth] (each depth's trees: roots, prefix trees,
 * leaf trees), depth by depth from the root: the child trees that differ
 * at one depth join the next depth's seeds.
 */
static void
walk(HtPeer *peer, DiffSink *sink, TreeSet *seed)
{
	TreeSet		trees = seed[HT_DEPTH_ROOT];

	for (int depth = HT_DEPTH_ROOT; depth <= HT_DEPTH_LEAF; depth++)
	{
		TreeSet		next = {0};

		if (trees.n > 0)
			walk_depth(peer, sink, depth, &trees, &next);
		if (depth < HT_DEPTH_LEAF)
		{
			TreeSet    *more = &seed[depth + 1];

			for (int k = 0; k < more->n; k++)
				treeset_add(&next, more->part[k], more->pa[k], more->pb[k]);
		}
		trees = next;
	}
}

void
ht_compare_walk(HtPeer *peer, int nparts, const int *parts, HtDiffCallback fn, void *arg)
{
	DiffSink	sink = {fn, arg, NULL, 0, NULL};
	Datum		empty = PointerGetDatum(cstring_to_text(""));
	TreeSet		seed[HT_DEPTH_LEAF + 1] = {{0}};

	/* the roots of the partitions, whose top hashes differ */
	for (int k = 0; k < nparts; k++)
		treeset_add(&seed[HT_DEPTH_ROOT], parts[k], empty, empty);
	walk(peer, &sink, seed);
}

/*
 * The prefix trees of one partition compared from their entries, known on
 * both sides: whole prefixes missing on one side are reported, the leaf
 * trees whose tops differ are seeds of the walk's last depth.
 */
static void
diff_prefixes(DiffSink *sink, int part, const HtPrefixEntry *l, int nl,
			  const HtPrefixEntry *r, int nr, TreeSet *leaves)
{
	Datum		empty = PointerGetDatum(cstring_to_text(""));
	List	   *gone = NIL;		/* prefix_a reported whole: not again per prefix_b */
	int			a = 0;
	int			b = 0;

	while (a < nl || b < nr)
	{
		const HtPrefixEntry *e;
		int			c;
		int			side;

		if (a == nl)
			c = 1;
		else if (b == nr)
			c = -1;
		else if (l[a].depth != r[b].depth)
			c = l[a].depth < r[b].depth ? -1 : 1;
		else
		{
			c = ht_bytea_cmp((const bytea *) l[a].pa, (const bytea *) r[b].pa);
			if (c == 0)
				c = ht_bytea_cmp(l[a].key, r[b].key);
		}
		e = c <= 0 ? &l[a] : &r[b];
		side = c < 0 ? -1 : c > 0 ? 1 : 0;
		if (c <= 0)
			a++;
		if (c >= 0)
			b++;
		if (side == 0 && bytea_equal(l[a - 1].hash, r[b - 1].hash))
			continue;
		if (e->depth == HT_DEPTH_ROOT)
		{
			/* a differing prefix_a: its prefix trees' entries tell the rest */
			if (side != 0)
			{
				entry_diff(sink, HT_DEPTH_ROOT, part, empty, empty, e->key, side, NULL, empty);
				gone = lappend(gone, e->key);
			}
			continue;
		}
		/* depth 1: under a prefix_a reported whole? */
		{
			bool		skip = false;
			ListCell   *lc;

			foreach(lc, gone)
			{
				bytea	   *k = (bytea *) lfirst(lc);
				Datum		name = child_name(k);

				if (ht_bytea_cmp((const bytea *) DatumGetPointer(name),
								 (const bytea *) e->pa) == 0)
				{
					skip = true;
					break;
				}
			}
			if (!skip)
				entry_diff(sink, HT_DEPTH_PREFIX, part, PointerGetDatum(e->pa), empty, e->key,
						   side, leaves, empty);
		}
	}
}

HtRemoteResult *
ht_compare_walk_prefixed(HtPeer *peer, int nparts, const HtComparePart *parts,
						 HtDiffCallback fn, void *arg, const HtPeerStatement *tail,
						 int tail_ncols)
{
	DiffSink	sink = {fn, arg, tail, tail_ncols, NULL};
	Datum		empty = PointerGetDatum(cstring_to_text(""));
	TreeSet		seed[HT_DEPTH_LEAF + 1] = {{0}};

	for (int k = 0; k < nparts; k++)
	{
		const HtComparePart *p = &parts[k];

		if (p->nlocal < 0 || p->nremote < 0)
			treeset_add(&seed[HT_DEPTH_ROOT], p->part, empty, empty);
		else
			diff_prefixes(&sink, p->part, p->local, p->nlocal, p->remote, p->nremote,
						  &seed[HT_DEPTH_LEAF]);
	}
	walk(peer, &sink, seed);
	return sink.tail_result;
}

void
ht_compare(int part, HtPeer *peer, HtDiffCallback fn, void *arg)
{
	Datum		empty = PointerGetDatum(cstring_to_text(""));
	TreeSet		root = {0};
	int64		zero = 0;
	NodeDiff   *top;

	/* the root's top hash */
	treeset_add(&root, part, empty, empty);
	if (diff_buckets(peer, HT_DEPTH_ROOT, &root, 1, &zero, 1, &top) == 0)
		return;
	ht_compare_walk(peer, 1, &part, fn, arg);
}

/* ---- the server side: hashtree._nodes and hashtree._entries ------------------ */

/*
 * Arguments of the batched reads: equal-length arrays without nulls (pa,
 * pb, the third), and the partitions: argument 0, one partition for all
 * requests (multi false) or an int[] of one per request (multi true);
 * each is checked.
 */
static int
batch_arrays(FunctionCallInfo fcinfo, bool multi, int depth, int32 **parts,
			 Datum **pa, Datum **pb, int third, Oid third_type, Datum **third_elems)
{
	int			n = -1;
	Oid			types[4] = {TEXTOID, TEXTOID, third_type, INT4OID};
	Datum	   *pe = NULL;
	Datum	  **outs[4] = {pa, pb, third_elems, &pe};
	int			narrays = multi ? 4 : 3;

	HT_ARG_NOT_NULL(0, "partition");
	if (depth < HT_DEPTH_ROOT || depth > HT_DEPTH_LEAF)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("depth must be 0, 1 or 2, not %d", depth)));
	for (int k = 0; k < narrays; k++)
	{
		int			argno = (k < 2) ? 2 + k : k == 2 ? third : 0;
		ArrayType  *a;
		bool	   *nulls;
		int			cnt;
		int16		typlen;
		bool		typbyval;
		char		typalign;

		HT_ARG_NOT_NULL(argno, "array argument");
		a = PG_GETARG_ARRAYTYPE_P(argno);
		get_typlenbyvalalign(types[k], &typlen, &typbyval, &typalign);
		deconstruct_array(a, types[k], typlen, typbyval, typalign, outs[k], &nulls, &cnt);
		for (int i = 0; i < cnt; i++)
			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("array arguments must not contain nulls")));
		if (n >= 0 && cnt != n)
			ereport(ERROR,
					(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
					 errmsg("array arguments must have the same length")));
		n = cnt;
	}
	*parts = palloc(sizeof(int32) * Max(n, 1));
	(*parts)[0] = multi ? 0 : PG_GETARG_INT32(0);
	for (int i = 0; i < n; i++)
		(*parts)[i] = multi ? DatumGetInt32(pe[i]) : PG_GETARG_INT32(0);
	return n;
}

/* each partition of a batch exists (needs SPI: the partition count) */
static void
check_partitions(int n, const int32 *parts, bool multi)
{
	if (!multi)
	{
		ht_check_partition(parts[0]);
		return;
	}
	for (int i = 0; i < n; i++)
		if (i == 0 || parts[i] != parts[i - 1])
			ht_check_partition(parts[i]);
}

/* _nodes and _nodes_m (multi: one partition per request) */
static Datum
nodes_sql(FunctionCallInfo fcinfo, bool multi)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32	   *parts;
	int			depth;
	int			level;
	Datum	   *pa;
	Datum	   *pb;
	Datum	   *fe;
	int64	   *firsts;
	int64		span;
	int			n;
	int			hash_bytes;

	HT_ARG_NOT_NULL(1, "depth");
	HT_ARG_NOT_NULL(4, "level");
	HT_ARG_NOT_NULL(6, "span");
	HT_ARG_NOT_NULL(7, "hash_bytes");
	depth = PG_GETARG_INT32(1);
	level = PG_GETARG_INT32(4);
	span = PG_GETARG_INT64(6);
	hash_bytes = PG_GETARG_INT32(7);
	n = batch_arrays(fcinfo, multi, depth, &parts, &pa, &pb, 5, INT8OID, &fe);
	if ((level < 1 || level > HT_LEVELS) && level != HT_LEVEL_SUB)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("level must be between 1 and %d, or %d (sub-buckets), not %d",
						HT_LEVELS, HT_LEVEL_SUB, level)));
	if (span < 1 || span > HT_WIDTH(depth))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("span must be between 1 and " INT64_FORMAT, HT_WIDTH(depth))));
	firsts = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		firsts[i] = DatumGetInt64(fe[i]);
		if (firsts[i] < 0 || firsts[i] + span > HT_SEGMENTS(depth))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("children " INT64_FORMAT " to " INT64_FORMAT " do not exist",
							firsts[i], firsts[i] + span - 1)));
	}

	if (hash_bytes < 1 || hash_bytes > HT_DIGEST_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hash_bytes must be between 1 and %d", HT_DIGEST_LEN)));

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	{
		HtNodeRow  *rows;
		int			nrows;
		StringInfoData buf;

		check_partitions(n, parts, multi);
		nrows = nodes_of(depth, n, parts, pa, pb, level, firsts, span, hash_bytes, &rows);
		initStringInfo(&buf);
		for (int r = 0; r < nrows; r++)
		{
			int64		base = firsts[rows[r].i - 1];
			int64		gap;

			if (r == 0 || rows[r].i != rows[r - 1].i)
			{
				resetStringInfo(&buf);
				gap = rows[r].child - base;
			}
			else
				gap = rows[r].child - rows[r - 1].child - 1;
			ht_put_varint(&buf, (uint64) gap);
			appendBinaryStringInfo(&buf, VARDATA_ANY(rows[r].hash),
								   Min(hash_bytes, VARSIZE_ANY_EXHDR(rows[r].hash)));
			/* one value per request, after its last child */
			if (r == nrows - 1 || rows[r + 1].i != rows[r].i)
			{
				Datum		values[2];
				bool		nulls[2] = {false, false};

				values[0] = Int32GetDatum(rows[r].i);
				values[1] = PointerGetDatum(cstring_to_text_with_len(buf.data, buf.len));
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
		}
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree._nodes(partition int, depth int, pa text[], pb text[], level int,
 *                 firsts bigint[], span bigint, hash_bytes int DEFAULT 8)
 *   RETURNS TABLE(i int, children bytea)
 * Batched node read of compare: per request i, the stored children firsts[i]
 * .. firsts[i] + span - 1 of a level in one value (varint gap, hash prefix
 * per child).  Locks: ACCESS SHARE on hashtree.node.
 */
PG_FUNCTION_INFO_V1(ht_nodes_sql);
Datum
ht_nodes_sql(PG_FUNCTION_ARGS)
{
	return nodes_sql(fcinfo, false);
}

/*
 * hashtree._nodes_m(partitions int[], depth int, pa text[], pb text[],
 *                   level int, firsts bigint[], span bigint, hash_bytes int)
 *   RETURNS TABLE(i int, children bytea)
 * _nodes for requests of several partitions (partitions[i] is request i's),
 * as the exchange of a whole node walks them: one round trip per level for
 * all.  Locks: ACCESS SHARE on hashtree.node.
 */
PG_FUNCTION_INFO_V1(ht_nodes_m_sql);
Datum
ht_nodes_m_sql(PG_FUNCTION_ARGS)
{
	return nodes_sql(fcinfo, true);
}

/* _entries and _entries_m (multi: one partition per request) */
static Datum
entries_sql(FunctionCallInfo fcinfo, bool multi)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32	   *parts;
	int			depth;
	Datum	   *pa;
	Datum	   *pb;
	Datum	   *se;
	int32	   *segs;
	int			n;
	int			hash_bytes;

	HT_ARG_NOT_NULL(1, "depth");
	HT_ARG_NOT_NULL(5, "hash_bytes");
	hash_bytes = PG_GETARG_INT32(5);
	depth = PG_GETARG_INT32(1);
	n = batch_arrays(fcinfo, multi, depth, &parts, &pa, &pb, 4, INT4OID, &se);
	segs = palloc(sizeof(int32) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		segs[i] = DatumGetInt32(se[i]);
		ht_check_segment(depth, segs[i]);
	}

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	{
		HtEntryRow *rows;
		int			nrows;

		check_partitions(n, parts, multi);
		nrows = entries_of(depth, n, parts, pa, pb, segs, hash_bytes, &rows);
		for (int r = 0; r < nrows; r++)
		{
			Datum		values[3];
			bool		nulls[3] = {false, false, false};

			values[0] = Int32GetDatum(rows[r].i);
			values[1] = PointerGetDatum(rows[r].key);
			values[2] = PointerGetDatum(rows[r].hash);
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
		}
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}

/*
 * hashtree._entries(partition int, depth int, pa text[], pb text[],
 *                   segments int[], hash_bytes int DEFAULT 0)
 *   RETURNS TABLE(i int, key bytea, hash bytea)
 * Batched entry read of compare: the entries of segment segments[i] of tree
 * (pa[i], pb[i]); hash_bytes > 0 gives a digest of each hash cut to that
 * length.  Locks: ACCESS SHARE on hashtree.entry and hashtree.entry_pack.
 */
PG_FUNCTION_INFO_V1(ht_entries_sql);
Datum
ht_entries_sql(PG_FUNCTION_ARGS)
{
	return entries_sql(fcinfo, false);
}

/*
 * hashtree._entries_m(partitions int[], depth int, pa text[], pb text[],
 *                     segments int[], hash_bytes int)
 *   RETURNS TABLE(i int, key bytea, hash bytea)
 * _entries for requests of several partitions (partitions[i] is request
 * i's).  Locks: ACCESS SHARE on hashtree.entry and hashtree.entry_pack.
 */
PG_FUNCTION_INFO_V1(ht_entries_m_sql);
Datum
ht_entries_m_sql(PG_FUNCTION_ARGS)
{
	return entries_sql(fcinfo, true);
}

/*
 * hashtree._descend_m(partitions int[], depth int, pa text[], pb text[],
 *                     level int, firsts bigint[], span bigint, hash_bytes int,
 *                     children bytea[])
 *   RETURNS TABLE(i int, child bigint, children bytea, key bytea, hash bytea)
 * Two levels of compare's walk in one request: children[i] holds the
 * caller's children firsts[i] .. firsts[i] + span - 1 of a level (2, the
 * sub-buckets, or 3) of tree (pa[i], pb[i]) in partition partitions[i],
 * packed as _nodes answers them (hashes cut to hash_bytes).  They are
 * compared with this node's; for each child that differs (on one side only,
 * or with another hash), in (i, child) order, the next level under it:
 * after level 2, one row with its sub-buckets packed in children; after the
 * sub-buckets, one row with its segments; after level 3 (segments), a row
 * per entry of the segment (key, and its hash as _entries_m gives it), or
 * one row with key and hash null when this node has none.  Locks: ACCESS
 * SHARE on hashtree.node, hashtree.entry and hashtree.entry_pack.
 */
PG_FUNCTION_INFO_V1(ht_descend_m_sql);
Datum
ht_descend_m_sql(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32	   *parts;
	int			depth;
	int			level;
	Datum	   *pa;
	Datum	   *pb;
	Datum	   *fe;
	Datum	   *ce;
	bool	   *cnulls;
	int			nc;
	int64	   *firsts;
	int64		span;
	int64		want_span;
	int			n;
	int			hash_bytes;

	HT_ARG_NOT_NULL(1, "depth");
	HT_ARG_NOT_NULL(4, "level");
	HT_ARG_NOT_NULL(6, "span");
	HT_ARG_NOT_NULL(7, "hash_bytes");
	HT_ARG_NOT_NULL(8, "children");
	depth = PG_GETARG_INT32(1);
	level = PG_GETARG_INT32(4);
	span = PG_GETARG_INT64(6);
	hash_bytes = PG_GETARG_INT32(7);
	n = batch_arrays(fcinfo, true, depth, &parts, &pa, &pb, 5, INT8OID, &fe);
	if (level != 2 && level != HT_LEVEL_SUB && level != 3)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("level must be 2, %d (sub-buckets) or 3, not %d", HT_LEVEL_SUB, level)));
	want_span = level == 2 ? HT_WIDTH(depth) :
		level == HT_LEVEL_SUB ? HT_WIDTH(depth) >> HT_SUB_BITS : INT64CONST(1) << HT_SUB_BITS;
	if (span != want_span)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("span must be " INT64_FORMAT " at level %d", want_span, level)));
	if (hash_bytes < 1 || hash_bytes > HT_DIGEST_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("hash_bytes must be between 1 and %d", HT_DIGEST_LEN)));
	firsts = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		firsts[i] = DatumGetInt64(fe[i]);
		if (firsts[i] < 0 || firsts[i] % span != 0 ||
			firsts[i] + span > (level == 2 ? HT_WIDTH(depth) : HT_SEGMENTS(depth)))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("children " INT64_FORMAT " to " INT64_FORMAT " are not those of one node",
							firsts[i], firsts[i] + span - 1)));
	}
	deconstruct_array(PG_GETARG_ARRAYTYPE_P(8), BYTEAOID, -1, false, TYPALIGN_INT,
					  &ce, &cnulls, &nc);
	if (nc != n)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("array arguments must have the same length")));

	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	HT_API_BEGIN();
	{
		HtNodeRow  *own;
		int			nown;
		HtNodeRow  *theirs = NULL;
		int			ntheirs = 0;
		int			cap = 0;
		NodeDiff   *d;
		int			nd;
		int32	   *parts2;
		Datum	   *pa2;
		Datum	   *pb2;

		check_partitions(n, parts, true);
		for (int i = 0; i < n; i++)
		{
			if (cnulls[i] ||
				!unpack_children(DatumGetByteaPP(ce[i]), i + 1, firsts[i], span, hash_bytes,
								 &theirs, &ntheirs, &cap))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("children[%d] is not a packed list of children", i + 1)));
		}
		nown = nodes_of(depth, n, parts, pa, pb, level, firsts, span, hash_bytes, &own);
		nd = diff_rows(own, nown, theirs, ntheirs, &d);

		/* the trees of the differing children, in order */
		parts2 = palloc(sizeof(int32) * Max(nd, 1));
		pa2 = palloc(sizeof(Datum) * Max(nd, 1));
		pb2 = palloc(sizeof(Datum) * Max(nd, 1));
		for (int k = 0; k < nd; k++)
		{
			parts2[k] = parts[d[k].i - 1];
			pa2[k] = pa[d[k].i - 1];
			pb2[k] = pb[d[k].i - 1];
		}
		if (level != 3)
		{
			/* the next level under each: its children packed */
			int64		span2 = level == 2 ? HT_WIDTH(depth) >> HT_SUB_BITS :
				INT64CONST(1) << HT_SUB_BITS;
			int			level2 = level == 2 ? HT_LEVEL_SUB : 3;
			int64	   *f2 = palloc(sizeof(int64) * Max(nd, 1));
			HtNodeRow  *rows;
			int			nrows;
			int			r = 0;

			for (int k = 0; k < nd; k++)
				f2[k] = level == 2 ? d[k].child * span2 : d[k].child << HT_SUB_BITS;
			nrows = nodes_of(depth, nd, parts2, pa2, pb2, level2, f2, span2, hash_bytes, &rows);
			for (int k = 0; k < nd; k++)
			{
				Datum		values[5];
				bool		nulls[5] = {false, false, false, true, true};
				int			from = r;

				while (r < nrows && rows[r].i == k + 1)
					r++;
				values[0] = Int32GetDatum(d[k].i);
				values[1] = Int64GetDatum(d[k].child);
				values[2] = PointerGetDatum(pack_children(rows, from, r, f2[k], hash_bytes));
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			}
		}
		else
		{
			/* the entries of each differing segment, or a row saying none */
			int32	   *segs = palloc(sizeof(int32) * Max(nd, 1));
			HtEntryRow *rows;
			int			nrows;
			int			r = 0;

			for (int k = 0; k < nd; k++)
				segs[k] = (int32) d[k].child;
			nrows = entries_of(depth, nd, parts2, pa2, pb2, segs, hash_bytes, &rows);
			for (int k = 0; k < nd; k++)
			{
				Datum		values[5];
				bool		nulls[5] = {false, false, true, true, true};

				values[0] = Int32GetDatum(d[k].i);
				values[1] = Int64GetDatum(d[k].child);
				if (r >= nrows || rows[r].i != k + 1)
					tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
				for (; r < nrows && rows[r].i == k + 1; r++)
				{
					values[3] = PointerGetDatum(rows[r].key);
					values[4] = PointerGetDatum(rows[r].hash);
					nulls[3] = nulls[4] = false;
					tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
				}
			}
		}
	}
	HT_API_END();
	SPI_finish();
	return (Datum) 0;
}
