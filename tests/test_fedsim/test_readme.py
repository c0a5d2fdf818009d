"""Keep the reference docs complete: every config field is in the config reference, every registered
name is on the page that documents its kind, and the README's test command is what CI runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from fedsim import registries
from fedsim.config import RunConfig

REPO = Path(__file__).resolve().parents[2]
PAGES = REPO / "docs" / "pages"

# kind of registered name -> the page that documents every name of that kind
PAGE_OF_KIND = {
    "strategy": "algorithms.md",
    "weighting": "algorithms.md",
    "server_optimizer": "algorithms.md",
    "client": "algorithms.md",
    "executor": "executors.md",
    "task": "concepts.md",
    "partitioner": "concepts.md",
    "participation": "concepts.md",
    "scheduler": "async-anarchic.md",
    "arrivals": "async-anarchic.md",
    "staleness": "async-anarchic.md",
    "speed": "async-anarchic.md",
    "compressor": "communication.md",
    "attack": "robustness.md",
}


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
    page = (PAGES / "config.md").read_text()
    missing = [key for key in _fields(RunConfig) if f"`{key}`" not in page and f"`{key}," not in page]
    assert not missing, f"docs/pages/config.md lacks: {missing}"


def test_every_selectable_kind_has_a_page():
    # `optimizer` is any torch.optim optimizer by name: documented as such, not one by one
    assert set(registries.KINDS) - {"optimizer"} == set(PAGE_OF_KIND)


@pytest.mark.parametrize("kind", sorted(PAGE_OF_KIND))
def test_every_registered_name_is_documented_on_its_page(kind):
    page = (PAGES / PAGE_OF_KIND[kind]).read_text()
    missing = [
        name
        for name in registries.get(kind).names()
        if not name.startswith("test_")  # registered by other tests
        and f"`{name}`" not in page
    ]
    assert not missing, f"docs/pages/{PAGE_OF_KIND[kind]} does not mention {kind} {missing}"


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[dev]" && python -m pytest' in readme
    assert "\npython -m pytest\n" in ci and "torch==2.13.0" in ci
