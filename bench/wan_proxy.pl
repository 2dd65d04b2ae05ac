#!/usr/bin/perl
# wan_proxy.pl: a delaying TCP proxy that puts a WAN between two PostgreSQL
# servers on one machine, and counts the request/response turns that cross it.
# Core Perl only (no kernel features: no tc/netem, no root needed).
#
#   wan_proxy.pl [--delay MS] [--stats FILE] [--listen HOST] PORT TARGET
#
# Listens on HOST:PORT (default 127.0.0.1; PORT 0 picks a free port, written
# to the stats file) and forwards every connection to TARGET, either
# HOST:PORT or the path of a Unix socket (e.g. /tmp/x/.s.PGSQL.5432).  Every
# chunk read from one side is written to the other MS milliseconds later
# (default 10), in each direction, in order: a round trip costs 2 * MS.
# There is no bandwidth or window limit (bulk transfers are only delayed by
# MS once), which favours whatever moves many bytes.  Many connections at
# once; TCP_NODELAY on the proxy's TCP sockets.  SIGTERM/SIGINT: exit,
# closing every connection (so does SIGKILL, to simulate a lost link).
#
# Turns.  Per connection, a "turn" is a client-to-server send that follows
# data from the server: the proxy counts one when it reads bytes from the
# client and has delivered bytes from the server to it since the client's
# previous send (the first send of a connection counts too).  Pipelined
# requests sent without waiting for an answer are one turn; so a turn is
# one round trip the client waited for.  A libpq connection over TCP costs
# 2 turns to open (SSL request, startup packet) with trust authentication.
#
# Stats file (--stats FILE): rewritten atomically (write + rename) at start,
# at most every 50 ms while something changes, when a connection closes,
# and at once on a signal.  One "key value..." pair per line:
#   pid PID            the proxy's process id, for the signals below
#   port PORT          the port it listens on
#   delay_ms MS        the one-way delay
#   seq N              incremented at every rewrite
#   resets N           incremented at every reset
#   turns N            turns of all connections since the last reset
#   bytes_up N         bytes client -> server since the last reset
#   bytes_down N       bytes server -> client since the last reset
#   connections N      connections accepted since the last reset
#   open N             connections open now
#   conn ID STATE turns N up N down N     one line per connection open now
#                      or closed since the last reset (STATE open|closed)
# Signals: SIGUSR1 rewrites the file now; SIGUSR2 resets the counters (the
# turns and bytes of open connections too; a connection opened earlier
# counts its next send after an answer as a turn) and rewrites it.
#
# For scripts, the same program reads and controls a running proxy:
#   wan_proxy.pl --ctl FILE report   signal SIGUSR1, wait for the rewrite
#                                    (seq changes), print the file
#   wan_proxy.pl --ctl FILE reset    signal SIGUSR2, wait for the rewrite
#                                    (resets changes), print the file
#   wan_proxy.pl --ctl FILE turns    as report, but print only the turns
use strict;
use warnings;
use Errno qw(EAGAIN EWOULDBLOCK EINTR EINPROGRESS);
use Getopt::Long;
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use Socket qw(IPPROTO_TCP TCP_NODELAY SOCK_STREAM);
use Time::HiRes qw(time sleep);

my $delay_ms = 10;
my $stats_file;
my $listen_host = '127.0.0.1';
my $ctl_file;
GetOptions('delay=f' => \$delay_ms, 'stats=s' => \$stats_file,
	'listen=s' => \$listen_host, 'ctl=s' => \$ctl_file)
  or die "usage: $0 [--delay MS] [--stats FILE] [--listen HOST] PORT TARGET\n"
  . "       $0 --ctl FILE report|reset|turns\n";

