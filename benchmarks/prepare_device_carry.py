"""Build `.device/`, the wheels that benchmarks/device_check.sh installs on the GPU machine.

The GPU machine (device tool, kind nvidia-h200) reaches no package registry: what it lacks travels as
wheels inside the working tree, which may weigh at most 64 MiB in all per call. This script, run here
(where pip reaches PyPI) from the repo root:

1. downloads the packages our trainer needs that the machine lacks or has at another version, at the
   versions installed in this environment (the ones CI tests) where they fit: trl, transformers, peft,
   datasets, bitsandbytes and the graders, then every requirement of theirs (markers evaluated for
   CPython 3.12 on x86-64 Linux) that the machine does not have at a known, satisfying version;
2. slims bitsandbytes to the libraries a CUDA-13 torch loads (its wheel holds one per CUDA/ROCm
   release: 43 MB) and rewrites its RECORD;
3. checks that every carried wheel's requirements are met by the carried wheels plus the machine's
   packages (MACHINE below, from the device docs), lists what it could only assume, and
4. prints the size of `.device/` and of the working tree that travels with it, and exits 1 when the
   two together exceed 64 MiB (or when a requirement is not met).

    python benchmarks/prepare_device_carry.py          # -> .device/wheels/*.whl, .device/manifest.json

`.device/` is ignored by git (.gitignore); name it in the device tool's `carry` list.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from base64 import urlsafe_b64encode
from pathlib import Path

from packaging import tags
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

LIMIT_BYTES = 64 * 2**20  # the device tool's limit on the working tree that travels, carried paths included
SMALL_WHEEL_BYTES = (
    2 * 2**20
)  # a requirement the machine has at an unknown version is carried when this small
# The GPU machine's Python packages (device docs KINDS.md: the 'cuda' image's list read 2026-11-17; versions
# where a session's `pip list` there gave one, 2026-11). None: present, version not listed.
MACHINE_PYTHON = "3.12.3"
MACHINE_KNOWN = {
    "accelerate": "1.15.0",
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "torchvision": "0.26.0",
    "transformers": "5.17.0",
    "triton": "3.6.0",
}
MACHINE_UNVERSIONED = """absl-py aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers
flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx humanize hypothesis idna
imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum
opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu scikit-build-core
scikit-image scikit-learn scipy seaborn sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorstore threadpoolctl tifffile tiktoken timm toolz torchaudio torchdiffeq
torch-geometric torchmetrics tqdm treescope typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp jax-cuda13-pjrt jax-cuda13-plugin nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx
pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist tensorboard-data-server""".split()
MACHINE: dict[str, str | None] = {
    **{canonicalize_name(n): None for n in MACHINE_UNVERSIONED},
    **{canonicalize_name(n): v for n, v in MACHINE_KNOWN.items()},
}
# Carried whatever the machine has: papo's trainer and loaders run against these versions in CI.
ROOTS = ["trl", "transformers", "peft", "datasets", "bitsandbytes", "mathruler", "pylatexenc", "math-verify"]
# The machine's torch is 2.11.0+cu130: bitsandbytes loads libbitsandbytes_cuda130.so (cuda132 kept for a newer
# torch, cpu for imports without a GPU); the other CUDA/ROCm/XPU builds are dropped.
BNB_KEEP = {"libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so"}
MACHINE_ENV = {  # PEP 508 marker environment of the GPU machine
    "implementation_name": "cpython",
    "implementation_version": MACHINE_PYTHON,
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": MACHINE_PYTHON,
    "python_version": "3.12",
    "sys_platform": "linux",
    "extra": "",
}
PIP_PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "--abi", "abi3"]
PIP_PLATFORM += ["--abi", "none"]
for _n in (17, 24, 27, 28, 31, 34, 35):
    PIP_PLATFORM += ["--platform", f"manylinux_2_{_n}_x86_64"]
PIP_PLATFORM += ["--platform", "manylinux2014_x86_64", "--platform", "linux_x86_64", "--platform", "any"]


# --- requirements (also used by device_check on the GPU machine) ----------------------------------------


def wheel_metadata(path: str | os.PathLike) -> tuple[str, str, list[str]]:
    """(canonical name, version, Requires-Dist lines) of a wheel file."""
    with zipfile.ZipFile(path) as whl:
        name = next(n for n in whl.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        text = whl.read(name).decode()
    headers = {}
    requires = []
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(": ")
        if key == "Requires-Dist":
            requires.append(value)
        elif key in ("Name", "Version"):
            headers[key] = value
    return canonicalize_name(headers["Name"]), headers["Version"], requires


def needed(requires: list[str], env: dict | None = None) -> list[Requirement]:
    """The requirements that apply (no extras) under the marker environment `env` (None: this Python)."""
    out = []
    for line in requires:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({**(env or {}), "extra": ""}):
            out.append(req)
    return out


def judge(req: Requirement, carried: dict[str, str], machine: dict[str, str | None]) -> tuple[str, str]:
    """('ok' | 'assumed' | 'unmet', why) for one requirement against carried + machine packages (carried first,
    as PYTHONPATH puts them first there)."""
    name = canonicalize_name(req.name)
    spec = SpecifierSet(str(req.specifier))
    for where, packages in (("carried", carried), ("machine", machine)):
        if name not in packages:
            continue
        version = packages[name]
        if version is None:
            if not str(spec):
                return "ok", f"{name} on the machine"
            return "assumed", f"{name} on the machine, version not listed (needs {spec})"
        if spec.contains(Version(version), prereleases=True):
            return "ok", f"{name} {version} {where}"
        return "unmet", f"{name} {version} {where}, needs {spec}"
    return "unmet", f"{name} neither carried nor on the machine"


def check(wheels: list[Path], machine: dict[str, str | None], env: dict | None) -> list[dict]:
    """Each carried wheel's applicable requirements, judged against the carried wheels plus `machine`."""
    carried = {}
    metas = []
    for wheel in wheels:
        name, version, requires = wheel_metadata(wheel)
        carried[name] = version
        metas.append((name, version, requires))
    rows = []
    for name, version, requires in metas:
        for req in needed(requires, env):
            verdict, why = judge(req, carried, machine)
            rows.append({"wheel": f"{name} {version}", "requires": str(req), "verdict": verdict, "why": why})
    return rows


