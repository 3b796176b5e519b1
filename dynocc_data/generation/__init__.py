"""The generating side: videos in, shards of ordinal pairs out (docs/ARCHITECTURE.md draws the stages).

* :mod:`.video` — decoding (decord, PyAV, frame folders) and input discovery;
* :mod:`.flow` — two-way optical flow (OpenCV DIS, torchvision RAFT);
* :mod:`.boundaries`, :mod:`.cuts`, :mod:`.ordering`, :mod:`.refine` — the algorithm stages, pure functions on tensors;
* :mod:`.pipeline` — :class:`FrameProcessor` runs the stages on a video's frames; :func:`run_videos` one rank's videos;
* :mod:`.writer` — crash-safe shard writing, the ledger, resume, upload;
* :mod:`.launch` — :func:`generate`: workers, ranks, merging;
* :mod:`.config` — :class:`GenerateConfig` (what is written) and :class:`RunOptions` (how it runs).

Builds on :mod:`dynocc_data.format` and :mod:`dynocc_data.sampling`; never on :mod:`dynocc_data.datasets`.
"""

from .config import GenerateConfig, GenerateSummary, RunOptions
from .launch import generate
from .pipeline import FrameProcessor

__all__ = ["FrameProcessor", "GenerateConfig", "GenerateSummary", "RunOptions", "generate"]
