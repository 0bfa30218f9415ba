"""The static site as files: pages, escaping, validity, local assets, downloads, search index, rebuilds."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import duckdb
import pytest

from catalog.errors import BadOptionError, UnwritableOutputError
from catalog.result import ScanResult
from reports.build import MARKER, build_site
from reports.search import GLOBAL, normalise

from report_samples import HOSTILE, catalog_scans

CHAT = "meta-llama/Llama-2-7b-chat-hf"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "site"
    summary = build_site(catalog_scans(), out)
    assert (summary.pages, summary.models, summary.families, summary.scans) == (7, 3, 2, 4)
    return out


def pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def page(site: Path, relative: str) -> str:
    return (site / relative).read_text()


def search_index(site: Path) -> list[dict]:
    text = (site / "search-index.js").read_text()
    prefix = f"window.{GLOBAL} = "
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    return json.loads(text.rstrip()[len(prefix):-1])


def test_one_page_per_family_and_model(site: Path) -> None:
    names = {p.relative_to(site).as_posix() for p in pages(site)}
    assert names == {
        "index.html", "families/llama-2.html", "families/script-alert-1-script.html",
        "models/meta-llama-llama-2-7b-chat-hf.html", "models/meta-llama-llama-2-7b-hf.html",
        "models/script-alert-1-script.html", "coordinates/l1-2533-7890.html",
    }


def test_hostile_name_is_escaped_in_every_file(site: Path) -> None:
    for path in site.rglob("*"):
        if path.is_file() and path.suffix not in (".csv", ".parquet"):  # data files hold the raw values
            assert HOSTILE not in path.read_text(), path
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert escaped in page(site, "models/script-alert-1-script.html")
    assert escaped in page(site, "index.html")
    assert any(entry["title"] == HOSTILE for entry in search_index(site))  # the index holds it as data


def test_every_page_passes_tidy(site: Path) -> None:
    assert shutil.which("tidy"), "the HTML validator is missing: apt-get install tidy (see .ci/run)"
    for path in pages(site):
        run = subprocess.run(["tidy", "-q", "-e", str(path)], capture_output=True, text=True)
        assert run.returncode == 0, f"{path}:\n{run.stderr}"


HUB_PAGE = re.compile(r"^https://huggingface\.co/[\w.-]+/[\w.-]+$")


class Links(HTMLParser):
    """Every href and src of a page; the Hub pages that <a> tags link to apart."""

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[str] = []
        self.hub: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                (self.hub if tag == "a" and HUB_PAGE.match(value) else self.targets).append(value)


def test_every_asset_and_link_is_a_local_file_but_links_to_repos_hub_pages(site: Path) -> None:
    for path in [*site.rglob("*.js"), *site.rglob("*.css")]:
        assert not re.search(r"https?://|//cdn", path.read_text()), path
    hub_links = set()
    for path in pages(site):
        parser = Links()
        parser.feed(path.read_text())
        assert parser.targets
        hub_links.update(parser.hub)
        for target in parser.targets:
            url = urlparse(target)
            assert not url.scheme and not url.netloc, target
            assert (path.parent / unquote(url.path)).resolve().is_file(), f"{path}: {target}"
    # the two real repo ids; the hostile name is no repo id, so it links nowhere
    assert hub_links == {"https://huggingface.co/meta-llama/Llama-2-7b-hf", "https://huggingface.co/meta-llama/Llama-2-7b-chat-hf"}


def test_index_lists_totals_families_scans_and_strongest(site: Path) -> None:
    html = page(site, "index.html")
    totals = re.findall(r"<li><strong>(\d+)</strong> (\w+(?: \w+)*)", html)
    assert totals == [("3", "models"), ("2", "families"), ("2", "confirmed super weights"), ("1", "rejected candidates"),
                      ("0", "inconclusive"), ("1", "untested"), ("4", "scans")]
    families = html.split("<h2>Families</h2>")[1].split("</table>")[0]
    llama = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", families.split("llama-2.html\">")[1].split("</tr>")[0]))
    assert llama.split() == ["Llama", "2", "2", "2", "1", "0", "0", "1"]  # models, confirmed, rejected, inconclusive, untested, shared
    assert "(1 failed)" in html and "org/missing: not found. Check the repo id." in html
    strongest = html.split("Strongest super weights")[1].split("Recent scans")[0]
    # the ablated weights (×812) rank above the hostile model's unablated candidate
    assert strongest.index("×812") < strongest.index("&lt;script&gt;")


def test_family_page_shows_shared_coordinates(site: Path) -> None:
    html = page(site, "families/llama-2.html")
    shared = html.split("<h2>Shared coordinates</h2>")[1].split("<h2>")[0]
    row = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", shared))
    assert "1 2533 7890 2 meta-llama/Llama-2-7b-chat-hf , meta-llama/Llama-2-7b-hf" in row
    assert "10" not in row.split("7890")[1]  # the chat model's own (4, 10, 20) is not shared


def test_model_page_has_facts_weights_charts_ablations_and_downloads(site: Path) -> None:
    html = page(site, "models/meta-llama-llama-2-7b-chat-hf.html")
    for text in ("0123abcd", "LlamaForCausalLM", "model.layers.4.mlp.down_proj.weight", "control A: random",
                 "&#34;max_iterations&#34;: 3", "2.13.0", 'href="meta-llama-llama-2-7b-chat-hf.super-weights.csv"',
                 "<dt>Stopword shift</dt><dd>0.375</dd>", '<td class="num">0.125</td>', "&#34;ratio_low&#34;: 0.98"):
        assert text in html, text
    assert html.count("<svg") == 2 and "<dt>Intervals</dt>" not in html
    assert "Perplexity ratio to the baseline on the same tokens" in html and "max |activation| (log scale)" in html
    table = html.split('<section id="ablations">')[1].split("<table")[1].split("</table>")[0]
    headers = re.findall(r'<th scope="col"[^>]*>([^<]+)</th>', table)
    assert headers[:4] == ["Condition", "× baseline", "Interval", "Windows"]  # ratio and interval first
    row = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", table.split("zero L4 [10, 20]")[1].split("</tr>")[0])).split()
    assert row[:5] == ["×1.004", "[0.955,", "1.055]", "1/8", "511"] and row[5:7] == ["10.04", "10"]  # paired: its own baseline, not 12.5
    assert '<tr id="w-l1-2533-7890">' in html and 'href="../coordinates/l1-2533-7890.html"' in html


def test_model_without_ablations_says_so(site: Path) -> None:
    html = page(site, "models/script-alert-1-script.html")
    assert html.count("<svg") == 1
    assert "No ablations in this scan yet" in html


def test_downloads_hold_the_models_rows(site: Path) -> None:
    base = site / "models" / "meta-llama-llama-2-7b-chat-hf"
    document = json.loads(Path(f"{base}.json").read_text())
    assert document["scan"]["scan_id"] == 2
    expected = next(s.result for s in catalog_scans() if s.scan_id == 2)
    assert ScanResult.from_dict(document) == expected
    with open(f"{base}.super-weights.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["layer"], r["row"], r["col"], r["verdict"]) for r in rows] == [
        ("1", "2533", "7890", "confirmed"), ("4", "10", "20", "rejected")]
    assert len(Path(f"{base}.ablations.csv").read_text().splitlines()) == 1 + 4


def test_model_page_offers_each_keep_list(site: Path) -> None:
    """The confirmed super weight's tensor for each quantizer; JSON escaped as the scan JSON is."""
    html = page(site, "models/meta-llama-llama-2-7b-chat-hf.html")
    base = site / "models" / "meta-llama-llama-2-7b-chat-hf"
    for suffix in (".keep-llama.cpp.txt", ".keep-bitsandbytes.json", ".keep-llm-compressor.json", ".restore.json"):
        assert f'href="meta-llama-llama-2-7b-chat-hf{suffix}" download' in html
    assert Path(f"{base}.keep-llama.cpp.txt").read_text() == "--tensor-type blk\\.1\\.ffn_down\\.weight=f16\n"
    assert json.loads(Path(f"{base}.keep-bitsandbytes.json").read_text()) == ["model.layers.1.mlp.down_proj"]
    restore = json.loads(Path(f"{base}.restore.json").read_text())
    assert [(s["param"], s["tensor_shape"], s["tensor_index"]) for s in restore["scalars"]] == [
        ("model.layers.1.mlp.down_proj.weight", [4096, 11008], [2533, 7890])]
    hostile = (site / "models" / "script-alert-1-script.restore.json").read_text()
    assert json.loads(hostile)["scalars"] == [] and "<" not in hostile  # untested candidates only: nothing confirmed to keep