# --- building the carry folder --------------------------------------------------------------------------


def local_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def download(spec: str, dest: Path) -> Path:
    """One wheel for CPython 3.12 / x86-64 Linux (no dependencies); pure-Python sdists are built into a wheel."""
    before = set(dest.glob("*.whl"))
    pip = [sys.executable, "-m", "pip"]
    done = subprocess.run(
        [*pip, "download", "--no-deps", "--only-binary=:all:", *PIP_PLATFORM, "-d", str(dest), spec],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:  # no wheel: build one from the sdist, accepted only if it is pure Python
        done = subprocess.run(
            [*pip, "wheel", "--no-deps", "-w", str(dest), spec], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"prepare_device_carry: cannot get a wheel for {spec}:\n{done.stderr[-2000:]}")
    new = set(dest.glob("*.whl")) - before
    if not new:  # already there
        name = canonicalize_name(Requirement(spec).name)
        new = {w for w in dest.glob("*.whl") if wheel_metadata(w)[0] == name}
    (wheel,) = new
    if not installs_on_machine(wheel.name):
        raise SystemExit(f"prepare_device_carry: {wheel.name} does not install on CPython 3.12 x86-64")
    return wheel


def installs_on_machine(filename: str) -> bool:
    """Whether a wheel's tags match CPython 3.12 on x86-64 manylinux (the GPU machine)."""
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(5, 40)]
    platforms += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64", "linux_x86_64"]
    supported = {
        *tags.cpython_tags((3, 12), abis=["cp312", "abi3", "none"], platforms=platforms),
        *tags.compatible_tags((3, 12), "cp312", platforms),
    }
    return bool(set(parse_wheel_filename(filename)[3]) & supported)


def record_line(name: str, data: bytes) -> str:
    digest = urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def slim_wheel(path: Path, keep_libraries: set[str]) -> list[str]:
    """Rewrite the wheel without the shared libraries not in `keep_libraries` (and their RECORD lines).
    Returns the dropped files."""
    dropped = []
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        files = {}
        record_name = None
        for info in src.infolist():
            base = info.filename.rsplit("/", 1)[-1]
            if base.endswith(".so") and base not in keep_libraries:
                dropped.append(info.filename)
                continue
            if info.filename.endswith(".dist-info/RECORD"):
                record_name = info.filename
                continue
            files[info.filename] = src.read(info.filename)
        record = [record_line(name, data) for name, data in files.items()] + [f"{record_name},,"]
        for name, data in files.items():
            dst.writestr(name, data)
        dst.writestr(record_name, "\n".join(record) + "\n")
    os.replace(tmp, path)
    return dropped


