"""Loading the official schema into TRL prompts, and the named errors for each kind of bad row."""

import io

import datasets
import pytest
from PIL import Image
from trl.data_utils import prepare_multimodal_messages

from papo.data.loading import (
    PROMPT_SUFFIX,
    InvalidRowError,
    build_prompt,
    format_problem,
    load_papo_dataset,
    load_training_dataset,
    prepare_papo_dataset,
)

FEATURES = datasets.Features(
    {
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
    }
)


def _png(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _good_row(i: int) -> dict:
    return {
        "problem": f"<image>What is shown in figure {i}?",
        "answer": str(i),
        "images": [{"bytes": _png(), "path": None}],
    }


def _dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows, features=FEATURES)


def test_prompt_follows_official_format():
    text = format_problem("  <image>How many?\n")
    assert text == "<image>How many?\n\n" + PROMPT_SUFFIX
    assert "<think> </think>" in PROMPT_SUFFIX and "\\boxed{}" in PROMPT_SUFFIX
    prompt = build_prompt("Compare <image> and <image> please")
    assert prompt[0]["role"] == "user"
    types = [part["type"] for part in prompt[0]["content"]]
    assert types == ["text", "image", "text", "image", "text"]
    assert prompt[0]["content"][0]["text"] == "Compare "
    assert prompt[0]["content"][-1]["text"].startswith(" please\n\n")


def test_local_parquet_becomes_trl_prompts_with_images(tmp_path):
    path = tmp_path / "train.parquet"
    _dataset([_good_row(i) for i in range(4)]).to_parquet(str(path))
    dataset, report = load_training_dataset(path, show_progress=False)
    assert report.kept == report.total == 4 and report.skipped == 0
    assert {"prompt", "images", "answer", "problem"} <= set(dataset.column_names)
    row = dataset[2]
    assert row["answer"] == "2"
    assert isinstance(row["images"][0], Image.Image)
    # TRL fills the image placeholders from the images column: the result is what the trainer sees.
    messages = prepare_multimodal_messages(row["prompt"], images=row["images"])
    parts = messages[0]["content"]
    assert parts[0]["type"] == "image" and isinstance(parts[0]["image"], Image.Image)
    assert parts[1]["text"].startswith("What is shown in figure 2?\n\n")


def test_save_to_disk_dir_and_splits(tmp_path):
    dd = datasets.DatasetDict(
        {"train": _dataset([_good_row(0)]), "test": _dataset([_good_row(1), _good_row(2)])}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_papo_dataset(tmp_path / "dd", split="test")) == 2
    with pytest.raises(ValueError, match="no split 'validation'"):
        load_papo_dataset(tmp_path / "dd", split="validation")


def test_missing_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(ValueError, match="could not load dataset 'nobody/no_such_dataset'.*HF_HUB_OFFLINE"):
        load_papo_dataset("nobody/no_such_dataset")


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_papo_dataset(str(tmp_path / "nothing" / "here"))


def test_missing_column_names_the_fix():
    dataset = _dataset([_good_row(0)]).rename_column("problem", "question")
    with pytest.raises(ValueError, match=r"no column\(s\) \['problem'\].*problem_key="):
        prepare_papo_dataset(dataset, show_progress=False)
    fixed, _ = prepare_papo_dataset(dataset, problem_key="question", show_progress=False)
    assert len(fixed) == 1


# Each kind of bad row, the field its error must name, and a fragment of the reason.
BAD_ROWS = {
    "corrupt_image": (
        {"images": [{"bytes": b"\x89PNG not really", "path": None}]},
        "images",
        "cannot be decoded",
    ),
    "truncated_image": (
        {"images": [{"bytes": _png(size=(64, 64))[:60], "path": None}]},
        "images",
        "cannot be decoded",
    ),
    "missing_image_file": (
        {"images": [{"bytes": None, "path": "/nonexistent/x.png"}]},
        "images",
        "cannot be decoded",
    ),
    "no_image": ({"images": []}, "images", "no image"),
    "null_image": ({"images": [None]}, "images", "missing"),
    "too_many_images": (
        {"images": [{"bytes": _png(), "path": None}, {"bytes": _png(), "path": None}]},
        "images",
        "2 image(s) but 1 '<image>' placeholder(s)",
    ),
    "no_placeholder": ({"problem": "What is shown?"}, "images", "1 image(s) but 0"),
    "empty_answer": ({"answer": "  "}, "answer", "answer is missing or empty"),
    "null_answer": ({"answer": None}, "answer", "answer is missing or empty"),
    "empty_problem": ({"problem": ""}, "problem", "problem text is missing"),
}


