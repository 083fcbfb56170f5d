"""Fixtures for the Space's tests: the app running on 127.0.0.1, a client, and a cache of tiny models.

The app runs on its *embedded default* path (no model environment variables): the warm start and the
PAPO-G adapter shipped in papo/assets. `tiny_base` is the session's tiny Qwen2.5-VL (`tiny_model_dirs`) and
`space_cache` holds a LoRA adapter on it with random, non-zero weights (`init_lora_weights=False`), as
`demo-train`, where the Space keeps the demo adapter it trains: for the tests that configure models explicitly
or exercise the fallback that builds the embedded pair when an install lacks the shipped one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # space_testing, whatever pytest's import mode

from space_testing import MAX_NEW_TOKENS, SPACE_DIR, free_port, make_test_adapter  # noqa: E402

sys.path.insert(0, str(SPACE_DIR))  # the Space's modules: app, space_*


@pytest.fixture(scope="session")
def tiny_base(tiny_model_dirs) -> Path:
    """The session's tiny Qwen2.5-VL (tests/conftest.py): the base model of the tests' adapter."""
    return Path(tiny_model_dirs["qwen2_5_vl"])


@pytest.fixture(scope="session")
def space_cache(tmp_path_factory, tiny_base) -> Path:
    """A PAPO_SPACE_CACHE with the demo adapter (on `tiny_base`) already in place."""
    cache = tmp_path_factory.mktemp("space-cache")
    make_test_adapter(tiny_base, cache / "demo-train")
    return cache


@pytest.fixture(scope="session")
def space_config(space_cache):
    from space_config import SpaceConfig

    return SpaceConfig.from_env(
        {
            "PAPO_SPACE_CACHE": str(space_cache),
            "PAPO_MAX_NEW_TOKENS": str(MAX_NEW_TOKENS),
            "PAPO_CONCURRENCY": "1",
        }
    )


@pytest.fixture(scope="session")
def models(space_config):
    from space_models import Models

    loaded = Models(space_config)
    loaded.load()
    return loaded


@pytest.fixture(scope="session")
def app_url(models, space_config):
    """The app (app.build_demo, queued as in app.main) serving on 127.0.0.1; closed at the end."""
    import app

    demo = app.queue(app.build_demo(models), space_config)
    demo.launch(
        server_name="127.0.0.1",
        server_port=free_port(),
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_kwargs(space_config),
    )
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture
def client(app_url, tmp_path):
    """A fresh API client (its own session) per test; output files are downloaded to tmp_path."""
    from gradio_client import Client

    return Client(app_url, verbose=False, download_files=str(tmp_path / "downloads"))


@pytest.fixture(scope="session")
def example_image(space_cache, app_url) -> str:
    """A bundled example image (built by build_demo into the cache)."""
    return str(space_cache / "examples" / "bar-chart.png")
