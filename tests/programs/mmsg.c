/* sendmmsg/recvmmsg on an unconnected UDP socket: `mmsg IP PORT`.
 * Sends "m1" and "m2" to IP:PORT in one sendmmsg, then receives the two answers with
 * recvmmsg and prints each with the source address the kernel (or mirrord) reported. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: mmsg IP PORT\n");
        return 2;
    }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct timeval tv = {10, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in dest = {0};
    dest.sin_family = AF_INET;
    dest.sin_port = htons((unsigned short)atoi(argv[2]));
    inet_pton(AF_INET, argv[1], &dest.sin_addr);

    char *payload[2] = {"m1", "m2"};
    struct iovec out_iov[2];
    struct mmsghdr out[2];
    memset(out, 0, sizeof out);
    for (int i = 0; i < 2; i++) {
        out_iov[i].iov_base = payload[i];
        out_iov[i].iov_len = 2;
        out[i].msg_hdr.msg_iov = &out_iov[i];
        out[i].msg_hdr.msg_iovlen = 1;
        out[i].msg_hdr.msg_name = &dest;
        out[i].msg_hdr.msg_namelen = sizeof dest;
    }
    int sent = sendmmsg(s, out, 2, 0);
    printf("sent %d\n", sent);

    int got = 0;
    while (got < 2) {
        char buf[2][64];
        struct iovec in_iov[2];
        struct sockaddr_in from[2];
        struct mmsghdr in[2];
        memset(in, 0, sizeof in);
        for (int i = 0; i < 2; i++) {
            in_iov[i].iov_base = buf[i];
            in_iov[i].iov_len = sizeof buf[i] - 1;
            in[i].msg_hdr.msg_iov = &in_iov[i];
            in[i].msg_hdr.msg_iovlen = 1;
            in[i].msg_hdr.msg_name = &from[i];
            in[i].msg_hdr.msg_namelen = sizeof from[i];
        }
        int n = recvmmsg(s, in, 2 - got, MSG_WAITFORONE, NULL);
        if (n <= 0) {
            perror("recvmmsg");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            char ip[INET_ADDRSTRLEN];
            buf[i][in[i].msg_len] = 0;
            inet_ntop(AF_INET, &from[i].sin_addr, ip, sizeof ip);
            printf("recv %s from %s:%d\n", buf[i], ip, ntohs(from[i].sin_port));
        }
        got += n;
    }
    return 0;
}
