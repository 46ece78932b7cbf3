"""Seeds for every stage derived from the one run seed, so stages are independent yet reproducible."""

import hashlib

import numpy as np
import torch


def derive_seed(seed: int, *names: str | int) -> int:
    """A 63-bit seed from the run seed and a path of names, e.g. ``derive_seed(0, "expert", 2)``.

    Hashing (rather than adding offsets) keeps seeds of different stages from colliding.
    """
    key = ":".join([str(seed), *map(str, names)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def torch_generator(seed: int, *names: str | int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *names))


def numpy_rng(seed: int, *names: str | int) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *names))
