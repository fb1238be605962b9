"""Weight files as PyTorch-layout state dicts: `.safetensors`, or `.pth` in either of torch's
formats; both read without torch and without trusting the file."""

from __future__ import annotations

import pathlib

from mkln_jax.models import safetensors_file, torch_state


def read(path: str | pathlib.Path) -> dict:
    """{tensor name: numpy array} of a `.safetensors` file or a `.pth`; WeightFileError naming
    the file on anything malformed."""
    path = pathlib.Path(path)
    if path.suffix.lower() == ".safetensors":
        return safetensors_file.load(path)
    return torch_state.load_state_dict(path)
