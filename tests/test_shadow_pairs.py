"""End to end: a cast shadow moving with its object is no depth edge, and the shadow test keeps its pairs out."""

import numpy as np
import torch

from dynocc_data.generation import GenerateConfig
from dynocc_data.generation.pipeline import FrameProcessor
from dynocc_data.generation.refine import RefineConfig
from dynocc_data.generation.video import frames_needed, select_frames
from dynocc_data.tools.scoring import CATEGORIES, classify_pairs
from dynocc_data.tools.synthetic import moving_square_scene


def _category_counts(config: GenerateConfig) -> np.ndarray:
    scene = moving_square_scene(size=(192, 256), num_frames=17, velocity=(0.5, 2.5), seed=1, noise_sigma=2.0,
                                shadow=(14.0, 10.0, 0.5, 3.0))
    T = len(scene.frames)
    selected = select_frames(T, stride=config.stride, gap=config.gap)
    frames = ((i, torch.from_numpy(scene.frames[i]).permute(2, 0, 1).contiguous())
              for i in frames_needed(selected, config.gap, num_frames=T))
    counts = np.zeros(len(CATEGORIES), np.int64)
    for res in FrameProcessor(config, device="cpu").process(frames, selected, T, video_id="v", meta={}):
        if res.pairs is not None:
            codes = classify_pairs(res.pairs.numpy().astype(np.float64), res.ordinal.numpy(), scene.depth[res.frame],
                                   labels=scene.labels[res.frame])
            counts += np.bincount(codes, minlength=len(CATEGORIES))
    return counts


def test_shadow_and_edge_tests_remove_pairs_between_a_shadow_and_its_ground():
    """Without the two photometric tests a fifth of the pairs have both points on the ground (the shadow's outline is
    tracked like an occlusion edge); the edge test alone leaves few (a shadow's outline moves with its object but
    the ground under it does not, so a patch on it is not carried by the object's motion), the colour test fewer
    still, and the square's own outline keeps its pairs."""
    same = [CATEGORIES.index("localisation"), CATEGORIES.index("false_boundary")]
    neither = _category_counts(GenerateConfig(refine=RefineConfig(min_colour_angle=None, min_edge_margin=None)))
    edge_only = _category_counts(GenerateConfig(refine=RefineConfig(min_colour_angle=None)))
    default = _category_counts(GenerateConfig())
    assert neither[same].sum() / neither.sum() > 0.15
    assert edge_only[same].sum() / edge_only.sum() < 0.10
    assert default[same].sum() / default.sum() < 0.02
    assert default[CATEGORIES.index("correct")] > 150 and default[CATEGORIES.index("wrong_order")] == 0
