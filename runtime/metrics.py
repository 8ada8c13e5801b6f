"""Prometheus helpers shared by the roles (each role declares its own metrics)."""

import functools
from typing import Any


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: label values come from small fixed sets,
    and looking a child up costs more than the increment itself."""
    return _child(metric, labels)


@functools.lru_cache(maxsize=1024)
def _child(metric: Any, labels: tuple[str, ...]) -> Any:
    return metric.labels(*labels)