exit ctl($ctl_file, $ARGV[0] // 'report') if defined $ctl_file;

die "usage: $0 [--delay MS] [--stats FILE] [--listen HOST] PORT TARGET\n" unless @ARGV == 2;
my ($listen_port, $target) = @ARGV;
my $delay = $delay_ms / 1000.0;

# ---- control of a running proxy --------------------------------------------

sub read_stats
{
	my ($file) = @_;
	my %s;
	open(my $fh, '<', $file) or return;
	while (<$fh>)
	{
		chomp;
		my ($k, $v) = split / /, $_, 2;
		$s{$k} = $v unless $k eq 'conn';
	}
	close $fh;
	return \%s;
}

sub ctl
{
	my ($file, $cmd) = @_;
	my $s = read_stats($file) or die "$0: cannot read $file: $!\n";
	my ($sig, $key) = $cmd eq 'reset' ? ('USR2', 'resets') : ('USR1', 'seq');
	die "$0: unknown command $cmd\n" unless $cmd =~ /^(report|reset|turns)$/;
	kill($sig, $s->{pid}) or die "$0: cannot signal proxy $s->{pid}: $!\n";
	my $deadline = time + 10;
	for (;;)
	{
		my $n = read_stats($file);
		if ($n && $n->{$key} != $s->{$key})
		{
			if ($cmd eq 'turns')
			{
				print "$n->{turns}\n";
			}
			else
			{
				open(my $fh, '<', $file) or die;
				print while <$fh>;
				close $fh;
			}
			return 0;
		}
		die "$0: proxy $s->{pid} did not answer\n" if time > $deadline;
		sleep 0.005;
	}
}

# ---- the proxy ---------------------------------------------------------------

$SIG{PIPE} = 'IGNORE';
my $listener = IO::Socket::INET->new(LocalAddr => $listen_host, LocalPort => $listen_port,
	Listen => 128, ReuseAddr => 1, Proto => 'tcp')
  or die "$0: cannot listen on $listen_host:$listen_port: $@\n";
$listener->blocking(0);
$listen_port = $listener->sockport;

my %conns;				# id => connection
my %of_fh;				# fileno => [connection, 'c' | 's']
my @closed;				# closed since the last reset: [id, turns, up, down]
my $next_id = 1;
my %tot = (turns => 0, up => 0, down => 0, connections => 0);
my ($seq, $resets) = (0, 0);
my $dirty = 1;
my $last_write = 0;
my ($want_report, $want_reset, $want_exit) = (0, 0, 0);
$SIG{USR1} = sub { $want_report = 1 };
$SIG{USR2} = sub { $want_reset = 1 };
$SIG{TERM} = $SIG{INT} = sub { $want_exit = 1 };

sub write_stats
{
	$seq++;
	$dirty = 0;
	$last_write = time;
	return unless defined $stats_file;
	my $tmp = "$stats_file.tmp.$$";
	open(my $fh, '>', $tmp) or die "$0: cannot write $tmp: $!\n";
	print $fh "pid $$\nport $listen_port\ndelay_ms $delay_ms\nseq $seq\nresets $resets\n",
	  "turns $tot{turns}\nbytes_up $tot{up}\nbytes_down $tot{down}\n",
	  "connections $tot{connections}\nopen ", scalar(keys %conns), "\n";
	printf $fh "conn %d closed turns %d up %d down %d\n", @$_ for @closed;
	printf $fh "conn %d open turns %d up %d down %d\n", $_->{id}, $_->{turns}, $_->{up}, $_->{down}
	  for sort { $a->{id} <=> $b->{id} } values %conns;
	close $fh or die "$0: cannot write $tmp: $!\n";
	rename($tmp, $stats_file) or die "$0: cannot rename $tmp: $!\n";
	return;
}

sub nodelay
{
	my ($sock) = @_;
	setsockopt($sock, IPPROTO_TCP, TCP_NODELAY, 1) if $sock->isa('IO::Socket::INET');
	return;
}

sub connect_target
{
	my $sock;
	if ($target =~ m{/})
	{
		$sock = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $target);
	}
	else
	{
		$sock = IO::Socket::INET->new(PeerAddr => $target, Proto => 'tcp');
	}
	return $sock;
}

sub close_conn
{
	my ($c) = @_;
	for my $side ('c', 's')
	{
		delete $of_fh{ fileno($c->{$side}) };
		close $c->{$side};
	}
	delete $conns{ $c->{id} };
	push @closed, [ $c->{id}, $c->{turns}, $c->{up}, $c->{down} ];
	$dirty = 1;
	write_stats();
	return;
}

