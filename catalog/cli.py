"""The `superweights` command line: thin commands over library functions, one error catch in `main`.

`catalog` imports neither `db`, `workers` nor `reports` (docs/ARCHITECTURE.md). Their commands and the
catalog writer behind `scan` arrive as plugins through the `superweights.plugins` entry points:
each is a `register(cli)` function that adds commands, or a `ScanSink` via `add_scan_sink`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

import click
from rich.console import Console

from catalog.config import DEFAULT_PROMPT, ScanOptions, SpikeRule, VerifyOptions
from catalog.errors import BadOptionError, SuperweightsError, UnwritableOutputError
from catalog.options import NON_NEGATIVE, POSITIVE, Size, usage_line
from catalog.output import output_file
from catalog.result import ScanResult
from catalog.sources import ResolvedSource, resolve, with_gguf
from catalog.terminal import ablations_table, architectures_table, layers_table, stdout_console, super_weights_table

console = Console(stderr=True)
out = stdout_console()


class ScanSink(Protocol):
    """Something that keeps scan results (the catalog). Its options are added to `scan`."""

    options: list[click.Option]

    def existing(self, source: ResolvedSource, config_hash: str, params: dict[str, Any]) -> str | None:
        """A message if this exact scan is already kept and should be skipped, else None."""

    def save(self, result: ScanResult, params: dict[str, Any], started_at: datetime) -> str:
        """Keep the result of the scan started at `started_at` (UTC); return where it went."""


SCAN_SINKS: list[ScanSink] = []


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="superweight-catalog")
def cli() -> None:
    """Find, verify and catalog the super weights of LLMs."""


def scan_config_options(command):
    """The options that determine a scan's result; shared by `scan` and `survey`."""
    options = [
        click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto", show_default=True,
                     help="auto: bfloat16 on a GPU and on a CPU that multiplies it in hardware (AMX, AVX512-BF16), else float32."),
        click.option("--prompt", "prompts", multiple=True, help=f"Detection prompt, repeatable. [default: {DEFAULT_PROMPT!r}]"),
        click.option("--max-iterations", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Zero what was found and detect again, at most this many times."),
        click.option("--spike-ratio", type=POSITIVE, default=SpikeRule.ratio, show_default=True,
                     help="A layer spikes when its max |output| is this many times the median layer's."),
        click.option("--spike-min", type=NON_NEGATIVE, default=SpikeRule.min_abs, show_default=True, help="...and at least this large."),
        click.option("--verify/--no-verify", default=True, show_default=True, help="Run the causal checks (perplexity under ablations)."),
        click.option("--eval-text", type=click.Path(dir_okay=False, path_type=Path),
                     help="Text file for perplexity. [default: the 1911 Britannica article fetched by `make fixtures`]"),
        click.option("--eval-dataset", type=click.Choice(["wikitext2"]),
                     help="Evaluate on wikitext-2 test (Salesforce/wikitext; needs `datasets`, and the network the "
                          "first time), as the paper does."),
        click.option("--eval-tokens", type=click.IntRange(min=2), default=4096, show_default=True, help="Tokens of evaluation text."),
        click.option("--seq-len", type=click.IntRange(min=2), default=512, show_default=True, help="Tokens per evaluation window."),
        click.option("--confirm-ratio", type=POSITIVE, default=VerifyOptions.confirm_ratio, show_default=True,
                     help="Confirmed when the 95% interval of the perplexity ratio from zeroing the weight alone lies above this "
                          "(rejected: below; inconclusive: across)..."),
        click.option("--control-max", type=POSITIVE, default=VerifyOptions.control_max, show_default=True,
                     help="...while the interval of zeroing as many random weights stays under this ratio."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random control."),
        click.option("--quant-check", is_flag=True, help="Also measure int8/int4 round-to-nearest quantization of the down projections."),
        click.option("--quant-block", type=click.IntRange(min=1), default=VerifyOptions.quant_block, show_default=True,
                     help="Quantization block size (input channels)."),
        click.option("--early-stop/--full-eval", default=True, show_default=True,
                     help="Stop each condition once its verdict is settled (95% interval, checked after one window); "
                          "--full-eval evaluates every condition on every window, as the paper does."),
        click.option("--max-gpu-memory", type=Size(), metavar="SIZE",
                     help="Stream the model's blocks through the GPU within this budget (e.g. 4GiB): models larger than the GPU. "
                          "Llama-family safetensors only."),
        click.option("--trust-remote-code", is_flag=True, help="Allow model code from the repo itself (review it first)."),
        click.option("--allow-pickle", is_flag=True, help="Allow pickle .bin checkpoints (loaded with weights_only=True)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def options_from(params: dict[str, Any]) -> ScanOptions:
    """Build `ScanOptions` from the parsed values of `scan_config_options`."""
    checks = VerifyOptions(
        confirm_ratio=params["confirm_ratio"], control_max=params["control_max"], seed=params["seed"],
        quant_check=params["quant_check"], quant_block=params["quant_block"], early_stop=params["early_stop"],
    )
    return ScanOptions(
        device=params["device"], dtype=params["dtype"], prompts=list(params["prompts"]) or [DEFAULT_PROMPT],
        max_iterations=params["max_iterations"], rule=SpikeRule(params["spike_ratio"], params["spike_min"]),
        trust_remote_code=params["trust_remote_code"], allow_pickle=params["allow_pickle"], verify=params["verify"],
        eval_text=params["eval_text"], eval_dataset=params["eval_dataset"], eval_tokens=params["eval_tokens"],
        seq_len=params["seq_len"], checks=checks,
        max_gpu_memory=params["max_gpu_memory"],
    )


@cli.command()
@click.argument("source")
@click.option("--gguf", "gguf", metavar="FILE_OR_QUANT",
              help="Scan one GGUF file of the Hub repo SOURCE: its file name, or a quantization such as Q4_K_M "
                   "(also written org/name:Q4_K_M).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the scan JSON (schema 2) here.")
@scan_config_options
@click.pass_context
def scan(ctx: click.Context, source: str, gguf: str | None, json_path: Path | None, **params: Any) -> None:
    """Scan SOURCE for super weights: a Hub repo id (org/name[@revision]), one GGUF file of a Hub repo
    (org/name:Q4_K_M), a checkpoint directory or a .gguf file."""
    options = options_from(params)
    with output_file(json_path, "--json") if json_path else contextlib.nullcontext() as json_out:
        resolved = resolve(with_gguf(source, gguf), allow_pickle=options.allow_pickle)
        for sink in SCAN_SINKS:
            if message := sink.existing(resolved, options.config_hash(), ctx.params):
                console.print(message, soft_wrap=True)
                return
        started_at = datetime.now(UTC)
        from catalog.scanner import scan_source  # torch and transformers: only for commands that scan

        quiet_transformers()
        with console.status("scanning") as status:
            result = scan_source(resolved, options, progress=status.update)
        out.print(layers_table(result))
        out.print(super_weights_table(result))
        if result.ablations:
            out.print(ablations_table(result))
        unwritten = None
        if json_out:
            try:
                json_out.write_text(result.json_text())
                console.print(f"wrote {json_path}")
            except UnwritableOutputError as exc:  # a full disk at the end: the scan still goes to the catalog
                unwritten = exc
    for sink in SCAN_SINKS:
        console.print(sink.save(result, ctx.params, started_at), soft_wrap=True)
    if unwritten:
        raise unwritten


@cli.command()
@click.option("--type", "types", multiple=True, help="Check only this model type (repeatable). [default: every causal-LM type]")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON here.")
@click.option("--markdown", is_flag=True, help="Print the counts and the types that do not scan as Markdown (the README's list).")
def architectures(types: tuple[str, ...], json_path: Path | None, markdown: bool) -> None:
    """List the installed transformers' causal-LM types and whether each scans (and why not).

    Each type is built tiny from its default config and searched for its down projections, as a
    scan of a real checkpoint of it would be."""
    import json

    from rich.progress import Progress

    from catalog import coverage

    quiet_transformers()

    known = set(coverage.zoo.causal_lm_types())
    if unknown := sorted(set(types) - known):
        raise BadOptionError("--type", f"{', '.join(unknown)}: not a causal-LM type of the installed transformers; "
                                       "`superweights architectures` lists them.")
    chosen = list(types) or sorted(known)
    with output_file(json_path, "--json") if json_path else contextlib.nullcontext() as json_out:
        with Progress(console=console, transient=True) as bar:
            task = bar.add_task("building tiny models", total=len(chosen))
            report = coverage.coverage(chosen, lambda t: bar.update(task, advance=1, description=t))
        if json_out:
            json_out.write_text(json.dumps([c.to_dict() for c in report], indent=2) + "\n")
            console.print(f"wrote {json_path}")
    if markdown:
        click.echo(coverage.markdown(report), nl=False)
    else:
        out.print(architectures_table(report))


@cli.command("apply-restore")
@click.argument("restore_file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("checkpoint_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Write the restored checkpoint here: a new (or empty) directory, moved into place once complete.")
def apply_restore(restore_file: Path, checkpoint_dir: Path, out_dir: Path) -> None:
    """Write RESTORE_FILE's full-precision scalars (`export --keep-list restore`) into a copy of the
    (de)quantized safetensors checkpoint CHECKPOINT_DIR; the input is only read."""
    from catalog.restore import apply_restore as restore

    scalars = restore(restore_file, checkpoint_dir, out_dir)
    console.print(f"wrote {len(scalars)} full-precision scalars into {out_dir}", soft_wrap=True)


def quiet_transformers() -> None:
    """Our own status line reports the stages; transformers' notes (slow kernel fallbacks, config
    hints) are not the user's to act on. Called by the commands that scan, which import it anyway."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def add_scan_sink(sink: ScanSink) -> None:
    SCAN_SINKS.append(sink)
    scan.params.extend(sink.options)


_plugins_loaded = False


def load_plugins() -> None:
    """Register the installed plugins' commands and sinks, once per process."""
    global _plugins_loaded
    if not _plugins_loaded:
        _plugins_loaded = True
        for plugin in entry_points(group="superweights.plugins"):
            plugin.load()(cli)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI: a `SuperweightsError` becomes one line on stderr and exit status 1 (2 for usage).

    SUPERWEIGHTS_DEBUG=1 shows the traceback too.
    """
    try:
        load_plugins()
        cli.main(args=argv, prog_name="superweights", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        console.print("aborted")
        return 130
    except click.UsageError as exc:
        click.echo(f"error: {usage_line(exc)}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SuperweightsError as exc:
        if os.environ.get("SUPERWEIGHTS_DEBUG"):
            traceback.print_exc()
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
