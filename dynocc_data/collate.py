"""Batching of ordinal-pair items (docs/FORMAT.md) for ``DataLoader`` and moving batches to a device."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import default_collate

from .errors import InputError

__all__ = ["collate_pairs", "to_device"]

_KNOWN = ("image", "pairs", "ordinal", "meta", "boundary", "depth", "valid_mask", "loss_weight", "source_index")
_DENSE = ("depth", "valid_mask")


def _name(item: Mapping[str, Any], index: int) -> str:
    """The item's sample key (or its position in the batch) for error messages."""
    meta = item.get("meta") or {}
    return str(meta.get("key") or f"batch item {index}")


def _check_items(batch: Sequence[Mapping[str, Any]]) -> None:
    """Every item has tensors ``image [C,H,W]`` of one shape and dtype, ``pairs [N,4]`` and ``ordinal [N]``."""
    if len(batch) == 0:
        raise ValueError("collate_pairs: the batch is empty")
    first = batch[0].get("image")
    for index, item in enumerate(batch):
        name = _name(item, index)
        if not all(isinstance(item.get(field), torch.Tensor) for field in ("image", "pairs", "ordinal")):
            raise InputError(name, "item lacks one of the tensors image, pairs, ordinal (see docs/FORMAT.md)")
        image, pairs, ordinal = item["image"], item["pairs"], item["ordinal"]
        if image.ndim != 3 or image.shape != first.shape or image.dtype != first.dtype:
            raise InputError(name, f"image is {_describe(image)} but the batch's first image is {_describe(first)}; "
                                   "images must share one size to be stacked (resize or crop them to a fixed size, "
                                   "e.g. create_transform(size=(h, w)))")
        if pairs.ndim != 2 or pairs.shape[1] != 4 or ordinal.shape != (pairs.shape[0],):
            raise InputError(name, f"pairs must be [N,4] and ordinal [N], got {tuple(pairs.shape)} and "
                                   f"{tuple(ordinal.shape)}")


def _describe(image: torch.Tensor) -> str:
    """``3x64x80 uint8`` style shape and dtype."""
    return "x".join(str(s) for s in image.shape) + f" {str(image.dtype).removeprefix('torch.')}"


def collate_pairs(batch: Sequence[Mapping[str, Any]], *, pad: bool = True) -> dict[str, Any]:
    """Collate items into one batch (use as ``DataLoader(..., collate_fn=collate_pairs)``).

    Args:
        batch: ``B`` items of the contract, holding ``N_i`` pairs each; all images must share one shape and dtype.
        pad: pad the pairs into tensors (with a ``pair_mask``) rather than keep lists.

    Returns:
        With ``Nmax = max(N_i)``:

        * ``image``: ``[B,C,H,W]`` stacked, same dtype as the items;
        * ``pad=True``: ``pairs`` ``int64 [B,Nmax,4]`` (zeros after each item's ``N_i`` pairs), ``ordinal``
          ``int64 [B,Nmax]`` padded with 0 (which also means "equal": always apply the mask) and ``pair_mask``
          ``bool [B,Nmax]``, True for real pairs;
        * ``pad=False``: ``pairs`` list of ``B`` tensors ``int64 [N_i,4]`` and ``ordinal`` list of ``int64 [N_i]``
          (no ``pair_mask``);
        * ``num_pairs``: ``int64 [B]`` = ``N_i`` (both modes);
        * ``depth`` ``float32 [B,1,H,W]`` and ``valid_mask`` ``bool [B,1,H,W]``, when some item has one: stacked
          (an item without them gets depth 0 and an all-False mask, so a dense loss ignores it);
        * ``loss_weight`` ``float32 [B]`` and ``source_index`` ``int64 [B]``, when the items carry them (set by
          ``mix(..., per_batch=True)`` or ``loss_weights``);
        * ``meta``: list of ``B`` dicts; ``boundary``: list of ``B`` dicts (``None`` for items without one),
          present only when some item has one; any other field: list of ``B`` values.

    Raises:
        ValueError: when the batch is empty.
        InputError: a one-line error naming the offending item, when it lacks ``image``, ``pairs`` or ``ordinal``,
            its image does not match the first one's shape and dtype, or its pairs are not ``[N,4]`` with an
            ``[N]`` ordinal, or its ``depth``/``valid_mask`` is not ``[1,H,W]`` of its image.
    """
    _check_items(batch)
    pairs = [item["pairs"].to(torch.int64) for item in batch]
    ordinal = [item["ordinal"].to(torch.int64) for item in batch]
    counts = torch.tensor([len(p) for p in pairs], dtype=torch.int64)
    # default_collate stacks into shared memory inside DataLoader workers (one copy fewer than torch.stack).
    out: dict[str, Any] = {"image": default_collate([item["image"] for item in batch]), "num_pairs": counts}
    if pad:
        out["pairs"] = pad_sequence(pairs, batch_first=True, padding_value=0)
        out["ordinal"] = pad_sequence(ordinal, batch_first=True, padding_value=0)
        out["pair_mask"] = torch.arange(out["pairs"].shape[1]).unsqueeze(0) < counts.unsqueeze(1)
    else:
        out["pairs"], out["ordinal"] = pairs, ordinal
    out["meta"] = [dict(item.get("meta") or {}) for item in batch]
    if any(item.get("boundary") is not None for item in batch):
        out["boundary"] = [item.get("boundary") for item in batch]
    if any(item.get(name) is not None for item in batch for name in _DENSE):
        out["depth"], out["valid_mask"] = _stack_dense(batch)
    for name, dtype in (("loss_weight", torch.float32), ("source_index", torch.int64)):
        if any(name in item for item in batch):
            out[name] = torch.tensor([float(item.get(name, 1.0 if name == "loss_weight" else -1)) for item in batch],
                                     dtype=dtype)
    for key in dict.fromkeys(k for item in batch for k in item if k not in _KNOWN):
        out[key] = [item.get(key) for item in batch]
    return out


def _stack_dense(batch: Sequence[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``depth [B,1,H,W]`` and ``valid_mask [B,1,H,W]``; items lacking one get zeros / an all-False mask."""
    size = (1, *batch[0]["image"].shape[-2:])
    depths, masks = [], []
    for index, item in enumerate(batch):
        depth, valid = item.get("depth"), item.get("valid_mask")
        for name, value in (("depth", depth), ("valid_mask", valid)):
            if value is not None and tuple(value.shape) != size:
                raise InputError(_name(item, index), f"{name} is {tuple(value.shape)} but the image needs {size}")
        if valid is None:
            valid = torch.full(size, depth is not None, dtype=torch.bool)
        depths.append(depth.to(torch.float32) if depth is not None else torch.zeros(size))
        masks.append(valid.to(torch.bool) & (depth is not None))
    return default_collate(depths), default_collate(masks)


def to_device(batch: Any, device: torch.device | str, *, non_blocking: bool = True) -> Any:
    """Move every tensor in a (nested dict / list / tuple) batch to ``device``; other values are kept as is.

    Args:
        batch: a tensor, or dicts, lists, tuples and namedtuples of them (nested to any depth).
        device: the target device.
        non_blocking: overlap host-to-GPU copies with compute when the batch is in pinned memory
            (``DataLoader(pin_memory=True)``).

    Returns:
        A batch of the same structure (containers rebuilt, their types kept), its tensors on ``device``.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return {key: to_device(value, device, non_blocking=non_blocking) for key, value in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(to_device(value, device, non_blocking=non_blocking) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(value, device, non_blocking=non_blocking) for value in batch)
    return batch
