"""papo.evaluation.report: Table 1 aggregation, the paper's Δ%rel, markdown, plot and report files."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from papo.evaluation.report import (
    BENCHMARK_ALIASES,
    TABLE1_GROUPS,
    canonical_name,
    markdown_table,
    plot_comparison,
    relative_gain,
    summarize,
    write_report,
)

BENCHMARKS = TABLE1_GROUPS["General"] + TABLE1_GROUPS["Vision-Dependent"]

# Table 1 of the paper (spec §5), per-benchmark avg@8 accuracy in %, column order of BENCHMARKS.
TABLE1_VALUES = {
    "GRPO-3B": [28.72, 59.34, 58.90, 57.24, 55.25, 38.14, 55.81, 25.66, 52.26],
    "PAPO_G-3B": [30.95, 61.38, 60.09, 57.39, 57.14, 38.67, 62.56, 27.11, 53.95],
    "GRPO-7B": [40.18, 65.48, 68.12, 72.26, 66.51, 45.62, 73.94, 35.17, 61.71],
    "PAPO_G-7B": [40.25, 69.53, 66.79, 72.52, 68.43, 46.07, 89.81, 36.63, 64.97],
    "DAPO-3B": [31.20, 60.89, 59.95, 66.83, 56.25, 40.69, 74.25, 28.42, 53.09],
    "PAPO_D-3B": [35.65, 62.53, 62.67, 64.09, 60.51, 41.67, 83.56, 28.76, 57.72],
    "DAPO-7B": [35.92, 61.91, 58.51, 75.93, 55.64, 37.05, 90.05, 29.02, 51.04],
    "PAPO_D-7B": [44.11, 67.53, 68.30, 80.61, 68.58, 46.70, 91.38, 36.34, 64.87],
}
TABLE1 = {run: dict(zip(BENCHMARKS, values, strict=True)) for run, values in TABLE1_VALUES.items()}

# The printed aggregates: (General AVG, Vision-Dependent AVG, Overall).
TABLE1_AVGS = {
    "GRPO-3B": (51.89, 42.97, 47.92),
    "PAPO_G-3B": (53.39, 45.57, 49.92),
    "GRPO-7B": (62.51, 54.11, 58.78),
    "PAPO_G-7B": (63.50, 59.37, 61.66),
    "DAPO-3B": (55.02, 49.11, 52.40),
    "PAPO_D-3B": (57.09, 52.93, 55.24),
    "DAPO-7B": (57.58, 51.79, 55.01),
    "PAPO_D-7B": (65.83, 59.82, 63.16),
}

# The printed Δ%rel: (baseline, candidate) -> (General, Vision-Dependent, Overall).
TABLE1_GAINS = {
    ("GRPO-3B", "PAPO_G-3B"): (3.38, 5.60, 4.36),
    ("GRPO-7B", "PAPO_G-7B"): (1.53, 7.96, 4.39),
    ("DAPO-3B", "PAPO_D-3B"): (5.00, 5.97, 5.54),
    ("DAPO-7B", "PAPO_D-7B"): (15.61, 19.09, 17.54),
}

# Deviations from the ±0.01 reproduction, investigated (values recomputed from the printed columns):
#
# * GRPO-7B -> PAPO_G-7B, Vision-Dependent Δ%rel: printed 7.96, recomputed 7.971 (off by 0.011). Rounding:
#   the paper averaged unrounded accuracies, and rounding each printed accuracy to 0.01 can move a Δ%rel by
#   up to `_rounding_bound` (0.021 here), so 7.96 is consistent with the columns. (Same cause for the
#   smaller 0.008 gaps, e.g. PAPO_G-3B 5.59 vs 5.60 and the PAPO_G-7B Overall 61.67 vs 61.66.)
# * The two PAPO_D Vision-Dependent Δ%rel do NOT follow from the printed columns, far beyond rounding:
#     PAPO_D-3B: mean(2.41, 12.54, 1.20, 8.72) = 6.22   (printed 5.97)
#     PAPO_D-7B: mean(26.05, 1.48, 25.22, 27.10) = 19.96 (printed 19.09)
#   The paper's own Overall Δ%rel (5.54, 17.54) agrees with the recomputed values, not the printed ones:
#   the overall is the mean of the nine per-task gains = (5 * general + 4 * vision) / 9. So the printed
#   Vision Δ%rel of the PAPO_D rows look like typos in the table (19.09 vs 19.96: two digits swapped); the
#   "19.1%" headline vision-dependent gain inherits it.
ROUNDING_LEVEL = {("PAPO_G-7B", "Vision-Dependent")}
NOT_REPRODUCED_VISION_GAIN = {"PAPO_D-3B": 6.2161, "PAPO_D-7B": 19.9608}

TOL = 0.01


# --------------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("hiyouga_geometry3k", "Geo3k"),
        ("AI4Math_MathVista", "MathVista"),
        ("We_Math", "We-Math"),
        ("We-Math_We-Math", "We-Math"),
        ("PAPO_MMK12", "MMK12"),
        ("FanqingM_MMK12", "MMK12"),
        ("AI4Math_MathVerse", "MathVerse"),
        ("lscpku_LogicVista", "LogicVista"),
        ("BUAADreamer_clevr_count_70k", "Counting"),
        ("MMMU_Pro", "MMMU-Pro"),
        ("MMMU_MMMU_Pro", "MMMU-Pro"),
        ("AI4Math_MathVerse_vision_dependent", "MathVerse_V"),
        ("geo3k", "Geo3k"),  # case-insensitive on Table 1 names
        ("ai4math_mathvista", "MathVista"),  # and on aliases
        ("MathVerse_V", "MathVerse_V"),
        ("my_private_benchmark", "my_private_benchmark"),  # unknown: unchanged
    ],
)
def test_canonical_name(split, expected):
    assert canonical_name(split) == expected


def test_every_alias_targets_a_table1_benchmark():
    assert set(BENCHMARK_ALIASES.values()) <= set(BENCHMARKS)


# --------------------------------------------------------------------------------------------------------
# Table 1 reproduction
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", list(TABLE1_AVGS))
def test_summarize_reproduces_table1_averages(run):
    summary = summarize(TABLE1[run])
    general, vision, overall = TABLE1_AVGS[run]
    assert summary["groups"]["General"] == pytest.approx(general, abs=TOL)
    assert summary["groups"]["Vision-Dependent"] == pytest.approx(vision, abs=TOL)
    assert summary["overall"] == pytest.approx(overall, abs=TOL)
    assert summary["missing"] == {}


def test_overall_is_mean_of_nine_benchmarks_not_mean_of_groups():
    summary = summarize(TABLE1["GRPO-3B"])
    assert summary["overall"] == pytest.approx(47.92, abs=TOL)
    assert (summary["groups"]["General"] + summary["groups"]["Vision-Dependent"]) / 2 == pytest.approx(
        47.43, abs=TOL
    )


def _rounding_bound(baseline: dict, candidate: dict, members: list[str]) -> float:
    """How far the mean per-task Δ%rel can move when every accuracy is only known to ±0.005."""

    def gain(b: float, c: float) -> float:
        return 100 * (c - b) / b

    spans = [
        max(abs(gain(b + db, c + dc) - gain(b, c)) for db in (-0.005, 0.005) for dc in (-0.005, 0.005))
        for b, c in ((baseline[t], candidate[t]) for t in members)
    ]
    return sum(spans) / len(spans)


@pytest.mark.parametrize(("baseline", "candidate"), list(TABLE1_GAINS))
def test_relative_gain_reproduces_table1(baseline, candidate):
    gain = relative_gain(TABLE1[baseline], TABLE1[candidate])
    assert gain["skipped"] == {}
    printed = dict(
        zip(["General", "Vision-Dependent", "Overall"], TABLE1_GAINS[(baseline, candidate)], strict=True)
    )
    computed = {**gain["groups"], "Overall": gain["overall"]}
    for column, value in printed.items():
        members = TABLE1_GROUPS.get(column, BENCHMARKS)
        bound = _rounding_bound(TABLE1[baseline], TABLE1[candidate], members)
        if (candidate, column) in ROUNDING_LEVEL:
            # Documented above: just over ±0.01, but within what rounding of the printed inputs allows.
            assert TOL < abs(computed[column] - value) <= bound + 0.005
        elif column == "Vision-Dependent" and candidate in NOT_REPRODUCED_VISION_GAIN:
            # Documented above: printed value inconsistent with the columns and with the printed Overall.
            assert computed[column] == pytest.approx(NOT_REPRODUCED_VISION_GAIN[candidate], abs=1e-3)
            assert abs(computed[column] - value) > 10 * bound
            assert (5 * printed["General"] + 4 * computed[column]) / 9 == pytest.approx(
                printed["Overall"], abs=TOL
            )
            assert (5 * printed["General"] + 4 * value) / 9 != pytest.approx(printed["Overall"], abs=0.05)
        else:
            assert computed[column] == pytest.approx(value, abs=TOL)


def test_relative_gain_is_mean_of_per_task_gains_not_gain_of_mean():
    baseline = {"Geo3k": 10.0, "MathVista": 100.0}
    candidate = {"Geo3k": 20.0, "MathVista": 100.0}
    gain = relative_gain(baseline, candidate)
    assert gain["benchmarks"] == {"Geo3k": pytest.approx(100.0), "MathVista": pytest.approx(0.0)}
    assert gain["overall"] == pytest.approx(50.0)  # mean(100, 0)
    assert gain["overall"] != pytest.approx(100 * (60 - 55) / 55)  # gain of the mean: 9.09
    # On Table 1: PAPO_D-7B's printed Overall 17.54 is the mean of per-task gains; the gain of the
    # mean would be 14.82.
    d7 = relative_gain(TABLE1["DAPO-7B"], TABLE1["PAPO_D-7B"])
    base_mean = summarize(TABLE1["DAPO-7B"])["overall"]
    cand_mean = summarize(TABLE1["PAPO_D-7B"])["overall"]
    assert d7["overall"] == pytest.approx(17.54, abs=TOL)
    assert 100 * (cand_mean - base_mean) / base_mean == pytest.approx(14.82, abs=TOL)


def test_relative_gain_skips_zero_baseline_and_unshared_benchmarks():
    baseline = {"Geo3k": 0.0, "MathVista": 50.0, "Counting": 40.0}
    candidate = {"Geo3k": 10.0, "MathVista": 55.0, "LogicVista": 30.0}
    gain = relative_gain(baseline, candidate)
    assert gain["benchmarks"] == {"MathVista": pytest.approx(10.0)}
    assert gain["overall"] == pytest.approx(10.0)
    assert gain["groups"] == {"General": pytest.approx(10.0)}  # no vision task in common: omitted
    assert "baseline accuracy is 0" in gain["skipped"]["Geo3k"]
    assert gain["skipped"]["Counting"] == "missing from the candidate"
    assert gain["skipped"]["LogicVista"] == "missing from the baseline"


def test_relative_gain_with_nothing_in_common_has_no_overall():
    gain = relative_gain({"Geo3k": 0.0}, {"Geo3k": 5.0})
    assert gain["overall"] is None and gain["groups"] == {} and "Geo3k" in gain["skipped"]


# --------------------------------------------------------------------------------------------------------
# summarize: names, partial groups, validation
# --------------------------------------------------------------------------------------------------------


def test_summarize_maps_split_names_and_handles_partial_and_ungrouped():
    summary = summarize({"hiyouga_geometry3k": 30.0, "AI4Math_MathVista": 60.0, "MyBench": 90.0})
    assert list(summary["benchmarks"]) == ["Geo3k", "MathVista", "MyBench"]
    assert summary["groups"] == {"General": pytest.approx(45.0)}  # Vision-Dependent has no member: omitted
    assert summary["overall"] == pytest.approx(60.0)  # the ungrouped benchmark counts
    assert summary["missing"] == {"General": ["We-Math", "MMK12", "MathVerse"]}


def test_summarize_without_groups():
    summary = summarize({"a": 10.0, "b": 30.0}, groups=None)
    assert summary["groups"] == {} and summary["overall"] == pytest.approx(20.0)


@pytest.mark.parametrize(
    "accuracy",
    [
        {"Geo3k": 101.0},
        {"Geo3k": -1.0},
        {"Geo3k": float("nan")},
        {"Geo3k": "high"},
        {"Geo3k": 30.0, "hiyouga_geometry3k": 31.0},  # two names for one benchmark
        {},
    ],
)
def test_summarize_rejects_bad_input(accuracy):
    with pytest.raises(ValueError):
        summarize(accuracy)


# --------------------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------------------


def test_markdown_table_matches_table1_cells():
    runs = {"GRPO-3B": TABLE1["GRPO-3B"], "PAPO_G-3B": TABLE1["PAPO_G-3B"]}
    table = markdown_table(runs, baseline="GRPO-3B")
    lines = table.splitlines()
    assert lines[0] == (
        "| Method | Geo3k | MathVista | We-Math | MMK12 | MathVerse | General AVG | LogicVista | Counting "
        "| MMMU-Pro | MathVerse_V | Vision-Dependent AVG | Overall |"
    )
    assert lines[1] == "|---|" + "---|" * 12
    grpo = [c.strip() for c in lines[2].strip("|").split("|")]
    papo = [c.strip() for c in lines[3].strip("|").split("|")]
    assert grpo == ["GRPO-3B", "28.72", "59.34", "58.90", "57.24", "55.25", "51.89"] + [
        "38.14",
        "55.81",
        "25.66",
        "52.26",
        "42.97",
        "47.92",
    ]
    assert papo[0] == "PAPO_G-3B" and papo[1] == "30.95"
    assert papo[6] == "53.39 (↑3.38)"
    assert papo[11] == "45.57 (↑5.59)"  # printed ↑5.60: averaged from unrounded accuracies (see above)
    assert papo[12] == "49.92 (↑4.36)"
    assert "Δ%rel vs GRPO-3B" in table


def test_markdown_table_ungrouped_columns_missing_cells_and_losses():
    runs = {
        "base": {"Geo3k": 40.0, "MathVista": 50.0, "Extra": 10.0},
        "worse": {"Geo3k": 20.0, "Extra": 10.0},
    }
    table = markdown_table(runs, baseline="base", digits=1)
    header, _, base_row, worse_row = table.splitlines()[:4]
    assert header == "| Method | Geo3k | MathVista | General AVG | Extra | Overall |"
    assert base_row == "| base | 40.0 | 50.0 | 45.0 | 10.0 | 33.3 |"
    # worse lacks MathVista: "–", and its AVG/Overall are starred as incomplete; Geo3k -50%, Extra ±0.
    assert worse_row == "| worse | 20.0 | – | 20.0* (↓50.0) | 10.0 | 15.0* (↓25.0) |"
    assert "\\* averaged over the benchmarks this run has" in table


def test_markdown_table_without_baseline_and_bad_baseline():
    table = markdown_table({"a|b": {"Geo3k": 10.0}})
    assert "| a\\|b | 10.00 | 10.00 | 10.00 |" in table and "↑" not in table
    with pytest.raises(ValueError, match="baseline"):
        markdown_table({"a": {"Geo3k": 10.0}}, baseline="nope")


# --------------------------------------------------------------------------------------------------------
# Plot and report files
# --------------------------------------------------------------------------------------------------------

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_comparison_writes_png(tmp_path):
    runs = {name: TABLE1[name] for name in ("GRPO-7B", "PAPO_G-7B", "DAPO-7B", "PAPO_D-7B")}
    path = plot_comparison(runs, tmp_path / "sub" / "cmp.png", title="Table 1, 7B")
    data = path.read_bytes()
    assert path == tmp_path / "sub" / "cmp.png"
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert [p.name for p in path.parent.iterdir()] == ["cmp.png"]  # no temp file left behind


def test_write_report_files_and_json_round_trip(tmp_path):
    runs = {"GRPO-3B": TABLE1["GRPO-3B"], "PAPO_G-3B": TABLE1["PAPO_G-3B"]}
    extra = {"label": "PAPO_G-3B", "protocol": {"k": 8, "temperature": 1.0}, "out": tmp_path / "x"}
    paths = write_report(tmp_path, runs, baseline="GRPO-3B", extra=extra)
    assert paths["json"] == tmp_path / "results.json" and paths["markdown"] == tmp_path / "results.md"
    for path in paths.values():
        assert path.is_file() and path.stat().st_size > 0
    loaded = json.loads(paths["json"].read_text())
    assert loaded["units"] == "percent" and loaded["baseline"] == "GRPO-3B"
    assert loaded["runs"]["PAPO_G-3B"] == json.loads(json.dumps(summarize(TABLE1["PAPO_G-3B"])))
    assert loaded["relative_gain"]["PAPO_G-3B"]["overall"] == pytest.approx(4.36, abs=TOL)
    assert "GRPO-3B" not in loaded["relative_gain"]
    assert loaded["label"] == "PAPO_G-3B" and loaded["protocol"] == {"k": 8, "temperature": 1.0}
    assert loaded["out"] == str(tmp_path / "x")
    assert loaded["groups"] == TABLE1_GROUPS
    assert paths["markdown"].read_text() == markdown_table(runs, baseline="GRPO-3B")
    assert paths["plot"].read_bytes().startswith(PNG_SIGNATURE)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind
    umask = os.umask(0)
    os.umask(umask)
    for path in paths.values():  # like a plain open(): not mkstemp's private 0o600
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_write_report_single_run_has_no_plot_and_rejects_clashing_extra(tmp_path):
    paths = write_report(tmp_path / "one", {"only": {"Geo3k": 12.5}})
    assert set(paths) == {"json", "markdown"}
    loaded = json.loads(paths["json"].read_text())
    assert loaded["baseline"] is None and "relative_gain" not in loaded
    assert math.isclose(loaded["runs"]["only"]["overall"], 12.5)
    with pytest.raises(ValueError, match="collide"):
        write_report(tmp_path / "two", {"only": {"Geo3k": 12.5}}, extra={"runs": {}})
    assert not (tmp_path / "two").exists()
