"""The published PAPO_eval layout: snapshot folder and Hub id, safe cached zip extraction, ShareGPT JSON images."""

import json
import os
import shutil
import stat
import warnings
import zipfile
from pathlib import Path

import datasets
import pytest
from papo_eval_fixture import SPLITS, png_bytes, tree_digest, write_snapshot

import papo.data.archives as archives
import papo.evaluation.run as run_module
from papo.cli import main
from papo.data.archives import UnsafeArchiveError, extract_zip, extract_zip_cached
from papo.evaluation.data import load_eval_sets, load_sharegpt_eval, select_splits
from papo.rewards import grade


@pytest.fixture
def snapshot(tmp_path):
    return write_snapshot(tmp_path / "PAPO_eval")


def test_snapshot_loads_every_split_with_table1_names_and_stays_byte_identical(snapshot, tmp_path):
    before = tree_digest(snapshot)
    with pytest.warns(UserWarning) as caught:
        sets = load_eval_sets(snapshot, cache_dir=tmp_path / "cache")
    assert [s.name for s in sets] == ["Counting", "LogicVista"]
    assert [s.hub_dataset for s in sets] == [None, None]  # not the published rows: never cited as PAPO_eval
    messages = [str(w.message) for w in caught]
    assert any(
        "'BUAADreamer_clevr_count_70k' (Counting) has 3 rows; the published split has 200" in m
        for m in messages
    )
    assert any(
        "'lscpku_LogicVista' (LogicVista) has 2 rows; the published split has 447" in m for m in messages
    )
    counting = {s.name: s.dataset for s in sets}["Counting"]
    assert counting["answer"] == ["3", "2", "0"] and counting["id"][0] == "BUAADreamer_clevr_count_70k-0"
    assert counting[2]["images"][0].size == (48, 32)  # the right image, decoded from the extracted zip
    assert {s.name: s.dataset for s in sets}["LogicVista"]["answer"][0] == "A, C"
    assert tree_digest(snapshot) == before  # nothing extracted into, or changed in, the snapshot
    extracted = sorted(p.name for p in (tmp_path / "cache" / "extracted").iterdir())
    assert len(extracted) == 2 and all(not name.startswith(".") for name in extracted)


def test_rerun_reuses_the_extracted_images(snapshot, tmp_path, monkeypatch):
    with pytest.warns(UserWarning):
        load_eval_sets(snapshot, benchmarks=["Counting"], cache_dir=tmp_path / "cache")

    def no_second_extraction(*args, **kwargs):
        raise AssertionError("the zip was extracted again")

    monkeypatch.setattr(archives, "extract_zip", no_second_extraction)
    with pytest.warns(UserWarning):
        ((name, dataset, _),) = load_eval_sets(
            snapshot, benchmarks=["counting"], cache_dir=tmp_path / "cache"
        )
    assert name == "Counting" and dataset[0]["images"][0].size == (40, 32)


