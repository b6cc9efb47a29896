/* exitwith code N: exit(N).  exitwith signal N: die of signal N (default action restored). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: exitwith code|signal N\n"); return 2; }
    int n = atoi(argv[2]);
    if (strcmp(argv[1], "code") == 0) return n & 0xff;
    if (strcmp(argv[1], "signal") == 0) {
        sigset_t set;
        signal(n, SIG_DFL);  /* an inherited SIG_IGN would otherwise keep us alive */
        sigemptyset(&set);
        sigaddset(&set, n);
        sigprocmask(SIG_UNBLOCK, &set, NULL);
        raise(n);
        return 125;  /* the signal's default action did not end us (e.g. SIGCHLD) */
    }
    fprintf(stderr, "usage: exitwith code|signal N\n");
    return 2;
}
