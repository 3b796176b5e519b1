"""Optical flow backends behind one small interface.

The generator computes two-way flow (t -> t+g and t -> t-g) for every selected frame with a
:class:`FlowEstimator` built by :func:`create_flow`. Every backend maps uint8 RGB images
``[B,3,H,W]`` (or ``[3,H,W]``) to float32 flow ``[B,2,H,W]`` (or ``[2,H,W]``) in pixels, channel 0 = dx
(+right), channel 1 = dy (+down), such that ``src[y, x]`` corresponds to ``dst[y + dy, x + dx]``.

Backends and what they need:

* ``"dis"`` (:class:`DISFlow`): OpenCV's Dense Inverse Search on grayscale. CPU only, no weights,
  no network; fast enough for the generator's default settings.
* ``"raft"`` (:class:`RAFTFlow`): torchvision's RAFT (``raft_large`` / ``raft_small``). Needs weights:
  either torchvision's default checkpoint (already in the torch hub cache, or downloaded on a machine
  with internet access) or a local state-dict file; a CUDA GPU for practical speed (it runs on CPU,
  slowly).

More backends can be added to :data:`FLOW_BACKENDS`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models.optical_flow import Raft_Large_Weights, Raft_Small_Weights, raft_large, raft_small

from ..errors import InputError, InputNotFoundError

__all__ = [
    "FLOW_BACKENDS",
    "DISFlow",
    "FlowEstimator",
    "RAFTFlow",
    "create_flow",
    "resolve_device",
]

logger = logging.getLogger(__name__)


def resolve_device(device: str | torch.device, *, prefer_cuda: bool) -> torch.device:
    """Turn ``"auto"`` into cuda (when ``prefer_cuda`` and available) or cpu; check that cuda exists.

    Args:
        device: ``"auto"``, or any device ``torch.device`` accepts.
        prefer_cuda: whether ``"auto"`` means cuda when it is available.

    Returns:
        The device.

    Raises:
        ValueError: when a cuda device is asked for and CUDA is not available.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if prefer_cuda and torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {dev} requested but CUDA is not available (use device='cpu' or 'auto')")
    return dev


