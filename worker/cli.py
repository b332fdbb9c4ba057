"""``workerflow worker``: the worker daemon's command line (also ``python -m worker``).

This is the edge where the environment is read and logging is configured (the library never does).
Exit codes: 0 after a graceful stop (SIGTERM/SIGINT), 1 when the broker cannot be reached or is
lost for good, 2 for usage errors and task modules that fail to import, 3 when the consumer loop is
stuck. A supervisor restarts the worker on any non-zero exit.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from worker.errors import WorkerError
from worker.settings import POOL_KINDS, WorkerSettings
from worker.worker import Worker

__all__ = ["worker_command"]

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d %(threadName)s] %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``; kombu and amqp stay at WARNING unless DEBUG was asked for."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT, stream=sys.stderr, force=True)
    if level.upper() != "DEBUG":
        for noisy in ("kombu", "amqp"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


@click.command("worker", context_settings={"max_content_width": 100})
@click.option(
    "--broker",
    envvar="WORKERFLOW_BROKER",
    required=True,
    metavar="URL",
    help="Broker URL: redis://, rediss://, amqp:// or memory:// (env WORKERFLOW_BROKER).",
)
@click.option("--namespace", default="workerflow", show_default=True, help="Name prefix.")
@click.option(
    "--queue",
    "queues",
    multiple=True,
    metavar="NAME",
    help="Worker queue to consume; repeat for several.  [default: default]",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Execution slots.  [default: number of CPUs]",
)
@click.option(
    "--pool",
    type=click.Choice(POOL_KINDS),
    default="threads",
    show_default=True,
    help="threads, or processes: one child per slot, killed at its execution timeout.",
)
@click.option(
    "--secret",
    envvar="WORKERFLOW_SECRET",
    default=None,
    help="Shared HMAC secret; unsigned or badly signed requests are refused. Prefer the env "
    "WORKERFLOW_SECRET: a command-line secret shows in the process list.",
)
@click.option(
    "--grace-period",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long in-flight tasks may finish after SIGTERM.",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between heartbeats on the control channel.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="INFO",
    show_default=True,
)
@click.argument("modules", nargs=-1, required=True, metavar="MODULE [MODULE ...]")
def worker_command(
    *,
    broker: str,
    namespace: str,
    queues: tuple[str, ...],
    concurrency: int | None,
    pool: str,
    secret: str | None,
    grace_period: float,
    heartbeat_interval: float,
    log_level: str,
    modules: tuple[str, ...],
) -> None:
    """Run a worker daemon serving the tasks defined in MODULE ...

    Modules are imported with the current directory on sys.path, so `tasks` finds ./tasks.py.
    SIGTERM or SIGINT stops it gracefully; a second one stops it at once.
    """
    configure_logging(log_level)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        settings = WorkerSettings(
            namespace=namespace,
            queues=queues or ("default",),
            pool="processes" if pool == "processes" else "threads",
            secret=secret or None,
            grace_period=grace_period,
            heartbeat_interval=heartbeat_interval,
            **({"concurrency": concurrency} if concurrency is not None else {}),
        )
        worker = Worker(broker, list(modules), settings)
    except (ValueError, TypeError, WorkerError) as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        worker.run()
    except WorkerError as exc:
        log.critical("worker exits: %s", exc)
        sys.exit(1)
