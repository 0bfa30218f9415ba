"""The faster verification paths against plain per-condition evaluation.

Prefix sharing must give the plain perplexities up to floating-point rounding, on every tiny
architecture of the registry and on the real SmolLM2; early stopping (the default) must keep each
verdict of full evaluation and report an interval that holds the full-evaluation ratio.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from catalog.causal import Verification, VerificationRun, verify
from catalog.cli import options_from, scan
from catalog.conditions import RESTORE_SA, ActivationRecorder, label, plan
from catalog.config import DEFAULT_PROMPT, SpikeRule, VerifyOptions
from catalog.detection import detect
from catalog.evaltext import load_eval_text
from catalog.hooks import zeroed
from catalog.loading import LoadedModel, in_memory, load
from catalog.patches import hooked
from catalog.perplexity import CPU_ROWS, Evaluation, evaluate, frequent_tokens, paired_interval, token_losses
from catalog.prefix import PrefixCache
from catalog.sources import resolve

from tiny import KINDS, write_zipf_text

FULL = VerifyOptions(early_stop=False)  # --full-eval: every condition on every window
PLAIN = VerifyOptions(share_prefix=False, early_stop=False)  # and through the whole model


@dataclasses.dataclass
class Setup:
    loaded: LoadedModel
    sites: list
    weights: list
    windows: torch.Tensor

    def verify(self, options: VerifyOptions) -> Verification:
        return verify(self.loaded.model, self.windows, self.sites, [dataclasses.replace(w) for w in self.weights], options)


def setup(spec: str, text_path, tokens: int, seq_len: int, iterations: int = 3) -> Setup:
    return setup_loaded(load(resolve(spec), device="cpu", dtype="float32"), text_path, tokens, seq_len, iterations)


def setup_loaded(loaded: LoadedModel, text_path, tokens: int, seq_len: int, iterations: int = 3) -> Setup:
    sites = loaded.architecture.sites
    ids = loaded.tokenizer(DEFAULT_PROMPT, return_tensors="pt").input_ids
    found = detect(loaded.model, [ids], sites, SpikeRule(), iterations)
    windows = load_eval_text(text_path).windows(loaded.tokenizer, tokens, seq_len)
    return Setup(loaded, sites, found.super_weights, windows)


def assert_same_rows(fast: Verification, plain: Verification, rel: float) -> None:
    assert [r.name for r in fast.ablations] == [r.name for r in plain.ablations]
    for f, p in zip(fast.ablations, plain.ablations):
        assert f.tokens == p.tokens, f.name
        assert f.ppl == pytest.approx(p.ppl, rel=rel), f.name
        assert f.ratio == pytest.approx(p.ratio, rel=rel), f.name
    assert [w.verdict for w in fast.super_weights] == [w.verdict for w in plain.super_weights]


def assert_intervals_hold(fast: Verification, plain: Verification) -> None:
    """Every early-stopped row's interval holds the plain ratio; rows that ran to the end match it."""
    plain_ratio = {r.name: r.ratio for r in plain.ablations}
    for name, iv in fast.summary["intervals"].items():
        if iv["stopped_early"]:
            assert iv["ratio_low"] <= plain_ratio[name] <= iv["ratio_high"], (name, iv, plain_ratio[name])
        else:
            assert iv["ratio"] == pytest.approx(plain_ratio[name], rel=1e-4), name


