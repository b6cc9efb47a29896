/* spawner PROG [ARGS...]: runs PROG once with posix_spawn and once with vfork+exec;
 * prints "posix_spawn=<exit code>" and "vfork=<exit code>" (-1 if not a normal exit). */
#include <spawn.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static int code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: spawner PROG [ARGS...]\n"); return 2; }
    pid_t pid;
    int status = 0;
    int err = posix_spawn(&pid, argv[1], NULL, NULL, &argv[1], environ);
    if (err != 0) { fprintf(stderr, "posix_spawn failed: %d\n", err); return 1; }
    waitpid(pid, &status, 0);
    printf("posix_spawn=%d\n", code(status));
    fflush(stdout);
    pid = vfork();
    if (pid == 0) {
        execv(argv[1], &argv[1]);
        _exit(127);
    }
    if (pid < 0) { perror("vfork"); return 1; }
    waitpid(pid, &status, 0);
    printf("vfork=%d\n", code(status));
    return 0;
}
