"""benchmarks/device_check.{sh,py} and prepare_device_carry.py, proven on the CPU before any GPU appears.

The GPU run is one call of the device tool (benchmarks/DEVICE_CHECK.md); here the same Python part runs
with --tiny (tiny model, CPU), the shell part installs a synthetic carried wheel into a target folder and
checks that it shadows the installed packages, and the carry folder's helpers (requirement verdicts,
slimmed wheels, wheel tags) are checked without the network.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import device_check  # noqa: E402
from benchmarks.prepare_device_carry import (  # noqa: E402
    MACHINE,
    installs_on_machine,
    judge,
    slim_wheel,
    wheel_metadata,
)


def make_wheel(folder: Path, name: str, version: str, requires=(), files=None) -> Path:
    """A minimal valid py3-none-any wheel."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"__version__ = '{version}'\n", **(files or {})}
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    files[f"{dist}/METADATA"] = metadata
    files[f"{dist}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as whl:
        for file, text in files.items():
            whl.writestr(file, text)
    return path


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}


def test_tiny_check_writes_rows_and_table_to_out(tmp_path):
    """The Python part, as the GPU runs it but --tiny: the 3B stage's rows (LoRA, then QLoRA) in OUT."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "fakecarried", "1.0", ["packaging>=20", "no-such-package-xyz>=1"])
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--tiny", "--stages", "3b"]
        + ["--out", str(out), "--wheels", str(wheels)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "device_check.json").read_text())
    assert results["partial"] is False and results["tiny"] is True
    environment = results["environment"]
    assert environment["packages"]["trl"]["version"] and environment["packages"]["torch"]["version"]
    # the synthetic wheel is not installed here: it is reported as not the one imported, and its unmet need
    assert environment["carried_not_imported"] == ["fakecarried-1.0-py3-none-any.whl"]
    assert [r["requires"] for r in environment["requirements_unmet"]] == ["no-such-package-xyz>=1"]
    (stage,) = results["stages"]
    assert stage["status"] == "done" and stage["returncode"] == 0
    assert "--generations 8 --lengths 1024 --warmup-tokens 4" in stage["command"]
    assert stage["command"].endswith("--tiny --tiny-lengths 8")
    rows = stage["bench"]["rows"]
    assert [(r["quant"], r["generations"], r["completion_tokens"]) for r in rows] == [
        ("lora", 8, 8),
        ("qlora", 8, 8),
    ]
    for row in rows:
        assert row["completion_tokens_generated"] == 8 * 8  # forced length: every rollout is 8 tokens
        assert list(row["algorithms"]) == ["grpo", "papo-g", "papo-g-recompute"]
        assert all(a["update_s"] > 0 and a["peak_mb"] > 0 for a in row["algorithms"].values())
    table = (out / "device_check.md").read_text()
    data = [line for line in table.splitlines() if line.startswith("| 3b | tiny |")]
    assert len(data) == 6 and "| qlora | 8 | 8 | 64 | papo-g-recompute |" in data[-1]
    assert "| 3b | 3B: bf16 LoRA, then QLoRA" in table and "| done |" in table
    assert "unmet: fakecarried 1.0 needs no-such-package-xyz>=1" in table


def test_no_budget_left_skips_every_stage(tmp_path):
    results = device_check.main(
        ["--tiny", "--budget-s", "0", "--out", str(tmp_path), "--wheels", str(tmp_path)]
    )
    assert [s["status"].split(" (")[0] for s in results["stages"]] == ["skipped", "skipped"]
    assert json.loads((tmp_path / "device_check.json").read_text())["partial"] is False
    assert "| 7b | 7B: bf16 LoRA | skipped (0 s left) |" in (tmp_path / "device_check.md").read_text()


def test_seven_b_is_predicted_from_the_three_b_speed():
    three_b = {
        "bench": {
            "rows": [
                {"quant": "lora", "completion_tokens": 1024, "algorithms": {"grpo": {"generation_s": 51.2}}}
            ]
        }
    }
    seven_b = device_check.STAGES[1]
    assert device_check.predicted_stage_s(seven_b, [], tiny=False) is None  # nothing measured: try it
    # 0.05 s/token on 3B -> 0.075 on 7B; 1.5x for the masked pass + update, over 1024 + 32 warm-up tokens
    expected = device_check.SETUP_S["qwen2.5-vl-7b"] + 1.5 * 0.075 * (1024 + 32)
    assert device_check.predicted_stage_s(seven_b, [three_b], tiny=False) == pytest.approx(expected)


def test_shell_installs_carried_wheels_that_shadow_installed_ones(tmp_path):
    """device_check.sh installs the wheels into SITE, puts SITE first on PYTHONPATH and hands over to the
    Python part (no budget left here: the stages are skipped, the environment is recorded)."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    make_wheel(wheels, "mathruler", "99.0")  # shadows the installed mathruler 0.1.0
    out, site = tmp_path / "out", tmp_path / "site"
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "device_check.sh"), "--tiny"],
        env=env(OUT=str(out), BUDGET_S="0", SITE=str(site), WHEELS=str(wheels), PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-4000:]
    assert (site / "mathruler" / "__init__.py").exists()
    results = json.loads((out / "device_check.json").read_text())
    assert results["environment"]["carried_not_imported"] == []
    assert results["environment"]["carried"][0]["imported_version"] == "99.0"
    assert {p.name for p in out.iterdir()} == {
        "device_check.json",
        "device_check.md",
        "device_check.log",
        "pip_list.txt",
    }
    assert "installing 1 carried wheels" in (out / "device_check.log").read_text()


