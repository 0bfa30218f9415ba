"""`superweights report` over a real SQLite catalog: what a user runs after scanning."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog.cli import main
from db.repository import Catalog

from report_samples import catalog_scans


@pytest.fixture
def catalog_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    catalog = Catalog(url)
    for scan in reversed(catalog_scans()):
        times = dict(started_at=scan.started_at, finished_at=scan.finished_at)
        if scan.result is not None:
            catalog.save(scan.result, **times)
        else:
            catalog.record_failure(source=scan.source, repo_id=scan.repo_id, revision=scan.revision,
                                   config_hash=scan.config_hash, config={}, error=scan.error, **times)
    return url


def test_report_builds_the_site_of_the_catalog(catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "site"
    assert main(["report", "--out", str(out), "--db", catalog_url]) == 0
    printed = capsys.readouterr().out
    assert "wrote 7 pages (3 models, 2 families, 4 scans)" in printed
    assert printed.strip().endswith(f"file://{(out / 'index.html').resolve()}")
    model = (out / "models" / "meta-llama-llama-2-7b-chat-hf.html").read_text()
    assert "×812" in model and "control A: random" in model
    assert "org/missing: not found. Check the repo id." in (out / "index.html").read_text()


def test_report_of_a_missing_catalog_is_one_line_and_creates_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    missing = tmp_path / "missing.db"
    assert main(["report", "--out", str(tmp_path / "site"), "--db", f"sqlite:///{missing}"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error:") and len(error.strip().splitlines()) == 1
    assert not missing.exists() and not (tmp_path / "site").exists()


def test_report_will_not_overwrite_other_files(catalog_url: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    other = tmp_path / "docs"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["report", "--out", str(other), "--db", catalog_url]) == 1
    assert "not a report built by `superweights report`" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "mine"


def test_report_leaves_a_sibling_it_did_not_create(catalog_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mkdir -p .site-old/photos; superweights report --out site`, twice: the photos stay."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".site-old" / "photos").mkdir(parents=True)
    (tmp_path / ".site-old" / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    for _ in range(2):  # a first build, then a rebuild that moves the old site aside
        assert main(["report", "--out", "site", "--db", catalog_url]) == 0
    assert (tmp_path / ".site-old" / "photos" / "cat.jpg").read_bytes() == b"\xff\xd8"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name not in ("env", "catalog.db")) == [".site-old", "site"]
