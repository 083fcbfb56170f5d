"""The Space's configuration (space/space_config.py): environment variables, defaults and their errors."""

from __future__ import annotations

import pytest
from space_config import SPACE_DIR, SpaceConfig

# --- configuration -----------------------------------------------------------------------------------


def test_config_defaults_are_the_embedded_models():
    config = SpaceConfig.from_env({})
    assert config.embedded
    assert config.cache_dir == SPACE_DIR / ".cache"
    assert (config.dtype, config.load_in_4bit, config.concurrency) == ("auto", False, 1)


def test_config_reads_a_real_deployment():
    config = SpaceConfig.from_env(
        {
            "PAPO_BASE_MODEL": "Qwen/Qwen2.5-VL-3B-Instruct",
            "PAPO_ADAPTER": "someone/papo-g-qwen2.5vl-3b-lora",
            "PAPO_DEVICE": "cuda",
            "PAPO_DTYPE": "bfloat16",
            "PAPO_LOAD_IN_4BIT": "true",
            "PAPO_CONCURRENCY": "2",
        }
    )
    assert not config.embedded
    assert (config.device, config.dtype, config.load_in_4bit, config.concurrency) == (
        "cuda",
        "bfloat16",
        True,
        2,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PAPO_ADAPTER": "a", "PAPO_MODEL": "b", "PAPO_BASE_MODEL": "c"}, "not both"),
        ({"PAPO_BASE_MODEL": "c"}, "also set PAPO_ADAPTER"),
        ({"PAPO_MODEL": "b"}, "also set PAPO_BASE_MODEL"),
        ({"PAPO_DTYPE": "float8"}, "PAPO_DTYPE"),
        ({"PAPO_LOAD_IN_4BIT": "maybe"}, "PAPO_LOAD_IN_4BIT"),
        ({"PAPO_CONCURRENCY": "0"}, "PAPO_CONCURRENCY"),
        ({"PAPO_MAX_NEW_TOKENS": "4096"}, "PAPO_MAX_NEW_TOKENS_LIMIT"),
    ],
)
def test_config_errors_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        SpaceConfig.from_env(env)
