/*
 * rigio: talk to a VMM's control socket from L1 and time what follows, for the hotplug
 * scenarios (tests/rig/l1/hotplug.sh): raw HTTP requests to vmm's --api-socket (the bad ones
 * included, which `vmm remote` never sends), QMP exchanges with QEMU, and waits for a line in
 * a VMM's console log, with timestamps on one clock (CLOCK_MONOTONIC, as /proc/uptime).
 *
 *   rigio STEP...
 *
 * Steps run in order; bytes read from the socket go to stdout as they come.
 *   connect PATH           connect to the Unix socket PATH
 *   send TEXT              write TEXT; \r, \n and \\ in it are CR, LF and a backslash
 *   http METHOD PATH BODY  one HTTP/1.1 request with its Content-Length; BODY "-" is none,
 *                          "@FILE" the bytes of FILE
 *   expect PAT [SECS]      read until PAT has come since the last expect (default 60 s);
 *                          PAT may list alternatives separated by '|' 
 *   readall [SECS]         read until the VMM closes the connection (default 60 s)
 *   hangup                 close the connection (a client that goes away)
 *   now NAME               print "RIG-AT name=NAME ms=M" on a line of its own
 *   mark FILE [OFFSET]     remember FILE's size (or OFFSET): wait looks only past it
 *   wait FILE PAT [SECS]   wait until FILE (after its mark) holds PAT, polling every 1 ms
 *   sleep MS               sleep
 *
 * A write to a VMM that closed its end prints "RIG-AT name=write-failed" and sends no more.
 * Exits 0 when every step was done, 2 when an expect, readall or wait timed out (printing
 * "RIG-AT name=timeout step=N"), 1 on any other failure (a message on stderr).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static int sock = -1;
static char *got;		/* socket bytes since the last expect */
static size_t got_len, got_cap;
static int at_line_start = 1;
static struct { const char *path; off_t mark; } marks[8];
static int nmarks;

static double now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *what)
{
	fprintf(stderr, "rigio: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void out(const char *p, size_t n)
{
	if (n == 0)
		return;
	fwrite(p, 1, n, stdout);
	fflush(stdout);
	at_line_start = p[n - 1] == '\n';
}

/* A VMM that closed its end while we still write: said once, the rest is not sent and the
 * steps go on (its answer may be there to read). */
static int write_closed;

static void write_all(const char *p, size_t n)
{
	while (n > 0 && !write_closed) {
		ssize_t w = write(sock, p, n);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EPIPE && errno != ECONNRESET)
				die("write");
			printf("%sRIG-AT name=write-failed ms=%.3f\n", at_line_start ? "" : "\n",
			       now_ms());
			fflush(stdout);
			at_line_start = 1;
			write_closed = 1;
			return;
		}
		p += w;
		n -= (size_t)w;
	}
}

/* Reads what is there within timeout_ms; 0 at EOF, -1 on timeout, else bytes read. */
static ssize_t read_some(int timeout_ms)
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	char buf[4096];
	ssize_t n;

	if (poll(&p, 1, timeout_ms) == 0)
		return -1;
	n = read(sock, buf, sizeof(buf));
	if (n < 0) {
		if (errno == ECONNRESET)
			return 0;
		die("read");
	}
	if (got_len + (size_t)n + 1 > got_cap) {
		got_cap = (got_len + (size_t)n + 1) * 2;
		got = realloc(got, got_cap);
		if (!got)
			die("realloc");
	}
	memcpy(got + got_len, buf, (size_t)n);
	got_len += (size_t)n;
	got[got_len] = 0;
	out(buf, (size_t)n);
	return n;
}

static void unescape(const char *s, char **res, size_t *len)
{
	char *d = malloc(strlen(s) + 1);
	size_t n = 0;

	if (!d)
		die("malloc");
	for (; *s; s++) {
		if (*s == '\\' && s[1] == 'r') {
			d[n++] = '\r';
			s++;
		} else if (*s == '\\' && s[1] == 'n') {
			d[n++] = '\n';
			s++;
		} else if (*s == '\\' && s[1] == '\\') {
			d[n++] = '\\';
			s++;
		} else {
			d[n++] = *s;
		}
	}
	*res = d;
	*len = n;
}

static char *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	struct stat st;
	char *d;
	ssize_t n;

	if (fd < 0 || fstat(fd, &st) < 0)
		die(path);
	d = malloc((size_t)st.st_size + 1);
	if (!d)
		die("malloc");
	n = read(fd, d, (size_t)st.st_size);
	if (n < 0)
		die(path);
	close(fd);
	*len = (size_t)n;
	return d;
}

static off_t *mark_of(const char *path)
{
	for (int i = 0; i < nmarks; i++)
		if (!strcmp(marks[i].path, path))
			return &marks[i].mark;
	if (nmarks == 8) {
		fprintf(stderr, "rigio: too many marks\n");
		exit(1);
	}
	marks[nmarks].path = path;
	marks[nmarks].mark = 0;
	return &marks[nmarks++].mark;
}

/* Whether FILE from *from on holds pat; moves *from past what cannot hold its start. */
static int file_has(const char *path, const char *pat, off_t *from)
{
	int fd = open(path, O_RDONLY);
	size_t plen = strlen(pat);
	struct stat st;
	int found = 0;

	if (fd < 0)
		return 0;
	if (fstat(fd, &st) == 0 && st.st_size > *from) {
		size_t n = (size_t)(st.st_size - *from);
		char *d = malloc(n);
		ssize_t r;

		if (!d)
			die("malloc");
		r = pread(fd, d, n, *from);
		found = r > 0 && memmem(d, (size_t)r, pat, plen);
		if (!found && r > 0 && (size_t)r >= plen)
			*from += r - (ssize_t)plen + 1;
		free(d);
	}
	close(fd);
	return found;
}