def test_a_split_with_the_published_rows_is_cited_as_papo_eval(tmp_path):
    items = [(f"How many objects? ({i})", str(i % 10)) for i in range(200)]
    root = write_snapshot(tmp_path / "snap", {"BUAADreamer_clevr_count_70k": ("clevr", items)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 200 rows, as published: no warning
        ((name, dataset, hub_dataset),) = load_eval_sets(root, cache_dir=tmp_path / "cache")
    assert (name, len(dataset), hub_dataset) == ("Counting", 200, "PAPO-Galaxy/PAPO_eval")


def test_benchmarks_accept_table1_and_split_names(snapshot):
    splits = ["BUAADreamer_clevr_count_70k", "lscpku_LogicVista"]
    assert select_splits(splits, ["LogicVista"]) == ["lscpku_LogicVista"]
    assert select_splits(splits, ["lscpku_LogicVista", "Counting"]) == splits
    assert select_splits(splits, ["counting"]) == ["BUAADreamer_clevr_count_70k"]
    with pytest.raises(
        ValueError, match="'MMMU-Pro' is not a split of this PAPO_eval snapshot; it has Counting"
    ):
        select_splits(splits, ["MMMU-Pro"])


def test_hub_id_resolves_through_the_hf_cache_and_leaves_it_untouched(tmp_path):
    """An HF cache snapshot is links into blobs/: it is read through huggingface_hub and never written."""
    from huggingface_hub import constants

    built = write_snapshot(
        tmp_path / "built", {"BUAADreamer_clevr_count_70k": SPLITS["BUAADreamer_clevr_count_70k"]}
    )
    repo = os.path.join(constants.HF_HUB_CACHE, "datasets--PAPO-Galaxy--PAPO_eval")
    revision = "0" * 40
    try:
        os.makedirs(os.path.join(repo, "refs"))
        os.makedirs(os.path.join(repo, "blobs"))
        with open(os.path.join(repo, "refs", "main"), "w") as f:
            f.write(revision)
        for path in sorted(p for p in built.rglob("*") if p.is_file()):
            rel = path.relative_to(built)
            blob = os.path.join(repo, "blobs", f"blob{len(os.listdir(os.path.join(repo, 'blobs')))}")
            with open(blob, "wb") as f:
                f.write(path.read_bytes())
            link = os.path.join(repo, "snapshots", revision, str(rel))
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
        before = tree_digest(Path(repo))
        with pytest.warns(UserWarning, match="has 3 rows"):
            ((name, dataset, _),) = load_eval_sets("PAPO-Galaxy/PAPO_eval", cache_dir=tmp_path / "cache")
        assert name == "Counting" and len(dataset) == 3 and dataset[1]["images"][0].size == (44, 32)
        assert tree_digest(Path(repo)) == before
    finally:
        shutil.rmtree(repo, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Untrusted zips and paths
# ------------------------------------------------------------------------------------------------


def _zip_with(path, members):
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for info, data in members:
            archive.writestr(info, data)
    return path


def _link(name, target):
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (("/tmp/evil.png", b"x"), "absolute path"),
        (("images/../../evil.png", b"x"), r"contains '\.\.'"),
        (("C:/evil.png", b"x"), "absolute path"),
        (_link("images/escape", "../../../etc/passwd"), "outside the extraction folder"),
        (_link("images/abs", "/etc/passwd"), "outside the extraction folder"),
    ],
)
def test_unsafe_members_are_refused_before_anything_is_written(tmp_path, member, message):
    archive = _zip_with(tmp_path / "bad.zip", [("images/ok.png", png_bytes(0)), member])
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(UnsafeArchiveError, match=message):
        extract_zip(archive, dest)
    assert list(dest.iterdir()) == []
    with pytest.raises(UnsafeArchiveError):
        extract_zip_cached(archive, tmp_path / "cache")
    assert not (tmp_path / "cache" / "extracted").exists() or not any(
        (tmp_path / "cache" / "extracted").iterdir()
    )


def test_a_link_that_stays_inside_is_kept(tmp_path):
    archive = _zip_with(
        tmp_path / "ok.zip", [("a/img.png", png_bytes(0)), _link("b/img.png", "../a/img.png")]
    )
    out = extract_zip_cached(archive, tmp_path / "cache")
    assert (out / "b" / "img.png").read_bytes() == png_bytes(0)


def test_zip_bombs_stop_with_a_clear_error(tmp_path):
    bomb = _zip_with(tmp_path / "bomb.zip", [("zeros.bin", b"\0" * (8 * 1024 * 1024))])
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_zip_cached(bomb, tmp_path / "cache")  # ratio ~1000x > 200x
    big = _zip_with(tmp_path / "big.zip", [(f"{i}.png", png_bytes(i)) for i in range(3)])
    with pytest.raises(UnsafeArchiveError, match="over the limit of 100"):
        extract_zip_cached(big, tmp_path / "cache", max_total_bytes=100)


@pytest.mark.parametrize("bad_path", ["../../etc/passwd", "/etc/passwd", "./data/images/../../../x.png"])
def test_parquet_image_paths_outside_the_extracted_folder_are_refused(tmp_path, bad_path):
    split = "BUAADreamer_clevr_count_70k"
    root = write_snapshot(tmp_path / "snap", {split: SPLITS[split]})
    shard = root / "data" / f"{split}-00000-of-00001.parquet"
    table = datasets.Dataset.from_parquet(str(shard)).to_dict()
    table["images"][1] = [bad_path]
    datasets.Dataset.from_dict(table).to_parquet(str(shard))
    with pytest.raises(UnsafeArchiveError, match="record 1"):
        load_eval_sets(root, cache_dir=tmp_path / "cache")


# ------------------------------------------------------------------------------------------------
# Prepared ShareGPT JSON
# ------------------------------------------------------------------------------------------------


def _write_json(folder, image_path):
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "messages": [{"role": "user", "content": "<image>How many?"}, {"role": "assistant", "content": "3"}],
        "images": [image_path],
    }
    (folder / "BUAADreamer_clevr_count_70k.json").write_text(json.dumps([record]))
    return folder / "BUAADreamer_clevr_count_70k.json"