def test_requirement_verdicts():
    carried = {"trl": "1.16.0"}
    assert judge(Requirement("trl>=1.16"), carried, MACHINE)[0] == "ok"
    assert judge(Requirement("accelerate>=1.10.1"), carried, MACHINE)[0] == "ok"  # 1.15.0 there
    assert judge(Requirement("transformers>=5.24"), carried, MACHINE)[0] == "unmet"  # 5.17.0 there
    assert judge(Requirement("pyarrow>=21"), carried, MACHINE)[0] == "assumed"  # listed without a version
    assert judge(Requirement("jinja2"), carried, MACHINE)[0] == "ok"
    assert judge(Requirement("dill"), carried, MACHINE)[0] == "unmet"  # not on the machine


def test_slim_wheel_drops_libraries_and_rewrites_record(tmp_path):
    files = {f"fakebnb/lib{v}.so": "x" * 100 for v in ("cpu", "cuda118", "cuda130")}
    path = make_wheel(tmp_path, "fakebnb", "0.1", ["torch>=2.4"], files)
    dropped = slim_wheel(path, {"libcpu.so", "libcuda130.so"})
    assert dropped == ["fakebnb/libcuda118.so"]
    with zipfile.ZipFile(path) as whl:
        names = set(whl.namelist())
        record = whl.read("fakebnb-0.1.dist-info/RECORD").decode()
    assert "fakebnb/libcuda118.so" not in names and "fakebnb/libcuda130.so" in names
    assert "libcuda118" not in record and "fakebnb/libcuda130.so,sha256=" in record
    assert wheel_metadata(path) == ("fakebnb", "0.1", ["torch>=2.4"])


@pytest.mark.parametrize(
    "name, ok",
    [
        ("trl-1.16.0-py3-none-any.whl", True),
        ("regex-2026.11.19-cp312-cp312-manylinux2014_x86_64.manylinux_2_17_x86_64.whl", True),
        ("psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64.whl", True),
        ("regex-2026.11.19-cp311-cp311-manylinux_2_17_x86_64.whl", False),
        ("regex-2026.11.19-cp312-cp312-manylinux_2_17_aarch64.whl", False),
    ],
)
def test_wheel_tags_for_the_gpu_machine(name, ok):
    assert installs_on_machine(name) is ok


