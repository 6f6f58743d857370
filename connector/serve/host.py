"""Running the app on uvicorn: in the foreground (`connector serve`), in a thread of its own
(`start_in_thread`: what the daemon or a test calls), or as a task of the caller's event loop
(`serve_until`). The socket is bound here, before uvicorn starts, so a taken port fails the
caller at once; uvicorn's own logging and access log stay off (the app logs its requests
through the connector's logging, without keys or query strings).
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn

from connector.errors import ConnectorError
from connector.settings import ServeSettings


class ServeError(ConnectorError):
    """The server could not start (port taken, bad certificate)."""


def uvicorn_config(app: object, settings: ServeSettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
        timeout_graceful_shutdown=10,
    )


def bind(settings: ServeSettings) -> socket.socket:
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says TCP; without it Nagle and delayed ACKs stall every answer ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ServeError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def base_url(settings: ServeSettings, sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if settings.tls_certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


async def serve_until(app: object, settings: ServeSettings, stop: asyncio.Event) -> None:
    """Serve on the running loop until `stop` is set, then finish the requests in flight."""
    sock = bind(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await stop.wait()
    finally:
        server.should_exit = True
        await task
        sock.close()


@dataclass
class RunningServer:
    """A server in its own thread and event loop; `stop()` ends it gracefully."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    sock: socket.socket
    _stopped: bool = field(default=False)

    def stop(self, timeout: float = 15.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()


def start_in_thread(
    app: object, settings: ServeSettings, *, ready_timeout: float = 15.0
) -> RunningServer:
    """Start serving in a background thread; returns once requests are answered."""
    sock = bind(settings)
    server = uvicorn.Server(uvicorn_config(app, settings))
    # uvicorn installs signal handlers only in the main thread, so a host keeps its own.
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="serve", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ServeError("the server did not start (see the log for why)")
        time.sleep(0.01)
    return RunningServer(base_url(settings, sock), server, thread, sock)


def run_foreground(app: object, settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM, then finish the requests in flight and return (exit 0).

    uvicorn runs in its thread (`start_in_thread`), so these handlers are ours: uvicorn's own
    would re-raise the signal after its graceful stop and end the process with -15."""
    stop = threading.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        running = start_in_thread(app, settings)
        try:
            while not stop.wait(0.5):
                if not running.thread.is_alive():
                    raise ServeError("the server stopped on its own (see the log for why)")
        finally:
            running.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
