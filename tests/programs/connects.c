/* N blocking connects to IP:PORT, each followed by an HTTP GET, while SIGALRM (handler
 * without SA_RESTART) fires every millisecond. A connect that fails with EINTR goes on
 * connecting natively: the program then waits for writability, as CPython does, and
 * tries the socket anyway. Prints one line:
 *   ok O broken B eintr_fast F broken_fast BF eintr_slow S broken_slow BS
 * (fast: EINTR within FAST_S of the call, as when the kernel ends it before mirrord got it; usable: the GET got the body "service"). */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define FAST_S 0.001

static void tick(int sig) { (void)sig; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Retry on EINTR: the handler fires all the time. */
static int usable(int s) {
    struct pollfd p = {s, POLLOUT, 0};
    double end = now() + 5;
    while (poll(&p, 1, 100) <= 0 && now() < end)
        ;
    static const char req[] = "GET / HTTP/1.0\r\n\r\n";
    size_t sent = 0;
    while (sent < sizeof req - 1) {
        ssize_t n = send(s, req + sent, sizeof req - 1 - sent, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        sent += (size_t)n;
    }
    char buf[4096];
    size_t got = 0;
    while (got < sizeof buf - 1) {
        ssize_t n = recv(s, buf + got, sizeof buf - 1 - got, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += (size_t)n;
    }
    buf[got] = 0;
    return strstr(buf, "service") != NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: connects IP PORT N\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tick;
    sigaction(SIGALRM, &sa, NULL);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    int n = atoi(argv[3]);
    int ok = 0, broken = 0, eintr_fast = 0, broken_fast = 0, eintr_slow = 0, broken_slow = 0;
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_REAL, &it, NULL);
    for (int i = 0; i < n; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        double t0 = now();
        int r = connect(s, (struct sockaddr *)&addr, sizeof addr);
        int interrupted = r < 0 && errno == EINTR;
        int fast = now() - t0 < FAST_S;
        if (r < 0 && !interrupted) {
            printf("connect: %s\n", strerror(errno));
            return 1;
        }
        int good = usable(s);
        ok += good;
        broken += !good;
        if (interrupted && fast) {
            eintr_fast++;
            broken_fast += !good;
        } else if (interrupted) {
            eintr_slow++;
            broken_slow += !good;
        }
        close(s);
    }
    printf("ok %d broken %d eintr_fast %d broken_fast %d eintr_slow %d broken_slow %d\n", ok,
           broken, eintr_fast, broken_fast, eintr_slow, broken_slow);
    return 0;
}
