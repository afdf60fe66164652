"""A client that sends every request on one kept-alive connection, as a connection pool
does (aiohttp's to the coordinator, nginx's upstream keep-alive), and notices a server
that closes it without saying so: the next request then gets no response."""

import socket
from dataclasses import dataclass, field

import h11


class ClosedUnannounced(Exception):
    """The server closed a connection it had not said it would close."""


@dataclass
class KeepAliveClient:
    host: str
    port: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    connections: int = 0  # opened so far
    announced_closes: int = 0  # responses that said "Connection: close"
    _sock: socket.socket | None = None
    _conn: h11.Connection | None = None

    def request(self, method: str, path: str, body: bytes = b"") -> int:
        """The response's status; ClosedUnannounced if the connection was dropped under
        this request."""
        sock, conn = self._connection()
        head = [("Host", self.host), ("Content-Length", str(len(body))), *self.headers]
        try:
            sock.sendall(conn.send(h11.Request(method=method, target=path, headers=head)))
            # the server may answer (413, 405) and stop reading before the body is in
            sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
        except (BrokenPipeError, ConnectionResetError) as exc:
            if conn.their_state is h11.IDLE:  # nothing came back: it was closed before
                self.close()
                raise ClosedUnannounced(f"{method} {path}: {exc}") from exc
        return self._response(method, path)

    def _connection(self) -> tuple[socket.socket, h11.Connection]:
        if self._sock is None or self._conn is None:
            self._sock = socket.create_connection((self.host, self.port), timeout=30)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = h11.Connection(h11.CLIENT)
            self.connections += 1
        return self._sock, self._conn

    def _response(self, method: str, path: str) -> int:
        sock, conn = self._connection()
        status, close = 0, False
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data and not status:
                    self.close()
                    raise ClosedUnannounced(f"{method} {path}: closed without a response")
                conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
                close = (b"connection", b"close") in [
                    (k.lower(), v.lower()) for k, v in event.headers
                ]
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        if close or h11.MUST_CLOSE in (conn.our_state, conn.their_state):
            self.announced_closes += close
            self.close()
        else:
            conn.start_next_cycle()
        return status

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock, self._conn = None, None
