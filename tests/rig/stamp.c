/*
 * stamp: run a command, pass its output through, and time when a marker appears.
 *
 *   stamp MARKER -- CMD ARGS...
 *
 * CMD runs with stdout and stderr on one pipe (stdin is inherited). Its output is
 * copied to our stdout line by line. The first time a line contains MARKER we print
 *
 *   RIG-STAMP init_ms=<ms from just before fork> rss_kb=<RSS of CMD outside guest RAM>
 *
 * and when CMD has ended
 *
 *   RIG-EXIT status=<exit code, or 128+signal> total_ms=<ms from just before fork to the
 *            end of CMD> tail_ms=<ms from the guest's last words to CMD's end>[ stamp_terminated=1]
 *
 * and exit with that status. tail_ms is a VMM's teardown: it counts from the last line with
 * "reboot: " (Linux's "reboot: Power down" or "reboot: Restarting system"), or from the last
 * line when there was none. If stamp itself gets SIGTERM/SIGINT/SIGHUP (e.g. from an
 * outer `timeout`), it kills CMD with SIGKILL (a hung VMM may ignore SIGTERM), reports
 * stamp_terminated=1 and exits 124, so the caller can tell a timeout from a crash.
 * The child also gets PR_SET_PDEATHSIG(SIGKILL), so it never outlives a killed stamp.
 *
 * STAMP_TIMES=1: every line of CMD's output is prefixed with "<ms from fork> | ", the time it
 * reached us (to see where a guest's boot spends wall time, whatever its own clock says).
 *
 * STAMP_PTY=1: CMD gets a new pseudo-terminal as its controlling terminal, stdin, stdout
 * and stderr (to see what a VMM does on a terminal: raw mode, progress lines), and after it
 * ended stamp prints
 *
 *   RIG-PTY lflag_before=<hex> lflag_after=<hex> iflag_before=<hex> iflag_after=<hex>
 *
 * (the terminal's termios flags before CMD started and after it ended).
 *
 * RSS rule: rss_kb is the sum of the "Rss:" lines of every mapping in
 * /proc/PID/smaps EXCEPT anonymous mappings (inode 0 and no path, or an
 * "[anon:...]" name) of size >= 256 MiB. Those are taken to be guest RAM, which a
 * VMM (ours or QEMU) maps as one big anonymous region; what is left is the VMM's own
 * footprint (code, heap, stacks, libraries). Consequence: a guest smaller than
 * 256 MiB would be counted in full, and a VMM heap arena that is one anonymous
 * mapping >= 256 MiB would be excluded. Guests in the rig are >= 512 MiB.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GUEST_RAM_MIN (256ULL << 20)

static volatile sig_atomic_t got_signal;

static void on_signal(int sig) { got_signal = sig; }

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return; /* stdout gone: nothing sensible left to do */
		}
		p += w;
		n -= (size_t)w;
	}
}

/* Sum of Rss of pid's mappings minus big anonymous ones (see RSS rule above). */
static long rss_kb(pid_t pid)
{
	char path[64], line[4096];
	snprintf(path, sizeof(path), "/proc/%d/smaps", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	long total = 0;
	int skip = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long long start, end, inode;
		char perms[8], off[32], dev[32];
		int name_at = 0;
		/* A mapping header: "start-end perms offset dev inode [path]". */
		if (sscanf(line, "%llx-%llx %7s %31s %31s %llu %n", &start, &end, perms, off, dev,
			   &inode, &name_at) == 6) {
			const char *name = line + name_at;
			int anon = inode == 0 && (name[0] == '\n' || name[0] == '\0' ||
						  strncmp(name, "[anon:", 6) == 0);
			skip = anon && end - start >= GUEST_RAM_MIN;
			continue;
		}
		long kb;
		if (!skip && sscanf(line, "Rss: %ld kB", &kb) == 1)
			total += kb;
	}
	fclose(f);
	return total;
}

