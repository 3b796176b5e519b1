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

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

# Public names and the modules defining them. They are imported on first use (PEP 562), so that
# ``import dynocc_data`` and the command line start fast and load torch/torchvision only when needed.
_EXPORTS = {
    "boundaries": ("BoundaryConfig", "detect_boundaries"),
    "collate": ("collate_pairs", "to_device"),
    "datasets": ("DIWDataset", "DynOccDataset", "YouTube3DDataset", "as_iterable", "create_loader",
                 "from_youtube3d_target", "mix", "to_youtube3d_target"),
    "errors": ("DynOccError", "InputError", "ShardFormatError"),
    "evaluate": ("EvalResult", "evaluate_shards", "evaluate_synthetic", "score_items"),
    "flow": ("DISFlow", "FlowEstimator", "RAFTFlow", "create_flow"),
    "generate": ("GenerateConfig", "GenerateSummary", "generate"),
    "losses": ("RankingLoss", "WHDRResult", "ranking_loss", "whdr"),
    "ordering": ("OrderConfig", "order_boundaries"),
    "refine": ("RefineConfig",),
    "sampling": ("PairSampler", "SamplerConfig", "available_strategies", "create_sampler", "sample_generator"),
    "shards": ("ShardWriter", "decode_sample", "encode_sample", "read_index", "write_index"),
    "synthetic": ("SceneConfig", "demo_scenes", "load_scene_gt", "make_scene", "make_scenes", "write_scene"),
    "transforms": ("PairTransform", "TransformConfig", "create_transform"),
    "video": ("VideoSource", "discover_videos", "open_video"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dynocc_data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # static analysers and IDEs see the real imports
    from .boundaries import BoundaryConfig, detect_boundaries  # noqa: F401
    from .collate import collate_pairs, to_device  # noqa: F401
    from .datasets import (DIWDataset, DynOccDataset, YouTube3DDataset, as_iterable, create_loader,  # noqa: F401
                           from_youtube3d_target, mix, to_youtube3d_target)
    from .errors import DynOccError, InputError, ShardFormatError  # noqa: F401
    from .evaluate import EvalResult, evaluate_shards, evaluate_synthetic, score_items  # noqa: F401
    from .flow import DISFlow, FlowEstimator, RAFTFlow, create_flow  # noqa: F401
    from .generate import GenerateConfig, GenerateSummary, generate  # noqa: F401
    from .losses import RankingLoss, WHDRResult, ranking_loss, whdr  # noqa: F401
    from .ordering import OrderConfig, order_boundaries  # noqa: F401
    from .refine import RefineConfig  # noqa: F401
    from .sampling import (PairSampler, SamplerConfig, available_strategies, create_sampler,  # noqa: F401
                           sample_generator)
    from .shards import ShardWriter, decode_sample, encode_sample, read_index, write_index  # noqa: F401
    from .synthetic import (SceneConfig, demo_scenes, load_scene_gt, make_scene, make_scenes,  # noqa: F401
                            write_scene)
    from .transforms import PairTransform, TransformConfig, create_transform  # noqa: F401
    from .video import VideoSource, discover_videos, open_video  # noqa: F401

__all__ = [  # noqa: F822 - resolved lazily by __getattr__
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
