"""Task runners for when one machine is not enough: Dask or Ray clusters for Prefect tasks.

The flows in `flows/` run DVC stages one at a time (DVC holds a repository lock), so they gain nothing
from a cluster; what does is fan-out work submitted with `.submit()` / `.map()`, e.g. synthesising or
checking many dataset shards before one `dvc add`. Such a flow picks a runner here:
    @flow(task_runner=cluster_runner("tcp://scheduler:8786"))
The runners need `pip install prefect-dask` (or `prefect-ray`); they are not dependencies of the platform.
"""

from __future__ import annotations


def cluster_runner(address: str | None = None, kind: str = "dask"):
    """A Prefect task runner on an existing Dask/Ray cluster (`address`), or a local one when None."""
    if kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as err:
            raise ImportError("the Dask task runner needs `pip install prefect-dask`") from err
        return DaskTaskRunner(address=address) if address else DaskTaskRunner()
    if kind == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as err:
            raise ImportError("the Ray task runner needs `pip install prefect-ray`") from err
        return RayTaskRunner(address=address) if address else RayTaskRunner()
    raise ValueError(f"kind must be 'dask' or 'ray', got {kind!r}")
