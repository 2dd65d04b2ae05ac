/*-------------------------------------------------------------------------
 *
 * compare.h
 *	  Comparison of a local partition's trees with a peer's.
 *
 *-------------------------------------------------------------------------
 */
#ifndef HT_COMPARE_H
#define HT_COMPARE_H

#include "postgres.h"

#include "funcapi.h"

#include "remote.h"

/*
 * Walk local and remote trees of a partition and put one row per
 * difference (kind, prefix_a, prefix_b, key) into rsinfo's tuplestore.
 * Needs an SPI connection.
 */
extern void ht_compare(int part, HtPeer *peer, ReturnSetInfo *rsinfo);

#endif							/* HT_COMPARE_H */
