"""Point the notebooks at the GitHub repository that hosts papo-hub: the Colab/Kaggle badges and the
``REPO`` parameter (which the install cell pip-installs from). Run once by whoever publishes the repo:

    python notebooks/set_repo.py alice/papo-hub

Idempotent; rewrites a previous owner/name too. Notebooks are edited as JSON, outputs untouched.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent
PLACEHOLDER = "YOUR-ORG/papo-hub"
BADGE = re.compile(r"(github(?:\.com)?/)[\w.-]+/[\w.-]+(/blob/)")
REPO_LINE = re.compile(r'^REPO = "[^"]*"', re.MULTILINE)


def set_repo(repo: str, folder: Path = NOTEBOOK_DIR) -> list[Path]:
    """Rewrite the badges and the REPO parameter of every notebook in `folder`; returns the edited files."""
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ValueError(f"repo must be GitHub's OWNER/NAME, e.g. alice/papo-hub; got {repo!r}")
    edited = []
    for path in sorted(folder.glob("*.ipynb")):
        notebook = json.loads(path.read_text())
        for cell in notebook["cells"]:
            source = "".join(cell["source"])
            new = BADGE.sub(rf"\g<1>{repo}\g<2>", source)
            new = REPO_LINE.sub(f'REPO = "{repo}"', new)
            if new != source:
                cell["source"] = new.splitlines(keepends=True)
        text = json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
        if text != path.read_text():
            path.write_text(text)
            edited.append(path)
    return edited


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python notebooks/set_repo.py OWNER/NAME")
    for path in set_repo(sys.argv[1]):
        print(f"updated {path}")
