"""Test isolation: every test run gets a throw-away HOME / HF_HOME / config dirs and no network.

The environment is set at import time, before any test module imports transformers, datasets,
huggingface_hub, gradio or jupyter, because those libraries read these variables when imported.
"""

import os
import shutil
import socket
import tempfile

import pytest

_SANDBOX = tempfile.mkdtemp(prefix="papo-tests-")
_ENV = {
    "HOME": _SANDBOX,
    "HF_HOME": os.path.join(_SANDBOX, "hf"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "XDG_CACHE_HOME": os.path.join(_SANDBOX, "cache"),
    "XDG_CONFIG_HOME": os.path.join(_SANDBOX, "config"),
    "XDG_DATA_HOME": os.path.join(_SANDBOX, "share"),
    "JUPYTER_CONFIG_DIR": os.path.join(_SANDBOX, "jupyter"),
    "JUPYTER_DATA_DIR": os.path.join(_SANDBOX, "jupyter-data"),
    "JUPYTER_RUNTIME_DIR": os.path.join(_SANDBOX, "jupyter-runtime"),
    "IPYTHONDIR": os.path.join(_SANDBOX, "ipython"),
    "MPLCONFIGDIR": os.path.join(_SANDBOX, "matplotlib"),
    "GRADIO_ANALYTICS_ENABLED": "False",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}
os.environ.update(_ENV)

_LOOPBACK_PREFIXES = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect


def _guarded_connect(sock, address):
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and (host.startswith(_LOOPBACK_PREFIXES) or sock.family == socket.AF_UNIX):
        return _real_connect(sock, address)
    raise OSError(f"papo tests are offline: refused a connection to {address!r}")


socket.socket.connect = _guarded_connect


# The fast tier (`pytest -m "not slow"`, about a minute on 2 cores; the inner dev loop): pure functions,
# configs, data, loss, masking, statistics. Every test outside these modules builds or trains a model,
# generates or starts processes, and is marked slow here; the few slow tests inside them carry
# @pytest.mark.slow themselves. CI and the README's test command run everything.
FAST_MODULES = {
    "tests/test_loss.py",
    "tests/test_official_loss.py",
    "tests/test_masking.py",
    "tests/test_stats.py",
    "tests/test_rewards.py",
    "tests/test_guards.py",
    "tests/test_console.py",
    "tests/test_followups.py",
    "tests/test_files.py",
    "tests/test_dynamic_sampling.py",
    "tests/data/test_loading.py",
    "tests/data/test_synthetic.py",
    "tests/data/test_digits.py",
    "tests/metrics/test_papo_accuracy.py",
}


@pytest.fixture(scope="session")
def preset_data(tmp_path_factory):
    """A 4-row synthetic training set for the presets' one-step CPU runs."""
    from papo.data.synthetic import save_synthetic_dataset

    path = tmp_path_factory.mktemp("preset-data") / "synthetic"
    save_synthetic_dataset(path, num_train=4, num_test=1, seed=0)
    return path


def pytest_collection_modifyitems(config, items):
    root = config.rootpath
    for item in items:
        if item.path.relative_to(root).as_posix() not in FAST_MODULES:
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture(scope="session")
def sandbox_dir() -> str:
    """The throw-away directory that stands in for HOME during the test session."""
    return _SANDBOX


class _TinyModels(dict):
    """{architecture: directory} of the tiny random-weight models, each saved on first use (once per session).

    The one tiny-model fixture: every test that needs a saved tiny VLM of a family reads it here.
    Tests must not write into these folders (copy one first).
    """

    def __init__(self, root):
        super().__init__()
        self.root = root

    def __missing__(self, arch: str) -> str:
        from papo.tiny import ALL_ARCHITECTURES, save_tiny_vlm

        if arch not in ALL_ARCHITECTURES:
            raise KeyError(f"no tiny model for {arch!r}; choose from {ALL_ARCHITECTURES}")
        self[arch] = str(save_tiny_vlm(self.root / arch, arch, seed=0))
        return self[arch]


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, str]:
    """Tiny Qwen2.5-VL, Qwen3-VL, Gemma 3 and SmolVLM2 models, saved lazily: {architecture: directory}."""
    return _TinyModels(tmp_path_factory.mktemp("tiny-models"))
