"""Running the service: the token rule, uvicorn, SIGHUP reloads and a graceful stop.

On SIGTERM or SIGINT uvicorn stops accepting connections and lets the requests it accepted
finish (up to ``shutdown_timeout_s``); the app's shutdown then scores what is queued,
stores the detections and delivers pending alerts before the process exits. SIGHUP reloads
the bundle from its path while requests go on being answered.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn

from fame.bundle import check_bundle
from fame.config import Settings
from fame.errors import ConfigError, FameError
from fame.serve.app import create_app
from fame.serve.runtime import Runtime

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """The address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def read_token(settings: Settings) -> str | None:
    """The bearer token from ``token_file`` or the ``token_env`` variable (None: none set).

    Raises:
        ConfigError: The token file cannot be read or is empty, or the host is not loopback
            and no token is set.
    """
    token: str | None = None
    if settings.token_file:
        path = Path(settings.token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"cannot read --token-file {path}: {exc.strerror or exc}; check the path"
            ) from exc
        if not token:
            raise ConfigError(f"--token-file {path} is empty; write the token into it")
    else:
        token = os.environ.get(settings.token_env, "").strip() or None
    if token is None and not is_loopback(settings.host):
        raise ConfigError(
            f"--host {settings.host} is reachable from other machines, so the service needs a "
            f"bearer token: set it in ${settings.token_env} (e.g. export "
            f"{settings.token_env}=$(openssl rand -hex 32)) or give --token-file PATH; or bind "
            "to --host 127.0.0.1"
        )
    if token is not None and len(token) < 16:
        raise ConfigError(
            "the bearer token is shorter than 16 characters; use a long random one (e.g. "
            "openssl rand -hex 32)"
        )
    return token


def serve(bundle: str | Path, settings: Settings) -> None:
    """Run the service in the foreground until SIGTERM or SIGINT.

    Raises:
        ConfigError: A token is needed and missing, or a setting is unusable.
        BundleError: The bundle is missing or cannot be loaded.
        StorageError: The database cannot be used.
    """
    token = read_token(settings)
    check_bundle(Path(bundle))
    runtime = Runtime(settings, str(bundle), token=token)
    app = create_app(runtime)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # the CLI configured logging; uvicorn's loggers propagate to it
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
        server_header=False,
    )
    server = uvicorn.Server(config)
    failure: list[str] = []

    def on_failed(message: str) -> None:
        failure.append(message)
        server.should_exit = True

    runtime.on_failed = on_failed
    previous = _install_sighup(runtime)
    # uvicorn handles SIGTERM and SIGINT while it runs, then re-raises the signal it caught to
    # the handler found before it: a no-op here, so that a graceful stop exits 0.
    stops = _quiet_stop_signals()
    logger.info(
        "serving on http://%s:%d (authentication %s)",
        settings.host,
        settings.port,
        "on" if token else "off: loopback only",
    )
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind
        server.started = False
    finally:
        if previous is not None:
            signal.signal(signal.SIGHUP, previous)
        for sig, handler in stops.items():
            signal.signal(sig, handler)
    if failure:
        raise FameError(f"the service stopped: the bundle could not be loaded: {failure[0]}")
    if not server.started:
        raise ConfigError(
            f"could not listen on {settings.host}:{settings.port} (see the error above); is "
            "another process using the port? Pick another with --port"
        )


def _install_sighup(runtime: Runtime) -> Any:
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGHUP"):
        return None

    def handler(signum: int, frame: FrameType | None) -> None:
        logger.info("SIGHUP received: reloading the bundle %s", runtime.bundle)
        runtime.reload_in_background()

    return signal.signal(signal.SIGHUP, handler)


def _quiet_stop_signals() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def ignore(signum: int, frame: FrameType | None) -> None:
        logger.debug("%s after the graceful stop", signal.Signals(signum).name)

    return {sig: signal.signal(sig, ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
