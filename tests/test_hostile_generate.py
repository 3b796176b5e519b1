"""Hostile conditions on the generation side (issue 16): two runs into one folder, SIGINT, a full disk, odd inputs.

Runs ``dynocc-data generate`` in child processes on the small synthetic videos of ``test_resume_kill`` and
checks the one-line message and that ``--resume`` then ends with exactly the samples of an uninterrupted run.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_resume_kill import (ARGS, REPO, finished, read_samples, reference, start, videos,  # noqa: F401
                              wait_for_first_commit)

from dynocc_data.errors import DynOccError
from dynocc_data.generation.lock import OutputBusyError, hold_output
from dynocc_data.generation.video import discover_videos


def generate_cli(videos: Path, out: Path, *extra: str, fsize: int | None = None,
                 timeout: float = 300) -> subprocess.CompletedProcess:
    """``dynocc-data generate`` to completion; ``fsize`` caps the size of every file it writes (RLIMIT_FSIZE: a
    disk that fills up), with SIGXFSZ ignored so that writes fail with EFBIG as on a full disk."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, "-m", "dynocc_data.tools.cli", "generate", str(videos), "--out", str(out), *ARGS, *extra]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if fsize is not None else None)


def one_line_error(stderr: str) -> str:
    """The error line of a failed CLI run, checked to be the only non-log line (no traceback)."""
    assert "Traceback" not in stderr, stderr[-2000:]
    errors = [line for line in stderr.splitlines() if line.startswith("dynocc-data: ")]
    assert len(errors) == 1, stderr[-2000:]
    return errors[0]


def hold_in_child(out: Path, rank: int | None = None) -> subprocess.Popen:
    """A child process holding ``out``'s lock (it prints ``held`` once it has it, then sleeps)."""
    code = ("import sys, time; from dynocc_data.generation.lock import hold_output\n"
            f"with hold_output({str(out)!r}, rank={rank!r}):\n    print('held', flush=True); time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder_and_kill9_releases(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_in_child(out)
    try:
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid} on ") as err:
            with hold_output(out):
                pass
        assert "\n" not in str(err.value)
        with pytest.raises(OutputBusyError, match=f"pid {holder.pid}"):
            with hold_output(out, rank=3):  # a torchrun rank cannot share a folder a whole run holds
                pass
    finally:
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
    with hold_output(out):
        pass


