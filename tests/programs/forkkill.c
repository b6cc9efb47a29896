/* Processes killed (SIGKILL) while they vfork in a loop: each killed one leaves a child
 * whose parent died around the fork. Prints "done N" when all N rounds are over. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    srand(getpid());
    for (int i = 0; i < rounds; i++) {
        pid_t b = fork();
        if (b < 0) {
            perror("fork");
            return 1;
        }
        if (b == 0) {
            for (;;) {
                pid_t c = vfork();
                if (c == 0)
                    _exit(0);
                if (c > 0)
                    waitpid(c, NULL, 0);
            }
        }
        usleep(1000 + rand() % 4000);
        kill(b, SIGKILL);
        waitpid(b, NULL, 0);
    }
    printf("done %d\n", rounds);
    return 0;
}
