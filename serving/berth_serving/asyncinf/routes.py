"""The front door's routes file (routes.json of its ConfigMap), read again when it changes,
and the choice of a variant for one request."""

from __future__ import annotations

import asyncio
import logging
import os
import random

import pydantic

from berth_serving.asyncinf.keys import Routes, RouteVariant

log = logging.getLogger("berth.async.frontdoor")

# How often the file's mtime is looked at: a ConfigMap update reaches the pod within a minute
# or so anyway (the kubelet's sync), so a second costs nothing in freshness.
POLL_SECONDS = 1.0


class NoRoute(Exception):
    """No variant can take this request; the message says why (a 400 or a 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RoutesFile:
    """The last good Routes read from `path` (None until one was)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.routes: Routes | None = None
        self._seen: tuple[int, int, int] | None = None
        self.problem = f"no routes read yet from {path}"

    def reload(self) -> bool:
        """Read the file if it changed (blocking: call it in a thread); True when it did."""
        try:
            stat = os.stat(self.path)
        except OSError as error:
            self.problem = f"cannot read routes file {self.path}: {error.strerror}"
            return False
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            with open(self.path, "rb") as file:
                routes = Routes.model_validate_json(file.read())
        except (OSError, pydantic.ValidationError) as error:
            self.problem = f"routes file {self.path} is not valid: {error}"
            log.error("bad routes file; keeping the previous one", extra={"fields": {"error": self.problem}})
            return False
        self.routes = routes
        self.problem = ""
        log.info(
            "routes read",
            extra={
                "fields": {
                    "variants": [
                        f"{v.endpoint_config_name}/{v.variant_name}={v.weight:g}" for v in routes.variants
                    ]
                }
            },
        )
        return True

    async def watch(self) -> None:
        while True:
            await asyncio.to_thread(self.reload)
            await asyncio.sleep(POLL_SECONDS)


def choose(routes: Routes, target: str | None, rng: random.Random | None = None) -> RouteVariant:
    """The variant named by X-Berth-Target-Variant, else one drawn by weight."""
    if target is not None:
        named = [variant for variant in routes.variants if variant.variant_name == target]
        if named:  # during a rollout both configs may have it: the one with the traffic now
            return max(named, key=lambda variant: variant.weight)
        names = ", ".join(sorted({v.variant_name for v in routes.variants})) or "none"
        raise NoRoute(400, f"no variant {target!r} in endpoint {routes.endpoint}; its variants are {names}")
    live = [variant for variant in routes.variants if variant.weight > 0]
    if not live:
        raise NoRoute(503, f"no variant of endpoint {routes.endpoint} takes traffic now")
    if len(live) == 1:
        return live[0]
    return (rng or random).choices(live, weights=[variant.weight for variant in live])[0]
