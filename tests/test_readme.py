"""Every code block of README.md, read from the README itself, run in order in a fresh folder.

``bash`` blocks run line by line (``&&`` chains part by part) with this checkout's ``dynocc-data``; ``python``
blocks run as scripts, after the bash blocks before them (so the Load block reads the shards the README's own
commands made, with ``num_workers=2``). What is not run, as the README's Development section says: ``pip install``
(the fresh-venv run checks it) and ``python -m pytest`` (this suite); a line whose comment says
``checked only: <reason>`` (a GPU, a cluster, the datasets' releases, a job of minutes) is parsed instead:
``dynocc-data`` lines by the command-line parser, scripts by checking that each option they use is in their
``--help``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dynocc_data.tools.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
CHECKED_ONLY = "# checked only:"


def readme_blocks() -> list[tuple[str, str]]:
    """``(language, body)`` of the README's bash and python blocks, in order (other fences are output)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return [(lang, body) for lang, body in FENCE.findall(text) if lang in ("bash", "python")]


def bash_lines(body: str) -> list[str]:
    """The command lines of a bash block (continuations joined, comments and blank lines left out)."""
    joined = body.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "MPLBACKEND": "Agg"}


def _cli_args(tokens: list[str]) -> list[str] | None:
    """The ``dynocc-data`` arguments of a command (``dynocc-data``, ``python -m dynocc_data``, under torchrun/srun)."""
    if tokens[0] == "dynocc-data":
        return tokens[1:]
    if "-m" in tokens and tokens[tokens.index("-m") + 1] in ("dynocc_data", "dynocc_data.tools.cli"):
        return tokens[tokens.index("-m") + 2:]
    return None


def _check_only(tokens: list[str], cwd: Path) -> None:
    """Parse a command that is not run: its options must be ones the program accepts."""
    args = _cli_args(tokens)
    if args is not None:
        build_parser().parse_args(args)  # exits (fails the test) on an unknown option or a bad value
        return
    script = next(t for t in tokens if t.endswith(".py"))
    done = subprocess.run([sys.executable, script, "--help"], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    for option in (t for t in tokens if t.startswith("--")):
        assert option.split("=")[0] in done.stdout, f"{script} has no option {option}"


def _run(tokens: list[str], cwd: Path) -> subprocess.CompletedProcess:
    args = _cli_args(tokens)
    if args is not None:
        argv = [sys.executable, "-m", "dynocc_data.tools.cli", *args]
    elif tokens[0] == "python":
        argv = [sys.executable, *tokens[1:]]
    else:
        raise AssertionError(f"README command of unknown kind: {shlex.join(tokens)}")
    return subprocess.run(argv, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_every_readme_block_runs(tmp_path: Path):
    blocks = readme_blocks()
    assert sum(lang == "python" for lang, _ in blocks) >= 1 and len(blocks) >= 8
    work = tmp_path / "work"
    work.mkdir()
    for name in ("examples", "benchmarks"):  # the README's scripts, by their relative paths
        (work / name).symlink_to(REPO / name)
    ran, checked, left = [], [], []
    for index, (lang, body) in enumerate(blocks):
        if lang == "python":
            script = work / f"readme_block_{index}.py"
            script.write_text(body, encoding="utf-8")
            done = subprocess.run([sys.executable, script.name], cwd=work, env=_env(), capture_output=True,
                                  text=True, timeout=900)
            assert done.returncode == 0, f"README python block {index} failed:\n{body}\n{done.stderr[-3000:]}"
            ran.append(f"python block {index}")
            continue
        for line in bash_lines(body):
            for part in line.split(" && "):
                tokens = shlex.split(part, comments=True)
                if tokens[0] in ("for", "do", "done"):  # a loop's frame: its body lines say what they are
                    checked.append(part)
                elif tokens[0] == "pip" or "pytest" in tokens:
                    left.append(part)
                elif CHECKED_ONLY in part or CHECKED_ONLY in line:
                    _check_only(tokens, work)
                    checked.append(part)
                else:
                    done = _run(tokens, work)
                    assert done.returncode == 0, f"README command failed: {part}\n{done.stderr[-3000:]}"
                    ran.append(part)
    assert len(ran) >= 8, ran
    assert (work / "shards" / "index.json").is_file() and (work / "runs" / "demo" / "overlay.png").is_file()
    print(f"README: ran {len(ran)}, checked {len(checked)}, left to the fresh-venv run {len(left)}")
