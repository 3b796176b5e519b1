import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = Path(os.environ.get("DYNOCC_SHARED_VIDEOS", REPO.parent / "shared" / "videos"))


@pytest.fixture(scope="session")
def shared_videos() -> Path:
    """The real clips of ../shared/videos; tests using them skip when the folder is absent."""
    if not (SHARED_VIDEOS / "bikes.mp4").is_file():
        pytest.skip(f"real clips not found at {SHARED_VIDEOS} (set DYNOCC_SHARED_VIDEOS to run these tests)")
    return SHARED_VIDEOS
