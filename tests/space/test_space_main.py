"""`python space/app.py`, the one command the README gives, serves the app and answers once loaded."""

from __future__ import annotations

import os
import sys

from space_testing import SPACE_DIR, serve_and_compare


def test_python_space_app_py_serves_and_answers(space_cache, tmp_path):
    result = serve_and_compare(
        [sys.executable, str(SPACE_DIR / "app.py")], dict(os.environ), space_cache, tmp_path
    )
    details = result[-1]
    assert details["baseline"]["answer"] and details["papo"]["answer"]
    assert details["models"]["embedded"] == "True"
