"""Outgoing network traffic through the target (feature.network.outgoing / dns).

`feature.network_feature(rules, redirector)` is the supervisor Feature: the syscall table
of the socket calls. What stops: connect, getpeername, getsockname, sendmsg, recvmsg,
sendmmsg, recvmmsg always; sendto and recvfrom only when an address pointer is given
(plain send/recv on connected sockets never stop). read/write never stop.

Importing the package imports none of its modules: the config check needs `config` and
`filters`, not the handlers, the proxy and gRPC.
"""
