"""Small video inputs shared by the generation-run tests (resume, parallel, remote storage).

Four 16-frame moving-square clips whose every selected frame (stride 2, gap 2) yields pairs: seed 3's square
would share its ground's hue, and seed 2's at (0, 4) px a frame loses two frames to the shadow test, hence the
seeds.
"""

from __future__ import annotations

from pathlib import Path

from dynocc_data.generation import GenerateConfig
from dynocc_data.tools.synthetic import moving_square_scene, write_scene

RUN_CONFIG = GenerateConfig(stride=2, gap=2)
VELOCITIES = [(0.0, 2.0), (1.0, 3.0), (0.0, 4.0), (1.0, 2.0)]
SEEDS = [0, 1, 5, 4]


def write_run_videos(folder: Path) -> Path:
    """Write the four clips (videos only, no ground truth) into ``folder``; return it."""
    for i, v in enumerate(VELOCITIES):
        write_scene(moving_square_scene(size=(96, 128), num_frames=16, velocity=v, seed=SEEDS[i]), folder, f"v{i}")
    for gt in folder.glob("*.gt.npz"):
        gt.unlink()
    return folder
