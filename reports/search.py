"""The search index: one entry per family, model and super weight, written as a script.

Browsers block fetch() of a local file under file://, so the index is a .js file that assigns
`window.SUPERWEIGHTS_INDEX`, loaded by a <script> tag on every page. `assets/search.js` matches
the query against each entry's `text`, normalised the same way on both sides (`normalise`).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from reports.site import ModelEntry, Site

GLOBAL = "SUPERWEIGHTS_INDEX"


@dataclass
class SearchEntry:
    kind: str  # "family" | "model" | "weight"
    title: str  # shown as the result's first line
    detail: str  # shown as its second line
    url: str  # relative to the site root
    text: str  # what a query matches, normalised


def normalise(text: str) -> str:
    """Lower case; brackets dropped and spaces around commas removed, so '[507, 1229]' is '507,1229'."""
    text = re.sub(r"[\[\]()]", " ", text.lower())
    return re.sub(r"\s+", " ", re.sub(r"\s*,\s*", ",", text)).strip()


def search_entries(site: Site) -> list[SearchEntry]:
    entries = [
        SearchEntry("family", family, f"family · {len(models)} models", f"families/{site.family_slugs[family]}.html",
                    normalise(f"{family} family"))
        for family, models in site.families.items()
    ]
    for model in site.models:
        entries.append(model_entry(model))
        entries.extend(weight_entries(model))
    return entries


def model_entry(model: ModelEntry) -> SearchEntry:
    m = model.result.model
    detail = f"model · {m.family} · {m.architecture} · {len(model.result.super_weights)} super weights"
    text = f"{model.name} {m.source} {m.repo_id or ''} {m.family} {m.architecture} {m.model_type}"
    return SearchEntry("model", model.name, detail, f"models/{model.slug}.html", normalise(text))


def weight_entries(model: ModelEntry) -> list[SearchEntry]:
    m = model.result.model
    return [
        SearchEntry(
            "weight", f"{model.name} · layer {w.layer} [{w.row}, {w.col}]",
            f"super weight · {m.family} · value {w.value:.4g} · {w.verdict}", f"models/{model.slug}.html#weights",
            normalise(f"{model.name} {m.family} {m.architecture} layer {w.layer} l{w.layer} [{w.row}, {w.col}] "
                      f"{w.layer}:{w.row}:{w.col} {w.param} {w.verdict}"),
        )
        for w in model.result.super_weights
    ]


def script_json(value: object, indent: int | None = None) -> str:
    """JSON that is safe anywhere in HTML or JS: <, > and & escaped as \\u003c..., and ASCII only."""
    text = json.dumps(value, ensure_ascii=True, indent=indent, separators=None if indent else (",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def index_script(site: Site) -> str:
    entries = [asdict(e) for e in search_entries(site)]
    return f"window.{GLOBAL} = {script_json(entries)};\n"
