"""Where torch work runs: CUDA when torch sees a GPU, else the CPU, decided at run time.

Training (`models/train.py`) and catalogue encoding (`service/jobs/catalog.py`) both choose their
device here, so "auto" means the same thing everywhere and a machine without a GPU needs no flag.
"""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def select_device(device: str = "auto") -> torch.device:
    """The torch device to run on: "auto" is CUDA when torch sees a GPU, else the CPU;
    "cuda" fails with a clear error without one."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    return torch.device(device)