sub accept_one
{
	my $client = $listener->accept or return;
	my $server = connect_target();
	unless ($server)
	{
		close $client;
		return;
	}
	$client->blocking(0);
	$server->blocking(0);
	nodelay($client);
	nodelay($server);
	my $c = {
		id => $next_id++, c => $client, s => $server,
		# queue of [due time, bytes or undef for end of stream] per
		# direction, named after the side written to
		q => { s => [], c => [] },
		answered => 1,	# the first send is a turn
		turns => 0, up => 0, down => 0,
	};
	$conns{ $c->{id} } = $c;
	$of_fh{ fileno($client) } = [ $c, 'c' ];
	$of_fh{ fileno($server) } = [ $c, 's' ];
	$tot{connections}++;
	$dirty = 1;
	return;
}

# read what a side has; queue it for the other side.  False when closed.
sub read_side
{
	my ($c, $side) = @_;
	my $other = $side eq 'c' ? 's' : 'c';
	my $buf;
	my $n = sysread($c->{$side}, $buf, 262144);
	if (!defined $n)
	{
		return 1 if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
		$n = 0;
	}
	if ($n == 0)
	{
		push @{ $c->{q}{$other} }, [ time + $delay, undef ];
		$c->{eof} = 1;
		return 1;
	}
	if ($side eq 'c')
	{
		if ($c->{answered})
		{
			$c->{turns}++;
			$tot{turns}++;
			$c->{answered} = 0;
		}
		$c->{up} += $n;
		$tot{up} += $n;
	}
	else
	{
		$c->{down} += $n;
		$tot{down} += $n;
	}
	$dirty = 1;
	push @{ $c->{q}{$other} }, [ time + $delay, $buf ];
	return 1;
}

# write what is due to a side; false when the connection is to close
sub flush_side
{
	my ($c, $side, $now) = @_;
	my $q = $c->{q}{$side};
	$c->{blocked}{$side} = 0;
	while (@$q && $q->[0][0] <= $now)
	{
		my $data = $q->[0][1];
		return 0 unless defined $data;	# end of stream reached this side
		my $n = syswrite($c->{$side}, $data);
		if (!defined $n)
		{
			return 0 unless $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
			$c->{blocked}{$side} = 1;
			return 1;
		}
		$c->{answered} = 1 if $side eq 'c' && $n > 0;
		if ($n < length $data)
		{
			substr($q->[0][1], 0, $n) = '';
			$c->{blocked}{$side} = 1;
			return 1;
		}
		shift @$q;
	}
	return 1;
}

write_stats();
while (!$want_exit)
{
	my $now = time;
	my $timeout = 0.05;
	my $rsel = IO::Select->new($listener);
	my $wsel = IO::Select->new();
	for my $c (values %conns)
	{
		my $alive = 1;
		for my $side ('c', 's')
		{
			$alive &&= flush_side($c, $side, $now);
		}
		unless ($alive)
		{
			close_conn($c);
			next;
		}
		for my $side ('c', 's')
		{
			my $q = $c->{q}{$side};
			$rsel->add($c->{$side}) unless $c->{eof};
			if ($c->{blocked}{$side})
			{
				$wsel->add($c->{$side});
			}
			elsif (@$q)
			{
				my $t = $q->[0][0] - $now;
				$timeout = $t if $t < $timeout;
			}
		}
	}
	$timeout = 0 if $timeout < 0;
	my ($r, $w) = IO::Select->select($rsel, $wsel, undef, $timeout);
	for my $fh (@{ $r // [] })
	{
		if ($fh == $listener)
		{
			accept_one();
			next;
		}
		my $e = $of_fh{ fileno($fh) } or next;
		read_side(@$e);
	}
	# writable sockets are flushed at the top of the loop
	if ($want_reset)
	{
		$want_reset = 0;
		$resets++;
		%tot = (turns => 0, up => 0, down => 0, connections => 0);
		@closed = ();
		$_->{turns} = $_->{up} = $_->{down} = 0 for values %conns;
		write_stats();
	}
	if ($want_report)
	{
		$want_report = 0;
		write_stats();
	}
	write_stats() if $dirty && time - $last_write >= 0.05;
}
close_conn($_) for values %conns;
exit 0;