def test_ranks_share_the_folder_but_not_a_rank(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    rank1 = hold_in_child(out, rank=1)
    try:
        with hold_output(out, rank=0):
            pass
        with pytest.raises(OutputBusyError, match=f"rank 1 of this folder is being written by pid {rank1.pid}"):
            with hold_output(out, rank=1):
                pass
        with pytest.raises(OutputBusyError, match=f"pid {rank1.pid}"):
            with hold_output(out):
                pass
    finally:
        rank1.kill()
        rank1.wait()


@pytest.mark.slow
def test_second_generate_into_a_busy_folder_is_refused_and_the_first_run_finishes(videos, reference, tmp_path):
    out, log = tmp_path / "out", tmp_path / "first.log"
    first = start(videos, out, "--workers", "1", log=log)
    try:
        wait_for_first_commit(out, first, log)
        os.killpg(first.pid, signal.SIGSTOP)  # paused mid-run, so it cannot finish before the second one starts
        try:
            for extra in ((), ("--resume",)):
                second = generate_cli(videos, out, *extra)
                assert second.returncode == 1
                line = one_line_error(second.stderr)
                assert f"pid {first.pid} on" in line and "is being written by" in line
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0, log.read_text()[-2000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert read_samples(out) == reference  # the first run was not disturbed


@pytest.mark.slow
def test_sigint_gives_one_line_and_resume_completes(videos, reference, tmp_path):
    out, log = tmp_path / "out", tmp_path / "run.log"
    proc = start(videos, out, "--workers", "1", log=log)
    wait_for_first_commit(out, proc, log)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    line = one_line_error(log.read_text())
    assert "interrupted" in line and "--resume" in line
    done = generate_cli(videos, out, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_samples(out) == reference


@pytest.mark.slow
def test_disk_filling_mid_shard_is_one_line_and_resumable(videos, reference, tmp_path):
    out = tmp_path / "out"
    full = generate_cli(videos, out, fsize=40_000)  # a shard of 2 samples is ~60 KB: the first one cannot finish
    assert full.returncode == 1
    line = one_line_error(full.stderr)
    assert "File too large" in line or "No space" in line
    assert not [p for p in out.glob("*.tar")], "no half-written shard under a final name"
    done = generate_cli(videos, out, "--resume")
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_samples(out) == reference


def test_output_folder_refusing_every_write_is_one_line(videos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    full = generate_cli(videos, out, fsize=0, timeout=120)  # no byte can be written: the nearly full folder
    assert full.returncode == 1
    line = one_line_error(full.stderr)
    assert str(out) in line and ("File too large" in line or "cannot write" in line)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the no-write case above covers it")
def test_read_only_output_folder_is_one_line(videos, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        done = generate_cli(videos, out, timeout=120)
    finally:
        out.chmod(0o755)
    assert done.returncode == 1 and "cannot write output" in one_line_error(done.stderr)


def test_list_file_listing_itself_is_reported_once(tmp_path, videos):
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{videos / 'v0.mp4'}\n{listing}\ninputs.txt\n")
    sources, errors = discover_videos([listing])
    assert [s.rel for s in sources] == ["v0.mp4"]
    assert [str(e) for e in errors] == [f"{listing}: list file includes itself"]


def test_symlink_loop_in_an_input_folder_ends(tmp_path, videos):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "v0.mp4").symlink_to(videos / "v0.mp4")
    (folder / "sub" / "loop").symlink_to(folder)  # in/sub/loop -> in
    (folder / "self").symlink_to(folder / "self")  # a link to itself
    started = time.monotonic()
    sources, errors = discover_videos([folder])
    assert time.monotonic() - started < 10
    assert [s.rel for s in sources] == ["sub/v0.mp4"] and errors == []


def test_fifo_named_like_a_video_does_not_hang(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "stuck.mp4")  # opening it for reading would block forever
    code = ("import sys; from dynocc_data.generation.video import discover_videos, open_video\n"
            f"sources, errors = discover_videos([{str(folder)!r}])\n"
            "for s in sources:\n    try: open_video(s)\n    except Exception as e: print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "stuck.mp4: no such file" in done.stdout


def test_huge_frame_size_is_refused_before_processing(tmp_path, videos, monkeypatch):
    from dynocc_data.generation import video

    monkeypatch.setenv("DYNOCC_MAX_FRAME_PIXELS", "10000")
    for backend in ("pyav", "frames"):
        source = videos / "v0.mp4"
        if backend == "frames":
            import cv2
            import numpy as np

            source = tmp_path / "frames"
            source.mkdir()
            for i in range(3):
                cv2.imwrite(str(source / f"{i}.png"), np.zeros((96, 128, 3), np.uint8))
        with pytest.raises(video.InputError, match=r"96x128 frames \(12288 pixels\) are above the limit of 10000"):
            video.open_video(source, backend=backend)
    monkeypatch.setenv("DYNOCC_MAX_FRAME_PIXELS", "lots")
    with pytest.raises(DynOccError, match="DYNOCC_MAX_FRAME_PIXELS"):
        video.open_video(videos / "v0.mp4", backend="pyav")


def test_truncated_jpeg_in_a_frame_folder_is_named(tmp_path):
    import cv2
    import numpy as np

    from dynocc_data.generation import video

    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(folder / f"{i}.jpg"), rng.integers(0, 255, (64, 80, 3), dtype=np.uint8))
    data = (folder / "3.jpg").read_bytes()
    (folder / "3.jpg").write_bytes(data[: len(data) // 2])
    with video.open_video(folder) as reader:
        with pytest.raises(video.InputError, match=r"3\.jpg: truncated JPEG"):
            list(reader.iter_frames(range(5)))


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_phone_video_is_read_upright(tmp_path, rotation):
    import av
    import numpy as np

    from dynocc_data.generation.video import open_video

    height, width = 48, 64
    image = np.zeros((height, width, 3), np.uint8)
    image[:16, :16] = 255  # a white top-left corner
    path = tmp_path / f"phone{rotation}.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(rotation)  # the display matrix a phone writes
        for _ in range(6):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    upright = np.rot90(image, rotation // 90)  # the display matrix turns counterclockwise
    with open_video(path, backend="pyav") as reader:
        assert reader.orig_size == upright.shape[:2]
        _, frame = next(iter(reader.iter_frames([2])))
    assert frame.shape == upright.shape
    assert np.abs(frame.astype(int) - upright).mean() < 8