class FlowEstimator(ABC):
    """Dense optical flow from ``src`` to ``dst``; subclasses implement :meth:`_flow` on batches.

    Attributes:
        name: the backend's name.
        device: where results are returned.
        params: JSON-serialisable description recorded in each sample's metadata.
    """

    name: str
    device: torch.device
    params: dict[str, Any]

    def __call__(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Flow from ``src`` to ``dst``.

        Args:
            src: uint8 RGB ``[B,3,H,W]`` or ``[3,H,W]``.
            dst: the same shape and dtype as ``src``.

        Returns:
            float32 flow ``[B,2,H,W]`` (or ``[2,H,W]``), ``(dx, dy)`` per pixel, on ``self.device``.

        Raises:
            TypeError: when an input is not a uint8 tensor.
            ValueError: when the shapes are not RGB images or batches, differ, or are empty.
        """
        _check_pair(src, dst)
        unbatched = src.ndim == 3
        if unbatched:
            src, dst = src.unsqueeze(0), dst.unsqueeze(0)
        if src.shape[0] == 0:
            return torch.empty((0, 2, *src.shape[-2:]), dtype=torch.float32, device=self.device)
        flow = self._flow(src, dst)
        return flow[0] if unbatched else flow

    @abstractmethod
    def _flow(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Flow for a validated batch: uint8 [B,3,H,W] pair -> float32 [B,2,H,W] on ``self.device``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device}, params={self.params})"


def _check_pair(src: torch.Tensor, dst: torch.Tensor) -> None:
    """Raise a one-line error unless ``src`` and ``dst`` are same-shape uint8 RGB images or batches."""
    for label, t in (("src", src), ("dst", dst)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"flow {label} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.uint8:
            raise TypeError(f"flow {label} must be uint8 RGB, got dtype {t.dtype}")
        if t.ndim not in (3, 4) or t.shape[-3] != 3:
            raise ValueError(f"flow {label} must be [3,H,W] or [B,3,H,W] RGB, got shape {tuple(t.shape)}")
    if src.shape != dst.shape:
        raise ValueError(f"flow src and dst shapes differ: {tuple(src.shape)} vs {tuple(dst.shape)}")
    if src.shape[-1] == 0 or src.shape[-2] == 0:
        raise ValueError(f"flow inputs are empty: shape {tuple(src.shape)}")


# --------------------------------------------------------------------------------------------- DIS

_DIS_PRESETS: dict[str, int] = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISFlow(FlowEstimator):
    """OpenCV Dense Inverse Search flow on grayscale frames, on the CPU.

    One ``cv2.DISOpticalFlow`` object is kept per estimator and it is **not thread-safe**: use one
    estimator per thread. Pickling (e.g. to worker processes) recreates the OpenCV object.

    Args:
        preset: ``'ultrafast'``, ``'fast'`` or ``'medium'``; the options below override the preset's values
            (``None`` keeps it).
        finest_scale: the finest pyramid level computed (0 is full resolution).
        patch_size: the patch side in pixels (>= 1).
        patch_stride: the stride between patches in pixels (>= 1).
        gradient_descent_iterations: gradient descent iterations per patch.
        variational_refinement_iterations: variational refinement iterations per level (0 turns it off).
        variational_refinement_alpha: the smoothness weight of the refinement.
        variational_refinement_delta: the colour-constancy weight of the refinement.
        variational_refinement_gamma: the gradient-constancy weight of the refinement.
        num_threads: OpenCV's (process-wide) thread count for the duration of each call; ``None`` leaves it.

    Raises:
        ValueError: for an unknown preset or an option out of its range.
    """

    name = "dis"

    def __init__(
        self,
        preset: str = "medium",
        *,
        finest_scale: int | None = None,
        patch_size: int | None = None,
        patch_stride: int | None = None,
        gradient_descent_iterations: int | None = None,
        variational_refinement_iterations: int | None = None,
        variational_refinement_alpha: float | None = None,
        variational_refinement_delta: float | None = None,
        variational_refinement_gamma: float | None = None,
        num_threads: int | None = None,
    ) -> None:
        if preset not in _DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(_DIS_PRESETS)}")
        overrides = {
            "finest_scale": finest_scale,
            "patch_size": patch_size,
            "patch_stride": patch_stride,
            "gradient_descent_iterations": gradient_descent_iterations,
            "variational_refinement_iterations": variational_refinement_iterations,
        }
        for key, value in overrides.items():
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"DIS {key} must be a non-negative int, got {value!r}")
        weights = {
            "variational_refinement_alpha": variational_refinement_alpha,
            "variational_refinement_delta": variational_refinement_delta,
            "variational_refinement_gamma": variational_refinement_gamma,
        }
        for key, value in weights.items():
            if value is not None and (not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"DIS {key} must be a non-negative number, got {value!r}")
        overrides.update({k: float(v) for k, v in weights.items() if v is not None})
        if (patch_size is not None and patch_size < 1) or (patch_stride is not None and patch_stride < 1):
            raise ValueError("DIS patch_size and patch_stride must be >= 1")
        if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
            raise ValueError(f"DIS num_threads must be a positive int, got {num_threads!r}")
        self.preset = preset
        self.overrides = {k: v for k, v in overrides.items() if v is not None}
        self.num_threads = num_threads
        self.device = torch.device("cpu")
        # num_threads changes speed, not results, so it is left out of the recorded params.
        self.params = {"backend": self.name, "preset": preset, **self.overrides}
        self._dis = self._make_dis()

    def _make_dis(self) -> cv2.DISOpticalFlow:
        """Build the OpenCV object from the preset and overrides."""
        dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[self.preset])
        setters = {
            "finest_scale": dis.setFinestScale,
            "patch_size": dis.setPatchSize,
            "patch_stride": dis.setPatchStride,
            "gradient_descent_iterations": dis.setGradientDescentIterations,
            "variational_refinement_iterations": dis.setVariationalRefinementIterations,
            "variational_refinement_alpha": dis.setVariationalRefinementAlpha,
            "variational_refinement_delta": dis.setVariationalRefinementDelta,
            "variational_refinement_gamma": dis.setVariationalRefinementGamma,
        }
        for key, value in self.overrides.items():
            setters[key](value)
        return dis

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_dis")  # cv2 objects cannot be pickled
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._dis = self._make_dis()

    def _flow(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Run DIS on each pair of the batch (OpenCV has no batched API)."""
        src_np = src.detach().to("cpu").permute(0, 2, 3, 1).numpy()
        dst_np = dst.detach().to("cpu").permute(0, 2, 3, 1).numpy()
        height, width = src_np.shape[1:3]
        out = np.empty((src_np.shape[0], height, width, 2), dtype=np.float32)
        previous_threads = cv2.getNumThreads()
        if self.num_threads is not None:
            cv2.setNumThreads(self.num_threads)
        try:
            for i in range(src_np.shape[0]):
                # cvtColor copies, so the non-contiguous permuted view is fine as input.
                gray_src = cv2.cvtColor(np.ascontiguousarray(src_np[i]), cv2.COLOR_RGB2GRAY)
                gray_dst = cv2.cvtColor(np.ascontiguousarray(dst_np[i]), cv2.COLOR_RGB2GRAY)
                out[i] = self._dis.calc(gray_src, gray_dst, None)
        except cv2.error as err:
            raise ValueError(f"OpenCV DIS failed on a {height}x{width} pair: {err.err}") from None
        finally:
            if self.num_threads is not None:
                cv2.setNumThreads(previous_threads)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# -------------------------------------------------------------------------------------------- RAFT

_RAFT_MODELS: dict[str, tuple[Callable[..., torch.nn.Module], Any]] = {
    "large": (raft_large, Raft_Large_Weights),
    "small": (raft_small, Raft_Small_Weights),
}
_RAFT_MULTIPLE = 8  # RAFT works at 1/8 resolution
_RAFT_MIN_SIDE = 128  # below this torchvision's RAFT gives garbage (its weights' meta "min_size")


def _pad_amounts(size: int) -> tuple[int, int]:
    """(before, after) padding that brings ``size`` to a multiple of 8 of at least 128, centred."""
    target = max(_RAFT_MIN_SIDE, math.ceil(size / _RAFT_MULTIPLE) * _RAFT_MULTIPLE)
    total = target - size
    return total // 2, total - total // 2


def _file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file, to record which checkpoint produced the flow."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _load_checkpoint(model: torch.nn.Module, path: Path, size: str) -> None:
    """Load a RAFT state dict from ``path`` into ``model`` (tensors only: ``weights_only=True``)."""
    if not path.is_file():
        raise InputNotFoundError(path, "RAFT checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise InputError(path, f"cannot read RAFT checkpoint ({type(err).__name__}: {err})") from None
    # Common wrappers: {"state_dict": ...} / {"model": ...}, and DataParallel's "module." prefix.
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(path, "not a RAFT state dict (expected a mapping of parameter names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{len(keys)} {label} (e.g. {keys[0]})"
            for label, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                ("shape mismatches", mismatched))
            if keys
        )
        raise InputError(path, f"not a raft_{size} checkpoint: {details}")
    model.load_state_dict(state)


def _load_default_weights(model: torch.nn.Module, size: str) -> str:
    """Load torchvision's default RAFT weights (hub cache or download) into ``model``; return their name."""
    weights = _RAFT_MODELS[size][1].DEFAULT
    try:
        state = torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, check_hash=True, weights_only=True
        )
    except Exception as err:  # no network, proxy refusal, truncated download, hash mismatch, ...
        raise InputError(
            weights.url,
            f"cannot get torchvision's default raft_{size} weights ({type(err).__name__}: {err}); "
            f"download the file on a connected machine and pass weights=<local checkpoint path>",
        ) from None
    model.load_state_dict(state)
    return f"torchvision:{weights!r}"


