"""The search index: one entry per family, model, shared coordinate and super weight candidate,
written as a script.

Browsers block fetch() of a local file under file://, so the index is a .js file that assigns
`window.SUPERWEIGHTS_INDEX`, loaded by a <script> tag on every page. `assets/search.js` splits a
query into terms (`L11`, `layer:11`, `[507, 1229]`, `1:2533:7890`, words), matches each against
an entry's `fields` (exact values rank first) and else its `text`, normalised the same way on
both sides (`normalise`). A weight's entry links to its own row on its model's page.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from catalog.result import ModelInfo
from reports.site import ModelEntry, Site, coordinate_slug, weight_anchor

GLOBAL = "SUPERWEIGHTS_INDEX"


@dataclass
class SearchEntry:
    kind: str  # "family" | "model" | "coordinate" | "weight"
    title: str  # shown as the result's first line
    detail: str  # shown as its second line
    url: str  # relative to the site root
    text: str  # what a query's words match as substrings, normalised
    # field -> normalised value, for `layer:11` and exact matches: model, org, family, arch, layer, row, col, verdict...
    fields: dict[str, str]


def normalise(text: str) -> str:
    """Lower case; brackets dropped and spaces around commas removed, so '[507, 1229]' is '507,1229'."""
    text = re.sub(r"[\[\]()]", " ", text.lower())
    return re.sub(r"\s+", " ", re.sub(r"\s*,\s*", ",", text)).strip()


def entry(kind: str, title: str, detail: str, url: str, fields: dict[str, object]) -> SearchEntry:
    """An entry whose `text` is its title and field values (fields left empty are dropped)."""
    values = {name: normalise(str(value)) for name, value in fields.items() if value is not None and str(value) != ""}
    return SearchEntry(kind, title, detail, url, normalise(" ".join([title, *values.values()])), values)


def search_entries(site: Site) -> list[SearchEntry]:
    entries = [entry("family", family, f"family · {len(models)} models", f"families/{site.family_slugs[family]}.html", {"family": family})
               for family, models in site.families.items()]
    for (layer, row, col), holders in site.shared():
        names = ", ".join(m.name for m in holders)
        entries.append(entry("coordinate", f"L{layer} [{row}, {col}]", f"coordinate · {len(holders)} models: {names}",
                             f"coordinates/{coordinate_slug((layer, row, col))}.html", {"layer": layer, "row": row, "col": col}))
    for model in site.models:
        entries.append(model_entry(model))
        entries.extend(weight_search_entries(model))
    return entries


def organization(info: ModelInfo) -> str | None:
    """The organization the model declares (GGUF general.organization), else its repo id's owner:
    'HuggingFaceTB' of 'HuggingFaceTB/SmolLM2-135M'."""
    if info.organization:
        return info.organization
    return info.repo_id.split("/", 1)[0] if info.repo_id and "/" in info.repo_id else None


def model_fields(model: ModelEntry) -> dict[str, object]:
    m = model.result.model
    return {"model": model.name, "org": organization(m), "family": m.family, "arch": m.architecture, "type": m.model_type,
            "format": m.format, "quant": m.quantization}


def model_entry(model: ModelEntry) -> SearchEntry:
    m = model.result.model
    counts = f"{len(model.result.super_weights)} candidates, {len(model.result.confirmed)} confirmed"
    detail = f"model · {m.family} · {m.architecture} · {counts}"
    return entry("model", model.name, detail, f"models/{model.slug}.html", model_fields(model))


def weight_search_entries(model: ModelEntry) -> list[SearchEntry]:
    common = model_fields(model)
    return [
        entry("weight", f"{model.name} · layer {w.layer} [{w.row}, {w.col}]",
              f"super weight candidate · {model.family} · {w.verdict}"
              + (f" · ratio ×{w.ppl_ratio:.3g}" if w.ppl_ratio is not None else ""),
              f"models/{model.slug}.html#{weight_anchor(w)}",
              common | {"layer": w.layer, "row": w.row, "col": w.col, "expert": w.expert, "param": w.param, "verdict": w.verdict})
        for w in model.result.super_weights
    ]


def script_json(value: object, indent: int | None = None) -> str:
    """JSON that is safe anywhere in HTML or JS: <, > and & escaped as \\u003c..., and ASCII only."""
    text = json.dumps(value, ensure_ascii=True, indent=indent, separators=None if indent else (",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def index_script(site: Site) -> str:
    entries = [asdict(e) for e in search_entries(site)]
    return f"window.{GLOBAL} = {script_json(entries)};\n"
