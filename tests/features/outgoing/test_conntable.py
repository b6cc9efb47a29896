"""The /proc/net/tcp parser the proxy prunes its direct-connection notes with."""

from mirrord.features.outgoing.conntable import bound_ports, local_ports_connected_to

TABLE = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
   0: 0100007F:9C40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0
   1: 0100007F:D431 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000
   2: 0100007F:D432 0100007F:9C40 06 00000000:00000000 03:00001000 00000000     0
   3: 0100007F:D433 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000
   4: 0100007F:D434 0100007F:9C40 08 00000000:00000000 00:00000000 00000000  1000
"""


def test_connections_to_a_port_but_time_wait() -> None:
    # 0x9C40 = 40000: a listener (remote 0), an established one, a TIME_WAIT, another
    # port's, a CLOSE_WAIT (still the program's socket).
    assert local_ports_connected_to(TABLE, 40000) == {0xD431, 0xD434}
    assert local_ports_connected_to(TABLE, 8080) == {0xD433}
    assert local_ports_connected_to("header only\n", 40000) == set()


UDP_TABLE = """   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
  123: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0
  456: 00000000:D431 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1000
  789: garbage
"""


def test_bound_udp_ports() -> None:
    # 0x35 = 53 unconnected, 0xD431 connected (to an interceptor); a broken line is skipped
    assert bound_ports(UDP_TABLE) == {53, 0xD431}
    assert bound_ports("header only\n") == set()
