"""Slicing and concatenating opaque conditioning along the batch.

The sampler must run each expert on the sub-batch of samples that selected it, and concatenate the conditional and
unconditional halves into one forward pass, without knowing what the conditioning holds. A "batch tree" is a tensor
whose first dimension is the batch, a tuple/list/dict of batch trees, or None (no conditioning).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def take_tree(tree: Any, rows: torch.Tensor) -> Any:
    """The batch rows ``rows`` of every tensor in ``tree``.

    Args:
        tree: a batch tree.
        rows: int64 row indices.

    Returns:
        A batch tree of the same structure.
    """
    if tree is None:
        return None
    if isinstance(tree, torch.Tensor):
        return tree[rows.to(tree.device)]
    if isinstance(tree, (tuple, list)):
        return type(tree)(take_tree(v, rows) for v in tree)
    if isinstance(tree, dict):
        return {k: take_tree(v, rows) for k, v in tree.items()}
    raise TypeError(f"conditioning leaf of type {type(tree).__name__} is not a tensor, tuple, list, dict or None")


def cat_trees(trees: Sequence[Any]) -> Any:
    """Concatenate batch trees of the same structure along the batch.

    Args:
        trees: batch trees with identical structure.

    Returns:
        One batch tree whose tensors hold the rows of every input, in order.
    """
    first = trees[0]
    if first is None:
        if any(t is not None for t in trees):
            raise ValueError("cannot concatenate conditioning: some parts are None and some are not")
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(list(trees))
    if isinstance(first, (tuple, list)):
        if any(len(t) != len(first) for t in trees):
            raise ValueError("cannot concatenate conditioning: sequences of different lengths")
        return type(first)(cat_trees([t[i] for t in trees]) for i in range(len(first)))
    if isinstance(first, dict):
        if any(set(t) != set(first) for t in trees):
            raise ValueError("cannot concatenate conditioning: dicts with different keys")
        return {k: cat_trees([t[k] for t in trees]) for k in first}
    raise TypeError(f"conditioning leaf of type {type(first).__name__} is not a tensor, tuple, list, dict or None")
