"""Compute devices: which exist, which one "auto" means, and how much memory a batch may take."""

from __future__ import annotations

import os

import torch

__all__ = ["available_devices", "resolve_device", "free_memory_bytes", "is_out_of_memory", "machine_description"]


def available_devices() -> list[str]:
    """Devices usable on this machine, best first, always ending with "cpu"."""
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found + ["cpu"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """"auto" -> cuda, else mps, else cpu; an explicit device that does not exist is an error."""
    name = str(name)
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or mps")
    if kind not in available_devices():
        raise ValueError(f"device {name!r} is not available here (available: {', '.join(available_devices())})")
    return torch.device(name)


def free_memory_bytes(device: torch.device) -> int:
    """Free memory on ``device`` in bytes (CUDA: driver's free memory; others: available system RAM)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA/MPS out-of-memory errors."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def machine_description() -> dict:
    """Where a job ran: OS, CPU count, torch version and GPU name (for model cards and benchmark records)."""
    import platform

    return {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
