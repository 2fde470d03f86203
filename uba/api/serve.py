"""``uba-api``: run the inference API under uvicorn with host/port/workers from settings.

Flags are written into the environment (``UBA_CONFIG``, ``UBA_DATA_DIR``,
``UBA_MODEL_DIR``, ``UBA_OUTPUT_DIR``, ``UBA_API__*``) before uvicorn starts, because with several workers
each worker process builds its own app from ``uba.api.app:create_app`` and reads
settings there; the environment is the one channel all of them share.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from typing import Literal

import click

from uba.api.workers import GROUP_DIR_ENV, METRICS_DIR_ENV, make_group_dir, remove_group_dir
from uba.errors import UserError
from uba.logs import configure_logging
from uba.settings import load_settings

APP_FACTORY = "uba.api.app:create_app"


def _export(env: MutableMapping[str, str], name: str, value: object) -> None:
    if value is not None:
        env[name] = str(value)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", type=click.Path(dir_okay=False), default=None, envvar="UBA_CONFIG",
              help="YAML settings file (default: configs/default.yaml). Env: UBA_CONFIG.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data directory holding baselines/. Env: UBA_DATA_DIR.")
@click.option("--model-dir", type=click.Path(file_okay=False), default=None,
              help="Model bundle directory. Env: UBA_MODEL_DIR.")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Output directory holding risk/ (GET /users/{id}/risk). Env: UBA_OUTPUT_DIR.")
@click.option("--host", default=None, help="Bind address (default: api.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port (default: api.port, 8000); 0 takes any free port, which the startup line "
                   "'Uvicorn running on http://HOST:PORT' names.")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Worker processes (default: api.workers, 1). Each loads its own model copy.")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
@click.option("--access-log/--no-access-log", default=None,
              help="One log line per request with its X-Request-ID (default: api.access_log, on).")
def main(config: str | None, data_dir: str | None, model_dir: str | None, output_dir: str | None,
         host: str | None,
         port: int | None, workers: int | None, log_format: Literal["text", "json"], log_level: str,
         access_log: bool | None) -> None:
    """Serve POST /predict, /predict/batch, /health, /ready, /model, /metrics, /admin/reload,
    GET /users/{user_id}/risk.

    \b
    Example:
      uba-api --data-dir data --model-dir models --output-dir output --port 8000
      curl -s localhost:8000/ready
      UBA_API__WORKERS=2 uba-api --config configs/default.yaml
    """
    import uvicorn

    configure_logging(log_format, log_level)
    env = os.environ
    _export(env, "UBA_CONFIG", config)
    for name, value in (("DATA_DIR", data_dir), ("MODEL_DIR", model_dir), ("OUTPUT_DIR", output_dir)):
        if value is not None:  # a flag beats the environment, UBA_PATHS__* included
            env.pop(f"UBA_PATHS__{name}", None)
        _export(env, f"UBA_{name}", value)
    _export(env, "UBA_API__HOST", host)
    _export(env, "UBA_API__PORT", port)
    _export(env, "UBA_API__WORKERS", workers)
    _export(env, "UBA_API__ACCESS_LOG", None if access_log is None else str(access_log).lower())
    _export(env, "UBA_LOG_FORMAT", log_format)  # for worker processes (uba.api.app)
    _export(env, "UBA_LOG_LEVEL", log_level)
    try:
        settings = load_settings()  # fail fast, once, on a bad config before forking workers
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    # The group folder is this server's own: a fresh one for several workers, none for one.
    # Variables inherited from the environment (another server's, or a PROMETHEUS_MULTIPROC_DIR
    # set for other programs) would make a single worker share its counts and reloads.
    for name in (GROUP_DIR_ENV, METRICS_DIR_ENV):
        env.pop(name, None)
    group = make_group_dir(env) if settings.api.workers > 1 else None
    try:
        uvicorn.run(
            APP_FACTORY, factory=True, host=settings.api.host, port=settings.api.port,
            workers=settings.api.workers, log_level=log_level.lower(),
            timeout_keep_alive=settings.api.keep_alive_sec,
            access_log=False,  # the app writes its own access line, with the request id
        )
    finally:
        if group is not None:
            remove_group_dir(group)


if __name__ == "__main__":  # pragma: no cover
    main()
