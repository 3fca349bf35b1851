"""Cohort screening on Dask: many scans scored with ``score``'s one-scan path, ranked into a worklist.

``inputs`` (which scans) -> ``cluster`` (where: an existing scheduler or a LocalCluster) -> ``worker`` (the
model once per worker, one task per scan, resumable) -> ``run`` (ranking, cohort.csv / cohort_findings.csv /
cohort.json)."""

from .inputs import CohortItem, discover
from .run import rank_rows, run_cohort
from .worker import JobSpec

__all__ = ["CohortItem", "JobSpec", "discover", "rank_rows", "run_cohort"]