@pytest.mark.parametrize("kind", sorted(BAD_ROWS))
def test_bad_row_error_names_row_and_field(kind):
    patch, field, reason = BAD_ROWS[kind]
    rows = [_good_row(i) for i in range(3)]
    rows[1] = {**rows[1], **patch}
    with pytest.raises(InvalidRowError) as info:
        prepare_papo_dataset(_dataset(rows), show_progress=False)
    error = info.value
    assert (error.row, error.field) == (1, field)
    assert reason in str(error)
    assert "row 1" in str(error) and f"field '{field}'" in str(error) and "skip_invalid" in str(error)


def test_skip_invalid_counts_every_kind():
    rows = [_good_row(i) for i in range(5)]
    for kind in sorted(BAD_ROWS):
        patch, _, _ = BAD_ROWS[kind]
        rows.append({**_good_row(100), **patch})
    dataset, report = prepare_papo_dataset(_dataset(rows), skip_invalid=True, show_progress=False)
    assert len(dataset) == report.kept == 5
    assert report.total == 5 + len(BAD_ROWS)
    expected = {"images": 0, "answer": 0, "problem": 0}
    for _, field, _ in BAD_ROWS.values():
        expected[field] += 1
    assert dict(report.skipped_by_field) == expected
    assert dataset["answer"] == ["0", "1", "2", "3", "4"]
    assert "skipped" in str(report)


def test_all_rows_invalid_is_an_error():
    rows = [{**_good_row(0), "answer": ""}]
    with pytest.raises(ValueError, match="no valid rows"):
        prepare_papo_dataset(_dataset(rows), skip_invalid=True, show_progress=False)


def test_numeric_answers_become_strings():
    features = datasets.Features({**FEATURES, "answer": datasets.Value("int64")})
    rows = [{**_good_row(i), "answer": i} for i in range(2)]
    dataset, _ = prepare_papo_dataset(
        datasets.Dataset.from_list(rows, features=features), show_progress=False
    )
    assert dataset["answer"] == ["0", "1"]


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_prompt_token_count_matches_the_processor(arch):
    from papo.data.loading import prompt_token_count
    from papo.tiny import build_processor

    processor = build_processor(arch)
    prompt = build_prompt("<image>How many red circles? And <image> this one?")
    images = [Image.new("RGB", (97, 53)), Image.new("RGB", (64, 64))]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    actual = processor(text=[text], images=images, return_tensors="pt")["input_ids"].shape[1]
    assert prompt_token_count(processor, prompt, [(im.height, im.width) for im in images]) == actual


