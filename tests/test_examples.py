"""End-to-end checks of examples/ (train_depth.py, ablate_sampling.py) in their smallest configurations, plus
known answers for the helpers they rely on (ground-truth pairs, WHDR evaluation, the depth network)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

import ablate_sampling  # noqa: E402
import train_depth  # noqa: E402
from models import ARCHS, ModelConfig, build_model  # noqa: E402
from synthetic_gt import GTPairConfig, SceneSet, gt_pairs, write_gt_pair_set  # noqa: E402

from dynocc_data import DenseDepthDataset, collate_pairs, create_transform  # noqa: E402
from dynocc_data.datasets import YouTube3DDataset  # noqa: E402
from dynocc_data.tools.synthetic import SceneConfig, moving_square_scene  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_threads():
    """The examples set torch's thread count; give the other tests back what they had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------ helpers


def test_gt_pairs_follow_ground_truth_depth():
    """Square at depth 10 over a background at depth 20: every ordinal matches the depth, edge pairs straddle the
    square's outline, no ties, and exactly half the pairs have A farther."""
    scene = moving_square_scene(size=(96, 128), num_frames=6)
    depth, labels = scene.depth[2], scene.labels[2]
    cfg = GTPairConfig(random_pairs=60, edge_pairs=60)
    pairs, ordinal, is_edge = gt_pairs(depth, labels, cfg, np.random.default_rng(0))
    assert pairs.dtype == torch.int64 and pairs.shape == (120, 4) and int(is_edge.sum()) == 60
    p = pairs.numpy()
    da, db = depth[p[:, 0], p[:, 1]], depth[p[:, 2], p[:, 3]]
    assert np.array_equal(ordinal.numpy(), np.sign(da - db).astype(np.int64))
    assert (ordinal != 0).all() and int((ordinal == 1).sum()) == 60
    e = p[is_edge.numpy()]
    assert (labels[e[:, 0], e[:, 1]] != labels[e[:, 2], e[:, 3]]).all()
    dist = np.hypot(e[:, 0] - e[:, 2], e[:, 1] - e[:, 3])
    assert dist.min() >= 1.0 and dist.max() <= 17.0


def test_gt_pair_set_round_trips_through_youtube3d_reader(tmp_path):
    """The YouTube3D-format set (CSV, JPEGs, Python 2 pickles) reads back with the same pixel pairs."""
    scenes = SceneSet(1, 5, SceneConfig(height=64, width=96, num_frames=8))
    cfg = GTPairConfig(random_pairs=20, edge_pairs=20, frames=(2, 5))
    csv_path = write_gt_pair_set(tmp_path, scenes, cfg)
    ds = YouTube3DDataset(csv_path)
    assert len(ds) == 2
    flags = np.load(tmp_path / "gt_pairs_edge.npy", allow_pickle=False)
    assert len(flags) == sum(len(ds[i]["pairs"]) for i in range(2))
    from dynocc_data.tools.synthetic import make_scene

    scene = make_scene(scenes.config, 5)
    item = ds[0]
    p = item["pairs"].numpy()
    depth = scene.depth[2]
    assert np.array_equal(item["ordinal"].numpy(), np.sign(depth[p[:, 0], p[:, 1]] - depth[p[:, 2], p[:, 3]]))


def _val_set(tmp_path):
    """A one-image validation set with known depth."""
    scene = moving_square_scene(size=(96, 128), num_frames=6)
    pairs, ordinal, is_edge = gt_pairs(scene.depth[2], scene.labels[2], GTPairConfig(), np.random.default_rng(1))
    image = torch.from_numpy(scene.frames[2]).permute(2, 0, 1).contiguous()
    item = {"image": image, "pairs": pairs, "ordinal": ordinal, "meta": {"key": "square"}}
    return train_depth.ValSet("square", [item], is_edge.numpy()), torch.from_numpy(scene.depth[2])