def test_sharegpt_json_finds_the_images_sibling(tmp_path):
    path = _write_json(tmp_path / "data", "./data/images/clevr/0.png")
    (tmp_path / "data" / "images" / "clevr").mkdir(parents=True)
    (tmp_path / "data" / "images" / "clevr" / "0.png").write_bytes(png_bytes(1))
    dataset = load_sharegpt_eval(path)
    assert dataset[0]["images"][0].size == (44, 32)


def test_sharegpt_json_without_images_names_image_dir(tmp_path):
    path = _write_json(tmp_path / "data", "./data/images/clevr/0.png")
    with pytest.raises(
        FileNotFoundError, match="record 0: image './data/images/clevr/0.png' not found.*--image_dir"
    ):
        load_sharegpt_eval(path)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "clevr").mkdir(parents=True)
    (elsewhere / "clevr" / "0.png").write_bytes(png_bytes(2))
    assert load_sharegpt_eval(path, image_dir=elsewhere)[0]["images"][0].size == (48, 32)


# ------------------------------------------------------------------------------------------------
# Grading and the CLI end to end
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "gold", "right"),
    [
        ("A, C", "A, C", True),
        ("C, A", "A, C", True),
        ("(A) and (C)", "A, C", True),
        ("A", "A, C", False),
        ("A, B, C", "A, C", False),
        ("I", "I", True),  # LogicVista letters run to I
        ("\\frac{3}{2}", "1.5", True),  # MathVista free-form answers
        ("2", "1.5", False),
        ("12", "12", True),
    ],
)
def test_multi_select_and_free_form_grading(prediction, gold, right):
    assert grade(prediction, gold) is right


def test_cli_evaluates_a_snapshot_by_table1_names(snapshot, tmp_path, tiny_model_dirs, monkeypatch, capsys):
    answers = {
        "How many objects": "\\boxed{3}",
        "How many cubes": "\\boxed{5}",
        "Which options": "\\boxed{C, A}",
    }

    def scripted_generation(model, processor, prompts, images, **kwargs):
        out = []
        for prompt in prompts:
            text = "".join(part["text"] or "" for part in prompt[0]["content"])
            reply = next((a for q, a in answers.items() if q in text), "\\boxed{B}")
            out.append((reply, processor.tokenizer(reply, add_special_tokens=False)["input_ids"]))
        return out

    monkeypatch.setattr(run_module, "generate_completions", scripted_generation)
    before = tree_digest(snapshot)
    args = ["eval", "--model", tiny_model_dirs["qwen2_5_vl"], "--data", str(snapshot), "--cache_dir"]
    args += [str(tmp_path / "cache"), "--benchmarks", "LogicVista,Counting", "--samples", "2"]
    args += ["--max_questions", "2", "--no_perception_kl", "--output_dir", str(tmp_path / "out")]
    with pytest.warns(UserWarning, match="published split"):
        assert main(args) == 0
    printed = capsys.readouterr().out
    assert "on Counting: 2 of 3 questions, k=2" in printed  # the questions actually evaluated
    assert "on LogicVista: 2 questions, k=2" in printed
    assert "% over 2 questions" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["benchmarks"]["Counting"]["accuracy"] == pytest.approx(50.0)  # "3" right, "5" wrong
    assert results["benchmarks"]["LogicVista"]["accuracy"] == pytest.approx(100.0)  # "C, A" for "A, C"; "B"
    assert results["benchmarks"]["Counting"]["n"] == 2
    counting = results["benchmarks"]["Counting"]
    assert (counting["dataset"], counting["split_rows"], counting["complete"]) == (None, 3, False)
    predictions = datasets.Dataset.from_parquet(str(tmp_path / "out" / "predictions" / "Counting.parquet"))
    stored = predictions.cast_column("image", datasets.Image(decode=False))[0]["image"]
    assert stored["path"] == "0.png" and stored["bytes"] == png_bytes(0)  # embedded, no local path
    assert tree_digest(snapshot) == before