def test_search_index_has_families_models_and_weights(site: Path) -> None:
    entries = search_index(site)
    kinds = [e["kind"] for e in entries]
    assert (kinds.count("family"), kinds.count("model"), kinds.count("coordinate"), kinds.count("weight")) == (2, 3, 1, 4)
    weight = next(e for e in entries if e["kind"] == "weight" and "chat" in e["title"] and "layer 1 " in e["title"])
    assert weight["url"] == "models/meta-llama-llama-2-7b-chat-hf.html#w-l1-2533-7890"
    assert {k: weight["fields"][k] for k in ("layer", "row", "col", "org", "family", "verdict")} == {
        "layer": "1", "row": "2533", "col": "7890", "org": "meta-llama", "family": "llama 2", "verdict": "confirmed"}
    for query in ("2533,7890", "llama 2 layer 1", "LlamaForCausalLM"):
        assert all(term in weight["text"] for term in normalise(query).split()), query
    [coordinate] = [e for e in entries if e["kind"] == "coordinate"]
    assert (coordinate["title"], coordinate["url"]) == ("L1 [2533, 7890]", "coordinates/l1-2533-7890.html")


def test_a_page_per_shared_coordinate_lists_its_holders(site: Path) -> None:
    html = page(site, "coordinates/l1-2533-7890.html")
    rows = html.split("<tbody>")[1].split("</tbody>")[0].split("</tr>")[:-1]
    assert [re.search(r'<a href="([^"]+)">([^<]+)</a>', r).groups() for r in rows] == [
        ("../models/meta-llama-llama-2-7b-chat-hf.html#w-l1-2533-7890", CHAT),
        ("../models/meta-llama-llama-2-7b-hf.html#w-l1-2533-7890", "meta-llama/Llama-2-7b-hf")]
    assert all("verdict-confirmed" in r and "×812" in r for r in rows)
    assert "2 catalog models: 2 confirmed, 0 rejected" in re.sub(r"\s+", " ", html)


