/* forker [N] [PROG [ARGS...]]: forks N children (default 100) that each exec PROG
 * (default /bin/true); reports how many exited 0; exit 0 iff all did. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 100;
    char *deflt[] = {"/bin/true", NULL};
    char **prog = argc > 2 ? &argv[2] : deflt;
    int ok = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) { perror("fork"); break; }
        if (pid == 0) {
            execv(prog[0], prog);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0)
            ok++;
    }
    printf("ok=%d of %d\n", ok, n);
    return ok == n ? 0 : 1;
}
