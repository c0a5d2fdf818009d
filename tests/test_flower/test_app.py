"""The fedsim Flower App: a valid Flower App whose run config maps onto fedsim's config."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.common.config import flatten_dict, validate_config

from fedsim.config import ConfigError
from fedsim.flower import FLOWER_DEFAULTS, config_from_run_config

APP = Path(__file__).resolve().parents[2] / "experiments" / "flower_app"


def app_config() -> dict:
    import tomllib

    return tomllib.loads((APP / "pyproject.toml").read_text())


def test_the_app_is_a_valid_flower_app():
    ok, errors, _ = validate_config(app_config(), check_module=True, project_dir=APP)
    assert ok, errors


def test_every_run_config_key_maps_onto_fedsims_config():
    run_config = flatten_dict(app_config()["tool"]["flwr"]["app"]["config"])
    config, flower = config_from_run_config(run_config)
    assert config.rounds == run_config["rounds"] and config.strategy.name == run_config["strategy.name"]
    assert config.client.lr == run_config["client.lr"]
    assert set(flower) == set(FLOWER_DEFAULTS)


def test_bad_run_config_keys_fail_with_fedsims_messages():
    with pytest.raises(ConfigError, match="client.lrr"):
        config_from_run_config({"client.lrr": 0.1})
    with pytest.raises(ConfigError, match="unknown strategy 'fedfoo'"):
        config_from_run_config({"strategy.name": "fedfoo"})
    with pytest.raises(ConfigError, match="flower.timeout: unknown key"):
        config_from_run_config({"flower.timeout": 3})
