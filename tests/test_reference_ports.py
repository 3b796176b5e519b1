"""Training code ported from the YouTube3D / DIW references sees the same pairs and the same WHDR figures.

Python 2 and Lua Torch cannot run here, so each reference's coordinate and metric arithmetic is re-implemented
below from reading it (file and lines cited at each function), in the same operation order and float types, and
compared with what our readers and metrics give on fixtures written in the exact release formats
(dynocc_data/tools/fake_releases.py: Python 2 protocol-2 pickles, both DIW CSV layouts, ``*.thumb`` JPEGs).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dynocc_data.datasets import DIWDataset, YouTube3DDataset
from dynocc_data.losses import NYU_THRESHOLDS, YOUTUBE3D_THRESHOLDS, WHDRSweep, whdr
from dynocc_data.tools.fake_releases import (
    DIWSample,
    YouTube3DSample,
    py2_ndarray_pickle,
    write_diw_release,
    write_youtube3d_release,
)

NET = (240, 320)
SIZES = [(37, 53), (480, 640), (241, 321), (375, 500), (1000, 750), (120, 160)]


def _image(height: int, width: int, seed: int) -> torch.Tensor:
    """A smooth random picture (survives JPEG without block noise dominating)."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (3, 6, 8), generator=g, dtype=torch.uint8)
    return torch.nn.functional.interpolate(small[None].float(), size=(height, width), mode="bilinear",
                                           align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------- YouTube3D


def reference_yt_diw_youtube_branch(target: np.ndarray, height: int, width: int) -> np.ndarray:
    """princeton-vl/YouTube3D src/YT_DIWDataset.py, ``__getitem__`` lines 53-72 (the YouTube3D branch): each
    normalised row times the network height/width in the array's own dtype, ``>= size`` set to ``size - 1``,
    negatives to 0, then ``astype(np.int64)`` (truncation) of the whole ``5 x N`` array."""
    t = target.copy()
    for row, limit in ((0, height), (1, width), (2, height), (3, width)):
        t[row, :] = t[row, :] * limit
        view = t[row, :]
        view[view >= limit] = limit - 1
        view[view < 0] = 0
    return t.astype(np.int64)


def _youtube3d_targets(dtype: type, n: int, seed: int) -> np.ndarray:
    """Normalised targets with the awkward values: 0, exactly 1, values just under 1, odd fractions, ties."""
    rng = np.random.default_rng(seed)
    coords = rng.random((4, n))
    coords[:, :8] = [[0.0, 1.0, 0.999999, 0.5, 1 / 3, 2 / 3, 0.0041666, 0.99]] * 4
    coords[2:, 8:40] = coords[:2, 8:40] + rng.uniform(-0.002, 0.002, (2, 32))  # pairs that collapse at 240x320
    coords = np.clip(coords, 0.0, 1.0)
    ordinal = rng.choice([-1.0, 0.0, 1.0], size=(1, n))
    return np.concatenate([coords, ordinal]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_youtube3d_pairs_at_network_size_match_the_reference(tmp_path: Path, dtype: type):
    samples, targets = [], []
    for i, (h, w) in enumerate(SIZES):
        target = _youtube3d_targets(dtype, 400, seed=i)
        targets.append(target)
        samples.append(YouTube3DSample(f"./clip_{i}/shot_001/0001.jpg",
                                       f"./clip_{i}/shot_001/colmap/0/0001_0.6_6000_col_reldepth.pkl",
                                       _image(h, w, i), py2_ndarray_pickle(target)))
    csv_path = write_youtube3d_release(tmp_path / "data", samples)
    ds = YouTube3DDataset(csv_path, size=NET)
    collapsed = 0
    for i, target in enumerate(targets):
        item = ds[i]
        ref = reference_yt_diw_youtube_branch(target, *NET)
        assert torch.equal(item["pairs"], torch.from_numpy(ref[:4].T.copy())), i
        assert torch.equal(item["ordinal"], torch.from_numpy(ref[4].copy()))
        collapsed += int(((ref[0] == ref[2]) & (ref[1] == ref[3])).sum())
        # the image as the reference feeds it: cv2.imread (BGR), cv2.resize to (320, 240); ours is RGB
        bgr = cv2.resize(cv2.imread(str(tmp_path / "data" / samples[i].image_name)), (NET[1], NET[0]))
        assert torch.equal(item["image"], torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1))
        assert item["meta"]["orig_size"] == SIZES[i]
    assert collapsed >= len(SIZES) * 20  # the reference keeps them, so do we
    dropped = YouTube3DDataset(csv_path, size=NET, collapsed="drop")[0]
    assert len(dropped["pairs"]) < len(ds[0]["pairs"])
    p = dropped["pairs"]
    assert not bool(((p[:, 0] == p[:, 2]) & (p[:, 1] == p[:, 3])).any())


# ----------------------------------------------------------------------------------------------- DIW


def reference_diw_python(coords: np.ndarray, image_hw: tuple[int, int], height: int, width: int) -> np.ndarray:
    """princeton-vl/YouTube3D src/DIWDataset.py, ``DIWDataset.__getitem__`` lines 236-252 without augmentation: the
    float64 ``5 x 1`` target divided by the decoded image's size, times the network size, values ``> size`` set
    to ``size``, ``< 1`` to 1, minus 1, then ``astype(np.int64)``."""
    t = np.asarray(coords, dtype=np.float64).reshape(4, 1).copy()
    for row, source, limit in ((0, image_hw[0], height), (1, image_hw[1], width), (2, image_hw[0], height),
                               (3, image_hw[1], width)):
        t[row, :] = t[row, :] / float(source) * limit
        view = t[row, :]
        view[view > limit] = limit
        view[view < 1] = 1
    t[:4, :] = t[:4, :] - 1
    return t.astype(np.int64)[:, 0]


def reference_diw_lua(coords: np.ndarray, csv_hw: tuple[int, int], height: int, width: int) -> np.ndarray:
    """princeton-vl/relative_depth src/experiment/DataLoader_DIW.lua, ``parse_one_coordinate_line`` lines 59-82:
    ``c / orig_size`` (the CSV's width/height), then ``min(size, max(1, floor(. * size)))``; when both points land
    on one pixel, ``y_A - 1`` if ``y_A > 1`` else ``y_A + 1``. Lua is 1-based: minus 1 for 0-based indices."""
    y_a, x_a, y_b, x_b = (float(c) for c in coords)
    h0, w0 = csv_hw
    y_a = min(height, max(1, math.floor(y_a / h0 * height)))
    x_a = min(width, max(1, math.floor(x_a / w0 * width)))
    y_b = min(height, max(1, math.floor(y_b / h0 * height)))
    x_b = min(width, max(1, math.floor(x_b / w0 * width)))
    if y_a == y_b and x_a == x_b:
        y_a = y_a - 1 if y_a > 1 else y_a + 1
    return np.array([y_a, x_a, y_b, x_b]) - 1


def _diw_samples(n_per_size: int) -> list[tuple[DIWSample, np.ndarray, tuple[int, int]]]:
    rng = np.random.default_rng(5)
    out = []
    for i, (h, w) in enumerate(SIZES):
        image = _image(h, w, 100 + i)
        for j in range(n_per_size):
            ya, yb = rng.integers(1, h + 1, 2)
            xa, xb = rng.integers(1, w + 1, 2)
            if j % 3 == 0:  # close points: collapse at 240x320 on the larger images
                yb, xb = min(h, ya + 1), xa
            if j == 1:
                ya, xa, yb, xb = 1, 1, 1, 1 + (w > 320)  # on the first row: the Lua nudge goes down
            if j == 2:
                ya, xa, yb, xb = h, w, h, w  # the far corner
            coords = np.array([ya, xa, yb, xb], dtype=np.float64)
            rel = ">" if rng.random() < 0.5 else "<"
            annotation = f"{ya},{xa},{yb},{xb},{rel},{w},{h}"
            out.append((DIWSample(f"./DIW_test/{i:02d}_{j:02d}.thumb", image, annotation), coords, (h, w)))
    return out


def _write_youtube3d_code_layout(root: Path, samples: list[DIWSample]) -> Path:
    """The layout princeton-vl/YouTube3D src/DIWDataset.py ``parse_csv_meta_data`` (lines 181-209) reads: one header
    line, then ``path,idx,n_point`` and ``n_point`` (= 1) coordinate lines."""
    lines = ["img_name,idx,n_point"]
    for idx, s in enumerate(samples):
        lines += [f"{s.image_name},{idx},1", s.annotation]
    path = root / "symm_DIW_release_test.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_diw_pairs_at_network_size_match_both_references_in_both_layouts(tmp_path: Path):
    samples = _diw_samples(12)
    release = write_diw_release(tmp_path / "data", [s for s, _, _ in samples])
    youtube3d_layout = _write_youtube3d_code_layout(tmp_path / "data", [s for s, _, _ in samples])
    collapsed = 0
    for csv_path in (release, youtube3d_layout):
        keep = DIWDataset(csv_path, size=NET, collapsed="keep")
        nudge = DIWDataset(csv_path, size=NET)  # the default: the Lua loader's nudge
        assert len(keep) == len(nudge) == len(samples)
        for i, (_, coords, hw) in enumerate(samples):
            python_ref = reference_diw_python(coords, hw, *NET)
            lua_ref = reference_diw_lua(coords, hw, *NET)
            assert keep[i]["pairs"].tolist() == [python_ref.tolist()], (csv_path.name, i)
            item = nudge[i]
            assert item["pairs"].tolist() == [lua_ref.tolist()], (csv_path.name, i)
            assert item["image"].shape == (3, *NET) and len(item["ordinal"]) == 1
            collapsed += python_ref[0] == python_ref[2] and python_ref[1] == python_ref[3]
    assert collapsed >= 8  # the case where the transform path used to leave an image without a pair


def test_diw_at_native_size_reads_both_layouts_alike(tmp_path: Path):
    samples = _diw_samples(3)
    release = DIWDataset(write_diw_release(tmp_path / "data", [s for s, _, _ in samples]))
    other = DIWDataset(_write_youtube3d_code_layout(tmp_path / "data", [s for s, _, _ in samples]))
    for i, (_, coords, _) in enumerate(samples):
        a, b = release[i], other[i]
        # DIWDatasetVal (src/DIWDataset.py lines 283-292): the raw coordinates minus 1 at the image's own size
        raw = (coords - 1).astype(np.int64)
        if not (raw[0] == raw[2] and raw[1] == raw[3]):
            assert a["pairs"].tolist() == [raw.tolist()]
        assert torch.equal(a["pairs"], b["pairs"]) and torch.equal(a["ordinal"], b["ordinal"])


# ----------------------------------------------------------------------------------------------- WHDR sweeps


def reference_valid_sweep(outputs, targets, threshes) -> tuple[list[tuple[float, float, float, float]], dict]:
    """princeton-vl/YouTube3D src/valid.py: ``evalute_correct_rate_one_img`` (lines 95-155: float32 ``z_A - z_B``,
    ``torch.gt(d, t)`` / ``torch.lt(d, -t)``, counts of correct unequal and equal pairs per threshold), the pooled
    sums of ``valid`` (lines 208-225; the equal rate is 0 when there are no equal pairs) and its max-min pick
    (lines 206-207, 231-233). Rows are (thresh, WKDR, WKDR_neq, WKDR_eq) in %."""
    reports = []
    for depth, target in zip(outputs, targets):
        y_a, x_a, y_b, x_b = target[0], target[1], target[2], target[3]
        gt_r = target[4].float()
        z_a = depth.index_select(1, x_a).gather(0, y_a.view(1, -1))
        z_b = depth.index_select(1, x_b).gather(0, y_b.view(1, -1))
        diff = z_a - z_b
        report = {"eq": int(torch.sum(torch.eq(gt_r, 0.0))),
                  "neq": int(torch.sum(torch.eq(gt_r, 1.0)) + torch.sum(torch.eq(gt_r, -1.0)))}
        for t in threshes:
            est_r = torch.gt(diff, t).float() + torch.lt(diff, -t).float() * -1
            report[t] = (int(torch.sum(torch.eq(est_r * gt_r, 1.0))),
                         int(torch.sum((1.0 - torch.abs(gt_r)) * (1.0 - torch.abs(est_r)))))
        reports.append(report)
    rows, highest = [], 0.0
    best = {"thresh": -1.0, "WKDR": 100, "WKDR_neq": 100, "WKDR_eq": 100}
    for t in threshes:
        neq_correct = sum(r[t][0] for r in reports)
        eq_correct = sum(r[t][1] for r in reports)
        eq, neq = sum(r["eq"] for r in reports), sum(r["neq"] for r in reports)
        rate_neq = neq_correct / neq
        rate_eq = 0.0 if eq == 0 else eq_correct / eq
        rate = (neq_correct + eq_correct) / (neq + eq)
        row = (t, (1 - rate) * 100, (1 - rate_neq) * 100, (1 - rate_eq) * 100)
        rows.append(row)
        if min(rate_neq, rate_eq) > highest:
            highest = min(rate_neq, rate_eq)
            best = dict(zip(("thresh", "WKDR", "WKDR_neq", "WKDR_eq"), row))
    return rows, best


def reference_nyu_sweep(outputs, targets, threshes) -> tuple[list[tuple[float, float, float, float]], float]:
    """princeton-vl/relative_depth src/experiment/test_model_on_NYU.lua: ``_evaluate_correctness_our`` (lines 59-116:
    per image, ``WKDR = 1 - correct / n``, ``WKDR_eq``, ``WKDR_neq``), the mean over images (lines 375-378), and
    the pick of the threshold minimising ``max(WKDR_eq, WKDR_neq)`` (lines 385-395). Rows as above (fractions)."""
    per_image = []
    for depth, target in zip(outputs, targets):
        z_a = depth[target[0], target[1]]
        z_b = depth[target[2], target[3]]
        gt = target[4]
        rows = []
        for t in threshes:
            diff = z_a - z_b
            est = torch.where(diff > t, 1, torch.where(diff < -t, -1, 0))
            ok = est == gt
            n_eq, n_neq = int((gt == 0).sum()), int((gt != 0).sum())
            rows.append((1 - int(ok.sum()) / (n_eq + n_neq), 1 - int((ok & (gt == 0)).sum()) / n_eq,
                         1 - int((ok & (gt != 0)).sum()) / n_neq))
        per_image.append(rows)
    mean = np.mean(np.array(per_image), axis=0)  # [K, 3]
    rows = [(t, m[0], m[2], m[1]) for t, m in zip(threshes, mean)]
    pick, min_max = None, math.inf
    for t, _, neq, eq in rows:
        if max(eq, neq) < min_max:
            min_max, pick = max(eq, neq), t
    return rows, pick


def _quantised_outputs(n_images: int, seed: int):
    """Float32 predictions on a 1/64 grid (differences sit exactly on many thresholds) and targets with equal
    and unequal pairs, on images of different sizes."""
    g = torch.Generator().manual_seed(seed)
    outputs, targets = [], []
    for i in range(n_images):
        h, w = SIZES[i % len(SIZES)]
        depth = (torch.randint(0, 128, (h, w), generator=g).float() / 64.0).to(torch.float32)
        n = 60
        ys = torch.randint(0, h, (2, n), generator=g)
        xs = torch.randint(0, w, (2, n), generator=g)
        ordinal = torch.randint(-1, 2, (n,), generator=g)
        ordinal[:3] = torch.tensor([-1, 0, 1])
        outputs.append(depth)
        targets.append(torch.stack([ys[0], xs[0], ys[1], xs[1], ordinal]))
    return outputs, targets


def _sweep(outputs, targets, thresholds) -> WHDRSweep:
    sweep = WHDRSweep(thresholds)
    for depth, target in zip(outputs, targets):  # one image at a time: they differ in size
        sweep.update(depth[None], target[:4].T[None], target[4][None])
    return sweep


def test_whdr_sweep_pooled_equals_youtube3d_valid():
    outputs, targets = _quantised_outputs(12, seed=1)
    ref_rows, ref_best = reference_valid_sweep(outputs, targets, YOUTUBE3D_THRESHOLDS)
    sweep = _sweep(outputs, targets, YOUTUBE3D_THRESHOLDS)
    rows = sweep.table()
    assert len(rows) == 140 and rows[0].threshold == pytest.approx(0.1) and rows[-1].threshold == pytest.approx(1.49)
    for row, (t, wkdr, neq, eq) in zip(rows, ref_rows):
        assert row.threshold == t
        assert (row.whdr * 100, row.whdr_unequal * 100, row.whdr_equal * 100) == pytest.approx((wkdr, neq, eq),
                                                                                               abs=1e-9)
    best = sweep.best()
    assert best.threshold == ref_best["thresh"]
    assert best.whdr * 100 == pytest.approx(ref_best["WKDR"], abs=1e-9)


def test_whdr_sweep_per_image_equals_the_lua_nyu_test():
    outputs, targets = _quantised_outputs(9, seed=2)
    ref_rows, ref_pick = reference_nyu_sweep(outputs, targets, NYU_THRESHOLDS)
    sweep = _sweep(outputs, targets, NYU_THRESHOLDS)
    rows = sweep.table(average="per_image")
    assert rows[0].threshold == pytest.approx(0.11) and rows[-1].threshold == pytest.approx(1.50)
    for row, (t, wkdr, neq, eq) in zip(rows, ref_rows):
        assert (row.whdr, row.whdr_unequal, row.whdr_equal) == pytest.approx((wkdr, neq, eq), abs=1e-12)
    assert sweep.best(average="per_image").threshold == ref_pick
    assert rows != sweep.table(average="pooled")  # the two averages are different figures


def test_whdr_sweep_without_equal_pairs_and_dtype():
    outputs, targets = _quantised_outputs(4, seed=3)
    for t in targets:
        t[4][t[4] == 0] = 1
    sweep = _sweep(outputs, targets, YOUTUBE3D_THRESHOLDS)
    rows = sweep.table()
    assert all(math.isnan(r.whdr_equal) for r in rows)
    _, ref_best = reference_valid_sweep(outputs, targets, YOUTUBE3D_THRESHOLDS)
    assert ref_best["thresh"] == -1.0  # valid.py's placeholder: its equal rate is 0 and never beats 0
    best = sweep.best()  # ours: the threshold with the fewest unequal errors, the first of the sweep
    assert best.threshold == YOUTUBE3D_THRESHOLDS[0] and best.whdr_unequal == min(r.whdr_unequal for r in rows)


def test_whdr_compares_in_the_prediction_dtype():
    """float32 outputs whose difference is float32(0.1) exactly: the reference's float32 compare says '='
    (not > 0.1f) where a float64 recomputation (0.10000000149 > 0.1) said '>'."""
    z = torch.tensor([[[0.1, 0.0]]], dtype=torch.float32)
    pairs = torch.tensor([[[0, 0, 0, 1]]])
    ordinal = torch.tensor([[0]])
    assert whdr(z, pairs, ordinal, threshold=0.1).whdr == 0.0  # float32: 0.1f > 0.1f is false: '=' is right
    assert bool(torch.gt(z[0, 0, 0] - z[0, 0, 1], 0.1)) is False  # the reference's own compare
    assert whdr(z.double(), pairs, ordinal, threshold=0.1).whdr == 1.0  # float64 input: 0.100000001 > 0.1


def test_whdr_takes_the_ranking_loss_argument_order():
    depth = torch.tensor([[[2.0, 1.0, 1.0]]])
    pairs = torch.tensor([[[0, 0, 0, 1], [0, 1, 0, 2]]])
    ordinal = torch.tensor([[1, -1]])
    mask = torch.tensor([[True, False]])
    assert whdr(depth, pairs, ordinal, mask).num_pairs == 1 and whdr(depth, pairs, ordinal, mask).whdr == 0.0
    with pytest.raises(TypeError):
        whdr(depth, pairs, ordinal, mask, torch.ones(1, 2))  # weights are keyword-only
    assert whdr(depth, pairs, ordinal, weights=torch.tensor([[1.0, 3.0]])).whdr == pytest.approx(3 / 4)


def reference_relative_loss_b_sort(depth: torch.Tensor, targets: list[torch.Tensor]) -> torch.Tensor:
    """princeton-vl/YouTube3D src/RelativeLoss.py ``__call__`` with ``b_sort`` (lines 62-104) and ``loss_func``
    (lines 38-56): per image ``mask * log(1 + exp(-d r)) + (1 - mask) * d**2``, sorted descending, the first
    ``int(n * 0.75)`` summed; the sum over images divided by the kept count."""
    losses, kept = [], 0
    for b, t in enumerate(targets):
        z = depth[b, 0]
        z_a = z.index_select(1, t[1]).gather(0, t[0].view(1, -1))
        z_b = z.index_select(1, t[3]).gather(0, t[2].view(1, -1))
        r = t[4].float()
        mask = torch.abs(r)
        d = z_a - z_b
        loss = mask * torch.log(1 + torch.exp(-1 * d * r)) + (1 - mask) * d * d
        n_top = int(t.shape[1] * 0.75)
        kept += n_top
        losses.append(torch.sum(torch.sort(loss, descending=True)[0][..., :n_top]))
    return sum(losses) / kept


def test_ranking_loss_keep_largest_is_the_reference_b_sort():
    from dynocc_data.losses import ranking_loss

    g = torch.Generator().manual_seed(4)
    depth = torch.randn(2, 1, 9, 11, generator=g, dtype=torch.float64)
    targets = []
    for n in (13, 7):
        ys, xs = torch.randint(0, 9, (2, n), generator=g), torch.randint(0, 11, (2, n), generator=g)
        targets.append(torch.stack([ys[0], xs[0], ys[1], xs[1], torch.randint(-1, 2, (n,), generator=g)]))
    ours = ranking_loss(depth, [t[:4].T for t in targets], [t[4] for t in targets], keep_largest=0.75)
    assert float(ours) == pytest.approx(float(reference_relative_loss_b_sort(depth, targets)), rel=1e-12)
    full = ranking_loss(depth, [t[:4].T for t in targets], [t[4] for t in targets])
    assert float(ours) > float(full)  # the largest losses, averaged


def test_reference_input_matches_cv2_read_and_resnet_preprocess(tmp_path: Path):
    """src/YoutubeDataset.py lines 235-239 (``cv2.imread``, ``cv2.resize``, ``transpose(2, 0, 1)``, ``/ 255.0``)
    and src/ReDWebNet.py ``resNet_data_preprocess`` lines 490-495 (mean/std per channel index, on BGR)."""
    from dynocc_data.datasets.reference import reference_input

    samples = [YouTube3DSample("./a/0001.jpg", "./a/0001.pkl", _image(50, 70, 9),
                               py2_ndarray_pickle(_youtube3d_targets(np.float64, 64, 1)))]
    csv_path = write_youtube3d_release(tmp_path / "data", samples)
    item = YouTube3DDataset(csv_path, size=NET)[0]
    color = cv2.resize(cv2.imread(str(tmp_path / "data" / "a" / "0001.jpg")), (NET[1], NET[0]))
    color = color.transpose(2, 0, 1).astype(np.float32) / 255.0
    assert torch.equal(reference_input(item["image"]), torch.from_numpy(color))
    for channel, (m, s) in enumerate(zip([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])):
        color[channel] -= m
        color[channel] /= s
    assert torch.allclose(reference_input(item["image"][None], imagenet=True)[0], torch.from_numpy(color), atol=1e-6)
