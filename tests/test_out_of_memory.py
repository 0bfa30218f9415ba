"""Running out of memory is said as such: one line naming the model, the memory and the fix, never
"the file may be corrupt: download it again" (what an allocation failure inside the loader looked
like) nor a traceback (inside the verification)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from superweights_cli import DROPPED, isolated_env, one_line_error

# After the imports a scan needs, cap the address space at what is mapped now plus a margin: a real
# allocation failure in the next large allocation, wherever the machine's baseline lies.
UNDER_LIMIT = '''
import resource, sys
import torch, transformers.models.llama.modeling_llama
import catalog.scanner
from catalog.cli import main
mapped = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
limit = mapped + (int(sys.argv[1]) << 20)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[2:]))
'''


def large_vocabulary(tiny, path: Path, vocab: int) -> Path:
    """The tiny Llama with a `vocab`-row embedding and head: 2 * vocab * 64 float32s to load."""
    shutil.copytree(tiny("llama").path, path)
    state = load_file(path / "model.safetensors")
    for name, tensor in list(state.items()):
        if tensor.shape[0] == 256:  # embed_tokens and lm_head: a row per token id
            state[name] = torch.zeros(vocab, tensor.shape[1])
    save_file(state, path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(config | {"vocab_size": vocab}))
    return path


@pytest.fixture(scope="module")
def large(tiny, tmp_path_factory) -> Path:
    return large_vocabulary(tiny, tmp_path_factory.mktemp("large") / "llama", 1_000_000)  # 512 MB of float32 weights


@pytest.mark.parametrize(("margin", "args"), [
    (256, ["--no-verify"]),  # the load's first large tensor
    (1536, []),  # loaded and detected; the verification's logits (4 windows x 512 positions x 1M) are not
], ids=["loading", "verifying"])
def test_a_model_too_large_for_the_host_is_said_to_be_so(large, zipf_text, tmp_path, margin, args):
    out = tmp_path / "scan.json"
    env = {k: v for k, v in os.environ.items() if k not in DROPPED} | isolated_env(tmp_path)
    run = subprocess.run([sys.executable, "-c", UNDER_LIMIT, str(margin), "scan", str(large), "--no-save", "--device", "cpu",
                          "--eval-text", str(zipf_text), "--json", str(out), *args],
                         capture_output=True, text=True, env=env, timeout=300)
    line = one_line_error(run)
    assert line.startswith(f"error: {large}: out of host memory (could not allocate "), line
    assert "more memory" in line and "corrupt" not in line
    assert not out.exists()


def test_allocation_failures_are_told_from_other_errors():
    from catalog.errors import ScanOutOfMemoryError, memory_shortage
    from workers.tasks import describe_error

    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB")
    assert memory_shortage(cuda) == "GPU"
    assert memory_shortage(MemoryError()) == "host"
    assert memory_shortage(RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x64 and 65x64)")) is None
    error = ScanOutOfMemoryError("org/model", "GPU", str(cuda))
    assert describe_error(error) == str(error)  # a survey's error column: the same line as `superweights scan`
    assert "--max-gpu-memory" in str(error) and "--gpus-per-scan" in str(error)
