"""The parameters of a generation run (:class:`GenerateConfig`) and what a run reports (:class:`GenerateSummary`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ..errors import ConfigError
from ..sampling import available_strategies, create_sampler
from .boundaries import BoundaryConfig
from .cuts import ReliabilityConfig
from .ordering import OrderConfig
from .refine import RefineConfig

__all__ = ["DIS_DEFAULTS", "STAGES", "DecoderName", "FlowName", "GenerateConfig", "GenerateSummary", "RunOptions",
           "check_int", "frame_steps"]

FlowName = Literal["dis", "raft"]
DecoderName = Literal["auto", "decord", "pyav", "torchcodec"]
DeviceName = Literal["auto", "cpu", "cuda"]

# DIS "medium" with denser patches and a stronger, longer variational refinement: smoother flow inside
# surfaces and flow edges closer to the true outlines (measured on synthetic scenes with ground truth:
# about +1 pt pair precision and +5 pts boundary coverage over plain "medium", for 1.5x its time).
DIS_DEFAULTS = {"preset": "medium", "patch_stride": 2, "variational_refinement_alpha": 80.0,
                "variational_refinement_iterations": 10}

STAGES = ("decode", "flow", "boundaries", "order", "refine", "sampling", "encode/write")


def check_int(option: str, value: Any, low: int, high: int | None = None, *, none: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int in ``[low, high]`` (or ``None`` when allowed).

    Args:
        option: the option's name, for the message.
        value: the value given.
        low: the smallest value allowed.
        high: the largest value allowed (``None``: no upper bound).
        none: whether ``None`` is allowed.

    Raises:
        ConfigError: naming the option and the allowed range.
    """
    if value is None and none:
        return
    inside = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not inside:
        allowed = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
        raise ConfigError(option, f"must be {allowed}{' or None' if none else ''}, got {value!r}")


