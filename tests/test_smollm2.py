"""The real model: SmolLM2-135M-Instruct, 4-bit GGUF (`make fixtures`), scanned once by the CLI.

What a correct scanner must find there, measured layer by layer on this file: on the paper's
prompt, layer 11's down projection gets an input of ~3000 at channel 1229 on token 0 (the
super activation's source) and puts out ~24000 at channel 507, ~700x the median layer; W[507, 1229]
of that layer makes most of it. Layers 28 and 29 spike on channel 507 too: they cancel the super
activation late in the network, as the paper describes for the residual stream. No other layer
comes near (the next, layer 9, reaches ~500).
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess

import pytest

from catalog.result import ScanResult

from superweights_cli import isolated_env, run_cli

pytestmark = pytest.mark.integration

SUPER = "model.layers.11.mlp.down_proj.weight"


@pytest.fixture(scope="module")
def scanned(smollm2_gguf, tmp_path_factory) -> tuple[ScanResult, str]:
    """(the scan JSON, the tables printed) of one `superweights scan` of the GGUF."""
    path = tmp_path_factory.mktemp("smollm2") / "scan.json"
    env = isolated_env(tmp_path_factory.mktemp("env"))
    run = run_cli("scan", str(smollm2_gguf), "--no-verify", "--no-save", "--device", "cpu", "--json", str(path), env=env)
    assert run.returncode == 0, run.stderr
    return ScanResult.from_json(path), run.stdout


def test_the_model_is_read_from_the_gguf(scanned, smollm2_gguf):
    """Name, organization, size, license and quantization (`general.file_type` 3) as the file declares them."""
    result, _ = scanned
    model = result.model
    assert (model.model_type, model.family, model.format, model.quantization) == ("llama", "SmolLM2", "gguf", "Q4_1")
    assert (model.num_layers, model.hidden_size, model.intermediate_size) == (30, 576, 1536)
    assert (model.name, model.named_from, model.organization, model.size_label, model.license) == (
        "Smollm2 135M 8k Lc100K Mix1 Ep2", "gguf metadata", "HuggingFaceTB", "135M", "apache-2.0")
    assert (model.source, model.repo_id) == (str(smollm2_gguf.resolve()), None)
    assert model.fingerprint == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # sha256sum of the file
    assert model.revision == "sha256:b179c9523d0e"


def test_layer_11_carries_the_super_activation(scanned):
    result, _ = scanned
    layer = result.layers[11]
    assert (layer.in_channel, layer.out_channel, layer.token) == (1229, 507, 0)
    assert layer.in_max == pytest.approx(3000, rel=0.1) and layer.out_max == pytest.approx(24000, rel=0.1)
    assert layer.out_max > 500 * result.summary["reference_out_max"]


def test_spikes_are_layer_11_and_the_two_late_layers_that_cancel_it(scanned):
    result, _ = scanned
    assert [(row.layer, row.out_channel) for row in result.layers if row.spike] == [(11, 507), (28, 507), (29, 507)]
    quiet = max(row.out_max for row in result.layers if not row.spike)
    assert quiet < result.layers[11].out_max / 40


def test_the_first_candidate_is_w_507_1229_of_layer_11(scanned, smollm2_gguf):
    """Its value is the file's own blk.11.ffn_down.weight[507, 1229], dequantized independently."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    result, _ = scanned
    first = result.super_weights[0]
    assert (first.layer, first.param, first.row, first.col, first.tensor_index, first.iteration, first.token) == (
        11, SUPER, 507, 1229, [507, 1229], 1, 0)
    assert first.share > 0.5
    rounding = 1e-6 if result.model.dtype == "float32" else 2 ** -8  # share is the model's W x / y; value the file's W
    assert first.share == pytest.approx(first.value * first.input_activation / first.output_activation, rel=rounding)
    tensor = next(t for t in GGUFReader(smollm2_gguf).tensors if t.name == "blk.11.ffn_down.weight")
    stored = dequantize(tensor.data, tensor.tensor_type)  # (576 out, 1536 in)
    assert first.value == pytest.approx(float(stored[507, 1229]), rel=1e-6)
    assert [w.layer for w in result.super_weights if w.iteration == 1] == [11, 28, 29]


def test_the_printed_tables_mark_the_spikes_and_the_super_weight(scanned):
    _, printed = scanned
    spikes = [int(line.split("│")[1]) for line in printed.splitlines() if "◀ spike" in line]
    assert spikes == [11, 28, 29]
    row = next(line for line in printed.splitlines() if SUPER in line)
    assert re.search(r"│\s+11\s+│", row) and "[507, 1229]" in row and "untested" in row  # --no-verify


def test_the_super_weights_table_headers_name_the_paper_s_coordinates(scanned):
    _, printed = scanned
    assert "[row, col]" in printed and "x[col]" in printed and "y[row]" in printed


@pytest.mark.skipif(shutil.which("lscpu") is None or platform.machine() != "x86_64",
                    reason="needs lscpu (util-linux); on x86 it names the processor as /proc/cpuinfo does")
def test_the_scan_records_the_processor_it_ran_on(scanned):
    """Its model name, as lscpu reads it, not `platform.processor()`'s empty string on Linux."""
    result, _ = scanned
    listed = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}, check=True).stdout
    model = next(line.split(":", 1)[1].strip() for line in listed.splitlines() if line.startswith("Model name:"))
    assert result.environment["device"] == f"cpu: {model}"
