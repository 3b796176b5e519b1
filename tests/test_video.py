"""Tests of dynocc_data.generation.video: discovery, the decoding backends, streaming and bad input.

Every clip is written here for real (PyAV libx264, OpenCV mp4v / MJPG, JPEG frame folders). Each frame carries its
index as 10 black/white 16x16 blocks, so a test can check that frame i really is frame i after any codec.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import types
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from dynocc_data.errors import InputError
from dynocc_data.generation.video import (
    CHUNK_SIZE,
    VideoSource,
    discover_videos,
    frames_needed,
    make_video_id,
    open_video,
    require_frames,
    select_frames,
    target_size,
)

H, W = 96, 128  # a frame width decord2 3.4 decodes correctly (it mis-shapes e.g. 96 px wide frames)
FPS = 25


# ------------------------------------------------------------------------------------------------- fake data


def pattern(i: int, h: int = H, w: int = W) -> np.ndarray:
    """RGB frame ``i``: index bits as white blocks (top-left 2x5 grid of 16 px) over a random 8 px texture."""
    rng = np.random.default_rng(i)
    img = (rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8) // 2 + 64).repeat(8, 0).repeat(8, 1)
    img[:32, :80] = 0
    for bit in range(10):
        if i >> bit & 1:
            r, c = divmod(bit, 5)
            img[r * 16:r * 16 + 16, c * 16:c * 16 + 16] = 255
    return np.ascontiguousarray(img)


def read_index(frame: np.ndarray) -> int:
    """The index encoded by :func:`pattern` (frame at any size with the same aspect)."""
    if frame.shape[:2] != (H, W):
        frame = cv2.resize(frame, (W, H), interpolation=cv2.INTER_LINEAR)
    bits = [frame[r * 16 + 4:r * 16 + 12, c * 16 + 4:c * 16 + 12].mean() > 128 for r in (0, 1) for c in range(5)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def write_pyav(path: Path, n: int, *, h: int = H, w: int = W, options: dict[str, str] | None = None,
               gop: int | None = None) -> Path:
    with av.open(str(path), "w", options=options or {}) as out:
        stream = out.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if gop:  # short groups of pictures with B-frames: decode order != display order, many seek points
            stream.gop_size, stream.options = gop, {"bframes": "3", "keyint_min": str(gop)}
        for i in range(n):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(pattern(i, h, w), format="rgb24")))
        out.mux(stream.encode())
    return path


def write_cv2(path: Path, n: int, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(FPS), (W, H))
    assert writer.isOpened()
    for i in range(n):
        writer.write(cv2.cvtColor(pattern(i), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_frames(folder: Path, n: int, *, name: str = "{:05d}.jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / name.format(i)), cv2.cvtColor(pattern(i), cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def decode_all(reader, indices) -> dict[int, np.ndarray]:
    return dict(reader.iter_frames(indices))


CLIPS = {"x264.mp4": 40, "mp4v.mp4": 30, "mjpg.avi": 30, "x264.mkv": 30}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """One small clip per container/codec, plus a JPEG frame folder."""
    d = tmp_path_factory.mktemp("clips")
    return {
        "x264.mp4": write_pyav(d / "x264.mp4", CLIPS["x264.mp4"]),
        "mp4v.mp4": write_cv2(d / "mp4v.mp4", CLIPS["mp4v.mp4"], "mp4v"),
        "mjpg.avi": write_cv2(d / "mjpg.avi", CLIPS["mjpg.avi"], "MJPG"),
        "x264.mkv": write_pyav(d / "x264.mkv", CLIPS["x264.mkv"]),  # mkv reports 0 frames to PyAV
        "frames": write_frames(d / "JPEGImages" / "vid", 12),
    }


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    return write_pyav(tmp_path_factory.mktemp("long") / "long.mp4", 300)


# ------------------------------------------------------------------------------------------------- frame selection


def test_select_frames_known_answers():
    assert select_frames(20, stride=5, gap=2) == [2, 7, 12, 17]
    assert select_frames(20, stride=5, gap=2, start=3) == [3, 8, 13]  # 18 + 2 is not < 20
    assert select_frames(10, stride=1, gap=3, max_frames=2) == [3, 4]
    assert select_frames(5, stride=1, gap=2) == [2]
    assert select_frames(4, stride=1, gap=2) == []
    assert select_frames(0, stride=1, gap=1) == []
    with pytest.raises(ValueError):
        select_frames(10, stride=0, gap=1)
    with pytest.raises(ValueError):
        select_frames(10, stride=1, gap=0)


def test_frames_needed_known_answers():
    assert frames_needed([2, 7], 2) == [0, 2, 3, 4, 5, 6, 7, 9, 11]
    assert frames_needed([2, 7], 2, num_frames=10) == [0, 2, 3, 4, 5, 6, 7, 9]
    assert frames_needed([1], 1) == [0, 1, 2, 3]
    assert frames_needed([], 3) == []


def test_target_size_known_answers():
    assert target_size((272, 640), None) == (272, 640)
    assert target_size((272, 640), 640) == (272, 640)
    assert target_size((272, 640), 1000) == (272, 640)  # never upscaled
    assert target_size((272, 640), 320) == (136, 320)
    assert target_size((272, 640), 100) == (42, 100)
    assert target_size((144, 176), 100) == (82, 100)
    assert target_size((640, 272), 101) == (100, 42)  # portrait; even and within max_side


# ------------------------------------------------------------------------------------------------- discovery


@pytest.fixture
def tree(tmp_path) -> Path:
    """a/ holds videos at two depths, frame folders, a stray text file and a hidden video; b/ has no videos."""
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "clip one.MP4").write_bytes(b"not decoded by discovery")
    (a / "sub" / "deep.mkv").write_bytes(b"x")
    (a / "notes.txt").write_text("not a list: ignored inside folders\n")
    (a / ".hidden.mp4").write_bytes(b"x")
    for vid, ext in (("vid1", ".jpg"), ("vid2", ".png")):
        (a / "JPEGImages" / vid).mkdir(parents=True)
        for i in range(2):
            (a / "JPEGImages" / vid / f"{i:05d}{ext}").write_bytes(b"x")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.md").write_text("no videos here\n")
    return tmp_path


def test_discover_folder_recursive(tree):
    sources, errors = discover_videos([tree / "a"])
    assert errors == []
    assert [(s.kind, s.rel) for s in sources] == [
        ("frames", "JPEGImages/vid1"), ("frames", "JPEGImages/vid2"),
        ("file", "clip one.MP4"), ("file", "sub/deep.mkv")]
    assert all(Path(s.path).is_absolute() and Path(s.path).exists() for s in sources)
    assert sources[0].path == str(tree / "a" / "JPEGImages" / "vid1")


def test_discover_non_recursive_and_frame_folders(tree):
    sources, errors = discover_videos([tree / "a"], recursive=False)
    assert [s.rel for s in sources] == ["clip one.MP4"] and errors == []
    sources, _ = discover_videos([tree / "a" / "JPEGImages"], recursive=False)
    assert [(s.kind, s.rel) for s in sources] == [("frames", "vid1"), ("frames", "vid2")]
    sources, _ = discover_videos([tree / "a" / "JPEGImages" / "vid2"])  # a frame folder given directly
    assert [(s.kind, s.rel) for s in sources] == [("frames", "vid2")]


def test_discover_list_file(tree):
    url = "https://example.com/videos/street.cam.mp4?dl=1"
    (tree / "inputs.txt").write_text(
        "# training clips\n\n  a/sub/deep.mkv  \n" + url + "\n" + f"{tree / 'a' / 'clip one.MP4'}\n"
        "a/JPEGImages/vid1\nmissing.mp4\nnested.txt\n")
    (tree / "nested.txt").write_text("nested.txt\n")  # includes itself
    sources, errors = discover_videos([tree / "inputs.txt"])
    assert [(s.kind, s.rel) for s in sources] == [  # rel: relative to the list file's folder
        ("frames", "a/JPEGImages/vid1"), ("file", "a/clip one.MP4"), ("file", "a/sub/deep.mkv"), ("url", url)]
    assert sources[-1].path == url
    assert [(Path(e.path).name, e.reason) for e in errors] == [
        ("missing.mp4", f"no such file or directory (listed in {tree / 'inputs.txt'}:7)"),
        ("nested.txt", "list file includes itself")]


def test_discover_reports_bad_inputs_without_raising(tree):
    (tree / "anim.gif").write_bytes(b"GIF89a")
    (tree / "empty").mkdir()
    inputs = [tree / "nope.mp4", tree / "anim.gif", tree / "empty", tree / "b", "https://example.com/a.webm"]
    sources, errors = discover_videos(inputs)
    assert [s.kind for s in sources] == ["url"]
    reasons = {Path(e.path).name: e.reason for e in errors}
    assert reasons["nope.mp4"] == "no such file or directory"
    assert reasons["anim.gif"].startswith("unsupported file type '.gif'")
    assert reasons["empty"] == reasons["b"] == "no videos or frame folders found"
    assert all(isinstance(e, InputError) and "\n" not in str(e) and str(e).startswith(e.path) for e in errors)


def test_discover_removes_duplicates_and_sorts(tree):
    a = tree / "a"
    first, errors = discover_videos([a / "sub" / "deep.mkv", a, a, str(a / "clip one.MP4")])
    second, _ = discover_videos([str(a / "clip one.MP4"), a, a / "sub" / "deep.mkv"])
    assert errors == [] and first == second
    assert len(first) == len({s.path for s in first}) == 4
    assert [s.rel for s in first] == sorted(s.rel for s in first)


def test_video_id_is_sanitised_stable_and_unique(tree):
    rel = "sub/my.clip v2.mp4"
    assert make_video_id(rel) == "my_clip_v2-" + hashlib.sha1(rel.encode()).hexdigest()[:8]
    assert make_video_id("https://example.com/videos/street.cam.mp4?dl=1").startswith("street_cam-")
    assert VideoSource("/x/JPEGImages/vid1", "frames", "JPEGImages/vid1").video_id.startswith("vid1-")
    sources, _ = discover_videos([tree / "a"])
    again, _ = discover_videos([tree / "a"])
    assert [s.video_id for s in sources] == [s.video_id for s in again]
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+-[0-9a-f]{8}", s.video_id) for s in sources)
    # the same file name under two input roots: rel would collide, ids must not
    for sub in ("x", "y"):
        (tree / sub).mkdir()
        (tree / sub / "clip.mp4").write_bytes(b"x")
    both, _ = discover_videos([tree / "x", tree / "y"])
    assert len(both) == 2 and both[0].video_id != both[1].video_id
    assert all(s.video_id.startswith("clip-") for s in both)


# ------------------------------------------------------------------------------------------------- backends


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("name", list(CLIPS))
def test_video_backends_return_the_right_frames(clips, name, backend):
    n = CLIPS[name]
    with open_video(clips[name], backend=backend) as reader:
        assert (reader.backend, reader.num_frames, reader.fps) == (backend, n, FPS)
        assert reader.orig_size == reader.size == (H, W) and reader.scale == 1.0
        frames = decode_all(reader, [n - 1, 0, 7, 1, 7])  # unsorted with a duplicate: sorted, unique
    assert list(frames) == [0, 1, 7, n - 1]
    for i, frame in frames.items():
        assert frame.dtype == np.uint8 and frame.shape == (H, W, 3)
        assert read_index(frame) == i
        assert np.abs(frame.astype(int) - pattern(i)).mean() < 12  # codec tolerance: RGB, not BGR


def test_frames_backend_natural_order(tmp_path):
    folder = write_frames(tmp_path / "frames", 12, name="frame_{}.jpg")  # frame_2 must come before frame_10
    with open_video(folder) as reader:
        assert (reader.backend, reader.num_frames, reader.fps, reader.orig_size) == ("frames", 12, 30.0, (H, W))
        frames = decode_all(reader, range(12))
    assert [read_index(f) for f in frames.values()] == list(range(12))
    assert all(np.abs(f.astype(int) - pattern(i)).mean() < 4 for i, f in frames.items())


def test_backends_agree(clips):
    indices = [0, 5, 21, 39]
    with open_video(clips["x264.mp4"], backend="decord") as a, open_video(clips["x264.mp4"], backend="pyav") as b:
        fa, fb = decode_all(a, indices), decode_all(b, indices)
    for i in indices:
        assert np.abs(fa[i].astype(int) - fb[i]).mean() < 1.0  # same H.264 decode, maybe another YUV->RGB
    assert np.abs(fa[5].astype(int) - fb[21]).mean() > 20  # and different frames do differ


@pytest.mark.parametrize("backend", ["decord", "pyav", "frames"])
def test_max_side_resizes_keeping_aspect(clips, backend):
    source = clips["frames"] if backend == "frames" else clips["x264.mp4"]
    with open_video(source, backend=backend, max_side=64) as reader:
        assert (reader.orig_size, reader.size, reader.scale) == ((H, W), (48, 64), 0.5)
        frames = decode_all(reader, [3, 10])
    for i, frame in frames.items():
        assert frame.shape == (48, 64, 3) and read_index(frame) == i
        expected = cv2.resize(pattern(i), (64, 48), interpolation=cv2.INTER_AREA)
        assert np.abs(frame.astype(int) - expected).mean() < 12
    with open_video(source, backend=backend, max_side=1000) as reader:  # never upscaled
        assert reader.size == (H, W) and reader.scale == 1.0


def test_torchcodec_backend(clips):
    pytest.importorskip("torchcodec")
    with open_video(clips["x264.mp4"], backend="torchcodec") as reader:
        assert reader.num_frames == CLIPS["x264.mp4"]
        assert [read_index(f) for _, f in reader.iter_frames([0, 9])] == [0, 9]


def test_auto_picks_pyav_on_cpu(clips, caplog):
    with caplog.at_level(logging.WARNING, logger="dynocc_data.generation.video"), open_video(clips["x264.mp4"]) as reader:
        assert reader.backend == "pyav" and read_index(next(reader.iter_frames([4]))[1]) == 4
    assert caplog.text == ""


def test_auto_on_cuda_falls_back_to_pyav_without_decord(clips, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "decord", None)  # makes `import decord` raise ImportError
    with caplog.at_level(logging.WARNING, logger="dynocc_data.generation.video"), \
            open_video(clips["x264.mp4"], device="cuda") as reader:
        assert reader.backend == "pyav" and read_index(next(reader.iter_frames([4]))[1]) == 4
    assert str(clips["x264.mp4"]) in caplog.text and "PyAV" in caplog.text


def test_cuda_device_falls_back_to_cpu_decoding(clips):
    pytest.importorskip("decord")
    with open_video(clips["x264.mp4"], backend="decord", device="cuda") as reader:
        assert reader.device in ("cuda", "cpu")  # "cpu" unless decord was built with CUDA
        assert [read_index(f) for _, f in reader.iter_frames([2, 30])] == [2, 30]


def test_auto_handles_frame_widths_decord_misshapes(tmp_path, caplog):
    clip = write_pyav(tmp_path / "narrow.mp4", 10, h=64, w=96)
    with caplog.at_level(logging.WARNING, logger="dynocc_data.generation.video"), open_video(clip, device="cuda") as reader:
        assert reader.size == (64, 96) and reader.num_frames == 10
        frames = decode_all(reader, [0, 9])
        if reader.backend == "pyav":  # decord2 3.4 returns HxWx4 arrays at this width: fell back, and said so
            assert "trying the other decoder" in caplog.text and str(clip) in caplog.text
    assert all(f.shape == (64, 96, 3) and np.abs(f.astype(int) - pattern(i, 64, 96)).mean() < 12
               for i, f in frames.items())


# ------------------------------------------------------------------------------------------------- streaming


def test_decord_streams_in_bounded_chunks(long_clip, monkeypatch):
    decord = pytest.importorskip("decord")
    calls: list[int] = []
    original = decord.VideoReader.get_batch

    def spy(self, indices):
        calls.append(len(indices))
        return original(self, indices)

    with open_video(long_clip, backend="decord") as reader:
        monkeypatch.setattr(decord.VideoReader, "get_batch", spy)
        frames = reader.iter_frames(range(300))
        assert isinstance(frames, types.GeneratorType) and calls == []  # nothing decoded before it is asked for
        first = next(frames)
        assert first[0] == 0 and read_index(first[1]) == 0 and calls == [CHUNK_SIZE]
        order = [first[0]] + [i for i, f in frames if read_index(f) == i]
    assert order == list(range(300))
    assert max(calls) <= CHUNK_SIZE and sum(calls) == 300 and len(calls) == -(-300 // CHUNK_SIZE)


def test_pyav_streams_lazily(long_clip, tmp_path):
    clip = tmp_path / "copy.mp4"
    clip.write_bytes(long_clip.read_bytes())
    with open_video(clip, backend="pyav") as reader:
        frames = reader.iter_frames(range(300))
        assert isinstance(frames, types.GeneratorType)
        assert [read_index(next(frames)[1]) for _ in range(3)] == [0, 1, 2]
        with open(clip, "r+b") as f:  # later packets vanish: only a reader that has not decoded them yet notices
            f.truncate(clip.stat().st_size // 10)
        with pytest.raises(InputError, match=r"copy\.mp4: frame \d+ does not decode"):
            list(frames)


def test_frames_stream_lazily(tmp_path):
    folder = write_frames(tmp_path / "vid", 40)
    with open_video(folder) as reader:
        frames = reader.iter_frames(range(40))
        assert isinstance(frames, types.GeneratorType)
        assert [read_index(f) for _, f in (next(frames), next(frames))] == [0, 1]
        (folder / "00020.jpg").unlink()  # read from disk only when its turn comes
        order = []
        with pytest.raises(InputError, match=r"00020\.jpg: cannot decode image"):
            for i, f in frames:
                order.append(read_index(f))
    assert order == list(range(2, 20))


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_sparse_access_seeks_correctly(tmp_path, ext, backend):
    clip = write_pyav(tmp_path / f"gop{ext}", 90, gop=8)
    with open_video(clip, backend=backend) as reader:
        assert reader.num_frames == 90
        for wanted in ([0, 3, 40, 41, 88, 89], [57], [12], [1, 2, 30, 31, 32, 33, 70]):  # forwards and back
            assert [read_index(f) for _, f in reader.iter_frames(wanted)] == wanted


# ------------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backend", ["auto", "decord", "pyav"])
def test_bad_video_files(tmp_path, backend):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    data = write_pyav(tmp_path / "whole.mp4", 40).read_bytes()  # index (moov) at the end: lost when cut
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])
    with av.open(str(tmp_path / "audio.mp4"), "w") as out:  # a valid file without a video stream
        stream = out.add_stream("aac", rate=16000)
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    expected = {"empty.mp4": "zero-length file", "noise.mp4": "cannot decode", "cut.mp4": "cannot decode",
                "missing.mp4": "no such file", "audio.mp4": "cannot decode (no video stream)"}
    for name, reason in expected.items():
        with pytest.raises(InputError) as info:
            open_video(tmp_path / name, backend=backend)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: {reason}") and "\n" not in message
        assert "Traceback" not in message


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_truncated_file_reports_real_count(tmp_path, backend):
    n = 60
    data = write_pyav(tmp_path / "whole.mp4", n, options={"movflags": "faststart"}).read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[:len(data) // 2])  # index kept, half of the frames lost
    try:
        reader = open_video(tmp_path / "cut.mp4", backend=backend)
    except InputError as err:  # a clean error is acceptable too
        assert str(err).startswith(str(tmp_path / "cut.mp4")) and "\n" not in str(err)
        return
    with reader:
        num = reader.num_frames
        assert 0 < num < n and reader.reported_frames > num
        assert [read_index(f) for _, f in reader.iter_frames(range(num))] == list(range(num))
        require_frames(reader, num)
        with pytest.raises(InputError, match=rf"cut\.mp4: truncated: only {num} frames decode"):
            require_frames(reader, n)
        with pytest.raises(ValueError, match=r"cut\.mp4.*out of range"):
            reader.iter_frames([num])


def test_index_checks_and_too_short(clips):
    with open_video(clips["x264.mp4"], backend="pyav") as reader:
        for bad in ([40], [-1], [0, 41]):
            with pytest.raises(ValueError, match=re.escape(str(clips["x264.mp4"]))):
                reader.iter_frames(bad)
        require_frames(reader, 40)
        with pytest.raises(InputError) as info:
            require_frames(reader, 50)
    assert str(info.value) == f"{clips['x264.mp4']}: too short: 40 frames, need 50"


def test_bad_frame_folders(tmp_path):
    folder = write_frames(tmp_path / "vid", 6)
    (folder / "00003.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(InputError) as info:
        open_video(folder)
    assert str(info.value) == f"{folder / '00003.jpg'}: not a readable image"
    other = write_frames(tmp_path / "sizes", 3)
    cv2.imwrite(str(other / "00001.jpg"), np.zeros((50, 60, 3), np.uint8))
    with open_video(other) as reader, pytest.raises(InputError, match=r"00001\.jpg: size 50x60 differs"):
        list(reader.iter_frames([0, 1]))
    (tmp_path / "none").mkdir()
    with pytest.raises(InputError, match="no images"):
        open_video(tmp_path / "none")


def test_backend_and_argument_mismatches(clips):
    with open_video(clips["frames"], backend="decord") as reader:  # the decoder choice is for video files
        assert reader.backend == "frames"
    with pytest.raises(InputError, match="frame folders only"):
        open_video(clips["x264.mp4"], backend="frames")
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(clips["x264.mp4"], backend="ffmpeg")
    with pytest.raises(ValueError, match="max_side"):
        open_video(clips["x264.mp4"], max_side=0)


# ------------------------------------------------------------------------------------------------- real clips


@pytest.mark.realdata
def test_real_clips_decode_identically(shared_videos):
    for name, n, fps, size in (("bikes.mp4", 250, 25.0, (272, 640)), ("carphone.mp4", 120, 30000 / 1001, (144, 176))):
        frames = {}
        for backend in ("decord", "pyav"):
            with open_video(shared_videos / name, backend=backend) as reader:
                assert (reader.num_frames, reader.orig_size) == (n, size)
                assert reader.fps == pytest.approx(fps, rel=1e-4)
                frames[backend] = decode_all(reader, [0, 1, 100, n - 1])
        for i, frame in frames["decord"].items():
            assert frame.shape == (*size, 3)
            assert np.abs(frame.astype(int) - frames["pyav"][i]).mean() < 1.0
        assert np.abs(frames["decord"][0].astype(int) - frames["pyav"][100]).mean() > 5
