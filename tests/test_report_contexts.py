"""Every page context field is documented, and each template renders from its page dataclass alone."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import fields, is_dataclass

import pytest
from markupsafe import escape

from reports import contexts
from reports.build import environment
from reports.contexts import Page
from reports.pages import Provenance, coordinate_page, family_page, index_page, model_page
from reports.site import Site

from report_samples import catalog_scans

CONTEXTS = [cls for _, cls in inspect.getmembers(contexts, inspect.isclass)
            if is_dataclass(cls) and cls.__module__ == contexts.__name__]


def page_contexts() -> list[tuple[str, Page]]:
    """(template, context) for every page of the sample site and of an empty one, built as `build_site` does."""
    site, prov = Site.from_scans(catalog_scans()), Provenance("2026-12-01 00:00 UTC", "test")
    return [
        ("index.html", index_page(Site.from_scans([]), prov)), ("index.html", index_page(site, prov)),
        *[("family.html", family_page(site, family, models, prov)) for family, models in site.families.items()],
        *[("model.html", model_page(site, model, prov)) for model in site.models],
        *[("coordinate.html", coordinate_page(site, coordinate, holders, prov)) for coordinate, holders in site.shared()],
    ]


def test_there_are_page_contexts() -> None:
    assert {"IndexPage", "FamilyPage", "ModelPage", "CoordinatePage"} <= {cls.__name__ for cls in CONTEXTS}


@pytest.mark.parametrize("template,page", page_contexts(), ids=lambda v: v if isinstance(v, str) else "")
def test_each_template_renders_from_its_page_context_alone(template: str, page: Page) -> None:
    # StrictUndefined: a template reading anything but a field of its page dataclass fails here
    html = environment().get_template(template).render(page=page)
    assert f"<title>{escape(page.title)} · superweights</title>" in html


def own_docstring(cls: type) -> str | None:
    """The docstring written in the class body: `cls.__doc__` cannot tell, since @dataclass fills
    it with the signature when the class has none."""
    [node] = ast.parse(textwrap.dedent(inspect.getsource(cls))).body
    return ast.get_docstring(node)


@pytest.mark.parametrize("cls", CONTEXTS, ids=lambda cls: cls.__name__)
def test_every_field_is_documented(cls: type) -> None:
    assert (own_docstring(cls) or "").strip(), f"{cls.__name__}: say what it is in a docstring"
    undocumented = [f.name for f in fields(cls) if not f.metadata.get("doc", "").strip()]
    assert not undocumented, f"{cls.__name__}: document {undocumented} with contexts.doc(...)"
