"""Pushing through the real huggingface_hub client to a fake Hub on loopback, in a subprocess.

Nothing in huggingface_hub is patched: the subprocess only points ``HF_ENDPOINT`` at the fake server, so
these tests check the exact requests the client makes (one commit, NDJSON payload, deletions) and our
retry / authentication handling around them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from hub_testlib import TEST_TOKEN, run_python

from papo.hub import build_adapter_repo, build_eval_dataset_repo

REPO = "papo-tester/papo-g-tiny"
DATA_REPO = "papo-tester/papo-g-tiny-eval"


def _push_adapter_code(adapter_dir: Path, repo_id: str = REPO, **kwargs) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in {"retry_base_delay": 0.01, **kwargs}.items())
    return (
        f"from papo.hub import push_adapter\nprint(push_adapter({str(adapter_dir)!r}, {repo_id!r}, {args}))\n"
    )


def _assert_no_token(hub, *outputs: str) -> None:
    for text in outputs:
        assert TEST_TOKEN not in text
    for repo in hub.repos.values():
        for path, data in repo.files.items():
            assert TEST_TOKEN.encode() not in data, path


def _commits(hub) -> list[str]:
    return [route for route in hub.routes_called() if route.startswith("POST") and "/commit/" in route]


def test_push_adapter_creates_the_repo_in_one_commit(hub, push_env, tiny_adapter_dir, tmp_path):
    result = run_python(_push_adapter_code(tiny_adapter_dir, private=True), push_env)
    assert result.returncode == 0, result.stderr

    repo = hub.repo(REPO, "model")
    assert repo.private
    assert [c.summary for c in repo.commits] == ["initial commit", "Upload PAPO adapter"]
    assert _commits(hub) == [f"POST /api/models/{REPO}/commit/main"]
    assert result.stdout.strip() == f"{hub.endpoint}/{REPO}/commit/{repo.head}"

    expected = build_adapter_repo(tiny_adapter_dir, tmp_path / "expected", repo_id=REPO)
    expected_files = {
        p.relative_to(expected).as_posix(): p.read_bytes() for p in expected.rglob("*") if p.is_file()
    }
    assert repo.commits[-1].added == expected_files  # the dry-run folder, byte for byte
    assert repo.files == {".gitattributes": repo.files[".gitattributes"], **expected_files}
    assert "training_args.bin" not in repo.files
    _assert_no_token(hub, result.stdout, result.stderr)


def test_repush_is_idempotent_and_deletes_stale_files(hub, push_env, adapter_copy):
    code = f"""
