/* Starts 20 threads; each calls uname() and records the nodename. Prints one line per
 * thread ("thread I: NODENAME"), then "all-equal=yes|no". Exit 0. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/utsname.h>

#define N 20
static char names[N][sizeof(((struct utsname *)0)->nodename)];

static void *work(void *arg) {
    struct utsname u;
    long i = (long)arg;
    if (uname(&u) == 0) {
        memcpy(names[i], u.nodename, sizeof names[i]);
    }
    return NULL;
}

int main(void) {
    pthread_t t[N];
    for (long i = 0; i < N; i++) pthread_create(&t[i], NULL, work, (void *)i);
    for (int i = 0; i < N; i++) pthread_join(t[i], NULL);
    int equal = 1;
    for (int i = 0; i < N; i++) {
        printf("thread %d: %s\n", i, names[i]);
        if (strcmp(names[i], names[0]) != 0) equal = 0;
    }
    printf("all-equal=%s\n", equal ? "yes" : "no");
    return 0;
}
