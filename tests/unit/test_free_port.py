"""services/cli/procs.py free_port: a port for a child to bind later, outside the ephemeral range."""

from __future__ import annotations

import socket

import pytest

from services.cli.procs import ephemeral_ports, free_port


def test_ports_lie_below_the_ephemeral_range_are_bindable_and_never_repeat():
    start, _ = ephemeral_ports()
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if start - 10000 >= 1000:  # else the kernel's own pick is used
        assert all(10000 <= p < start for p in ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # raises if it was taken


def test_a_port_something_listens_on_is_never_given_out():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="no free loopback port"):
            free_port((busy, busy))
