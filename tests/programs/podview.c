/* podview PORT COUNT: a program to debug under mirrord. It prints what it sees of the pod
 * (view(): APP_MODE, uname nodename, /srv/app/config.yaml, svc.pod.internal's address, the
 * body of GET http://svc.pod.internal:8080/), listens on PORT, then serves COUNT requests:
 * each one calls handle(), which prints the view again, answers "local" and prints
 * SERVED peer=ADDR. checkpoint() and handle() are the breakpoints of the tests. Built
 * with -g -O0 so that stepping follows the source. */
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <unistd.h>

int checkpoint(int step) {
    int doubled = step * 2;
    return doubled;
}

static void outgoing(const char *host) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    int err = getaddrinfo(host, "8080", &hints, &res);
    if (err != 0) {
        printf("RESOLVED=error:%s\n", gai_strerror(err));
        return;
    }
    char ip[64];
    inet_ntop(AF_INET, &((struct sockaddr_in *)res->ai_addr)->sin_addr, ip, sizeof ip);
    printf("RESOLVED=%s\n", ip);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, res->ai_addr, res->ai_addrlen) != 0) {
        perror("OUTGOING=error");
        freeaddrinfo(res);
        close(fd);
        return;
    }
    freeaddrinfo(res);
    const char *req = "GET / HTTP/1.0\r\nHost: svc\r\n\r\n";
    write(fd, req, strlen(req));
    char buf[4096];
    size_t got = 0;
    ssize_t n;
    while (got < sizeof buf - 1 && (n = read(fd, buf + got, sizeof buf - 1 - got)) > 0) got += n;
    buf[got] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    printf("OUTGOING=%s\n", body ? body + 4 : "(no body)");
    close(fd);
}

static void view(void) {
    const char *mode = getenv("APP_MODE");
    printf("APP_MODE=%s\n", mode ? mode : "(unset)");
    struct utsname u;
    uname(&u);
    printf("HOSTNAME=%s\n", u.nodename);
    FILE *f = fopen("/srv/app/config.yaml", "r");
    char line[256] = "(missing)";
    if (f) {
        if (!fgets(line, sizeof line, f)) strcpy(line, "(empty)");
        fclose(f);
        line[strcspn(line, "\n")] = 0;
    }
    printf("FILE=%s\n", line);
    outgoing("svc.pod.internal");
    fflush(stdout);
}

int handle(int conn, const struct sockaddr_in *peer) {
    char req[4096];
    ssize_t n = read(conn, req, sizeof req);
    view();
    const char *answer = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nlocal";
    write(conn, answer, strlen(answer));
    printf("SERVED peer=%s bytes=%zd\n", inet_ntoa(peer->sin_addr), n);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int port = atoi(argv[1]), count = atoi(argv[2]);
    int step = checkpoint(1);
    printf("CHECKPOINT=%d\n", step);
    view();
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (bind(ls, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(ls, 16) != 0) {
        perror("listen");
        return 1;
    }
    printf("LISTENING pid=%d\n", getpid());
    fflush(stdout);
    for (int i = 0; i < count; i++) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int conn = accept(ls, (struct sockaddr *)&peer, &len);
        if (conn < 0) {
            perror("accept");
            return 1;
        }
        handle(conn, &peer);
        close(conn);
    }
    return 0;
}
