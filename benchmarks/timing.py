"""The one timing rule every benchmark here follows: the median of several calls (`hostcache.median_seconds`, which
the backend and precision probes use too)."""

from layert2v.hostcache import median_seconds

__all__ = ["median_seconds"]
