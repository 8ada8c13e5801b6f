"""signaling.cluster.free_port: the ports tests and `signaling dev` start
processes on."""

import socket

from signaling.cluster import _ephemeral_low, free_port


def test_free_ports_are_below_the_ephemeral_range_and_never_handed_out_twice() -> None:
    """An ephemeral port can be taken as the source port of an outgoing
    connection before the process meant to listen on it starts (a cluster
    node failed to start that way in CI)."""
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= port < _ephemeral_low() for port in ports)
    with socket.socket() as listener:  # and each is free to listen on
        listener.bind(("127.0.0.1", ports[0]))