def test_compare_reports_paired_cis_mcnemar_and_q_values(snapshot, tmp_path, tiny_model_dirs, monkeypatch):
    from scipy import stats

    from papo.stats import paired_bootstrap_ci

    def scripted(replies):
        def generation(model, processor, prompts, images, **kwargs):
            out = []
            for prompt in prompts:
                text = "".join(part["text"] or "" for part in prompt[0]["content"])
                reply = next((a for q, a in replies.items() if q in text), "\\boxed{Z}")
                out.append((reply, processor.tokenizer(reply, add_special_tokens=False)["input_ids"]))
            return out

        return generation

    common = ["eval", "--model", tiny_model_dirs["qwen2_5_vl"], "--data", str(snapshot), "--cache_dir"]
    common += [str(tmp_path / "cache"), "--samples", "2", "--no_perception_kl"]
    monkeypatch.setattr(run_module, "generate_completions", scripted({"How many objects": "\\boxed{3}"}))
    with pytest.warns(UserWarning):
        assert main([*common, "--label", "base", "--output_dir", str(tmp_path / "base")]) == 0
    better = {
        "How many objects": "\\boxed{3}",
        "How many cubes": "\\boxed{2}",
        "How many spheres": "\\boxed{0}",
    }
    better["Which options"] = "\\boxed{A, C}"
    monkeypatch.setattr(run_module, "generate_completions", scripted(better))
    with pytest.warns(UserWarning):  # the same model with another seed, for the seed spread
        assert main([*common, "--label", "new", "--seed", "1", "--output_dir", str(tmp_path / "new1")]) == 0
    args = ["--seed_runs", str(tmp_path / "new1" / "results.json")]
    args += [
        "--label",
        "new",
        "--output_dir",
        str(tmp_path / "new"),
        "--compare",
        str(tmp_path / "base" / "results.json"),
    ]
    with pytest.warns(UserWarning):
        assert main([*common, *args]) == 0

    results = json.loads((tmp_path / "new" / "results.json").read_text())
    comparison = results["comparison"]
    assert (comparison["baseline"], comparison["candidate"]) == ("base", "new")
    counting = comparison["benchmarks"]["Counting"]
    assert counting["n"] == 3 and counting["diff"] == pytest.approx(100 * 2 / 3)
    _, low, high = paired_bootstrap_ci([1, 0, 0], [1, 1, 1], n_resamples=10_000, seed=0)
    assert (counting["ci_low"], counting["ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert counting["mcnemar_p"] == pytest.approx(stats.binomtest(2, 2, 0.5).pvalue)  # 0.5: inside the noise
    q = stats.false_discovery_control(
        [counting["mcnemar_p"], comparison["benchmarks"]["LogicVista"]["mcnemar_p"]]
    )
    assert [counting["q_value"], comparison["benchmarks"]["LogicVista"]["q_value"]] == pytest.approx(list(q))
    table = (tmp_path / "new" / "results.md").read_text()
    assert "Paired comparison, new − base" in table and "| Counting | 3 | +66.67 |" in table
    assert "McNemar" in table and "BH q" in table and "10,000 replicates" in table
    assert (tmp_path / "new" / "comparison.png").stat().st_size > 0
    spread = results["seed_spread"]
    assert spread["runs"] == ["seed 0", "seed 1"]
    assert spread["benchmarks"]["Counting"] == {"n": 2, "mean": 100.0, "sd": 0.0, "min": 100.0, "max": 100.0}
    assert (
        "Seed spread of new over 2 runs (seed 0, seed 1)" in table
        and "| Counting | 2 | 100.00 | 0.00 |" in table
    )


def test_check_data_reads_eval_sets_as_papo_eval_does(snapshot, tmp_path, monkeypatch, capsys):
    from papo.cli import main

    monkeypatch.setenv("PAPO_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning):  # the toy splits are not the published sizes
        assert main(["check-data", str(snapshot)]) == 0
    out = capsys.readouterr().out
    assert "3/3 rows valid" in out and "2/2 rows valid" in out
    path = _write_json(tmp_path / "json", "./data/images/clevr/0.png")
    assert main(["check-data", str(path)]) == 2  # the image is missing: the hint names a real flag
    assert "--image_dir" in capsys.readouterr().err
    (tmp_path / "imgs" / "clevr").mkdir(parents=True)
    (tmp_path / "imgs" / "clevr" / "0.png").write_bytes(png_bytes(1))
    assert main(["check-data", str(path), "--image_dir", str(tmp_path / "imgs")]) == 0
    assert "1/1 rows valid" in capsys.readouterr().out