def _check_choice(option: str, value: Any, choices: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(option, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


def frame_steps(stride: int, gap: int, fps: float, reference_fps: float | None) -> tuple[int, int]:
    """The stride and flow gap, in frames, that a video of ``fps`` frames per second uses.

    ``gap`` counts frames of a video at ``reference_fps`` or faster; a slower video uses proportionally fewer
    (rounded, at least 1), so that the flow spans about the same time: at 12.5 fps a gap of 4 becomes 2. The stride
    stays as configured (the same frames are selected). Measured on the static-camera clips (12.5 and 10 fps): the
    longer gap's larger, faster-changing motion breaks the flow on cars seen from above (pairs right by the
    background model 15 % -> 43 %) and halves the pairs on walkers.

    Args:
        stride: the configured stride.
        gap: the configured gap.
        fps: the video's frame rate (0 or less when unknown: the frames as configured).
        reference_fps: the rate the gap is counted at; None: frames whatever the rate.

    Returns:
        ``(stride, gap)`` for this video.
    """
    if reference_fps is None or not fps > 0 or fps >= reference_fps:
        return stride, gap
    return stride, max(1, int(gap * fps / reference_fps + 0.5))


@dataclass(frozen=True)
class GenerateConfig:
    """Every parameter of a generation run that changes what it writes (recorded in each sample).

    Frozen and checked when built: a value outside its range raises :class:`~dynocc_data.errors.ConfigError`
    naming the option and what it accepts. Change a field with ``dataclasses.replace(config, stride=2)``.

    Attributes:
        stride: Process every ``stride``-th frame.
        gap: Flow is computed between frames ``gap`` apart (t -> t±gap; of a video at ``reference_fps``).
        reference_fps: ``gap`` counts frames at this rate: a slower video uses proportionally fewer
            (:func:`frame_steps`); None: frames whatever the video's rate.
        max_side: Frames are resized so that their longer side is at most this (None: keep).
        max_frames: At most this many selected frames per video.
        flow: Optical flow backend: ``"dis"`` (OpenCV, CPU) or ``"raft"`` (torchvision).
        flow_options: Options of the flow backend (defaults: DIS tuned on synthetic scenes with ground truth,
            see ``DIS_DEFAULTS``).
        decoder: Video decoder: ``"auto"`` (PyAV on the CPU, decord on CUDA), ``"decord"``, ``"pyav"`` or
            ``"torchcodec"``.
        boundary: occlusion boundary detection (:class:`~.boundaries.BoundaryConfig`).
        order: depth ordering (:class:`~.ordering.OrderConfig`).
        refine: refinement and the shadow test (:class:`~.refine.RefineConfig`).
        reliability: rejection of frames whose flow cannot be trusted (:class:`~.cuts.ReliabilityConfig`).
        sampler: Strategy drawing the stored pairs (a name of ``sampling.available_strategies()`` other than
            ``"stored"``).
        sampler_options: Boundary points 1.5 px apart along each outline, one pair each (after the shadow test
            of :class:`RefineConfig` removed most same-surface pairs, denser sampling adds pairs at the same
            precision).
        max_pairs: At most this many stored pairs per frame.
        min_pairs: Frames with fewer pairs are not written.
        jpeg_quality: JPEG quality of the stored frames (1-100).
        seed: Seed of pair sampling: the same seed gives byte-identical shards.

    Raises:
        ConfigError: naming the option, when a value is outside its range.
    """

    stride: int = 4
    gap: int = 4
    reference_fps: float | None = 25.0
    max_side: int | None = 640
    max_frames: int | None = None
    flow: FlowName = "dis"
    flow_options: dict[str, Any] = field(default_factory=lambda: dict(DIS_DEFAULTS))
    decoder: DecoderName = "auto"
    boundary: BoundaryConfig = field(default_factory=BoundaryConfig)
    order: OrderConfig = field(default_factory=OrderConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    reliability: ReliabilityConfig = field(default_factory=ReliabilityConfig)
    sampler: str = "uniform"
    sampler_options: dict[str, Any] = field(default_factory=lambda: {"spacing": 1.5, "offset": 6.0})
    max_pairs: int = 1000
    min_pairs: int = 1
    jpeg_quality: int = 92
    seed: int = 0

    def __post_init__(self) -> None:
        """Check every option (one-line :class:`ConfigError` naming the option and its range)."""
        check_int("stride", self.stride, 1)
        check_int("gap", self.gap, 1)
        if self.reference_fps is not None and (not isinstance(self.reference_fps, (int, float))
                                               or isinstance(self.reference_fps, bool) or not self.reference_fps > 0):
            raise ConfigError("reference_fps", f"must be a positive frame rate or None, got {self.reference_fps!r}")
        check_int("max_side", self.max_side, 16, none=True)
        check_int("max_frames", self.max_frames, 1, none=True)
        _check_choice("flow", self.flow, get_args(FlowName))
        _check_choice("decoder", self.decoder, get_args(DecoderName))
        strategies = tuple(name for name in available_strategies() if name != "stored")
        _check_choice("sampler", self.sampler, strategies)
        check_int("max_pairs", self.max_pairs, 1)
        check_int("min_pairs", self.min_pairs, 0)
        check_int("jpeg_quality", self.jpeg_quality, 1, 100)
        check_int("seed", self.seed, 0)
        for name, kind in (("boundary", BoundaryConfig), ("order", OrderConfig), ("refine", RefineConfig),
                           ("reliability", ReliabilityConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(name, f"must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.flow_options, dict) or not isinstance(self.sampler_options, dict):
            raise ConfigError("flow_options/sampler_options", "must be dicts")
        try:
            create_sampler(self.sampler, **self.sampler_options)
        except (TypeError, ValueError) as err:
            raise ConfigError("sampler_options", str(err)) from None

    def frame_steps(self, fps: float) -> tuple[int, int]:
        """The stride and gap a video of ``fps`` frames per second uses (:func:`frame_steps`).

        Args:
            fps: the video's frame rate.

        Returns:
            ``(stride, gap)`` in frames.
        """
        return frame_steps(self.stride, self.gap, fps, self.reference_fps)

    def to_dict(self) -> dict[str, Any]:
        """The parameters as a JSON-ready dict.

        Returns:
            Every field, nested configs as dicts.
        """
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Short hash of the parameters: a resumed run must use the same ones.

        Returns:
            The first 12 hex digits of the SHA-1 of the sorted JSON of :meth:`to_dict`.
        """
        return hashlib.sha1(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class GenerateSummary:
    """What a run did; written as ``stats.json``.

    Attributes:
        out: the output folder.
        videos_total: the inputs found, failed ones included.
        videos_done: videos processed to the end.
        videos_skipped: videos already done in the output folder (``resume``).
        failed: ``{"video", "reason"}`` of each input that failed.
        no_pairs: ``{"video", "reason"}`` of each video that gave no sample.
        frames_processed: selected frames processed.
        frames_written: frames written as samples.
        frames_rejected: reason -> frames not written for it.
        pairs: stored pairs written.
        boundary_points: boundary points written.
        seconds: wall time (the longest rank's, when merged).
        stage_seconds: stage -> seconds spent in it (summed over ranks).
        shards: shards committed.
    """

    out: str
    videos_total: int = 0
    videos_done: int = 0
    videos_skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    no_pairs: list[dict[str, str]] = field(default_factory=list)
    frames_processed: int = 0
    frames_written: int = 0
    frames_rejected: dict[str, int] = field(default_factory=dict)
    pairs: int = 0
    boundary_points: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    shards: int = 0

    @property
    def frames_per_second(self) -> float:
        """Selected frames processed per second (0 before any time is counted)."""
        return self.frames_processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def pairs_per_frame(self) -> float:
        """Stored pairs per written frame (0 without any)."""
        return self.pairs / self.frames_written if self.frames_written else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The content of ``stats.json``.

        Returns:
            The fields plus ``frames_per_second`` and ``pairs_per_frame``, rounded.
        """
        d = dataclasses.asdict(self)
        d["frames_per_second"] = round(self.frames_per_second, 3)
        d["pairs_per_frame"] = round(self.pairs_per_frame, 2)
        return d

    def merge(self, other: "GenerateSummary") -> None:
        """Add another rank's counts into this one (seconds: the longest rank).

        Args:
            other: the other rank's summary.
        """
        for name in ("videos_total", "videos_done", "videos_skipped", "frames_processed", "frames_written",
                     "pairs", "boundary_points", "shards"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.failed += other.failed
        self.no_pairs += other.no_pairs
        for k, v in other.frames_rejected.items():
            self.frames_rejected[k] = self.frames_rejected.get(k, 0) + v
        for k, v in other.stage_seconds.items():
            self.stage_seconds[k] = self.stage_seconds.get(k, 0.0) + v
        self.seconds = max(self.seconds, other.seconds)


@dataclass(frozen=True)
class RunOptions:
    """How a run is carried out, as opposed to what it writes (:class:`GenerateConfig`).

    Passed whole from :func:`~dynocc_data.generate` through the launcher to each rank's
    :func:`~dynocc_data.generation.pipeline.run_videos`, so a new option is one new field here (and its CLI flag).

    Args:
        device: where flow and post-processing run: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        batch_size: selected frames processed together.
        resume: continue the run already in the output folder.
        strict: fail when any input fails (default: report and go on).
        prefix: shard name prefix (``<prefix>-r<rank>-<n>.tar``).
        shard_size: samples per shard at most.
        shard_bytes: bytes per shard at most.
        progress: progress bars (shown only on a terminal).
        workers: worker processes on this machine; ``None``: one per GPU on CUDA, else 1.
        upload: shell command receiving each committed shard on stdin, ``{name}`` replaced by its file name.
        merge_timeout: seconds rank 0 waits for the other ranks' markers before merging what is there.
        poll: seconds between two looks at the folder while waiting.
        staging: with an fsspec URL as the output, the local folder where shards are written before their upload
            (default: a temporary folder per rank).
        video_timeout: seconds one video may take in a manifest run (``generate --manifest``) before its decode
            or processing is abandoned (the worker process running it is killed) and the video recorded as failed;
            ``None`` for no limit.
        lease_ttl: seconds without a heartbeat after which another rank takes over a claimed chunk of a manifest
            run (heartbeats come every ``lease_ttl / 3`` seconds).

    Raises:
        ConfigError: naming the option, when a value is out of range.
    """

    device: str = "auto"
    batch_size: int = 4
    resume: bool = False
    strict: bool = False
    prefix: str = "dynocc"
    shard_size: int = 1000
    shard_bytes: int = 1 << 30
    progress: bool = True
    workers: int | None = 1
    upload: str | None = None
    merge_timeout: float = 3600.0
    poll: float = 1.0
    staging: str | None = None
    video_timeout: float | None = None
    lease_ttl: float = 60.0

    def __post_init__(self) -> None:
        """Check every option (one-line :class:`ConfigError`)."""
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu", "cuda")
                                                    or self.device.startswith(("cuda:", "mps"))):
            raise ConfigError("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        check_int("batch_size", self.batch_size, 1)
        check_int("shard_size", self.shard_size, 1)
        check_int("shard_bytes", self.shard_bytes, 1 << 16)
        check_int("workers", self.workers, 1, none=True)
        if not isinstance(self.prefix, str) or not self.prefix or "/" in self.prefix or "{" in self.prefix:
            raise ConfigError("prefix", "must be a non-empty file name part without '/' or braces, "
                                        f"got {self.prefix!r}")
        if self.staging is not None and (not isinstance(self.staging, str) or not self.staging):
            raise ConfigError("staging", f"must be a local folder path, got {self.staging!r}")
        for name, low in (("merge_timeout", 0.0), ("poll", 1e-9)):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low:
                raise ConfigError(name, f"must be a number of seconds {'>= 0' if low == 0 else '> 0'}, got {value!r}")
        for name in ("video_timeout", "lease_ttl"):
            value = getattr(self, name)
            if name == "video_timeout" and value is None:
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ConfigError(name, f"must be a number of seconds > 0, got {value!r}")
