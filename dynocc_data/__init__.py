"""dynocc-data: ordinal depth pairs from dynamic occlusions in videos (DynOcc), for any PyTorch depth model.

Generate::

    from dynocc_data import generate
    generate(["videos/"], "shards/")                    # or: dynocc-data generate videos/ --out shards/

Load (the item contract is in ``docs/FORMAT.md``)::

    from torch.utils.data import DataLoader
    from dynocc_data import DynOccDataset, collate_pairs, create_transform, ranking_loss
    ds = DynOccDataset("shards/", strategy="uniform", transform=create_transform(train=True, size=(256, 320)))
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_pairs)

Pipeline stages live in their own modules (``video``, ``flow``, ``boundaries``, ``ordering``, ``refine``,
``sampling``, ``shards``, ``generate``), the consumer side in ``datasets``, ``transforms``, ``collate`` and
``losses``; ``synthetic`` makes scenes with ground-truth depth, ``evaluate`` scores against them.
"""

from ._version import __version__
from .boundaries import BoundaryConfig, detect_boundaries
from .collate import collate_pairs, to_device
from .datasets import (
    DIWDataset,
    DynOccDataset,
    YouTube3DDataset,
    as_iterable,
    create_loader,
    from_youtube3d_target,
    mix,
    to_youtube3d_target,
)
from .errors import DynOccError, InputError, ShardFormatError
from .evaluate import EvalResult, evaluate_shards, evaluate_synthetic, score_items
from .flow import DISFlow, FlowEstimator, RAFTFlow, create_flow
from .generate import GenerateConfig, GenerateSummary, generate
from .losses import RankingLoss, WHDRResult, ranking_loss, whdr
from .ordering import OrderConfig, order_boundaries
from .refine import RefineConfig
from .sampling import PairSampler, SamplerConfig, available_strategies, create_sampler, sample_generator
from .shards import ShardWriter, decode_sample, encode_sample, read_index, write_index
from .synthetic import SceneConfig, demo_scenes, load_scene_gt, make_scene, make_scenes, write_scene
from .transforms import PairTransform, TransformConfig, create_transform
from .video import VideoSource, discover_videos, open_video

__all__ = [
    "__version__",
    # generation
    "generate", "GenerateConfig", "GenerateSummary", "BoundaryConfig", "OrderConfig", "RefineConfig",
    "detect_boundaries", "order_boundaries", "create_flow", "FlowEstimator", "DISFlow", "RAFTFlow",
    "discover_videos", "open_video", "VideoSource",
    # shards
    "ShardWriter", "encode_sample", "decode_sample", "read_index", "write_index",
    # loading
    "DynOccDataset", "YouTube3DDataset", "DIWDataset", "mix", "as_iterable", "create_loader",
    "to_youtube3d_target", "from_youtube3d_target", "create_sampler", "sample_generator",
    "available_strategies", "PairSampler", "SamplerConfig", "create_transform", "TransformConfig",
    "PairTransform", "collate_pairs", "to_device",
    # training and evaluation
    "ranking_loss", "RankingLoss", "whdr", "WHDRResult",
    "SceneConfig", "make_scene", "make_scenes", "write_scene", "load_scene_gt", "demo_scenes",
    "evaluate_synthetic", "evaluate_shards", "score_items", "EvalResult",
    # errors
    "DynOccError", "InputError", "ShardFormatError",
]