def test_evaluate_known_answers(tmp_path):
    """Ground-truth depth scores 0 %, its inverse 100 %, a constant 50 % (ties count half)."""
    val, depth = _val_set(tmp_path)

    def oracle(sign):
        return lambda x: sign * depth.log().expand(x.shape[0], 1, *depth.shape)

    cpu = torch.device("cpu")
    assert train_depth.evaluate(oracle(1.0), val, None, cpu)["whdr"] == 0.0
    worst = train_depth.evaluate(oracle(-1.0), val, None, cpu)
    assert worst["whdr"] == 1.0 and worst["whdr_edge"] == 1.0 and worst["whdr_random"] == 1.0
    const = train_depth.evaluate(lambda x: torch.zeros(x.shape[0], 1, *x.shape[-2:]), val, None, cpu)
    assert const["whdr"] == 0.5 and const["pairs"] == 200


def test_diw_validation_set(tmp_path):
    """--val-diw: a DIW CSV is read as a validation set; 'higher = farther' gets both annotated pairs right."""
    from dynocc_data.tools.fake_releases import DIWSample, two_colour_image, write_diw_release

    samples = [DIWSample(f"./DIW_test/{i}.thumb", two_colour_image(32, 48), f"3,{10 + i},30,{20 + i},>,48,32")
               for i in range(2)]
    csv_path = write_diw_release(tmp_path, samples)
    cfg = train_depth.TrainConfig(out=str(tmp_path / "run"), val_diw=[str(csv_path)])
    (val,) = train_depth.load_val_sets(cfg)
    assert val.name == "diw:DIW_test" and val.edge is None

    def row_prior(x):
        h, w = x.shape[-2:]
        return -torch.arange(h, dtype=torch.float32).view(1, 1, h, 1).expand(x.shape[0], 1, h, w)

    result = train_depth.evaluate(row_prior, val, None, torch.device("cpu"))
    assert result == {"whdr": 0.0, "pairs": 2}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_depth_net_predicts_at_input_size(arch):
    """Every encoder gives one log-depth channel at the input's size, odd sizes included."""
    net = build_model(ModelConfig(arch=arch, width=16)).eval()
    with torch.no_grad():
        out = net(torch.rand(1, 3, 50, 70))
    assert out.shape == (1, 1, 50, 70) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_pretrained_needs_cached_weights(tmp_path, monkeypatch):
    """--pretrained never downloads: without the cached file it fails with one clear error."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_model(ModelConfig(arch="mobilenet_v3_small", pretrained=True))


def test_checkpoint_save_is_atomic(tmp_path):
    """save_checkpoint leaves the final file only (no temporary next to it) and it loads with weights_only."""
    path = tmp_path / "last.pt"
    train_depth.save_checkpoint(path, {"step": 3, "w": torch.ones(2)})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    assert train_depth.load_checkpoint(path)["step"] == 3


# ------------------------------------------------------------------------------------- end to end


def test_train_depth_smoke_with_youtube3d_mix_and_resume(tmp_path):
    """--smoke: synthetic shards + YouTube3D-format fixture mixed in, validation, checkpoints, then --resume."""
    out = tmp_path / "run"
    result = train_depth.main(["--smoke", "--out", str(out), "--mix-weight", "0.5"])
    assert result.step == 4
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file()
    assert (out / "data" / "youtube3d" / "gt_pairs.csv").is_file()
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 4 and state["config"]["youtube3d"].endswith("gt_pairs.csv")
    assert [h["step"] for h in state["history"]] == [0, 2, 4]
    for h in state["history"]:
        assert 0.0 <= h["val:gt_pairs/whdr"] <= 1.0 and h["val:gt_pairs/pairs"] == 400
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in log} == {"train", "val"}
    assert all(np.isfinite(r["loss"]) for r in log if r["kind"] == "train")

    # resuming at the end trains nothing and restores the saved weights exactly
    same = train_depth.main(["--smoke", "--out", str(out), "--mix-weight", "0.5", "--resume"])
    assert same.step == 4
    for name, value in same.model.state_dict().items():
        assert torch.equal(value, state["model"][name]), name
    # resuming with more steps goes on from step 4
    more = train_depth.main(["--smoke", "--out", str(out), "--mix-weight", "0.5", "--resume", "--steps", "6"])
    assert more.step == 6
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 6 and [h["step"] for h in state["history"]] == [0, 2, 4, 6]


def test_train_depth_resume_mid_epoch_sees_the_batches_of_the_uninterrupted_run(tmp_path, monkeypatch):
    """--resume restores the loader's position (2 workers, shuffled, mixed): the same batches as one long run."""
    seen = []
    original = train_depth.batches

    def recording(*args, **kwargs):
        for epoch, batch in original(*args, **kwargs):
            seen.append((epoch, [m["key"] for m in batch["meta"]]))
            yield epoch, batch

    monkeypatch.setattr(train_depth, "batches", recording)
    data = tmp_path / "data"
    common = ["--smoke", "--data", str(data), "--workers", "2", "--batch-size", "2", "--shuffle", "4",
              "--mix-weight", "0.5", "--val-every", "100"]
    train_depth.main([*common, "--out", str(tmp_path / "straight"), "--steps", "7"])
    straight, seen[:] = list(seen), []
    train_depth.main([*common, "--out", str(tmp_path / "cut"), "--steps", "3"])
    state = torch.load(tmp_path / "cut" / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3 and "loader" in state
    train_depth.main([*common, "--out", str(tmp_path / "cut"), "--steps", "7", "--resume"])
    assert len(straight) == 7 and seen == straight
    assert len({epoch for epoch, _ in straight}) > 1  # the run crossed an epoch boundary, the cut was mid-epoch


def test_ablation_smoke_writes_table_csv_and_plot(tmp_path):
    """--smoke: every strategy trained and scored, plus the constant baseline at exactly 50 %."""
    docs = tmp_path / "docs"
    rows = ablate_sampling.main(["--smoke", "--work", str(tmp_path / "work"), "--docs", str(docs)])
    expected = ["constant", "row prior", *ablate_sampling.STRATEGIES]
    assert [r.method for r in rows] == expected
    with open(docs / "ablation.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["method"] for r in table] == expected
    assert float(table[0]["whdr"]) == 0.5
    assert [r.method for r in ablate_sampling.read_csv(docs / "ablation.csv")] == expected
    for r in table[2:]:
        assert 0.0 <= float(r["whdr"]) <= 1.0 and 0.0 <= float(r["pair_accuracy"]) <= 1.0
        assert float(r["pairs_per_frame"]) > 0
    md = (docs / "ablation.md").read_text()
    for name in expected:
        assert f"| {name} |" in md
    png = (docs / "ablation.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not [p for p in docs.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_train_depth_smoke_with_a_dense_source(tmp_path):
    """--smoke --dense synthetic: the ground-truth depth CSV is made, read, mixed per batch and trained on."""
    out = tmp_path / "dense"
    result = train_depth.main(["--smoke", "--out", str(out), "--dense", "synthetic", "--dense-weight", "0.5",
                               "--steps", "6"])
    assert result.step == 6 and (out / "data" / "dense" / "dense.csv").is_file()
    dense = DenseDepthDataset(out / "data" / "dense" / "dense.csv", depth_scale=0.001, num_pairs=0,
                              transform=create_transform(train=True, size=(48, 64)))
    batch = collate_pairs([dense[0], dense[1]])
    loss = train_depth.batch_loss(torch.zeros(2, 1, 48, 64, requires_grad=True), batch)
    assert torch.isfinite(loss) and float(loss) > 0  # a constant prediction does not fit real depth
    with pytest.raises(SystemExit):
        train_depth.parse_args(["--out", str(out), "--dense", "synthetic"])  # needs --quick
