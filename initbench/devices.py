"""Where a job trains: trainer.device resolved to a torch.device this machine has."""

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")  # where the trainers run; meta holds no data, xla and others are untested


def resolve_device(name: str, job_index: int = 0) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; any other name is passed to torch.device. On a machine
    with several GPUs, `auto` spreads the jobs of a sweep over them: job i gets cuda:(i mod count)."""
    if name != "auto":
        device = torch.device(name)
        if device.type not in DEVICE_TYPES:
            raise ValueError(f"trainer.device={name!r}: initbench trains on {', '.join(DEVICE_TYPES)} "
                             f"(auto picks one); {device.type} holds no data to train on here")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"trainer.device={name!r} but CUDA is not available here; use auto or cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"trainer.device={name!r} but MPS is not available here; use auto or cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", job_index % torch.cuda.device_count())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