class RAFTFlow(FlowEstimator):
    """torchvision RAFT, batched, padded and mixed-precision on CUDA.

    Inputs are padded (replicate) to a multiple of 8 and at least 128 px per side and the flow is cropped back.

    Args:
        size: ``'large'`` or ``'small'`` (``raft_large`` / ``raft_small``).
        weights: ``"default"`` = torchvision's default checkpoint (torch hub cache or download), a path = a local
            state dict, ``None`` = random initialisation (tests only).
        device: where to run; ``"auto"`` is cuda when available.
        num_flow_updates: RAFT's recurrent refinement steps (>= 1).
        batch_size: pairs per forward pass (>= 1); on CUDA out-of-memory a chunk is retried in halves and later
            chunks keep the smaller size.
        amp: float16 autocast on CUDA (fp32 on the CPU either way).

    Raises:
        ValueError: for an unknown size, an option out of its range, or a cuda device without CUDA.
        InputError: when the weights cannot be downloaded or the file is not a checkpoint of this size.
    """

    name = "raft"

    def __init__(
        self,
        size: str = "large",
        *,
        weights: str | Path | None = "default",
        device: str | torch.device = "auto",
        num_flow_updates: int = 12,
        batch_size: int = 8,
        amp: bool = True,
    ) -> None:
        if size not in _RAFT_MODELS:
            raise ValueError(f"unknown RAFT size {size!r}; choose one of {sorted(_RAFT_MODELS)}")
        if not isinstance(num_flow_updates, int) or num_flow_updates < 1:
            raise ValueError(f"num_flow_updates must be a positive int, got {num_flow_updates!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self.size = size
        self.device = resolve_device(device, prefer_cuda=True)
        self.num_flow_updates = num_flow_updates
        self.batch_size = batch_size
        self._max_batch = batch_size  # lowered after an out-of-memory retry
        self.amp_dtype: torch.dtype | None = None
        if amp and self.device.type == "cuda":
            # fp16 as in the RAFT reference: bf16's 8-bit mantissa costs sub-pixel accuracy.
            self.amp_dtype = torch.float16

        model = _RAFT_MODELS[size][0](weights=None, progress=False)
        if weights is None:
            logger.warning("RAFT raft_%s with random weights: the flow is meaningless (tests only)", size)
            weights_desc: dict[str, Any] = {"weights": "random"}
        elif isinstance(weights, str) and weights == "default":
            weights_desc = {"weights": _load_default_weights(model, size)}
        else:
            path = Path(weights)
            _load_checkpoint(model, path, size)
            weights_desc = {"weights": path.name, "weights_sha256": _file_sha256(path)}
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.params = {
            "backend": self.name,
            "model": f"raft_{size}",
            **weights_desc,
            "num_flow_updates": num_flow_updates,
            "precision": {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp_dtype],
        }

    def _flow(self, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
        """Pad, run in chunks of at most ``batch_size`` and crop back to the input size."""
        height, width = src.shape[-2:]
        (top, bottom), (left, right) = _pad_amounts(height), _pad_amounts(width)
        chunks = []
        start = 0
        while start < src.shape[0]:
            stop = min(start + self._max_batch, src.shape[0])
            image1 = self._prepare(src[start:stop], (left, right, top, bottom))
            image2 = self._prepare(dst[start:stop], (left, right, top, bottom))
            chunks.append(self._run_with_retry(image1, image2))
            start = stop
        flow = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        # clone() outside inference mode: callers may then modify the flow in place.
        return flow[:, :, top : top + height, left : left + width].clone(memory_format=torch.contiguous_format)

    def _prepare(self, images: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float [-1, 1] on the model's device, replicate-padded."""
        x = images.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        return F.pad(x, pad, mode="replicate") if any(pad) else x

    def _run_with_retry(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        """Run the model; on out-of-memory split the batch in halves (down to one pair), then re-raise."""
        try:
            return self._run(image1, image2)
        except torch.cuda.OutOfMemoryError as err:
            count = image1.shape[0]
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if count == 1:
                raise torch.cuda.OutOfMemoryError(
                    f"RAFT raft_{self.size} ran out of {self.device} memory on a single "
                    f"{image1.shape[-2]}x{image1.shape[-1]} (padded) pair; use smaller frames "
                    f"(e.g. a lower --max-side), raft_small, or the 'dis' backend"
                ) from err
            half = (count + 1) // 2  # the larger half first, so the new cap is a size that was tried
            self._max_batch = min(self._max_batch, half)
            logger.warning("RAFT out of memory on a batch of %d; retrying in halves (batch size now %d)",
                           count, self._max_batch)
            return torch.cat([self._run_with_retry(image1[:half], image2[:half]),
                              self._run_with_retry(image1[half:], image2[half:])])

    def _run(self, image1: torch.Tensor, image2: torch.Tensor) -> torch.Tensor:
        """One forward pass; returns the last (finest) of RAFT's iterative flow estimates."""
        with torch.inference_mode(), torch.autocast(
            device_type=self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        ):
            return self.model(image1, image2, num_flow_updates=self.num_flow_updates)[-1].float()


# -------------------------------------------------------------------------------------------- registry


def _make_dis(*, device: str | torch.device = "auto", **kwargs: Any) -> DISFlow:
    """Registry factory for DIS: CPU only, so any device other than ``auto``/``cpu`` is an error."""
    if not (isinstance(device, str) and device == "auto") and torch.device(device).type != "cpu":
        raise ValueError(f"the 'dis' flow backend runs on the CPU only, got device={device!r}")
    return DISFlow(**kwargs)


def _make_raft(*, device: str | torch.device = "auto", **kwargs: Any) -> RAFTFlow:
    """Registry factory for RAFT (``size``, ``weights``, ... go to :class:`RAFTFlow`)."""
    return RAFTFlow(device=device, **kwargs)


FLOW_BACKENDS: dict[str, Callable[..., FlowEstimator]] = {
    "dis": _make_dis,
    "raft": _make_raft,
}
"""Backend name -> factory called as ``factory(device=..., **kwargs)``; add entries to register more."""


def create_flow(name: str = "dis", *, device: str | torch.device = "auto", **kwargs: Any) -> FlowEstimator:
    """Build the flow backend ``name`` (see :data:`FLOW_BACKENDS`).

    Args:
        name: the backend, ``"dis"`` or ``"raft"`` (or any registered one); case is ignored.
        device: where to run; ``"auto"`` = cuda for RAFT when available, cpu for DIS.
        kwargs: passed to the backend's constructor (:class:`DISFlow`, :class:`RAFTFlow`).

    Returns:
        The flow estimator.

    Raises:
        ValueError: for an unknown backend (and as the backend's constructor raises).
    """
    factory = FLOW_BACKENDS.get(name.lower()) if isinstance(name, str) else None
    if factory is None:
        raise ValueError(f"unknown flow backend {name!r}; choose one of {sorted(FLOW_BACKENDS)}")
    return factory(device=device, **kwargs)
