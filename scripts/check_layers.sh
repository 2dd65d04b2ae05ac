#!/bin/sh
# scripts/check_layers.sh: the module layering of docs/DESIGN.md §1, checked
# from the includes.  Every file of src/ belongs to one layer; a file may
# include the headers of its own layer and of the layers below, never above,
# and the include graph must have no cycle.  Prints the graph (one
# "file: headers" line per file) and exits non-zero on a violation.
#
#   sh scripts/check_layers.sh [src-dir]
#
# A new file needs a line in LAYERS (and a row in DESIGN's module map).
set -eu
cd "${1:-$(dirname "$0")/../src}"

LAYERS='
treemath 0 linhash 0 rowenc 0
common 1 sqlexec 1 bgjob 1
store 2 pack 2 partlock 2 remote 2
update 3 compare 3 rehash 3
tomb 4 entryver 4 track 4 ddl 4 rowio 4 partops 4 repair 4 exchange 4 frag 4 fragops 4 fragremote 4
api 5 aggregates 5 guard 5
worker 6
hashtree 7
'

edges=$(mktemp)
graph=$(mktemp)
trap 'rm -f "$edges" "$graph"' EXIT
status=0

# "from to" for every #include of one of our headers (a file's own header
# is an edge to itself: it names the file's module)
awk -v layers="$LAYERS" -v edges="$edges" '
BEGIN {
	gsub(/^[ \n]+|[ \n]+$/, "", layers)
	n = split(layers, w, /[ \n]+/)
	for (i = 1; i < n; i += 2)
		layer[w[i]] = w[i + 1]
}
FNR == 1 {
	from = FILENAME
	sub(/\.[ch]$/, "", from)
	if (!(from in layer)) {
		printf "%s: not in any layer\n", FILENAME
		bad = 1
	}
	if (!(from in seen)) {
		order[++nfiles] = from
		seen[from] = 1
	}
}
/^#include "/ {
	to = $2
	gsub(/"/, "", to)
	sub(/\.h$/, "", to)
	if (!(to in layer))
		next					# postgres.h, fmgr.h, ...
	if (to != from && !((from, to) in done)) {
		incl[from] = incl[from] " " to
		done[from, to] = 1
	}
	print from, to > edges
	if (layer[to] > layer[from]) {
		printf "UPWARD: %s (layer %d) includes %s.h (layer %d)\n", FILENAME, layer[from], to, layer[to]
		bad = 1
	}
}
END {
	for (i = 1; i <= nfiles; i++)
		printf "%d %-10s:%s\n", layer[order[i]], order[i], incl[order[i]]
	exit bad
}' *.h *.c >"$graph" || status=1
grep -v '^[0-9]' "$graph" || true
grep '^[0-9]' "$graph" | sort -n | sed 's/^\([0-9]\) /layer \1  /'

# a cycle among the modules (tsort reports it on stderr)
if ! tsort "$edges" >/dev/null 2>&1; then
	tsort "$edges" 2>&1 >/dev/null | sed 's/^/CYCLE: /'
	status=1
fi
[ $status = 0 ] && echo "ok: no include goes upward, no cycle"
exit $status
