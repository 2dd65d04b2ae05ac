# hashtree — PGXS build
EXTENSION   = hashtree
MODULE_big  = hashtree
OBJS = \
	src/hashtree.o \
	src/common.o \
	src/sqlexec.o \
	src/bgjob.o \
	src/treemath.o \
	src/store.o \
	src/update.o \
	src/pack.o \
	src/rehash.o \
	src/partlock.o \
	src/partops.o \
	src/remote.o \
	src/compare.o \
	src/rowenc.o \
	src/tomb.o \
	src/entryver.o \
	src/track.o \
	src/ddl.o \
	src/rowio.o \
	src/exchange.o \
	src/repair.o \
	src/worker.o \
	src/linhash.o \
	src/frag.o \
	src/fragops.o \
	src/fragremote.o \
	src/aggregates.o \
	src/guard.o \
	src/api.o

# The version is default_version in hashtree.control, written nowhere else:
# the C code gets it from here (HT_EXTENSION_VERSION).
HT_DIR := $(dir $(firstword $(MAKEFILE_LIST)))
HT_VERSION := $(shell sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" $(HT_DIR)hashtree.control)
ifeq ($(HT_VERSION),)
$(error no default_version in $(HT_DIR)hashtree.control)
endif

# Install scripts: the current version's, every older version's that can
# still be installed (for the upgrade test), and the upgrade scripts
# between them.  See docs/DESIGN.md, "Packaging and upgrades".
DATA = \
	hashtree--$(HT_VERSION).sql \
	hashtree--0.1.sql \
	hashtree--0.1--1.0.sql

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config

PG_CPPFLAGS = -I$(libpq_srcdir) -I$(srcdir)/src -DHT_EXTENSION_VERSION='"$(HT_VERSION)"'
# make EXTRA_WARNINGS=1: -Wextra too, less the three checks PostgreSQL's own
# code is not written for; our files must build without a warning (the
# server's headers give one, -Wclobbered in PG_TRY)
ifdef EXTRA_WARNINGS
PG_CFLAGS += -Wextra -Wno-unused-parameter -Wno-missing-field-initializers -Wno-sign-compare
endif
SHLIB_LINK_INTERNAL = $(libpq)
# SHA-256 straight from libcrypto when the server is built with OpenSSL
ifneq (,$(findstring -lcrypto,$(shell $(PG_CONFIG) --libs)))
SHLIB_LINK += -lcrypto
endif

# pg_regress: sql/*.sql against expected/*.out
REGRESS = $(patsubst sql/%.sql,%,$(sort $(wildcard sql/*.sql)))
REGRESS_OPTS = --inputdir=$(srcdir)
# isolation tests: specs/*.spec against expected/*.out
ISOLATION = $(patsubst specs/%.spec,%,$(sort $(wildcard specs/*.spec)))
ISOLATION_OPTS =
# make installcheck TEMP_INSTANCE=1: pg_regress and the isolation tester start
# their own throwaway server with hashtree.conf (initdb runs as the calling
# user, who must not be root) instead of using a running one
ifdef TEMP_INSTANCE
REGRESS_OPTS += --temp-instance=./tmp_check_regress --temp-config=$(srcdir)/hashtree.conf
ISOLATION_OPTS += --temp-instance=./tmp_check_iso --temp-config=$(srcdir)/hashtree.conf
endif
EXTRA_CLEAN = tmp_check_regress/
# TAP tests: t/*.pl
TAP_TESTS = 1

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# a new version in the control file rebuilds the objects that report it
$(OBJS): $(srcdir)/hashtree.control