def assert_rows_are_plain_on_their_windows(s: Setup, early: Verification) -> None:
    """Every early-stopped row is the plain evaluation of its condition on the windows it covered
    (its first window from the shared batch, the rest, with the prefix shared, on its own)."""
    model, stopwords = s.loaded.model, frequent_tokens(s.windows)
    recorder = ActivationRecorder(s.sites, s.weights)
    conditions = {c.name: c for c in plan(s.sites, s.weights, VerifyOptions(), recorder)}
    with recorder.record():
        evaluate(model, s.windows, stopwords)
    per_window = s.windows.shape[1] - 1
    for row in early.ablations[1:]:
        with conditions[row.name].in_pass():
            plain = evaluate(model, s.windows[: row.tokens // per_window], stopwords)
        assert row.tokens == plain.tokens and row.ppl == pytest.approx(plain.ppl, rel=1e-4), row.name


def assert_full_rows_are_ppl_ratios(result: Verification) -> None:
    """A row that ran every window reports exactly its perplexity over the baseline's."""
    base = result.ablations[0]
    full = [r for r in result.ablations if r.tokens == base.tokens]
    assert len(full) > 1
    for row in full:
        assert row.ratio == pytest.approx(row.ppl / base.ppl, rel=1e-12), row.name


@pytest.fixture(scope="module")
def zipf(tmp_path_factory):
    return write_zipf_text(tmp_path_factory.mktemp("text") / "zipf.txt", words=2200)


@pytest.fixture(scope="module")
def llama(tiny, zipf) -> Setup:
    """The planted tiny Llama over 16 windows of 128 tokens."""
    return setup(str(tiny("llama", effect=True, inert=True).path), zipf, tokens=2048, seq_len=128)


@pytest.fixture(scope="module")
def llama_runs(llama) -> tuple[Verification, Verification]:
    """(full evaluation without prefix sharing, the default: early stopping with it)."""
    return llama.verify(PLAIN), llama.verify(VerifyOptions())


@pytest.mark.parametrize("kind", [*KINDS, "rwkv"])  # RWKV's blocks return a tuple of their hidden states and Nones
def test_prefix_sharing_matches_plain_on_tiny_models(tiny, zipf, kind):
    planted = tiny(kind, effect=True, inert=True)
    s = setup(str(planted.path), zipf, tokens=1024, seq_len=128)
    assert len(s.weights) >= 2
    shared, plain = s.verify(FULL), s.verify(PLAIN)
    assert_same_rows(shared, plain, rel=1e-5)
    starts = {name: iv["start_layer"] for name, iv in shared.summary["intervals"].items()}
    assert starts[f"zero L{planted.layer}" + (f" expert {planted.expert}" if planted.expert is not None else "")
                  + f" [{planted.row}, {planted.col}]"] == planted.layer > 0  # the prefix was really skipped


def tied_llama(planted, zipf, both: bool = False) -> Setup:
    """The planted tiny Llama with layer 1's down projection tied to layer 0's, its super weight
    copied into that one: Zamba's shared block in miniature. Layer 0's call spikes at the inert
    plant, layer 1's at the super weight, both in the one weight; `both`: layer 0's MLP reads the
    super weight's source too, so both calls spike at it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(planted.path, dtype=torch.float32)
    first, second = model.model.layers[0].mlp, model.model.layers[1].mlp
    with torch.no_grad():
        first.down_proj.weight[planted.tensor_index] = planted.value
        if both:
            for name in ("gate_proj", "up_proj"):
                getattr(first, name).weight[planted.col] = getattr(second, name).weight[planted.col]
    second.down_proj.weight = first.down_proj.weight
    return setup_loaded(in_memory(model, AutoTokenizer.from_pretrained(planted.path), "shared"), zipf, tokens=2048, seq_len=128)


@pytest.fixture(scope="module")
def shared(tiny, zipf) -> Setup:
    return tied_llama(tiny("llama", effect=True, inert=True), zipf)


def test_a_weight_shared_by_blocks_is_found_where_it_spikes_and_changed_everywhere(shared, tiny):
    """Found at the layer whose call spikes (each scalar once); zeroed, it changes every block that
    shares it, from the first on: the batched first windows, the shared prefix and +SA (restored
    where the super activation arose, layer 1) give the plain evaluation's rows and verdicts."""
    planted = tiny("llama", effect=True, inert=True)
    param = "model.layers.0.mlp.down_proj.weight"
    assert shared.sites.shared == {param: [0, 1]}
    assert sorted((w.layer, w.param, tuple(w.tensor_index)) for w in shared.weights) == [
        (0, param, planted.inert.tensor_index), (1, param, planted.tensor_index)]
    plain, fast = shared.verify(PLAIN), shared.verify(VerifyOptions())
    assert [(w.layer, w.verdict) for w in fast.super_weights] == [(w.layer, w.verdict) for w in plain.super_weights]
    assert {w.layer: w.verdict for w in fast.super_weights} == {0: "rejected", 1: "confirmed"}
    assert_rows_are_plain_on_their_windows(shared, fast)
    assert_intervals_hold(fast, plain)
    starts = {name: iv["start_layer"] for name, iv in fast.summary["intervals"].items()}
    assert starts[label(max(shared.weights, key=lambda w: w.layer))] == 0  # found at layer 1, it changes block 0 too
    assert starts[RESTORE_SA] == starts["zero all candidates"] == starts["control A: random"] == 0
    restored = next(r for r in plain.ablations if r.name == RESTORE_SA)
    assert restored.ratio == pytest.approx(1, abs=0.05)


def test_a_scalar_that_spikes_at_every_block_sharing_it_is_one_candidate(tiny, zipf):
    planted = tiny("llama", effect=True, inert=True)
    found = tied_llama(planted, zipf, both=True).weights
    assert [(w.layer, w.iteration) for w in found if tuple(w.tensor_index) == planted.tensor_index] == [(0, 1)]
    assert len({(w.param, tuple(w.tensor_index)) for w in found}) == len(found)


def zoo_scans(model_type: str, path, zipf, *checks: VerifyOptions):
    """A tiny random `model_type` of the zoo saved at `path`, and its scan under each of `checks`,
    every layer's spike a candidate (random weights have no super weight)."""
    from catalog import zoo
    from catalog.config import ScanOptions
    from catalog.scanner import scan as scan_path

    from tiny import build_tokenizer

    model = zoo.build(model_type)
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    every = SpikeRule(ratio=1.0, min_abs=0.0)
    return model, [scan_path(str(path), ScanOptions(device="cpu", dtype="float32", eval_text=zipf, eval_tokens=512, seq_len=64,
                                                    checks=options, rule=every)) for options in checks]


def test_blocks_returning_other_shapes_are_evaluated_plainly(tmp_path, zipf):
    """Gemma 3n's blocks return their AltUp streams first, (streams, windows, seq, hidden): its
    prefix is not replayed (that handed the model mis-shaped hidden states, a RuntimeError), and
    early stopping still holds the plain ratios. Its config names an intermediate size per layer
    (the scan failed on it: int() of a list)."""
    model, (fast, plain) = zoo_scans("gemma3n_text", tmp_path, zipf, VerifyOptions(), PLAIN)
    assert fast.summary["evaluation"]["prefix_shared"] is False and len(fast.super_weights) > 1
    assert_intervals_hold(fast, plain)
    assert fast.model.intermediate_size == model.model.layers[0].mlp.down_proj.in_features


@pytest.mark.parametrize("model_type,shared", [("gpt_neo", True), ("zaya", False)])
def test_blocks_returning_more_than_their_hidden_states(tmp_path, zipf, model_type, shared):
    """GPT-Neo's blocks return their attention weights too, which the model keeps only when asked:
    the short-circuited blocks return Nones there, and the prefix is shared. Zaya's return what the
    next block reads: the check finds the logits changed, and it is evaluated plainly. Either way
    every row is the plain evaluation's."""
    _, (full, plain) = zoo_scans(model_type, tmp_path, zipf, FULL, PLAIN)
    assert full.summary["evaluation"]["prefix_shared"] is shared
    assert shared == any(iv["start_layer"] > 0 for iv in full.summary["intervals"].values())
    assert [(r.name, r.tokens) for r in full.ablations] == [(r.name, r.tokens) for r in plain.ablations]
    for ours, theirs in zip(full.ablations, plain.ablations):
        assert ours.ppl == pytest.approx(theirs.ppl, rel=1e-5), ours.name


def test_early_stopped_rows_are_plain_evaluations_of_their_windows(llama, llama_runs):
    _, fast = llama_runs
    assert_rows_are_plain_on_their_windows(llama, fast)


def assert_goes_on_exactly(s: Setup, plain: Verification) -> None:
    """With the confirm ratio at the super weight's own ratio, its row (first layer > 0) cannot
    settle on the batched first window: it goes on alone, replaying the shared prefix of the
    windows after the first, and must still be the plain evaluation of its windows. (The tiny
    models' logits barely depend on context, so this needs a real model to fail when the replay
    hands a window another window's hidden states.)"""
    confirmed = next(w for w in plain.super_weights if w.verdict == "confirmed")
    going_on = s.verify(VerifyOptions(confirm_ratio=confirmed.ppl_ratio))
    interval = going_on.summary["intervals"][label(confirmed)]
    assert interval["windows"] > 1 and interval["start_layer"] > 0
    assert_rows_are_plain_on_their_windows(s, going_on)


def test_early_stop_keeps_verdicts_and_intervals_on_tiny_llama(llama_runs):
    plain, fast = llama_runs
    assert fast.summary["evaluation"]["early_stop"] and not plain.summary["evaluation"]["early_stop"]
    assert [w.verdict for w in fast.super_weights] == [w.verdict for w in plain.super_weights] == ["rejected", "confirmed"]
    assert_intervals_hold(fast, plain)
    assert sum(r.tokens for r in fast.ablations) < sum(r.tokens for r in plain.ablations)


def test_settled_conditions_stop_after_one_window(llama_runs):
    """Control A (no effect) and "zero all" (x8, far above its threshold 2) are settled by the
    four segments of the first window: they cost a sixteenth of a full evaluation."""
    plain, fast = llama_runs
    rows, intervals = {r.name: r for r in fast.ablations}, fast.summary["intervals"]
    for name in ("control A: random", "zero all candidates"):
        assert (intervals[name]["windows"], intervals[name]["stopped_early"]) == (1, True), name
        assert (rows[name].tokens, rows[name].windows) == (127, 1)
    full = {r.name: r.ratio for r in plain.ablations}
    assert rows["zero all candidates"].ratio > 2 and full["zero all candidates"] > 2


def test_full_evaluation_ratios_are_ppl_ratios(llama_runs):
    plain, _ = llama_runs
    assert_full_rows_are_ppl_ratios(plain)
    assert not any(iv["stopped_early"] for iv in plain.summary["intervals"].values())


def test_checks_come_after_one_window_then_after_doubling_batches(llama):
    model, windows = llama.loaded.model, llama.windows
    stopwords = frequent_tokens(windows)
    checked: list[int] = []
    everything = evaluate(model, windows, stopwords, batch_size=4, settled=lambda ev: checked.append(ev.windows) or False)
    assert checked == [1, 2, 4, 8, 12, 16]
    assert everything.ppl == pytest.approx(evaluate(model, windows, stopwords, batch_size=4).ppl, rel=1e-6)
    two = evaluate(model, windows, stopwords, batch_size=4, settled=lambda ev: ev.windows >= 2)
    assert (two.windows, two.tokens, len(two.nll)) == (2, 2 * 127, 2 * 4)


def test_early_stop_is_the_default_and_full_eval_keeps_the_old_config():
    default = VerifyOptions().to_config()
    assert (default["early_stop"], default["stop_precision"], default["parts"]) == (True, 0.05, 4)
    assert "share_prefix" not in default
    # the plain config as it always was: full-evaluation scans keep their catalog key
    assert set(FULL.to_config()) == {"confirm_ratio", "control_max", "outlier_fraction", "seed", "quant_check",
                                      "quant_block", "clip_quantile", "batch_size"}


def test_cli_stops_early_unless_told_full_eval():
    def checks(*args: str) -> VerifyOptions:
        return options_from(scan.make_context("scan", ["SOURCE", *args]).params).checks
    assert checks().early_stop and checks("--early-stop").early_stop
    assert checks("--full-eval").to_config() == FULL.to_config()


def test_zeroed_zeroes_repeats_and_restores_exactly():
    a, b = torch.randn(6, 5), torch.randn(2, 3, 4)
    before = a.clone(), b.clone()
    entries = [(a, (1, 2)), (b, (1, 2, 3)), (a, (1, 2)), (a, (5, 0))]
    with zeroed(entries):
        assert a[1, 2] == a[5, 0] == b[1, 2, 3] == 0
        assert torch.count_nonzero(a == 0) + torch.count_nonzero(b == 0) == 3
    assert torch.equal(a, before[0]) and torch.equal(b, before[1])


def test_paired_interval_is_the_exact_ppl_ratio_of_unequal_segments():
    """One window of 511 predicted tokens in segments of 128, 128, 128, 127: the ratio weighs them
    by tokens (the perplexity ratio itself), not segment by segment."""
    counts = [128, 128, 128, 127]
    base = Evaluation([2.0, 2.5, 3.0, 3.5], counts, [0.1])
    cond = Evaluation([2.1, 2.4, 3.5, 9.0], counts, [0.1])
    ppl = lambda nll: math.exp(sum(n * c for n, c in zip(nll, counts)) / 511)  # noqa: E731
    iv = paired_interval(cond, base)
    assert iv.ratio == pytest.approx(ppl(cond.nll) / ppl(base.nll), rel=1e-12)
    assert iv.ratio != pytest.approx(math.exp(sum(a - b for a, b in zip(cond.nll, base.nll)) / 4), rel=1e-6)
    assert iv.low < iv.ratio < iv.high and iv.windows == 1


def assert_rows_without_threshold_go_on_exactly(s: Setup, plain: Verification) -> None:
    """With a stopping precision no interval reaches, the rows without a threshold (control B, +SA)
    go on from their batched first window over every window, and must equal the plain rows: +SA
    writes back the recordings of the windows it replays, not those of the first ones (it read
    36.363 against 36.463 on SmolLM2 when it wrote window 0's back into windows 1 to 7)."""
    going_on = {r.name: r for r in s.verify(VerifyOptions(stop_precision=1e-9)).ablations}
    for row in plain.ablations:
        if row.name in ("control B: outliers", RESTORE_SA):
            assert going_on[row.name].tokens == row.tokens, row.name
            assert going_on[row.name].ppl == pytest.approx(row.ppl, rel=1e-4), row.name


@pytest.mark.integration
def test_fast_paths_on_smollm2(smollm2_gguf, eval_text):
    """Layer 11 W[507, 1229] is confirmed whichever path runs; prefix sharing gives the plain figures
    (its late candidates of layers 28-29 then run only the last blocks)."""
    s = setup(str(smollm2_gguf), eval_text, tokens=512, seq_len=64, iterations=1)
    plain, shared = s.verify(PLAIN), s.verify(FULL)
    early = s.verify(VerifyOptions())
    assert_same_rows(shared, plain, rel=1e-4)
    assert_intervals_hold(early, plain)
    assert_rows_are_plain_on_their_windows(s, early)
    assert_goes_on_exactly(s, plain)
    assert_rows_without_threshold_go_on_exactly(s, plain)
    assert_full_rows_are_ppl_ratios(plain)
    assert sum(r.tokens for r in early.ablations) < sum(r.tokens for r in plain.ablations)
    for result in (plain, shared, early):
        confirmed = {(w.layer, w.row, w.col) for w in result.super_weights if w.verdict == "confirmed"}
        assert (11, 507, 1229) in confirmed
    assert [w.verdict for w in early.super_weights] == [w.verdict for w in plain.super_weights]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # nn.Linear, and Conv1D (stored [in, out], with a bias)
def test_per_sample_zeroing_equals_zeroing_the_weights(tiny, zipf, kind):
    """A batch whose samples each zero their own scalars gives each sample the logits of running
    it alone with those scalars zeroed in place, and leaves the weights untouched."""
    from catalog.controls import outlier_control, random_control
    from catalog.hooks import zeroed_per_sample

    s = setup(str(tiny(kind, effect=True, inert=True).path), zipf, tokens=256, seq_len=64)
    model, window = s.loaded.model, s.windows[:1]
    per_sample = [s.sites.scalars(s.weights[:1]), s.sites.scalars(s.weights),
                  random_control(s.sites, s.weights, 0), outlier_control(s.sites, s.weights, 40), []]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        with zeroed_per_sample(s.sites, per_sample):
            batched = model(input_ids=window.expand(len(per_sample), -1)).logits
        for sample, entries in enumerate(per_sample):
            with zeroed(entries):
                alone = model(input_ids=window).logits[0]
            assert torch.allclose(batched[sample], alone, rtol=1e-4, atol=1e-4), sample
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_first_windows_share_one_batch(llama_runs):
    """Every condition that zeroes scalars (+SA also writing the super activation back, to its own
    sample) gets its first window from one batched pass, and early stopping still holds (above)."""
    _, fast = llama_runs
    assert fast.summary["evaluation"]["first_window_batch"] == len(fast.ablations) - 1  # all but the baseline


def test_each_first_window_in_the_batch_equals_its_own_pass(llama):
    """The shared batch gives every condition (+SA with its write-back included) the first-window
    losses of evaluating that condition alone, in place."""
    model, window, stopwords = llama.loaded.model, llama.windows[:1], frequent_tokens(llama.windows)
    recorder = ActivationRecorder(llama.sites, llama.weights)
    conditions = plan(llama.sites, llama.weights, VerifyOptions(), recorder)
    with recorder.record():
        evaluate(model, window, stopwords)
    first = VerificationRun(model, llama.windows, stopwords, VerifyOptions()).first_windows(conditions, llama.sites)
    assert set(first) == {c.name for c in conditions}
    for condition in conditions:
        with condition.in_pass():
            alone = evaluate(model, window, stopwords)
        assert first[condition.name].nll == pytest.approx(alone.nll, rel=1e-5), condition.name
        assert first[condition.name].mass == pytest.approx(alone.mass, rel=1e-4), condition.name


def test_each_first_window_sample_runs_only_the_blocks_from_its_own_start_layer(llama):
    """With the prefix shared, each condition's sample of the batched first windows starts at its
    own start layer (from block L-1's recorded output) and gets the losses of evaluating it alone:
    a sample started too low runs blocks its condition does not change (the count fails), one
    started too high or from another layer's recording gets other losses."""
    model, window, stopwords = llama.loaded.model, llama.windows[:1], frequent_tokens(llama.windows)
    recorder = ActivationRecorder(llama.sites, llama.weights)
    conditions = plan(llama.sites, llama.weights, VerifyOptions(), recorder)
    prefix = PrefixCache.build(model, llama.sites, {c.first_layer for c in conditions})
    run = VerificationRun(model, llama.windows, stopwords, VerifyOptions(), prefix)
    with recorder.record():
        run.baseline()
    starts = [run.start_layer(c) for c in conditions]
    assert len(set(starts)) > 1 and max(starts) > 0  # samples of different start layers, one past the first block
    samples = [0] * len(prefix.blocks)  # samples each block's down projection computed

    def counting(layer):
        def hook(module, args):
            samples[layer] += args[0].shape[0]
        return hook
    with hooked(((site.module, counting(site.layer)) for site in llama.sites), pre=True):
        first = run.first_windows(conditions, llama.sites)
    assert samples == [sum(start <= layer for start in starts) for layer in range(len(prefix.blocks))]
    for condition in conditions:
        with condition.in_pass():
            alone = evaluate(model, window, stopwords)
        assert first[condition.name].nll == pytest.approx(alone.nll, rel=1e-5), condition.name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_losses_in_pieces_are_the_whole_windows_bits(dtype):
    """A CPU takes the log-probabilities `CPU_ROWS` positions at a time: each position's are its own,
    so every NLL and stop-word probability equals the whole window's, bit for bit."""
    generator = torch.Generator().manual_seed(0)
    positions = 3 * CPU_ROWS + 5  # the last piece is short
    logits = (torch.randn(positions, 5000, generator=generator) * 4).to(dtype)
    targets = torch.randint(0, 5000, (positions,), generator=generator)
    stopwords = torch.tensor([0, 7, 4999])
    nll, mass = token_losses(logits, targets, stopwords)
    logp = logits.float().log_softmax(-1)
    assert torch.equal(nll, -logp.gather(-1, targets[:, None]).squeeze(-1))
    assert torch.equal(mass, logp[:, stopwords].exp().sum(-1))
    assert torch.equal(mass.mean(), logp[:, stopwords].exp().sum(-1).mean())
