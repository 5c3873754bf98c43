"""deploy/Dockerfile: one image for every role, multi-stage, non-root, a pinned base, no test extras; and its
install step works: the build stage's COPY and RUN lines are replayed in a fresh virtual environment
(no Docker engine here), then the installed ``gpuledger`` runs every role's command.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpuledger.cli import build_parser
from gpuledger.config import Settings
from tests.support.chart import render

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def test_two_stages_on_one_pinned_base_running_as_non_root() -> None:
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG")
    build, final = stages()
    assert build[0][1].endswith(" AS build") and final[0][1] == "${PYTHON_IMAGE}"
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), f"not pinned: {base}"
    user = [a for w, a in final if w == "USER"]
    assert user and not user[-1].startswith(("0", "root")), "the image must not run as root by default"
    copies = [a for w, a in final if w == "COPY"]
    assert copies == ["--from=build /opt/gpuledger /opt/gpuledger"], "the final stage takes only the environment"
    assert not any("test" in a or "[" in a for w, a in build if w == "RUN"), "no extras in the image"


def test_entrypoint_runs_the_cli_and_every_chart_role_uses_it() -> None:
    entry = json.loads(next(a for w, a in instructions() if w == "ENTRYPOINT"))
    cmd = json.loads(next(a for w, a in instructions() if w == "CMD"))
    assert entry == ["gpuledger"]
    assert build_parser(Settings()).parse_args(cmd).command == "agent"
    objects = render()
    images = {c["image"] for o in objects.values() if o["kind"] in ("DaemonSet", "StatefulSet", "CronJob")
              for c in (o["spec"].get("template") or o["spec"]["jobTemplate"]["spec"]["template"])["spec"]["containers"]}
    assert len(images) == 1, f"one image for every role, got {images}"


@pytest.mark.slow
def test_the_install_step_works_in_a_fresh_venv(tmp_path: Path) -> None:
    """Replay the build stage: its COPY lines from the repository, its RUN line with /opt and /src moved under tmp."""
    build, _ = stages()
    src, opt = tmp_path / "src", tmp_path / "opt"
    src.mkdir()
    for word, args in build:
        if word == "COPY":
            *sources, dest = args.split()
            for s in sources:
                target = src / (s if dest in ("./", ".") else dest)
                if (ROOT / s).is_dir():
                    shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                else:
                    shutil.copy2(ROOT / s, target)
    (run,) = [a for w, a in build if w == "RUN"]
    script = run.replace("/opt/gpuledger", str(opt / "gpuledger")).replace("python -m venv", f"{sys.executable} -m venv")
    out = subprocess.run(["sh", "-c", script], cwd=src, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("gpuledger 0.1.0")
    exe = opt / "gpuledger" / "bin" / "gpuledger"
    for role in (["agent", "--help"], ["ingest", "--help"], ["attribute", "--help"], ["serve", "--help"],
                 ["retention", "--help"], ["export", "chargeback", "--help"]):
        r = subprocess.run([str(exe), *role], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, (role, r.stderr[-2000:])
    freeze = subprocess.run([str(opt / "gpuledger" / "bin" / "pip"), "freeze"], capture_output=True, text=True,
                            timeout=120).stdout.lower()
    assert re.search(r"^prometheus[-_]client==", freeze, re.M) and "duckdb==" in freeze
    installed = {line.split("==")[0].replace("_", "-") for line in freeze.splitlines()}
    extras = installed & {"pytest", "hypothesis", "mypy", "ruff", "helm-python-sdk", "schemathesis", "playwright"}
    assert not extras, f"test extras installed: {extras}"
