/* Children started with CLONE_UNTRACED, through clone3 and through clone: each prints
 * whether it has a tracer (TracerPid in /proc/self/status) and its uname nodename.
 * Under mirrord both must still be served: the ptrace engine clears the flag, the notify
 * engine's filter is inherited whatever the flags (and it is no tracer). */
#define _GNU_SOURCE
#include <linux/sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

static void child(const char *how) {
    char line[256];
    int traced = 0;
    FILE *f = fopen("/proc/self/status", "r");
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "TracerPid:", 10) == 0) traced = atoi(line + 10) != 0;
    struct utsname u;
    uname(&u);
    printf("%s child %s %s\n", how, traced ? "traced" : "untraced", u.nodename);
    fflush(stdout);
    _exit(0);
}

int main(void) {
    struct clone_args args;
    memset(&args, 0, sizeof args);
    args.flags = CLONE_UNTRACED;
    args.exit_signal = SIGCHLD;
    long pid = syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) child("clone3");
    if (pid < 0 || waitpid((pid_t)pid, NULL, 0) < 0) {
        perror("clone3");
        return 1;
    }
    pid = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) child("clone");
    if (pid < 0 || waitpid((pid_t)pid, NULL, 0) < 0) {
        perror("clone");
        return 1;
    }
    return 0;
}
