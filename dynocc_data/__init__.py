"""dynocc-data: ordinal depth pairs from dynamic occlusions in videos (DynOcc), for any PyTorch depth model.

Generate::

    from dynocc_data import generate
    generate(["videos/"], "shards/")                    # or: dynocc-data generate videos/ --out shards/

Load (the item contract is in ``docs/FORMAT.md``)::

    from torch.utils.data import DataLoader
    from dynocc_data import DynOccDataset, collate_pairs, create_transform, ranking_loss
    ds = DynOccDataset("shards/", strategy="uniform", transform=create_transform(train=True, size=(256, 320)))
    loader = DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_pairs)

One folder per side of the item contract (docs/ARCHITECTURE.md): ``format`` (the on-disk format),
``generation`` (videos to shards), ``datasets`` (shards and other sources to items); ``sampling``,
``transforms``, ``collate`` and ``losses`` are shared blocks; ``tools`` holds the command line, the
synthetic scenes with ground-truth depth and the evaluation against them (never imported by training code).
"""

from importlib import import_module
from typing import Any

from ._version import __version__

# The one list of public names, with the module defining each. They are imported on first use (PEP 562), so
# that ``import dynocc_data`` and the command line start fast and load torch/torchvision only when needed.
# ``tests/test_layout.py`` checks that every name resolves and that ``__all__`` is exactly this list.
_EXPORTS = {
    "collate": ("collate_pairs", "to_device"),
    "datasets": ("DIWDataset", "DenseDepthDataset", "DynOccDataset", "YouTube3DDataset", "as_iterable", "create_loader",
                 "from_youtube3d_target", "mix", "to_youtube3d_target"),
    "errors": ("DynOccError", "InputError", "InputNotFoundError", "ShardFormatError"),
    "format": ("decode_sample", "encode_sample", "load_index", "read_index"),
    "generation": ("GenerateConfig", "GenerateSummary", "RunOptions", "generate"),
    "generation.boundaries": ("BoundaryConfig", "detect_boundaries"),
    "generation.flow": ("DISFlow", "FlowEstimator", "RAFTFlow", "create_flow"),
    "generation.ordering": ("OrderConfig", "order_boundaries"),
    "generation.refine": ("RefineConfig",),
    "generation.video": ("VideoSource", "discover_videos", "open_video"),
    "generation.writer": ("ShardWriter", "write_index"),
    "losses": ("RankingLoss", "WHDRResult", "ranking_loss", "ssi_loss", "whdr"),
    "sampling": ("PairSampler", "SamplerConfig", "available_strategies", "create_sampler", "sample_generator"),
    "storage": ("ShardCache",),
    "tools.evaluate": ("EvalResult", "evaluate_shards", "evaluate_synthetic", "score_items"),
    "tools.synthetic": ("SceneConfig", "demo_scenes", "load_scene_gt", "make_scene", "make_scenes", "write_scene"),
    "transforms": ("PairTransform", "TransformConfig", "create_transform"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    if name in _WHERE:
        value = getattr(import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dynocc_data' has no attribute {name!r}")


def __dir__() -> list[str]:
    """Public names and what is already imported."""
    return sorted(set(globals()) | set(_WHERE))
