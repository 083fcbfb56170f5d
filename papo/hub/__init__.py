"""Publish PAPO adapters (model repos), eval predictions (dataset repos) and the comparison Space on the Hub.

Two steps each, so that what is pushed can be inspected first (`papo push ... --dry-run DIR`):

- ``build_adapter_repo`` / ``build_eval_dataset_repo`` / ``build_space_repo`` write, in a local folder,
  *exactly* the files of the repo, with a card (``README.md``) rendered from the templates in
  ``papo/cards/`` with valid Hub metadata.
- ``push_adapter`` / ``push_eval`` / ``push_space`` build that folder in a temporary directory and push it in
  **one commit** that mirrors it (no stale files; no commit when nothing changed), with retries of
  transient failures and a ``HubAuthError`` saying how to log in on HTTP 401/403.

One job per module:

- ``papo.hub.adapter``: an adapter as a model repo (``build_adapter_repo``, ``push_adapter``,
  ``write_training_card``);
- ``papo.hub.evals``: a ``papo eval`` run as a dataset repo (``build_eval_dataset_repo``, ``push_eval``);
- ``papo.hub.space``: the comparison Space (``build_space_repo``, ``push_space``), with its wheel
  (``papo.hub.wheel``) and examples (``papo.hub.space_examples``);
- ``papo.hub.cards`` renders the cards, ``papo.hub.tables`` their tables and ``model-index`` metadata;
- ``papo.hub.checks``: what may be published (file allow-list, secrets, local paths, adapter fits base);
- ``papo.hub.transport``: the one-commit push, retries, auth errors and the token.

The command line is ``papo push adapter|eval|space`` (``papo.cli``).
"""

from papo.hub.adapter import build_adapter_repo, push_adapter, write_training_card
from papo.hub.cards import ADAPTER_CARD_TEMPLATE, CARDS_DIR, EVAL_CARD_TEMPLATE
from papo.hub.checks import BaseModelMismatchError, check_adapter_fits_base
from papo.hub.evals import build_eval_dataset_repo, push_eval
from papo.hub.space import (
    MANAGED_VARIABLES,
    build_space_repo,
    push_space,
    resolve_space_models,
    space_variables,
)
from papo.hub.space_examples import pick_space_examples
from papo.hub.transport import HubAuthError, HubPushError
from papo.hub.wheel import build_wheel

__all__ = [
    "ADAPTER_CARD_TEMPLATE",
    "BaseModelMismatchError",
    "CARDS_DIR",
    "EVAL_CARD_TEMPLATE",
    "HubAuthError",
    "HubPushError",
    "MANAGED_VARIABLES",
    "build_adapter_repo",
    "build_eval_dataset_repo",
    "build_space_repo",
    "build_wheel",
    "check_adapter_fits_base",
    "pick_space_examples",
    "push_adapter",
    "push_eval",
    "push_space",
    "resolve_space_models",
    "space_variables",
    "write_training_card",
]
