"""Output files (`catalog.output`): atomic where the path is a regular file, written through where
it is anything else, checked before the work, and nothing of the user's removed or replaced."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from catalog.errors import BadOptionError, UnwritableOutputError
from catalog.output import output_file, prepare

from superweights_cli import isolated_env, one_line_error, run_many

SCAN = ["scan", "--no-verify", "--no-save", "--device", "cpu"]


def test_a_new_file_appears_whole_and_no_temporary_is_left(tmp_path):
    path = tmp_path / "scan.json"
    output = prepare(path, "--json")
    assert not path.exists() and output.staging.parent == tmp_path  # made up front, next to it
    output.write_text("{}\n")
    assert path.read_text() == "{}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["scan.json"]


def test_a_regular_file_is_replaced_keeping_its_mode(tmp_path):
    path = tmp_path / "scan.json"
    path.write_text("old")
    path.chmod(0o640)
    prepare(path, "--json").write_text("new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_failed_block_leaves_the_old_file_and_the_users_files(tmp_path):
    path = tmp_path / "scan.json"
    path.write_text("old")
    (tmp_path / "scan.json.tmp").write_text("the user's own file")  # the name the old writer used
    with pytest.raises(RuntimeError), output_file(path, "--json"):
        raise RuntimeError("the scan failed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.json", "scan.json.tmp"]
    assert (tmp_path / "scan.json.tmp").read_text() == "the user's own file"


def test_a_symlink_is_written_through_and_stays_a_symlink(tmp_path):
    target, link = tmp_path / "target.json", tmp_path / "link.json"
    target.write_text("old")
    link.symlink_to(target)
    prepare(link, "--json").write_text("new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_file_with_other_hard_links_is_written_in_place(tmp_path):
    path, other = tmp_path / "scan.json", tmp_path / "other-name.json"
    path.write_text("old")
    os.link(path, other)
    prepare(path, "--json").write_text("new")
    assert other.read_text() == "new" and path.stat().st_ino == other.stat().st_ino


def test_a_device_is_written_in_place_and_its_error_is_one_line():
    output = prepare(Path("/dev/full"), "--json")
    assert output.staging is None
    with pytest.raises(UnwritableOutputError, match=r"^--json: cannot write /dev/full \(No space left on device\)"):
        output.write_text("{}")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


@pytest.mark.parametrize("path,says", [
    ("/proc/superweights-scan.json", "no new file can be made in /proc"),
    ("/proc/version", "cannot write /proc/version"),  # root may write it, but not replace it
])
def test_an_unwritable_place_is_refused_before_the_work(path, says):
    with pytest.raises(UnwritableOutputError, match=says):
        prepare(Path(path), "--json")


def test_a_missing_directory_or_a_directory_is_refused(tmp_path):
    with pytest.raises(BadOptionError, match="is not a directory"):
        prepare(tmp_path / "no-such-dir" / "scan.json", "--json")
    with pytest.raises(BadOptionError, match="is a directory; give a file name"):
        prepare(tmp_path, "--json")


@pytest.fixture(scope="module")
def json_runs(tiny, tmp_path_factory):
    """`scan --json` into /dev/stdout and /dev/full, symlinks to them, and /proc."""
    root = tmp_path_factory.mktemp("json")
    (root / "stdout.json").symlink_to("/proc/self/fd/1")  # what /dev/stdout is
    (root / "full.json").symlink_to("/dev/full")
    model = str(tiny("llama").path)
    commands = {
        "stdout": [*SCAN, model, "--json", str(root / "stdout.json")],
        "full": [*SCAN, model, "--json", str(root / "full.json")],
        "dev_stdout": [*SCAN, model, "--json", "/dev/stdout"],
        "dev_full": [*SCAN, model, "--json", "/dev/full"],
        "proc": [*SCAN, model, "--json", "/proc/superweights-scan.json"],
    }
    return run_many(commands, isolated_env(tmp_path_factory.mktemp("env"))), root


@pytest.mark.parametrize("run", ["stdout", "dev_stdout"])
def test_json_to_stdout_reaches_stdout(json_runs, tiny, run):
    runs, root = json_runs
    assert runs[run].returncode == 0, runs[run].stderr
    document = json.loads(runs[run].stdout[runs[run].stdout.index("{\n"):])  # after the tables
    assert document["model"]["source"] == str(tiny("llama").path)
    assert (root / "stdout.json").is_symlink() and Path("/dev/stdout").is_symlink()


@pytest.mark.parametrize("run", ["full", "dev_full"])
def test_json_to_a_full_device_ends_in_one_error_line_and_the_device_stays(json_runs, run):
    runs, root = json_runs
    failed = runs[run]
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    *before, last = failed.stderr.strip().splitlines()
    assert last.startswith("error: --json: cannot write") and "No space left on device" in last
    assert before == ["not saved (--no-save)"]  # the catalog step still ran and said what it did
    assert (root / "full.json").is_symlink() and stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_json_into_proc_fails_before_scanning(json_runs):
    runs, _ = json_runs
    assert "no new file can be made in /proc" in one_line_error(runs["proc"])
    assert runs["proc"].stdout == ""  # the scan's tables never printed: it did not run
