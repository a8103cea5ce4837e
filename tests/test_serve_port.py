"""One server per port: `answer-trt serve` refuses a busy port before Ray starts (a second
Ray Serve proxy would share it through SO_REUSEPORT and take part of the traffic)."""

from __future__ import annotations

import socket

import pytest

from answer_trt.errors import UserInputError
from answer_trt.serving.ports import PortInUseError, check_port_free


def _listener(reuse_port: bool) -> socket.socket:
    """A socket listening on a free 127.0.0.1 port, made as servers make it (SO_REUSEADDR), and
    as Ray's proxy makes it (SO_REUSEPORT too) where ``reuse_port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


@pytest.mark.parametrize("reuse_port", [True, False])
def test_a_port_where_a_server_listens_is_refused(reuse_port):
    with _listener(reuse_port) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"--port {port}: something already listens on 127.0.0.1:{port}"):
            check_port_free("127.0.0.1", port)
    check_port_free("127.0.0.1", port)  # free again once it closed


def test_a_port_left_in_time_wait_is_not_taken_for_a_server():
    """A server stopped a moment ago leaves connections in TIME_WAIT: that is no listener."""
    with _listener(False) as server:
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        conn.close()  # the server side closes first: its end waits in TIME_WAIT
        client.close()
    check_port_free("127.0.0.1", port)


@pytest.mark.parametrize("host", ["999.1.1.1", "no such host.invalid", "203.0.113.7"])
def test_a_host_this_machine_cannot_listen_on_is_refused_in_one_line(host):
    with pytest.raises(UserInputError, match=r"^--host ") as caught:
        check_port_free(host, 8123)
    assert not isinstance(caught.value, PortInUseError) and "\n" not in str(caught.value)


def test_serve_exits_1_on_a_busy_port_before_ray_starts(capsys):
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed: pip install -c constraints.txt -e '.[serve]'")
    import sys

    from answer_trt.cli import main

    with _listener(True) as busy:
        port = busy.getsockname()[1]
        assert main(["serve", "--model", "tiny", "--port", str(port)]) == 1
    err = capsys.readouterr().err
    assert f"something already listens on 127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1
    assert not sys.modules["ray"].is_initialized()  # refused before Ray started


def test_replicas_have_an_upper_bound():
    from answer_trt.serving.app import MAX_REPLICAS, check_serve_flags

    check_serve_flags("127.0.0.1", 8000, MAX_REPLICAS, None, None)
    with pytest.raises(UserInputError, match=f"--replicas 1000000 is above the limit of {MAX_REPLICAS}"):
        check_serve_flags("127.0.0.1", 8000, 1_000_000, None, None)
