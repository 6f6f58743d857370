"""`connector serve`: the store as a MediTrak import-contract API (list + get-by-id) with
per-consumer keys, plus /healthz and Prometheus /metrics, on FastAPI and uvicorn.

Below the daemon, which can host it (`start_in_thread` / `serve_until`), and above the store,
whose read queries it uses (`connector.store.serving`). docs/serving.md says how to use it.
"""

from connector.serve.app import HealthProbe, create_app
from connector.serve.host import RunningServer, ServeError, serve_until, start_in_thread

__all__ = [
    "HealthProbe",
    "RunningServer",
    "ServeError",
    "create_app",
    "serve_until",
    "start_in_thread",
]
