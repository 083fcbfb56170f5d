"""Helpers shared by the Space's tests (a plain module: test files never import conftest).

tests/hub/test_space_push.py imports it too (the pushed folder started as a Space starts it).
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

SPACE_DIR = Path(__file__).resolve().parents[2] / "space"
MAX_NEW_TOKENS = 24  # small: the tests are about plumbing, the tiny model writes gibberish anyway


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_test_adapter(base_dir: Path, adapter_dir: Path) -> Path:
    """A LoRA adapter on the tiny model's language projections with random (non-zero) weights."""
    import torch
    from peft import LoraConfig, get_peft_model

    from papo.modeling import LANGUAGE_LORA_TARGETS, load_vlm

    model, _ = load_vlm(base_dir)
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=LANGUAGE_LORA_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(adapter_dir)
    return adapter_dir


def serve_and_compare(
    command: list[str],
    env: dict[str, str],
    cache: Path,
    workdir: Path,
    *,
    cwd: Path | None = None,
    start_timeout: float = 180,  # the test machine is shared: starting and loading wait for the CPU
    load_timeout: float = 300,
) -> list:
    """Start the app with `command` (`python app.py`) and `env`, on a free port with PAPO_SPACE_CACHE=`cache`;
    wait for its page, then ask /compare about the clock the app drew into its gallery (8 new tokens) until
    the models, which load in the background after the page is up, answer. Returns /compare's outputs; the
    app is stopped. Its log is `workdir/app.log`."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    port = free_port()
    env = {
        **env,
        "PAPO_SPACE_CACHE": str(cache),
        "PAPO_MAX_NEW_TOKENS": "8",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
    }
    log_path = Path(workdir) / "app.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + start_timeout
        while True:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, f"the app did not start in {start_timeout:g} s"
                time.sleep(0.5)
        client = Client(url, verbose=False, download_files=str(Path(workdir) / "downloads"))
        image = handle_file(str(Path(cache) / "examples" / "clock.png"))
        deadline = time.monotonic() + load_timeout
        while True:
            try:
                return client.predict(image, "What time is it?", "2:45", 0, 1.0, 8, 0.6, api_name="/compare")
            except AppError as err:
                assert "not ready yet" in str(err), err
                assert time.monotonic() < deadline, f"the models did not load in {load_timeout:g} s"
                time.sleep(0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)
