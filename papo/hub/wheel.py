"""papo-hub's own source tree, built into the wheel that a Space runs (``papo push space``).

``build_wheel`` builds this checkout of papo-hub into a reproducible wheel (fixed zip timestamps, so an
unchanged re-push uploads nothing), with or without the embedded demo models; ``_space_requirements`` writes
the Space's ``requirements.txt`` from that wheel's metadata (papo-hub's dependencies and its ``space`` extra),
and ``_sdk_version`` the Gradio version of the Space's card, from the ``space`` extra's range.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

from papo import __version__

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
SPACE_SOURCE = PROJECT_ROOT / "space"


# Zip timestamps of the wheel (1980-01-01, the zip epoch): the same source gives the same bytes, so an
# unchanged re-push uploads nothing.
WHEEL_EPOCH = "315532800"


def build_wheel(out_dir: str | os.PathLike, *, with_assets: bool) -> Path:
    """Build the wheel of this papo-hub source tree into ``out_dir`` (offline: setuptools, no isolation).

    ``with_assets=False`` leaves ``papo/assets`` (the embedded demo models) out. The zip timestamps are fixed,
    so the same source gives the same bytes. Raises ``ValueError`` when papo is not run from its source tree.
    """
    pyproject = PROJECT_ROOT / "pyproject.toml"
    if not pyproject.is_file() or tomllib.loads(pyproject.read_text())["project"]["name"] != "papo-hub":
        raise ValueError(
            f"papo push space builds papo-hub from its source tree, which was not found at {PROJECT_ROOT}: "
            "run it from a clone of papo-hub installed with `pip install -e .`"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    skip = ["__pycache__", "*.pyc", ".*"] + ([] if with_assets else ["assets"])
    with tempfile.TemporaryDirectory(prefix="papo-wheel-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(PROJECT_ROOT / "papo", source / "papo", ignore=shutil.ignore_patterns(*skip))
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (PROJECT_ROOT / name).is_file():
                shutil.copyfile(PROJECT_ROOT / name, source / name)
        dist = Path(tmp) / "dist"
        code = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
        env = {**os.environ, "SOURCE_DATE_EPOCH": WHEEL_EPOCH, "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [sys.executable, "-c", code, str(dist)], cwd=source, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise RuntimeError(f"building the papo-hub wheel failed:\n{(done.stdout + done.stderr)[-3000:]}")
        name = done.stdout.strip().splitlines()[-1]
        target = out_dir / name
        shutil.copyfile(dist / name, target)
    return target


def _space_requirements(wheel: Path) -> str:
    """requirements.txt: papo-hub's dependencies and its `space` extra, as the wheel's metadata pins them
    (so they match pyproject.toml), and `spaces`. The wheel itself is not listed: the app imports it from
    the Space folder (``space_config.use_shipped_wheel``), because a Space may install requirements.txt before
    the rest of the repo is in place, where a relative path to the wheel would not resolve."""
    from email.parser import Parser

    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(name).decode())
    lines = [
        f"# Written by `papo push space`: the dependencies of papo-hub {__version__} and of its `space` extra.",
        f"# papo-hub itself is {wheel.name}, next to app.py, which app.py imports (see space_config.use_shipped_wheel).",
    ]
    for spec in metadata.get_all("Requires-Dist") or []:
        requirement = Requirement(spec)
        marker = str(requirement.marker) if requirement.marker else ""
        if marker and marker.replace("'", '"') != 'extra == "space"':
            continue  # another extra (deepspeed, vllm, dev)
        requirement.marker = None
        lines.append(str(requirement))
    lines += [
        "# ZeroGPU: `spaces` (preinstalled there) gives the GPU per request; elsewhere the app runs without it.",
        "spaces",
    ]
    return "\n".join(lines) + "\n"


def _sdk_version() -> str:
    """The Gradio the Space runs: the installed one when it is in the `space` extra's range, else its floor."""
    import re

    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    spec = next(s for s in project["optional-dependencies"]["space"] if s.startswith("gradio"))
    floor = re.search(r">=\s*([\d.]+)", spec).group(1)
    try:
        from importlib.metadata import version

        from packaging.requirements import Requirement

        installed = version("gradio")
        if Requirement(spec).specifier.contains(installed):
            return installed
    except Exception:  # gradio not installed here: the floor of the range
        pass
    return floor + ".0" * (2 - floor.count("."))
