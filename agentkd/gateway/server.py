"""Running the gateway: uvicorn over `create_app`, in one process or several workers that
share one log (PostgreSQL; SQLite serves one worker well, a few at most).

Workers are separate processes, so the configuration reaches them through a file (mode
0600: it may hold gateway keys) named by ``AGENTKD_GATEWAY_CONFIG_FILE``; its run ids are
fixed before the workers start, so all of them write the same runs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI

from agentkd.gateway.app import create_app
from agentkd.gateway.config import GatewayConfig
from agentkd.gateway.service import Gateway

CONFIG_ENV = "AGENTKD_GATEWAY_CONFIG_FILE"


def with_run_ids(config: GatewayConfig) -> GatewayConfig:
    """`config` with every run id chosen, so processes that start from it share runs."""
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    routes = [r if r.run else r.model_copy(update={"run": f"gateway-{r.mode}-{stamp}-{i}"})
              for i, r in enumerate(config.route)]
    return config.model_copy(update={
        "route": routes, "passthrough_run": config.passthrough_run or f"passthrough-{stamp}"})


def worker_app() -> FastAPI:
    """The app of one worker process (uvicorn's factory), from the file the parent wrote."""
    with open(os.environ[CONFIG_ENV]) as file:
        config = GatewayConfig.model_validate_json(file.read())
    return create_app(Gateway(config))


def serve(config: GatewayConfig, *, workers: int = 1, log_level: str = "warning",
          on_ready: Callable[[], None] | None = None) -> None:
    """Serve until interrupted. The gateway is built first, so a bad config fails before
    anything listens; `on_ready` is called then."""
    import uvicorn

    config = with_run_ids(config)
    if workers <= 1:
        app = create_app(Gateway(config))
        if on_ready is not None:
            on_ready()
        uvicorn.run(app, host=config.host, port=config.port, log_level=log_level,
                    timeout_graceful_shutdown=5)
        return
    Gateway(config).shutdown()  # validate everything once, in this process
    if on_ready is not None:
        on_ready()
    fd, path = tempfile.mkstemp(prefix="agentkd-gateway-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as file:  # mkstemp's file is 0600
            file.write(config.model_dump_json())
        os.environ[CONFIG_ENV] = path
        # A worker imports agentkd and builds its Distillers before it answers uvicorn's
        # health check (seconds, a minute on a busy machine): it is not stuck, so it is not
        # killed and restarted (uvicorn's default allows 5 s).
        uvicorn.run("agentkd.gateway.server:worker_app", factory=True, host=config.host,
                    port=config.port, workers=workers, log_level=log_level,
                    timeout_graceful_shutdown=5, timeout_worker_healthcheck=300)
    finally:
        os.unlink(path)


@contextlib.contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app (e.g. `create_app(gateway)`) in a background thread, on a free port
    unless one is given; yields its base URL. For tests, notebooks and examples."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="error",
                                           timeout_graceful_shutdown=2, backlog=2048))
    thread = threading.Thread(target=server.run, daemon=True, name="agentkd-gateway-server")
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start (port taken?)")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
