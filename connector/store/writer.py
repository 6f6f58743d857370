"""The batch writer in a process of its own (`store.writer`): a child process with its own
connection runs `Store.write_batch`, so the row building and the SQL run on the other core
instead of competing with the event loop for the GIL (docs/performance.md, "Issue 19,
session 5").

Nothing about a batch changes: the child runs the same `write_batch` in one transaction with
the batch's checkpoint and the fence check, and answers with its counts; batches are written
one at a time, in order. The parent sends each accepted invoice as the `content_json` it
already made for the hash, and the rejects as they are; the child builds an invoice's model
only where a step needs it (`Accepted`).

When the child is forked, it shares the parent's imported modules copy-on-write (20-33 MB of
its own in the benchmark, instead of the 56 MB a fresh interpreter with the store loaded
takes). Forking is only safe while the process has no other thread, which is why the writer is
started when the engine is built, not when a run first needs it. The child dies with its
parent (a SIGKILL of the connector leaves no writer behind to finish a batch), ignores SIGINT
(the parent decides when writing stops: a batch being written is always finished), ends on
SIGTERM once idle, and ends when the parent closes its end of the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import select
import signal
import socket
import struct
import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from connector.errors import LockLost, StoreError, StoreUnreachable
from connector.settings import WriterMode
from connector.store.bulk import Accepted, Rejected
from connector.store.runs import BatchCounts
from connector.store.store import Store

# Errors the child reports by name, raised again in the parent as the same class (the engine
# and the daemon tell a lost lock and an unreachable database from other store failures).
_STORE_ERRORS: dict[str, type[StoreError]] = {
    cls.__name__: cls for cls in (StoreError, StoreUnreachable, LockLost)
}
_PR_SET_PDEATHSIG = 1
# Each message on the socket: its length, then a pickle.
_HEADER = struct.Struct("!Q")


def fork_is_safe() -> bool:
    """Whether forking now is safe: a fork copies every lock in the state it is in, and a lock
    another thread held at that moment would never be released in the child."""
    return hasattr(os, "fork") and threading.active_count() == 1


def shareable(url: str) -> bool:
    """Whether a second process can open the store at `url` (an in-memory SQLite cannot)."""
    if not url.startswith("sqlite"):
        return True
    database = url.split("://", 1)[-1].lstrip("/")
    return bool(database) and ":memory:" not in database and "mode=memory" not in database


def start_writer(mode: WriterMode, url: str | None) -> WriterProcess | None:
    """The writer process `mode` asks for, or None for the thread writer. `auto` forks one
    when that is safe (a process without threads yet: the `connector` command, the benchmark)
    and otherwise keeps the thread; `process` spawns a fresh interpreter when it cannot fork."""
    if mode == "thread" or url is None or not shareable(url):
        return None
    fork = fork_is_safe()
    if mode == "auto" and not fork:
        return None
    return WriterProcess(url, fork=fork)


class WriterProcess:
    """The parent's side: `submit` takes a batch as `Store.write_batch` does and gives a future
    of its counts, answered by the child.

    A batch is sent at once, in the call, while the child is idle and reading: so the child
    starts on it while the loop maps the next page. Sent by a task (or by a thread), it would
    have waited for the loop's next turn (or each 64 KB chunk for the GIL), and the two
    processes took turns instead of working side by side. The answer is read by a callback of
    the loop (`add_reader`). Batches submitted while one is being written wait in order, and
    are sent when the child is idle again."""

    def __init__(self, url: str, *, fork: bool) -> None:
        context: Any = multiprocessing.get_context("fork" if fork else "spawn")
        self.start_method = "fork" if fork else "spawn"
        ours, theirs = socket.socketpair()
        self._process = context.Process(
            target=serve,
            # A forked child holds a copy of our end too: it closes it, or it would never see
            # ours close.
            args=(url, theirs, ours.fileno() if fork else None),
            name="connector-store-writer",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._queue: deque[tuple[bytes, asyncio.Future[BatchCounts]]] = deque()
        self._writing: asyncio.Future[BatchCounts] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._answer = bytearray()
        self._broken: str | None = None

    @property
    def pid(self) -> int | None:
        pid: int | None = self._process.pid
        return pid

    def submit(
        self,
        run_id: int,
        source: str,
        accepted: Sequence[Accepted],
        rejected: Sequence[Rejected],
        *,
        fetched: int,
        resume: dict[str, Any] | None,
        track_state: bool = True,
    ) -> asyncio.Future[BatchCounts]:
        """Write one batch (in its transaction, with its checkpoint); call on the event loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[BatchCounts] = loop.create_future()
        if self._writing is not None and self._loop is not loop:
            # The loop that sent the batch being written is gone (a run cut off at its end).
            self._break("a batch of an earlier event loop was never answered")
        if self._broken is not None:
            future.set_exception(StoreError(self._broken))
            return future
        invoices = [(a.id, _content(a), a.content_hash) for a in accepted]
        message = (run_id, source, invoices, list(rejected), fetched, resume, track_state)
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._queue.append((_HEADER.pack(len(data)) + data, future))
        if self._writing is None:
            self._send_next(loop)
        return future

    def _send_next(self, loop: asyncio.AbstractEventLoop) -> None:
        data, future = self._queue.popleft()
        try:
            _send_all(self._sock, data)
        except OSError:
            self._break(self._ended())
            future.set_exception(StoreError(self._broken or "the store writer process ended"))
            return
        self._writing, self._loop = future, loop
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        try:
            chunk = self._sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._break(self._ended())
            return
        self._answer += chunk
        if len(self._answer) < _HEADER.size:
            return
        size = _HEADER.unpack_from(self._answer)[0]
        if len(self._answer) < _HEADER.size + size:
            return
        reply = pickle.loads(self._answer[_HEADER.size : _HEADER.size + size])
        del self._answer[: _HEADER.size + size]
        future, loop = self._writing, self._loop
        self._writing = None
        assert future is not None and loop is not None
        loop.remove_reader(self._sock.fileno())
        if not future.done():  # a run cut off while its batch was written: the answer is read
            _settle(future, reply)
        if self._queue:
            self._send_next(loop)

    def _break(self, why: str) -> None:
        """No answer can be trusted to match its batch any more: fail every batch waiting."""
        self._broken = why
        if self._loop is not None and self._writing is not None:
            with contextlib.suppress(Exception):  # that loop may be closed already
                self._loop.remove_reader(self._sock.fileno())
        waiting = [self._writing] if self._writing is not None else []
        waiting += [future for _, future in self._queue]
        self._writing = None
        self._queue.clear()
        for future in waiting:
            if not future.done() and not future.get_loop().is_closed():
                future.set_exception(StoreError(why))

    def _ended(self) -> str:
        self._process.join(timeout=1.0)
        code = self._process.exitcode
        how = "is still running" if code is None else f"exited with {code}"
        return (
            f"the store writer process ended while writing a batch ({how}): the batch and its "
            "checkpoint were kept whole or not at all, and the next run resumes from the last "
            "checkpoint"
        )

    def close(self, timeout: float = 30.0) -> None:
        """Let the child finish what it was sent and end (idempotent): closing the socket is
        its signal."""
        if self._broken is None:
            self._broken = "the store writer process was closed; nothing more is written"
        with contextlib.suppress(OSError):
            self._sock.close()
        self._process.join(timeout)
        if self._process.exitcode is None:
            self._process.kill()
            self._process.join(timeout=5.0)