/* The first of the '|'-separated alternatives of pats in what came; *len its length. */
static char *find_any(const char *pats, size_t *len)
{
	char *best = NULL;
	const char *p = pats;

	while (got && *p) {
		const char *bar = strchr(p, '|');
		size_t n = bar ? (size_t)(bar - p) : strlen(p);
		char *at = n ? memmem(got, got_len, p, n) : NULL;

		if (at && (!best || at < best)) {
			best = at;
			*len = n;
		}
		p += n + (bar != NULL);
	}
	return best;
}

static void timeout(int step)
{
	printf("%sRIG-AT name=timeout step=%d ms=%.3f\n", at_line_start ? "" : "\n", step,
	       now_ms());
	exit(2);
}

/* The optional seconds argument of a step at argv[i], default 60. */
static int secs_at(int argc, char **argv, int i, int *used)
{
	if (i < argc && argv[i][0] >= '0' && argv[i][0] <= '9') {
		*used = 1;
		return atoi(argv[i]);
	}
	*used = 0;
	return 60;
}

static void need(int argc, int i, int n, const char *step)
{
	if (i + n >= argc) {
		fprintf(stderr, "rigio: %s needs %d argument(s)\n", step, n);
		exit(1);
	}
}

static void need_sock(const char *step)
{
	if (sock < 0) {
		fprintf(stderr, "rigio: %s before connect\n", step);
		exit(1);
	}
}

int main(int argc, char **argv)
{
	int step = 0;

	signal(SIGPIPE, SIG_IGN);
	for (int i = 1; i < argc; i++, step++) {
		const char *s = argv[i];
		int used;

		if (!strcmp(s, "connect")) {
			struct sockaddr_un a = { .sun_family = AF_UNIX };

			need(argc, i, 1, s);
			snprintf(a.sun_path, sizeof(a.sun_path), "%s", argv[++i]);
			sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
			write_closed = 0;
			if (sock < 0 || connect(sock, (struct sockaddr *)&a, sizeof(a)) < 0)
				die(a.sun_path);
			got_len = 0;
		} else if (!strcmp(s, "send")) {
			char *d;
			size_t n;

			need(argc, i, 1, s);
			need_sock(s);
			unescape(argv[++i], &d, &n);
			write_all(d, n);
			free(d);
		} else if (!strcmp(s, "http")) {
			const char *body_arg;
			char *body = NULL, head[1024];
			size_t n = 0;

			need(argc, i, 3, s);
			need_sock(s);
			body_arg = argv[i + 3];
			if (body_arg[0] == '@')
				body = slurp(body_arg + 1, &n);
			else if (strcmp(body_arg, "-"))
				unescape(body_arg, &body, &n);
			snprintf(head, sizeof(head),
				 "%s %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
				 "Content-Length: %zu\r\n\r\n", argv[i + 1], argv[i + 2], n);
			write_all(head, strlen(head));
			if (n)
				write_all(body, n);
			free(body);
			i += 3;
		} else if (!strcmp(s, "expect")) {
			const char *pats;
			double end;
			size_t rest = 0;
			char *at;

			need(argc, i, 1, s);
			need_sock(s);
			pats = argv[++i];
			end = now_ms() + 1000.0 * secs_at(argc, argv, i + 1, &used);
			i += used;
			while (!(at = find_any(pats, &rest))) {
				int left = (int)(end - now_ms());

				if (left <= 0 || read_some(left) == 0)
					timeout(step);
			}
			/* What came after the match stays for the next expect. */
			memmove(got, at + rest, got_len - (size_t)(at + rest - got) + 1);
			got_len -= (size_t)(at + rest - got);
		} else if (!strcmp(s, "readall")) {
			double end;
			ssize_t r;

			need_sock(s);
			end = now_ms() + 1000.0 * secs_at(argc, argv, i + 1, &used);
			i += used;
			do {
				int left = (int)(end - now_ms());

				if (left <= 0)
					timeout(step);
				r = read_some(left);
			} while (r != 0);
		} else if (!strcmp(s, "hangup")) {
			need_sock(s);
			close(sock);
			sock = -1;
		} else if (!strcmp(s, "now")) {
			need(argc, i, 1, s);
			printf("%sRIG-AT name=%s ms=%.3f\n", at_line_start ? "" : "\n", argv[++i],
			       now_ms());
			fflush(stdout);
			at_line_start = 1;
		} else if (!strcmp(s, "mark")) {
			struct stat st;
			off_t *m;

			need(argc, i, 1, s);
			m = mark_of(argv[++i]);
			*m = stat(argv[i], &st) == 0 ? st.st_size : 0;
			if (i + 1 < argc && argv[i + 1][0] >= '0' && argv[i + 1][0] <= '9')
				*m = atoll(argv[++i]);
		} else if (!strcmp(s, "wait")) {
			double end;
			const char *path, *pat;
			off_t from;

			need(argc, i, 2, s);
			path = argv[i + 1];
			pat = argv[i + 2];
			i += 2;
			end = now_ms() + 1000.0 * secs_at(argc, argv, i + 1, &used);
			i += used;
			from = *mark_of(path);
			while (!file_has(path, pat, &from)) {
				if (now_ms() > end)
					timeout(step);
				usleep(1000);
			}
		} else if (!strcmp(s, "sleep")) {
			need(argc, i, 1, s);
			usleep((useconds_t)atoi(argv[++i]) * 1000);
		} else {
			fprintf(stderr, "rigio: unknown step '%s'\n", s);
			return 1;
		}
	}
	return 0;
}