def test_carry_folder_over_the_limit_fails(tmp_path, monkeypatch, capsys):
    """prepare_device_carry --check-only sizes the carry folder plus the travelling tree against 64 MiB."""
    from benchmarks import prepare_device_carry

    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "README.md").write_text("tracked-or-untracked files travel too\n")
    wheels = tmp_path / ".device" / "wheels"
    wheels.mkdir(parents=True)
    make_wheel(wheels, "mathruler", "0.1.0")
    assert prepare_device_carry.main(["--check-only"]) == 1  # .device/ is not ignored yet
    (tmp_path / ".gitignore").write_text(".device/\n")
    assert prepare_device_carry.main(["--check-only"]) == 0
    manifest = json.loads((tmp_path / ".device" / "manifest.json").read_text())
    assert [w["file"] for w in manifest["wheels"]] == ["mathruler-0.1.0-py3-none-any.whl"]
    assert manifest["tree_bytes"] == len("tracked-or-untracked files travel too\n") + len(".device/\n")
    with open(tmp_path / ".device" / "big.bin", "wb") as big:  # sparse: 64 MiB on paper, nothing on disk
        big.truncate(64 * 2**20)
    assert prepare_device_carry.main(["--check-only"]) == 1
    assert "over the device tool's 64 MiB limit" in capsys.readouterr().err


def test_gpu_stage_commands():
    """On the GPU: 3B LoRA then QLoRA, then 7B LoRA; G = 8, 1024 tokens, a 32-token warm-up, within budget."""
    commands = [
        " ".join(device_check.stage_command(s, Path("s.json"), 400, tiny=False)[1:])
        for s in device_check.STAGES
    ]
    assert commands == [
        "-m benchmarks.gpu_bench --quants lora qlora --models qwen2.5-vl-3b --generations 8 --lengths 1024 "
        "--warmup-tokens 32 --time-budget-s 400 --json s.json",
        "-m benchmarks.gpu_bench --quants lora --models qwen2.5-vl-7b --generations 8 --lengths 1024 "
        "--warmup-tokens 32 --time-budget-s 400 --json s.json",
    ]


def test_a_stage_past_the_budget_is_stopped_and_keeps_its_finished_rows(tmp_path, monkeypatch):
    """The stage in flight is stopped before the budget ends; the rows its JSON already holds are published."""
    row = {
        "model": "some-model",  # not a real model's name: a watchdog may stop real-size runs on shared CPUs
        "quant": "lora",
        "generations": 8,
        "completion_tokens": 1024,
        "completion_tokens_generated": 8192,
        "algorithms": {
            name: {
                "generation_s": 30.0,
                "masked_forward_s": 0.0 if name == "grpo" else 1.0,
                "update_s": 2.0,
                "step_s": 32.0 if name == "grpo" else 33.0,
                "completion_tokens_per_s": 256.0,
                "peak_mb": 30000.0,
                "time_vs_grpo": 1.0,
                "memory_vs_grpo": 1.0,
            }
            for name in ("grpo", "papo-g", "papo-g-recompute")
        },
    }
    fake_bench = (  # writes one finished row, then "runs" the next one for a minute
        "import json, sys, time; path = sys.argv[sys.argv.index('--json') + 1]; "
        f"json.dump({{'partial': True, 'rows': [{row!r}], 'skipped': []}}, open(path, 'w')); time.sleep(60)"
    )

    def command(stage, json_path, budget_s, tiny):
        return [sys.executable, "-c", fake_bench, "--json", str(json_path)]

    monkeypatch.setattr(device_check, "stage_command", command)
    monkeypatch.setattr(device_check, "KILL_MARGIN_S", 0.0)
    results = device_check.main(
        ["--budget-s", "4", "--stages", "3b", "--out", str(tmp_path), "--wheels", str(tmp_path)]
    )
    (stage,) = results["stages"]
    assert stage["status"] == "stopped at the budget" and stage["wall_s"] < 20
    assert stage["bench"]["rows"] == [row] and stage["bench"]["partial"] is True
    table = (tmp_path / "device_check.md").read_text()
    assert "| 3b | some-model | lora | 8 | 1024 | 8192 | papo-g | 30.00 | 1.00 | 2.00 | 33.00 |" in table
    assert "| stopped at the budget |" in table
