"""HTTP methods the routes do not declare, answered in the server's JSON error shape.

uvicorn's HTTP parser (httptools) knows a fixed list of methods and answers any other one itself,
before the app sees the request, with a plain-text 400: a client sending ``BREW /v1/models``
would get the only non-JSON error of the server. :class:`JsonErrorsProtocol` answers those with
405 ``{"error": ...}`` and an ``Allow`` header, and any other unparsable request with a JSON 400.
"""

from __future__ import annotations

import json
import re
import sys

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# the request line of the request the parser choked on: the last one in the chunk it was fed
_REQUEST_LINE = re.compile(rb"(?:^|\n)[!#$%&'*+.^_`|~0-9A-Za-z-]+ ([^ \r\n]+) HTTP/1\.[01]\r?\n")
_STATUS = {400: b"400 Bad Request", 404: b"404 Not Found", 405: b"405 Method Not Allowed"}


class JsonErrorsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol (its speed kept) with JSON replies for what it cannot parse.

    The app must offer ``allowed_methods(path)`` (None: no such path), as :class:`ServeApp` does.
    """

    def data_received(self, data: bytes) -> None:
        self._last_data = data  # what send_400_response reads the path from
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        # called by uvicorn inside its `except httptools.HttpParserError`, so the error is at hand
        error = sys.exc_info()[1]
        if not isinstance(error, httptools.HttpParserInvalidMethodError):
            self._reply(400, {"error": f"invalid HTTP request ({error or msg}); see /docs for the API"}, [])
            return
        lines = _REQUEST_LINE.findall(getattr(self, "_last_data", b""))
        path = lines[-1].decode("latin-1").partition("?")[0] if lines else None
        allowed = self.config.app.allowed_methods(path) if path is not None else None
        if path is not None and allowed is None:
            self._reply(404, {"error": "no such endpoint; see /docs for the API"}, [])
            return
        allow = ", ".join(allowed or self.config.app.allowed_methods(None))
        message = f"method not allowed on this endpoint (it answers {allow}); see /docs for the API"
        self._reply(405, {"error": message}, [(b"allow", allow.encode())])

    def _reply(self, status: int, body: dict, headers: list[tuple[bytes, bytes]]) -> None:
        content = json.dumps(body).encode()
        headers = [
            *self.server_state.default_headers,
            *headers,
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(content)),
            (b"connection", b"close"),
        ]
        lines = [b"HTTP/1.1 " + _STATUS[status], *(name + b": " + value for name, value in headers), b"", content]
        self.transport.write(b"\r\n".join(lines))
        self.transport.close()
