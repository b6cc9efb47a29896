/* connect() to IP:PORT (blocking) while SIGALRM, whose handler has no SA_RESTART, fires
 * every INTERVAL_MS: prints when connect returned and how ("EINTR after 0.251"). */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

static void tick(int sig) { (void)sig; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: slowconnect IP PORT INTERVAL_MS\n");
        return 2;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = tick; /* no SA_RESTART: connect fails with EINTR */
    sigaction(SIGALRM, &sa, NULL);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &addr.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    long us = atol(argv[3]) * 1000;
    struct itimerval it = {{us / 1000000, us % 1000000}, {us / 1000000, us % 1000000}};
    double t0 = now();
    setitimer(ITIMER_REAL, &it, NULL);
    int r = connect(s, (struct sockaddr *)&addr, sizeof addr);
    double t = now() - t0;
    printf("%s after %.3f\n", r == 0 ? "connected" : strerror(errno), t);
    return 0;
}
