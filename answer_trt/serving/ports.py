"""One server per port: ``answer-trt serve`` checks, before Ray starts, that nothing listens
on its ``--host``/``--port``.

Ray Serve's proxy listens with ``SO_REUSEPORT``, so a second proxy on the same port would
start and take part of the first one's connections (the kernel balances between them).
A socket without ``SO_REUSEPORT`` cannot bind a port on which any socket listens, so one
trial bind tells. ``SO_REUSEADDR`` is set so that connections of a server stopped a moment
ago (TIME_WAIT) do not count as a listener (on Linux it never lets a bind share a port
with a listening socket). A server that starts between this check and Ray's bind is not
caught; the window is Ray's start-up (seconds).
"""

from __future__ import annotations

import errno
import socket

from answer_trt.errors import UserInputError


class PortInUseError(UserInputError):
    """Something already listens on the address ``serve`` was asked to use (exit 1: the
    command is right, the machine is busy)."""


def check_port_free(host: str, port: int) -> None:
    """Raise ``PortInUseError`` when a socket listens on ``host:port``, and
    ``UserInputError`` when ``host`` is not an address this machine can listen on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError):
        raise UserInputError(f"--host {host!r} is not an address or host name this machine can resolve: use an "
                             "address of this machine, e.g. 127.0.0.1 or 0.0.0.0") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as trial:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            trial.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"--port {port}: something already listens on {host}:{port} (another answer-trt "
                                     "serve?): stop it, or choose another --port") from None
            if exc.errno == errno.EACCES:
                raise UserInputError(f"--port {port}: this user may not listen on it (ports below 1024 need "
                                     "privileges): choose a port from 1024 up") from None
            raise UserInputError(f"--host {host}: cannot listen there ({exc.strerror}): use an address of this "
                                 "machine, e.g. 127.0.0.1 or 0.0.0.0") from None
