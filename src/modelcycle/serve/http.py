"""Binding a socket and running an app under uvicorn until SIGTERM or Ctrl-C: what every kind of
server (images, language models, reward models) shares, below all of them."""

from __future__ import annotations

import gc
import socket

from modelcycle.config import ServeSection
from modelcycle.errors import UserError
from modelcycle.progress import info


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port (0: any free one)"
        ) from None
    sock.listen(2048)
    return sock


def run(app, cfg: ServeSection, lines: list[str], endpoints: str, keyed: bool) -> None:
    """Bind and run ``app`` until SIGTERM or Ctrl-C; ``endpoints`` names its pages ({url} filled in)."""
    import uvicorn

    # torch, ONNX Runtime and FastAPI leave ~250k long-lived objects that every full garbage
    # collection would walk again (about a second each on these machines, the event loop blocked):
    # moved out of the collector's sight, collections only see what requests allocate
    gc.collect()
    gc.freeze()
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    for line in lines:
        info(line)
    auth = f"Bearer key from ${cfg.api_key_env}" if keyed else "no API key"
    info(f"listening on {url}  ({endpoints.format(url=url)}; {auth})")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            http=getattr(app, "http_protocol", "auto"),  # the image server's: JSON for unknown methods
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=cfg.graceful_timeout_s,
            timeout_keep_alive=30,
        )
    )
    app.state.server = server  # long-lived responses (the dashboard's event streams) end when it stops
    # uvicorn re-raises SIGTERM/SIGINT once shut down, so the exit status says what stopped it
    server.run(sockets=[sock])
