"""Every Redis key pycanary uses, built here and nowhere else.

All keys of a queue share the hash tag ``{<queue>}`` so that every script call touches one
cluster slot. Global keys (the queue index) are touched only by plain commands of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "pycanary"
LANES = ("stable", "canary")


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue. Attribute names are the names used in the scripts' headers."""

    queue: str
    config: str
    tenant_weights: str
    lane_stable: str
    lane_canary: str
    routed: str

    def lane(self, lane: str) -> str:
        if lane == "stable":
            return self.lane_stable
        if lane == "canary":
            return self.lane_canary
        raise ValueError(f"unknown lane {lane!r}")

    def routing(self) -> list[str]:
        """KEYS of route_enqueue / route_enqueue_many, in their order."""
        return [self.config, self.tenant_weights, self.lane_stable, self.lane_canary, self.routed]

    def config_keys(self) -> list[str]:
        """KEYS of set_weight / configure_queue / explain_route."""
        return [self.config, self.tenant_weights]

    def all(self) -> list[str]:
        return [self.config, self.tenant_weights, self.lane_stable, self.lane_canary, self.routed]


class Keys:
    """Key builder for one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self._cache: dict[str, QueueKeys] = {}

    @property
    def queues(self) -> str:
        """Set of known queue names (global, not in any queue's slot)."""
        return f"{self.prefix}:queues"

    def queue(self, queue: str) -> QueueKeys:
        qk = self._cache.get(queue)
        if qk is None:
            base = f"{self.prefix}:{{{queue}}}"
            qk = QueueKeys(
                queue=queue,
                config=f"{base}:config",
                tenant_weights=f"{base}:tenant_weights",
                lane_stable=f"{base}:lane:stable",
                lane_canary=f"{base}:lane:canary",
                routed=f"{base}:routed",
            )
            self._cache[queue] = qk
        return qk
