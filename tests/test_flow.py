"""Tests of dynocc_data.generation.flow: DIS accuracy and conventions, RAFT plumbing with random or saved weights."""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dynocc_data.errors import InputError
from dynocc_data.generation.flow import (
    FLOW_BACKENDS,
    DISFlow,
    FlowEstimator,
    RAFTFlow,
    _pad_amounts,
    create_flow,
)

DX, DY = 3, -2


def texture(height: int, width: int, seed: int, sigma: float = 2.0) -> np.ndarray:
    """Smooth random RGB texture, uint8 [H,W,3], well suited to flow (no aperture problem)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (smooth * 255).round().astype(np.uint8)


def shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``out[y + dy, x + dx] = image[y, x]`` (circular)."""
    return np.roll(image, shift=(dy, dx), axis=(0, 1))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] -> uint8 [3,H,W]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


@pytest.fixture(scope="module")
def translated_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A 96x128 texture and its copy shifted by (DX, DY)."""
    src = texture(96, 128, seed=0)
    return to_tensor(src), to_tensor(shift(src, DX, DY))


@pytest.fixture(scope="module")
def dis() -> DISFlow:
    return DISFlow()


# ----------------------------------------------------------------------------------------------- DIS


def test_dis_recovers_translation(dis: DISFlow, translated_pair) -> None:
    src, dst = translated_pair
    flow = dis(src[None], dst[None])
    assert flow.shape == (1, 2, 96, 128) and flow.dtype == torch.float32
    assert flow.device == torch.device("cpu") and flow.is_contiguous()
    interior = flow[0, :, 12:-12, 12:-12]
    assert abs(interior[0].median().item() - DX) < 0.25
    assert abs(interior[1].median().item() - DY) < 0.25


def test_dis_sign_convention(dis: DISFlow, translated_pair) -> None:
    """src[y, x] == dst[y + dy, x + dx] at the rounded flow."""
    src, dst = translated_pair
    flow = dis(src, dst).round().long()
    ys, xs = torch.meshgrid(torch.arange(20, 76), torch.arange(20, 108), indexing="ij")
    yt, xt = ys + flow[1, 20:76, 20:108], xs + flow[0, 20:76, 20:108]
    matches = (src[:, ys, xs] == dst[:, yt, xt]).all(dim=0).float().mean().item()
    assert matches > 0.95
    # the opposite sign would point elsewhere
    wrong = (src[:, ys, xs] == dst[:, ys - flow[1, 20:76, 20:108], xs - flow[0, 20:76, 20:108]]).all(dim=0)
    assert wrong.float().mean().item() < 0.1


def test_dis_batch_equals_single_and_unbatched(dis: DISFlow, translated_pair) -> None:
    src, dst = translated_pair
    other_src = to_tensor(texture(96, 128, seed=1))
    other_dst = to_tensor(shift(texture(96, 128, seed=1), -1, 2))
    batch = dis(torch.stack([src, other_src]), torch.stack([dst, other_dst]))
    assert batch.shape == (2, 2, 96, 128)
    single0 = dis(src, dst)  # unbatched: [3,H,W] -> [2,H,W]
    single1 = dis(other_src[None], other_dst[None])
    assert single0.shape == (2, 96, 128)
    torch.testing.assert_close(batch[0], single0, rtol=0, atol=0)
    torch.testing.assert_close(batch[1], single1[0], rtol=0, atol=0)
    assert abs(batch[1, 0, 12:-12, 12:-12].median().item() - (-1)) < 0.25
    assert abs(batch[1, 1, 12:-12, 12:-12].median().item() - 2) < 0.25


def test_dis_two_motions(dis: DISFlow) -> None:
    """A textured square moving by (-3, +2) over a background moving by (+2, 0)."""
    height, width, top, left, side = 128, 160, 40, 56, 48
    background, square = texture(height, width, seed=2), texture(side, side, seed=3, sigma=1.5)
    src = background.copy()
    src[top : top + side, left : left + side] = square
    dst = shift(background, 2, 0)
    dst[top + 2 : top + 2 + side, left - 3 : left - 3 + side] = square
    flow = dis(to_tensor(src), to_tensor(dst))
    inside = flow[:, top + 8 : top + side - 8, left + 8 : left + side - 8].flatten(1)
    mask = torch.ones(height, width, dtype=torch.bool)
    mask[top - 10 : top + side + 10, left - 10 : left + side + 10] = False
    mask[:10], mask[-10:], mask[:, :10], mask[:, -10:] = False, False, False, False
    outside = flow[:, mask]
    torch.testing.assert_close(inside.median(dim=1).values, torch.tensor([-3.0, 2.0]), atol=0.25, rtol=0)
    torch.testing.assert_close(outside.median(dim=1).values, torch.tensor([2.0, 0.0]), atol=0.25, rtol=0)


def test_dis_presets_overrides_and_params(translated_pair) -> None:
    src, dst = translated_pair
    for preset in ("ultrafast", "fast", "medium"):
        est = DISFlow(preset)
        assert est.params == {"backend": "dis", "preset": preset}
        assert abs(est(src, dst)[0, 12:-12, 12:-12].median().item() - DX) < 0.5
    est = DISFlow("fast", patch_size=12, variational_refinement_iterations=0, num_threads=1)
    assert est.params == {"backend": "dis", "preset": "fast", "patch_size": 12, "variational_refinement_iterations": 0}
    threads = cv2.getNumThreads()
    est(src, dst)
    assert cv2.getNumThreads() == threads  # the process-wide setting is restored
    with pytest.raises(ValueError, match="ultrafast"):
        DISFlow("slow")
    with pytest.raises(ValueError, match="patch_size"):
        DISFlow(patch_size=0)


def test_dis_pickle_recreates_opencv_object(dis: DISFlow, translated_pair) -> None:
    clone = pickle.loads(pickle.dumps(dis))
    src, dst = translated_pair
    torch.testing.assert_close(clone(src, dst), dis(src, dst), rtol=0, atol=0)


def test_dis_errors() -> None:
    dis = DISFlow()
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    with pytest.raises(TypeError, match="uint8"):
        dis(image.float(), image.float())
    with pytest.raises(ValueError, match="shapes differ"):
        dis(image, torch.zeros(3, 32, 30, dtype=torch.uint8))
    with pytest.raises(ValueError, match="RGB"):
        dis(image[:1], image[:1])
    with pytest.raises(ValueError, match="4x4") as err:
        dis(image[:, :4, :4], image[:, :4, :4])  # OpenCV refuses tiny images
    assert "\n" not in str(err.value)
    empty = dis(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, 3, 32, 32, dtype=torch.uint8))
    assert empty.shape == (0, 2, 32, 32)


# ---------------------------------------------------------------------------------------------- RAFT


def random_raft(size: str, **kwargs) -> RAFTFlow:
    """RAFT with seeded random weights, 2 updates, on CPU."""
    torch.manual_seed(0)
    return RAFTFlow(size, weights=None, device="cpu", num_flow_updates=2, **kwargs)


def random_batch(count: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=gen)
    dst = torch.randint(0, 256, (count, 3, height, width), dtype=torch.uint8, generator=gen)
    return src, dst


@pytest.fixture(scope="module")
def raft_small_cpu() -> RAFTFlow:
    return random_raft("small", batch_size=8)


def test_pad_amounts() -> None:
    assert _pad_amounts(36) == (46, 46)
    assert _pad_amounts(50) == (39, 39)
    assert _pad_amounts(128) == (0, 0)
    assert _pad_amounts(130) == (3, 3)
    assert _pad_amounts(133) == (1, 2)


@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("hw", [(36, 50), (64, 64)])
def test_raft_shape_and_finite(size: str, hw: tuple[int, int], caplog) -> None:
    with caplog.at_level("WARNING", logger="dynocc_data.generation.flow"):
        est = random_raft(size)
    assert "random weights" in caplog.text
    assert est.device == torch.device("cpu") and est.params["model"] == f"raft_{size}"
    assert est.params["weights"] == "random" and est.params["precision"] == "fp32"
    src, dst = random_batch(2, *hw)
    flow = est(src, dst)
    assert flow.shape == (2, 2, *hw) and flow.dtype == torch.float32 and flow.is_contiguous()
    assert torch.isfinite(flow).all()
    assert not flow.is_inference()
    flow.mul_(2.0)  # callers may rescale in place
    flow.div_(2.0)
    single = est(src[1], dst[1])
    assert single.shape == (2, *hw)
    torch.testing.assert_close(single, flow[1], atol=1e-4, rtol=1e-4)


def test_raft_chunking_matches_one_batch(raft_small_cpu: RAFTFlow) -> None:
    src, dst = random_batch(5, 40, 48, seed=1)
    whole = raft_small_cpu(src, dst)
    chunked = random_raft("small", batch_size=2)(src, dst)
    torch.testing.assert_close(chunked, whole, atol=1e-4, rtol=1e-4)


def test_raft_checkpoint_roundtrip(tmp_path: Path, raft_small_cpu: RAFTFlow) -> None:
    path = tmp_path / "raft_small_random.pth"
    torch.save(raft_small_cpu.model.state_dict(), path)
    loaded = RAFTFlow("small", weights=path, device="cpu", num_flow_updates=2)
    assert loaded.params["weights"] == path.name
    assert loaded.params["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    src, dst = random_batch(2, 36, 50, seed=2)
    torch.testing.assert_close(loaded(src, dst), raft_small_cpu(src, dst), rtol=0, atol=0)
    # the usual wrappers are accepted too
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in raft_small_cpu.model.state_dict().items()}}, wrapped)
    again = RAFTFlow("small", weights=str(wrapped), device="cpu", num_flow_updates=2)
    torch.testing.assert_close(again(src, dst), raft_small_cpu(src, dst), rtol=0, atol=0)


class _NotATensor:
    """Something ``weights_only`` loading must refuse to unpickle."""


@pytest.mark.parametrize(
    "write, reason",
    [
        (lambda p: p.write_bytes(b"this is not a checkpoint"), "cannot read RAFT checkpoint"),
        (lambda p: torch.save({"weird": torch.zeros(2)}, p), "not a raft_small checkpoint"),
        (lambda p: torch.save({"obj": _NotATensor()}, p), "cannot read RAFT checkpoint"),
        (lambda p: torch.save([1, 2, 3], p), "not a RAFT state dict"),
        (lambda p: None, "not found"),
    ],
    ids=["garbage", "wrong-keys", "pickled-object", "not-a-mapping", "missing"],
)
def test_raft_bad_checkpoint(tmp_path: Path, write, reason: str) -> None:
    path = tmp_path / "bad.pth"
    write(path)
    with pytest.raises(InputError) as err:
        RAFTFlow("small", weights=path, device="cpu")
    message = str(err.value)
    assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_raft_large_checkpoint_into_small_names_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "large.pth"
    torch.save(random_raft("large").model.state_dict(), path)
    with pytest.raises(InputError, match="not a raft_small checkpoint: .*(unexpected keys|shape mismatches)"):
        RAFTFlow("small", weights=path, device="cpu")


def test_raft_default_weights_from_cache_or_clear_error(tmp_path: Path, monkeypatch, raft_small_cpu) -> None:
    """'default' reads the torch hub cache; when it cannot download, the error says what to do."""
    from torchvision.models.optical_flow import Raft_Small_Weights

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(InputError) as err:
        RAFTFlow("small", weights="default", device="cpu")
    message = str(err.value)
    assert "weights=<local checkpoint path>" in message and "no network" in message and "\n" not in message

    cached = tmp_path / "checkpoints" / Path(Raft_Small_Weights.DEFAULT.url).name
    torch.save(raft_small_cpu.model.state_dict(), cached)
    est = RAFTFlow("small", weights="default", device="cpu", num_flow_updates=2)
    assert est.params["weights"] == f"torchvision:{Raft_Small_Weights.DEFAULT!r}"
    src, dst = random_batch(1, 36, 50, seed=3)
    torch.testing.assert_close(est(src, dst), raft_small_cpu(src, dst), rtol=0, atol=0)


def test_raft_oom_retry_in_halves(raft_small_cpu: RAFTFlow, monkeypatch) -> None:
    src, dst = random_batch(5, 36, 50, seed=4)
    expected = raft_small_cpu(src, dst)
    est = random_raft("small", batch_size=8)
    forward = est.model.forward
    calls: list[tuple[int, bool]] = []

    def limited(image1, image2, **kwargs):
        ok = image1.shape[0] <= 2
        calls.append((image1.shape[0], ok))
        if not ok:
            raise torch.cuda.OutOfMemoryError("simulated")
        return forward(image1, image2, **kwargs)

    monkeypatch.setattr(est.model, "forward", limited)
    flow = est(src, dst)
    torch.testing.assert_close(flow, expected, atol=1e-4, rtol=1e-4)
    assert calls == [(5, False), (3, False), (2, True), (1, True), (2, True)]
    calls.clear()
    est(src, dst)  # later batches start at the size that fitted
    assert calls == [(2, True), (2, True), (1, True)]

    def always_oom(image1, image2, **kwargs):
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(est.model, "forward", always_oom)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="single 128x128 .*pair"):
        est(src, dst)


def test_raft_argument_errors() -> None:
    with pytest.raises(ValueError, match="'large'"):
        RAFTFlow("medium", weights=None, device="cpu")
    with pytest.raises(ValueError, match="batch_size"):
        RAFTFlow("small", weights=None, device="cpu", batch_size=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            RAFTFlow("small", weights=None, device="cuda")


# ------------------------------------------------------------------------------------------ registry


def test_create_flow_registry(monkeypatch) -> None:
    est = create_flow()
    assert isinstance(est, DISFlow) and est.device == torch.device("cpu") and est.params["preset"] == "medium"
    assert create_flow("dis", preset="fast", device="cpu").params["preset"] == "fast"
    raft = create_flow("raft", size="small", weights=None, num_flow_updates=2)
    assert isinstance(raft, RAFTFlow)
    assert raft.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"unknown flow backend 'farneback'.*\['dis', 'raft'\]"):
        create_flow("farneback")
    with pytest.raises(ValueError, match="CPU only"):
        create_flow("dis", device="cuda")

    class ZeroFlow(FlowEstimator):
        name = "zero"

        def __init__(self, device: str | torch.device = "auto") -> None:
            self.device, self.params = torch.device("cpu"), {"backend": "zero"}

        def _flow(self, src, dst):
            return torch.zeros(src.shape[0], 2, *src.shape[-2:])

    monkeypatch.setitem(FLOW_BACKENDS, "zero", ZeroFlow)
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    assert create_flow("zero")(image, image).shape == (2, 8, 8)


# --------------------------------------------------------------------------------------- real clips


@pytest.mark.realdata
def test_dis_on_real_clip_reduces_warp_error(shared_videos: Path) -> None:
    """Warping frame 11 of carphone.mp4 by the DIS flow from frame 10 explains frame 10 better than no motion."""
    import av

    with av.open(str(shared_videos / "carphone.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(12), container.decode(video=0))]
    src, dst = frames[10], frames[11]
    flow = DISFlow()(to_tensor(src), to_tensor(dst)).numpy()
    height, width = src.shape[:2]
    grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    warped = cv2.remap(dst, grid_x + flow[0], grid_y + flow[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    inner = (slice(8, -8), slice(8, -8))
    error_flow = np.abs(warped[inner].astype(np.float32) - src[inner]).mean()
    error_still = np.abs(dst[inner].astype(np.float32) - src[inner]).mean()
    assert np.isfinite(flow).all() and error_flow < 0.8 * error_still