def test_the_whole_catalog_downloads_as_csv_and_parquet(site: Path) -> None:
    """The index links each file; CSV and Parquet hold the same rows, Parquet with typed columns."""
    index = page(site, "index.html")
    for table in ("models", "super-weights", "ablations"):
        for ext in ("csv", "parquet"):
            assert f'href="downloads/catalog-{table}.{ext}"' in index
        with open(site / "downloads" / f"catalog-{table}.csv", newline="") as f:
            from_csv = list(csv.DictReader(f))
        with duckdb.connect() as con:
            relation = con.sql(f"SELECT * FROM read_parquet('{site / 'downloads' / f'catalog-{table}.parquet'}')")
            columns, from_parquet = relation.columns, relation.fetchall()
        assert columns == list(from_csv[0]) and len(from_parquet) == len(from_csv), table
    with duckdb.connect() as con:
        weights = con.sql(f"SELECT model, layer, \"row\", col, verdict, ppl_ratio, ppl_ratio_low, tensor_index "
                          f"FROM read_parquet('{site / 'downloads' / 'catalog-super-weights.parquet'}') ORDER BY model, layer").fetchall()
        ablations = con.sql("SELECT name, kind, ratio, baseline_ppl, windows "
                            f"FROM read_parquet('{site / 'downloads' / 'catalog-ablations.parquet'}') "
                            "WHERE model = ? ORDER BY name", params=[CHAT]).fetchall()
    assert weights == [(HOSTILE, 2, 99, 7, "untested", None, None, "[99, 7]"),
                       (CHAT, 1, 2533, 7890, "confirmed", 812.5, 640.0, "[2533, 7890]"),
                       (CHAT, 4, 10, 20, "rejected", 1.004, 0.955, "[10, 20]"),
                       ("meta-llama/Llama-2-7b-hf", 1, 2533, 7890, "confirmed", 812.5, 640.0, "[2533, 7890]")]
    assert ablations[0] == ("baseline", "baseline", 1.0, 12.5, 8) and ("zero L4 [10, 20]", "weight", 1.004, 10.0, 1) in ablations


def test_rebuild_replaces_the_site(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "site"
    build_site(catalog_scans(), out)
    build_site(catalog_scans()[:2], out)
    assert (out / MARKER).exists()
    assert not (out / "families" / "llama-2.html").exists()
    assert [p.name for p in out.parent.iterdir()] == ["site"]  # no staging or old copies left behind


def test_a_symlinked_site_stays_a_symlink(tmp_path: Path) -> None:
    real, link = tmp_path / "real-site", tmp_path / "site"
    build_site(catalog_scans(), real)
    link.symlink_to(real)
    build_site(catalog_scans()[:2], link)
    assert link.is_symlink() and (real / MARKER).exists() and not (real / "families" / "llama-2.html").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "env") == ["real-site", "site"]


def test_an_unwritable_place_is_one_line() -> None:
    with pytest.raises(UnwritableOutputError, match=r"^--out: cannot write /proc/superweights-site \("):
        build_site(catalog_scans(), Path("/proc/superweights-site"))


def test_refuses_to_replace_a_directory_it_did_not_build(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(BadOptionError, match="not a report"):
        build_site(catalog_scans(), mine)
    assert [p.name for p in tmp_path.iterdir() if p.name != "env"] == ["mine"]
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_empty_catalog_builds_an_index(tmp_path: Path) -> None:
    summary = build_site([], tmp_path / "site")
    assert summary.pages == 1
    assert "The catalog is empty" in summary.index.read_text()


def _pages(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*.html"))}


def test_compiled_templates_are_kept_and_a_bad_cache_changes_nothing(tmp_path: Path, monkeypatch) -> None:
    """The templates compile once into $SUPERWEIGHTS_HOME/cache/templates; a later report built from
    that cache, from a corrupt one, or with no cache possible at all writes the same pages."""
    home = tmp_path / "home"
    monkeypatch.setenv("SUPERWEIGHTS_HOME", str(home))
    build_site(catalog_scans(), tmp_path / "first")
    kept = sorted((home / "cache" / "templates").iterdir())
    assert kept and all(entry.stat().st_size > 0 for entry in kept)
    build_site(catalog_scans(), tmp_path / "cached")
    for entry in kept:
        entry.write_bytes(b"j2\x00not bytecode")
    build_site(catalog_scans(), tmp_path / "corrupt")
    shutil.rmtree(home / "cache")
    (home / "cache").write_text("a file where the cache directory would go")
    build_site(catalog_scans(), tmp_path / "uncached")
    first = _pages(tmp_path / "first")
    assert len(first) > 3
    for other in ("cached", "corrupt", "uncached"):
        assert _pages(tmp_path / other) == first, other
