"""Keep the README true: every config field is documented, every registered name appears."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from fedsim import registries
from fedsim.config import RunConfig

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(_fields(annotation, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def test_every_config_field_is_in_the_config_reference():
    missing = [key for key in _fields(RunConfig) if f"`{key}`" not in README and f"`{key}," not in README]
    assert not missing, f"README config reference lacks: {missing}"


def test_every_strategy_and_executor_is_documented():
    for kind in ("strategy", "executor", "participation", "partitioner", "weighting", "server_optimizer",
                 "scheduler", "arrivals", "staleness", "speed"):
        for name in registries.get(kind).names():
            if name.startswith("test_"):  # registered by other tests
                continue
            assert f"`{name}`" in README, f"README does not mention {kind} `{name}`"


def test_readme_test_command_is_what_ci_runs():
    ci = (Path(__file__).resolve().parents[2] / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]" && python -m pytest' in README
    assert "\npython -m pytest\n" in ci and "torch==2.13.0" in ci
