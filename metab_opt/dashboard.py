"""``metab-opt dashboard``: a study's storage served by optuna-dashboard, with its artifacts.

What the dashboard shows beyond Optuna's own pages (the tree, the analysis log, each trial's
logbook entry) the logbook publishes into the storage (:mod:`metab_opt.dashboard_views`); this
module only serves. Errors are one line (:class:`ConfigError`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metab_opt.config import ConfigError

__all__ = ["check_port", "serve"]


def check_port(host: str, port: int) -> None:
    """ConfigError, one line, when ``host:port`` cannot be served (taken, not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
            probe.bind(address)
    except (OSError, OverflowError) as exc:  # OverflowError: a port above 65535
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"cannot serve on {host}:{port} ({reason})") from None


def serve(storage: Any, *, host: str, port: int, artifacts: Path | None = None) -> None:
    """Serve ``storage`` until Ctrl-C (which returns normally). ``artifacts``: the study's
    artifact folder, served when it exists."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    store = (FileSystemArtifactStore(str(artifacts))
             if artifacts is not None and artifacts.exists() else None)
    check_port(host, port)  # before the server prints its banner
    print(f"optuna-dashboard on http://{host}:{port} (Ctrl-C to stop)", flush=True)
    try:
        optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
    except KeyboardInterrupt:
        return
    except OSError as exc:  # the port is taken, the host is not ours
        raise ConfigError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