def _settle(future: asyncio.Future[BatchCounts], reply: tuple[Any, ...]) -> None:
    if reply[0] == "ok":
        future.set_result(reply[1])
        return
    _, name, text = reply
    known = _STORE_ERRORS.get(name)
    future.set_exception(
        known(text) if known is not None else RuntimeError(f"store writer process: {name}: {text}")
    )


def _send_all(sock: socket.socket, data: bytes) -> None:
    """Send all of `data` on the non-blocking `sock`, waiting for room: the child is idle and
    reads as it comes, so this holds the loop for about the time of the copy."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            select.select([], [sock], [], 1.0)
            continue
        view = view[sent:]


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    """The child's blocking read; None when the parent closed its end first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if count == 0:
            return None
        got += count
    return bytes(buffer)


def _content(accepted: Accepted) -> bytes:
    content = accepted.content_json
    return content if content is not None else accepted.invoice.content_json()


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies (as a SIGKILL of the
    connector would have killed a writer thread). Elsewhere the closed pipe ends it."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def serve(url: str, sock: socket.socket, parent_end: int | None) -> None:
    """The child: write each batch the socket brings, answer with its counts or its error; end
    when the parent closes its end (or dies), or on SIGTERM (after the batch it is writing)."""
    if parent_end is not None:
        os.close(parent_end)
    _die_with_parent()
    # Ctrl-C reaches the whole process group: the parent decides when writing stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked child would otherwise wake the parent's event loop on a signal of its own.
    signal.set_wakeup_fd(-1)
    child = _Child(url, sock)
    signal.signal(signal.SIGTERM, child.on_sigterm)
    try:
        child.run()
    finally:
        child.close()


class _Child:
    def __init__(self, url: str, sock: socket.socket) -> None:
        self.url = url
        self.sock = sock
        self.store: Store | None = None
        self.busy = False
        self.stopping = False

    def on_sigterm(self, _signum: int, _frame: object) -> None:
        # multiprocessing terminates its daemonic children at exit with SIGTERM: end now when
        # idle, else once the batch being written is answered.
        if not self.busy:
            raise SystemExit(0)
        self.stopping = True

    def run(self) -> None:
        while not self.stopping:
            try:
                header = _read_exactly(self.sock, _HEADER.size)
                size = None if header is None else _HEADER.unpack(header)[0]
                data = None if size is None else _read_exactly(self.sock, size)
            except OSError:
                return
            if data is None:
                return  # the parent closed its end
            self.busy = True
            answer = pickle.dumps(self.write(data), protocol=pickle.HIGHEST_PROTOCOL)
            try:
                self.sock.sendall(_HEADER.pack(len(answer)) + answer)
            except OSError:
                return
            self.busy = False

    def write(self, data: bytes) -> tuple[Any, ...]:
        run_id, source, invoices, rejected, fetched, resume, track_state = pickle.loads(data)
        try:
            if self.store is None:
                self.store = Store(self.url, migrate=False)
            accepted = [
                Accepted(None, digest, content, invoice_id=invoice_id)
                for invoice_id, content, digest in invoices
            ]
            counts = self.store.write_batch(
                run_id,
                source,
                accepted,
                rejected,
                fetched=fetched,
                resume=resume,
                track_state=track_state,
            )
        except Exception as exc:  # every failure goes back to the run that sent the batch
            return ("error", type(exc).__name__, str(exc))
        return ("ok", counts)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