int main(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "--") != 0) {
		fprintf(stderr, "usage: stamp MARKER -- CMD ARGS...\n");
		return 2;
	}
	const char *marker = argv[1];
	char **cmd = argv + 3;

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: read() must return EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);

	int pfd[2];
	const char *times_env = getenv("STAMP_TIMES");
	int use_times = times_env && strcmp(times_env, "1") == 0;
	const char *pty_env = getenv("STAMP_PTY");
	int use_pty = pty_env && strcmp(pty_env, "1") == 0;
	struct termios before, after;
	char pty_name[64] = "";
	if (use_pty) {
		/* pfd[0] = master (read by us), pfd[1] = slave (the child's terminal). */
		if (openpty(&pfd[0], &pfd[1], pty_name, NULL, NULL) < 0 ||
		    tcgetattr(pfd[1], &before) < 0) {
			perror("stamp: openpty");
			return 2;
		}
		/* The child's session ending hangs the terminal up: that SIGHUP is not for us. */
		signal(SIGHUP, SIG_IGN);
	} else if (pipe(pfd) < 0) {
		perror("stamp: pipe");
		return 2;
	}
	pid_t parent = getpid();
	double t0 = now_ms();
	pid_t pid = fork();
	if (pid < 0) {
		perror("stamp: fork");
		return 2;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		if (use_pty) {
			setsid();
			ioctl(pfd[1], TIOCSCTTY, 0);
			dup2(pfd[1], 0);
		}
		dup2(pfd[1], 1);
		dup2(pfd[1], 2);
		close(pfd[0]);
		close(pfd[1]);
		execvp(cmd[0], cmd);
		fprintf(stderr, "stamp: exec %s: %s\n", cmd[0], strerror(errno));
		_exit(127);
	}
	/* With a pty our copy of the slave stays open (to read its termios at the end), so the
	 * master never reports end of file: the child's exit ends the loop instead. */
	if (!use_pty)
		close(pfd[1]);

	static char buf[65536];
	size_t len = 0;
	int found = 0, killed = 0, reaped = 0, st = 0;
	double last_line = t0, last_words = 0;
	for (;;) {
		if (use_pty && !reaped) {
			struct pollfd p = { .fd = pfd[0], .events = POLLIN };
			/* Only POLLIN counts: the master also reports POLLHUP once the child's
			 * session ended, while a read would still block. */
			if (poll(&p, 1, 200) <= 0 || !(p.revents & POLLIN)) {
				if (waitpid(pid, &st, WNOHANG) == pid)
					reaped = 1;
				continue;
			}
		} else if (use_pty) {
			/* Reaped: drain what is left without blocking. */
			struct pollfd p = { .fd = pfd[0], .events = POLLIN };
			if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
				break;
		}
		if (got_signal && !killed) {
			kill(pid, SIGKILL);
			killed = 1;
		}
		if (killed) {
			/* A grandchild may still hold the pipe: read on for 2 s at most. */
			struct pollfd p = { .fd = pfd[0], .events = POLLIN };
			int r = poll(&p, 1, 2000);
			if (r == 0)
				break;
			if (r < 0 && errno == EINTR)
				continue;
		}
		ssize_t n = read(pfd[0], buf + len, sizeof(buf) - 1 - len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		/* Emit every complete line; check each for the marker. */
		size_t start = 0;
		for (;;) {
			char *nl = memchr(buf + start, '\n', len - start);
			size_t end = nl ? (size_t)(nl - buf) + 1 : len;
			if (!nl && len < sizeof(buf) - 1)
				break; /* partial line: wait for more unless the buffer is full */
			last_line = now_ms();
			if (use_times) {
				char pre[32];
				int p = snprintf(pre, sizeof(pre), "%8.0f | ", last_line - t0);
				write_all(1, pre, (size_t)p);
			}
			write_all(1, buf + start, end - start);
			{
				char save = buf[end];
				buf[end] = '\0';
				if (strstr(buf + start, "reboot: "))
					last_words = last_line;
				buf[end] = save;
			}
			if (!found) {
				char save = buf[end];
				buf[end] = '\0';
				if (strstr(buf + start, marker)) {
					found = 1;
					double ms = now_ms() - t0;
					char out[128];
					int m = snprintf(out, sizeof(out),
							 "RIG-STAMP init_ms=%.0f rss_kb=%ld\n", ms,
							 rss_kb(pid));
					write_all(1, out, (size_t)m);
				}
				buf[end] = save;
			}
			start = end;
			if (start == len)
				break;
		}
		memmove(buf, buf + start, len - start);
		len -= start;
	}
	if (len > 0) {
		write_all(1, buf, len);
		write_all(1, "\n", 1);
	}
	if (use_pty) {
		char line[160];
		int m = 0;
		/* Our slave descriptor was hung up with the child's session: open the terminal
		 * again (its settings live on with the master) to read them. */
		int again = open(pty_name, O_RDWR | O_NOCTTY);
		if (again >= 0 && tcgetattr(again, &after) == 0)
			m = snprintf(line, sizeof(line),
				     "RIG-PTY lflag_before=%x lflag_after=%x iflag_before=%x iflag_after=%x\n",
				     (unsigned)before.c_lflag, (unsigned)after.c_lflag,
				     (unsigned)before.c_iflag, (unsigned)after.c_iflag);
		else
			m = snprintf(line, sizeof(line), "RIG-PTY error=%d\n", errno);
		write_all(1, line, (size_t)m);
		if (again >= 0)
			close(again);
		close(pfd[1]);
	}
	close(pfd[0]);

	while (!reaped && waitpid(pid, &st, 0) < 0) {
		if (errno != EINTR) {
			perror("stamp: waitpid");
			return 2;
		}
		if (got_signal && !killed) {
			kill(pid, SIGKILL);
			killed = 1;
		}
	}
	int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
	double end = now_ms();
	char out[160];
	int m = snprintf(out, sizeof(out), "RIG-EXIT status=%d total_ms=%.0f tail_ms=%.0f%s\n",
			 code, end - t0, end - (last_words > 0 ? last_words : last_line),
			 got_signal ? " stamp_terminated=1" : "");
	write_all(1, out, (size_t)m);
	return got_signal ? 124 : code;
}