import json, os
from papo.hub import push_adapter
urls = [push_adapter({str(adapter_copy)!r}, {REPO!r}), push_adapter({str(adapter_copy)!r}, {REPO!r})]
os.remove({str(adapter_copy / "metrics.jsonl")!r})
urls.append(push_adapter({str(adapter_copy)!r}, {REPO!r}, commit_message="Drop metrics"))
print(json.dumps(urls))
"""
    result = run_python(code, push_env)
    assert result.returncode == 0, result.stderr
    first, second, third = json.loads(result.stdout.splitlines()[-1])

    repo = hub.repo(REPO, "model")
    # The identical re-push makes no commit and returns the head commit's URL.
    assert [c.summary for c in repo.commits] == ["initial commit", "Upload PAPO adapter", "Drop metrics"]
    assert first == second == f"{hub.endpoint}/{REPO}/commit/{repo.commits[1].oid}"
    assert third == f"{hub.endpoint}/{REPO}/commit/{repo.head}"
    # The last commit deletes the removed file and updates the card, which no longer lists it; unchanged
    # files are skipped by the client.
    assert repo.commits[-1].deleted == ["metrics.jsonl"]
    assert set(repo.commits[-1].added) == {"README.md"}
    assert b"metrics.jsonl" not in repo.files["README.md"]
    assert "metrics.jsonl" not in repo.files and ".gitattributes" in repo.files
    assert len(repo.files) == len(set(repo.files))
    _assert_no_token(hub, result.stdout, result.stderr)


def test_transient_errors_are_retried(hub, push_env, tiny_adapter_dir):
    hub.fail_next("create", 1, status=503)
    hub.fail_next("commit", 1, status=429)
    result = run_python(_push_adapter_code(tiny_adapter_dir), push_env)
    assert result.returncode == 0, result.stderr
    # The base model's config is looked up first (the fake Hub has none: the shapes are reported unchecked).
    base_lookups = [r for r in hub.requests if "Qwen/Qwen2.5-VL-3B-Instruct" in r[1]]
    assert base_lookups and all(s == 404 for _, _, s in base_lookups)
    statuses = [
        (m, p, s) for m, p, s in hub.requests if s >= 400 and s != 409 and (m, p, s) not in base_lookups
    ]  # 409: exists on retry
    assert statuses == [
        ("POST", "/api/repos/create", 503),
        ("POST", f"/api/models/{REPO}/commit/main", 429),
    ]
    assert [c.summary for c in hub.repo(REPO).commits] == ["initial commit", "Upload PAPO adapter"]
    assert "retrying" in result.stderr


def test_retries_give_up_with_a_clear_error(hub, push_env, tiny_adapter_dir):
    hub.fail_next("commit", 5, status=503)
    cli = [
        "push",
        "adapter",
        str(tiny_adapter_dir),
        "--repo-id",
        REPO,
        "--retries",
        "2",
        "--retry-base-delay",
        "0",
    ]
    result = run_python(f"import sys; from papo.cli import main; sys.exit(main({cli!r}))", push_env)
    assert result.returncode == 1
    assert f"push to {REPO} failed after 2 tries" in result.stderr and "503" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(hub.repo(REPO).commits) == 1  # only the repo's initial commit


def test_bad_token_gives_a_clear_error_and_leaks_nothing(hub, push_env, tiny_adapter_dir):
    wrong = "hf_wrongToken" + TEST_TOKEN[-12:]
    env = {**push_env, "HF_TOKEN": wrong}
    cli = ["push", "adapter", str(tiny_adapter_dir), "--repo-id", REPO]
    code = f"import sys; from papo.cli import main; sys.exit(main({cli!r}))"  # `papo push` in a subprocess
    result = run_python(code, env)
    assert result.returncode == 1
    assert f"authentication failed for {REPO} (HTTP 401)" in result.stderr
    assert "`hf auth login` or set HF_TOKEN" in result.stderr and "write access" in result.stderr
    assert "Traceback" not in result.stderr
    for text in (result.stdout, result.stderr):
        assert wrong not in text and TEST_TOKEN not in text
    assert hub.repos == {}

    env.pop("HF_TOKEN")
    result = run_python(code, env)  # no token at all (the sandboxed HF_HOME has no stored token)
    assert result.returncode == 1
    assert "(no Hugging Face token was found)" in result.stderr


def test_explicit_token_argument(hub, push_env, tiny_adapter_dir):
    env = {k: v for k, v in push_env.items() if k != "HF_TOKEN"}
    env["PAPO_TEST_SECRET"] = TEST_TOKEN
    code = (
        "import os\nfrom papo.hub import push_adapter\n"
        f"print(push_adapter({str(tiny_adapter_dir)!r}, {REPO!r}, token=os.environ['PAPO_TEST_SECRET']))"
    )
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert len(hub.repo(REPO).commits) == 2
    _assert_no_token(hub, result.stdout, result.stderr)


def test_dry_run_makes_no_request(hub, push_env, tiny_adapter_dir, tmp_path):
    result = run_python(_push_adapter_code(tiny_adapter_dir, dry_run_dir=str(tmp_path / "dry")), push_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "dry")
    assert (tmp_path / "dry" / "adapter_model.safetensors").is_file()
    assert hub.requests == []


def test_push_eval_dataset(hub, push_env, eval_run_dir, tmp_path):
    import datasets
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    code = f"from papo.hub import push_eval\nprint(push_eval({str(eval_run_dir)!r}, {DATA_REPO!r}))"
    result = run_python(code, push_env)
    assert result.returncode == 0, result.stderr

    repo = hub.repo(DATA_REPO, "dataset")
    assert (("model", DATA_REPO) in hub.repos) is False
    assert result.stdout.strip() == f"{hub.endpoint}/datasets/{DATA_REPO}/commit/{repo.head}"
    assert _commits(hub) == [f"POST /api/datasets/{DATA_REPO}/commit/main"]
    expected = build_eval_dataset_repo(eval_run_dir, tmp_path / "expected", repo_id=DATA_REPO)
    assert set(repo.files) == {".gitattributes"} | {
        p.relative_to(expected).as_posix() for p in expected.rglob("*") if p.is_file()
    }

    card_path = tmp_path / "README.md"
    card_path.write_bytes(repo.files["README.md"])
    configs = DatasetCard.load(card_path).data.to_dict()["configs"]
    assert [c["config_name"] for c in configs] == ["Geo3k", "count_shapes"]

    for config in configs:
        path_in_repo = config["data_files"][0]["path"]
        table = pq.read_table(io.BytesIO(repo.files[path_in_repo]))  # the bytes the Hub stored
        assert table.num_rows == 2
        local = tmp_path / "pulled" / path_in_repo
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(repo.files[path_in_repo])
        ds = datasets.load_dataset("parquet", data_files={"test": str(local)}, split="test")
        assert ds.features["image"] == datasets.Image()
        assert ds[1]["image"].size == (8, 8)
        assert ds[0]["benchmark"] == config["config_name"]
        assert ds[0]["perception_kl"][0] == [0.015625, 0.875, 0.03125]
    _assert_no_token(hub, result.stdout, result.stderr)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the test process itself stayed offline


def test_connection_errors_are_retried_then_reported(push_env, tiny_adapter_dir):
    import socket

    with socket.socket() as sock:  # a loopback port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**push_env, "HF_ENDPOINT": f"http://127.0.0.1:{port}"}
    result = run_python(_push_adapter_code(tiny_adapter_dir, retries=2, retry_base_delay=0.0), env)
    assert result.returncode == 1
    assert (
        "HubPushError" in result.stderr and f"push to {REPO} failed after 2 tries: Connect" in result.stderr
    )
    assert "try 1/2 failed" in result.stderr
    assert TEST_TOKEN not in result.stderr + result.stdout


def test_token_is_scrubbed_from_retried_transport_errors(tmp_path, monkeypatch, caplog):
    """A transport error whose text carries the token (e.g. an echoed Authorization header): neither
    the retry warnings nor the final error may show it."""
    import logging

    import pytest

    import papo.hub.transport as hub_module

    secret = "hf_" + "SeCrEt" * 6
    (tmp_path / "adapter_config.json").write_text("{}")
    attempts = []

    def failing_push(*args, **kwargs):
        attempts.append(1)
        raise ConnectionError(f"connection reset; request headers: Authorization: Bearer {secret} (retry)")

    monkeypatch.setattr(hub_module, "_push_once", failing_push)
    with caplog.at_level(logging.WARNING, logger="papo.hub"):
        with pytest.raises(hub_module.HubPushError) as info:
            hub_module._push_folder(
                tmp_path,
                REPO,
                "model",
                private=False,
                token=secret,
                commit_message="m",
                retries=3,
                retry_base_delay=0.0,
            )
    assert len(attempts) == 3
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2 and all("retrying" in w and "Authorization: Bearer" in w for w in warnings)
    for text in (*warnings, str(info.value)):
        assert secret not in text
