/* Prints its environment sorted (NAME=VALUE lines), then HOSTNAME_UNAME=<uname nodename>. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>

extern char **environ;

static int cmp(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void) {
    size_t n = 0;
    while (environ[n]) n++;
    char **v = malloc((n + 1) * sizeof *v);
    if (!v) return 1;
    memcpy(v, environ, n * sizeof *v);
    qsort(v, n, sizeof *v, cmp);
    for (size_t i = 0; i < n; i++) puts(v[i]);
    struct utsname u;
    if (uname(&u) != 0) return 1;
    printf("HOSTNAME_UNAME=%s\n", u.nodename);
    return 0;
}
