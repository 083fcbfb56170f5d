"""`python space/app.py`, the one command the README gives, serves the app and answers once loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

from space_testing import SPACE_DIR, free_port


def test_python_space_app_py_serves_and_answers(space_cache, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    port = free_port()
    env = {
        **os.environ,
        "PAPO_SPACE_CACHE": str(space_cache),
        "PAPO_MAX_NEW_TOKENS": "8",
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
    }
    log = open(tmp_path / "app.log", "w")
    process = subprocess.Popen(
        [sys.executable, str(SPACE_DIR / "app.py")], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (tmp_path / "app.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the app did not start in 90 s"
                time.sleep(0.5)
        client = Client(url, verbose=False, download_files=str(tmp_path / "downloads"))
        image = handle_file(str(space_cache / "examples" / "clock.png"))
        while True:  # the models load in the background after the page is up
            try:
                result = client.predict(
                    image, "What time is it?", "2:45", 0, 1.0, 8, 0.6, api_name="/compare"
                )
                break
            except AppError as err:
                assert "not ready yet" in str(err), err
                assert time.monotonic() < deadline, "the models did not load in 90 s"
                time.sleep(0.5)
        details = result[-1]
        assert details["baseline"]["answer"] and details["papo"]["answer"]
        assert details["models"]["embedded"] == "True"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()