def test_long_prompts_are_rejected_or_skipped_never_truncated():
    from papo.data.loading import filter_long_prompts
    from papo.tiny import build_processor

    processor = build_processor()
    rows = [_good_row(i) for i in range(3)]
    rows[1] = {**rows[1], "problem": "<image>" + "Describe every detail of this figure. " * 40}
    dataset, report = prepare_papo_dataset(_dataset(rows), show_progress=False)
    with pytest.raises(InvalidRowError) as info:
        filter_long_prompts(dataset, processor, 200, show_progress=False)
    assert info.value.row == 1 and info.value.field == "prompt" and "max_prompt_length=200" in str(info.value)
    kept, report = filter_long_prompts(
        dataset, processor, 200, skip_invalid=True, report=report, show_progress=False
    )
    assert kept["answer"] == ["0", "2"] and report.kept == 2 and report.skipped_by_field["prompt"] == 1
    full, _ = filter_long_prompts(dataset, processor, 10_000, show_progress=False)
    assert len(full) == 3


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb, cheaply)."""
    import struct
    import zlib

    data = bytearray(_png(size=(1, 1)))
    ihdr = bytearray(data[12:29])  # b"IHDR" + 13 bytes of header fields
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.slow
def test_fuzz_broken_rows_never_crash_and_are_counted_exactly(tmp_path, capsys):
    """N broken rows of every kind (plus a decompression-bomb image and a text-only row), shuffled among
    good rows: preparing skips exactly them, and a training run on the result does not crash."""
    import random

    from papo.cli import main

    kinds = {
        **BAD_ROWS,
        "huge_image": (
            {"images": [{"bytes": _png_claiming_size(40000, 40000), "path": None}]},
            "images",
            "cannot be decoded",
        ),
        "text_only": ({"problem": "What is 2+2?", "images": []}, "images", "no image"),
    }
    rng = random.Random(0)
    per_kind = 3
    rows = [{**_good_row(i), "answer": "1"} for i in range(12)]
    expected = {}
    for patch, field, _ in kinds.values():
        for _ in range(per_kind):
            rows.insert(rng.randrange(len(rows) + 1), {**_good_row(99), **patch})
        expected[field] = expected.get(field, 0) + per_kind
    dataset, report = prepare_papo_dataset(_dataset(rows), skip_invalid=True, show_progress=False)
    assert len(dataset) == 12 and dict(report.skipped_by_field) == expected
    # on disk: every kind but the missing file, which datasets itself refuses to write
    on_disk = [r for r in rows if not any(i and i.get("path") == "/nonexistent/x.png" for i in r["images"])]
    path = tmp_path / "broken.parquet"
    _dataset(on_disk).to_parquet(str(path))
    argv = ["train", "--dataset_name", str(path), "--skip_invalid", "true", "--max_steps", "1"]
    argv += ["--output_dir", str(tmp_path / "run"), "--embedded_dir", str(tmp_path / "emb")]
    argv += ["--per_device_train_batch_size", "4", "--num_generations", "4"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    skipped = (len(kinds) - 1) * per_kind
    assert f"12/{12 + skipped} rows kept, {skipped} skipped" in out
    assert out.count(f"{skipped} skipped") >= 2  # at the start and in the final summary


# ------------------------------------------------------------------------------------------------
# PAPOGalaxy/PAPO_ViRL39K_train as published: embedded images, or path strings (+ id), images in a zip
# ------------------------------------------------------------------------------------------------


def _virl_rows(n: int, images) -> dict:
    return {
        "problem": [f"<image>How many dots in figure {i}?" for i in range(n)],
        "answer": [str(i) for i in range(n)],
        "images": images,
    }


@pytest.mark.parametrize("with_id", [False, True])
def test_virl39k_with_embedded_images_with_or_without_id(tmp_path, with_id):
    rows = _virl_rows(3, [[{"bytes": _png(size=(30 + i, 30)), "path": None}] for i in range(3)])
    if with_id:
        rows["id"] = [f"virl-{i}" for i in range(3)]
    features = FEATURES if not with_id else datasets.Features({**FEATURES, "id": datasets.Value("string")})
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(
        str(tmp_path / "data" / "train-00000-of-00001.parquet")
    )
    dataset, report = load_training_dataset(tmp_path)
    assert report.kept == 3 and dataset[2]["images"][0].size == (32, 30)
    assert ("id" in dataset.column_names) is with_id


@pytest.mark.parametrize("in_zip", [False, True])
def test_virl39k_with_image_path_strings(tmp_path, monkeypatch, in_zip):
    import zipfile

    from papo.data.archives import UnsafeArchiveError

    monkeypatch.setenv("PAPO_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "PAPO_ViRL39K_train"
    (root / "data").mkdir(parents=True)
    paths = [[f"./images/{i}.png"] for i in range(3)]
    if in_zip:
        with zipfile.ZipFile(root / "images.zip", "w") as archive:
            for i in range(3):
                archive.writestr(f"images/{i}.png", _png(size=(30 + i, 30)))
    else:
        (root / "images").mkdir()
        for i in range(3):
            (root / "images" / f"{i}.png").write_bytes(_png(size=(30 + i, 30)))
    rows = {**_virl_rows(3, paths), "id": ["a", "b", "c"]}
    shard = root / "data" / "train-00000-of-00001.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(shard))
    for source in (root, shard):
        dataset, report = load_training_dataset(source)
        assert report.kept == 3 and dataset[1]["images"][0].size == (31, 30)
        assert isinstance(dataset.features["images"], datasets.List)
        assert isinstance(dataset.features["images"].feature, datasets.Image)
    assert (root / "images.zip").exists() is in_zip and (root / "images").exists() is not in_zip

    rows["images"][2] = ["../../outside.png"]
    datasets.Dataset.from_dict(rows).to_parquet(str(shard))
    with pytest.raises(UnsafeArchiveError, match="row 2, image 0.*'\\.\\.'"):
        load_training_dataset(root)
    rows["images"][2] = ["images/missing.png"]
    datasets.Dataset.from_dict(rows).to_parquet(str(shard))
    with pytest.raises(FileNotFoundError, match="row 2, image 0: 'images/missing.png' not found"):
        load_training_dataset(root)