def tree_bytes(repo: Path) -> int:
    """Bytes of what the device tool sends without `carry`: tracked plus untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = repo / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build(folder: Path) -> dict:
    """Download ROOTS and the requirements the machine cannot be relied on for into folder/wheels."""
    wheels_dir = folder / "wheels"
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        staging = Path(tmp)
        wheels: dict[str, Path] = {}
        notes = []
        queue = [(root, "") for root in ROOTS]
        while queue:
            name, spec = queue.pop(0)
            name = canonicalize_name(name)
            if name in wheels:
                continue
            local = local_version(name)
            pin = (
                f"{name}=={local}"
                if local and SpecifierSet(spec).contains(local, prereleases=True)
                else f"{name}{spec}"
            )
            wheel = download(pin, staging)
            wheels[name] = wheel
            if name == "bitsandbytes":
                dropped = slim_wheel(wheel, BNB_KEEP)
                notes.append(
                    f"bitsandbytes slimmed: {len(dropped)} libraries dropped, kept {sorted(BNB_KEEP)}"
                )
            for req in needed(wheel_metadata(wheel)[2], MACHINE_ENV):
                dep = canonicalize_name(req.name)
                if dep in wheels or dep in (canonicalize_name(n) for n, _ in queue):
                    continue
                verdict, why = judge(req, {}, MACHINE)
                if verdict == "ok":
                    continue
                if (
                    verdict == "assumed"
                ):  # unknown version on the machine: carry it when small, else assume it
                    probe = download(
                        f"{dep}=={local_version(dep)}" if local_version(dep) else f"{dep}{req.specifier}",
                        staging,
                    )
                    if probe.stat().st_size > SMALL_WHEEL_BYTES:
                        probe.unlink()
                        notes.append(
                            f"not carried ({why}; its wheel is large): checked on the machine at run time"
                        )
                        continue
                    wheels[dep] = probe
                    notes.append(f"carried {probe.name}: {why}")
                    for sub in needed(wheel_metadata(probe)[2], MACHINE_ENV):
                        queue.append((sub.name, str(sub.specifier)))
                    continue
                queue.append((dep, str(req.specifier)))
        if wheels_dir.exists():
            shutil.rmtree(wheels_dir)
        wheels_dir.mkdir(parents=True)
        for wheel in wheels.values():
            shutil.move(str(wheel), wheels_dir / wheel.name)
    return {"notes": notes}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", default=".device", help="the carry folder (default .device, ignored by git)")
    p.add_argument("--check-only", action="store_true", help="do not download: check and size what is there")
    opts = p.parse_args(argv)
    repo = Path(
        subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    folder = (repo / opts.folder).resolve()
    folder.mkdir(exist_ok=True)
    ignored = subprocess.run(["git", "check-ignore", "-q", str(folder)], cwd=repo).returncode == 0
    if not ignored:
        print(f"prepare_device_carry: {folder} is not ignored by git: add it to .gitignore", file=sys.stderr)
        return 1
    built = {"notes": []} if opts.check_only else build(folder)
    wheels = sorted((folder / "wheels").glob("*.whl"))
    rows = check(wheels, MACHINE, MACHINE_ENV)
    tree = tree_bytes(repo)
    manifest = {
        "wheels": [{"file": w.name, "bytes": w.stat().st_size} for w in wheels],
        "requirements": rows,
        "notes": built["notes"],
        "tree_bytes": tree,
        "limit_bytes": LIMIT_BYTES,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    carry = folder_bytes(folder)  # the wheels and this manifest
    for w in wheels:
        print(f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}")
    for note in built["notes"]:
        print(f"note: {note}")
    for row in rows:
        if row["verdict"] != "ok":
            print(f"{row['verdict']:8} {row['wheel']}: {row['requires']} ({row['why']})")
    unmet = [r for r in rows if r["verdict"] == "unmet"]
    total = carry + tree
    print(
        f"carry folder {carry / 2**20:.2f} MiB + working tree {tree / 2**20:.2f} MiB = {total / 2**20:.2f} MiB "
        f"(limit {LIMIT_BYTES / 2**20:.0f} MiB); {len(rows)} requirements: {len(unmet)} unmet, "
        f"{sum(r['verdict'] == 'assumed' for r in rows)} assumed"
    )
    if total > LIMIT_BYTES:
        print("prepare_device_carry: over the device tool's 64 MiB limit", file=sys.stderr)
        return 1
    if unmet:
        print("prepare_device_carry: unmet requirements (above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
