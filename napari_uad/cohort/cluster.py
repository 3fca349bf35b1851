"""The Dask cluster a cohort runs on: an existing scheduler, or a LocalCluster sized to this machine."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["ClusterPlan", "plan_local_cluster", "connect", "worker_environment"]


@dataclass(frozen=True)
class ClusterPlan:
    """Workers and threads of a LocalCluster: one process per GPU (resource GPU=1 each), else processes over the
    CPU cores with ``torch_threads`` each so that workers x threads does not exceed the cores."""

    n_workers: int
    torch_threads: int
    device: str  # "cpu" or "cuda"
    resources: dict


def plan_local_cluster(workers: int | None, device: str = "auto", cores: int | None = None,
                       gpus: int | None = None) -> ClusterPlan:
    """``workers`` None/0: one per GPU, else one per 2 CPU cores (at least 1); ``device`` auto/cpu/cuda."""
    import torch

    cores = cores or os.cpu_count() or 1
    gpus = torch.cuda.device_count() if gpus is None else gpus
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"unknown device {device!r} (auto, cpu or cuda)")
    if device == "cuda" and gpus == 0:
        raise ValueError("--device cuda: no CUDA GPU is visible")
    use_gpu = gpus > 0 and device != "cpu"
    if use_gpu:
        n = workers or gpus
        return ClusterPlan(n, max(1, cores // n), "cuda", {"GPU": 1})
    n = workers or max(1, cores // 2)
    if n > cores:
        raise ValueError(f"--workers {n}: this machine has {cores} CPU cores")
    return ClusterPlan(n, max(1, cores // n), "cpu", {})


def connect(scheduler: str | None, plan: ClusterPlan | None):
    """(client, cluster or None): a client of ``scheduler`` or of a new LocalCluster following ``plan``."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except OSError as err:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler} ({err})") from err
    with dask.config.set(worker_environment(plan)):
        cluster = LocalCluster(n_workers=plan.n_workers, threads_per_worker=1, processes=True,
                               resources=plan.resources or None, dashboard_address=":0", silence_logs=40)
    return Client(cluster), cluster


def worker_environment(plan: ClusterPlan) -> dict:
    """Dask config for the environment of the LocalCluster's worker processes.

    Dask starts workers with OMP/MKL/OpenBLAS threads = 1 and ``MALLOC_TRIM_THRESHOLD_`` set; both slowed a
    scan by ~40 % against ``score`` (measured, docs/BENCHMARKS.md: the trim threshold switches off glibc's
    adaptive mmap threshold, so every large array is a fresh mmap with its page faults). Workers get the
    plan's threads and glibc's default allocator behaviour (they hold one scan at a time)."""
    key = "distributed.nanny.pre-spawn-environ"
    threads = {f"{key}.{name}": plan.torch_threads
               for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    return {**threads, f"{key}.MALLOC_TRIM_THRESHOLD_": None}
