"""`analyze eval OUT.jsonl` scores a batch output; `analyze eval nested-kv` runs the MemGPT nested KV task."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import click

from pipeline.cli import context_window_option
from pipeline.config import Settings
from pipeline.local_llm import llm_endpoint, llm_options

NESTED_KV = "nested-kv"


def _levels(_: click.Context, __: click.Parameter, value: str) -> tuple[int, ...]:
    try:
        if "-" in value:
            lo, hi = (int(v) for v in value.split("-", 1))
            levels = tuple(range(lo, hi + 1))
        else:
            levels = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("use a range like 0-4 or a list like 0,2,4") from None
    if not levels or min(levels) < 0:
        raise click.BadParameter("levels must be 0 or more, e.g. 0-4")
    return levels


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Exit codes: 0 done; 2 bad usage or input (no such file, no records, no endpoint for "
                      "nested-kv); 130 nested-kv interrupted with Ctrl-C.")
@click.argument("target")
@click.option("--baseline", is_flag=True, help="nested-kv: a retriever-reader (top hits in one prompt, one call).")
@click.option("--levels", default="0-4", show_default=True, callback=_levels, help="nested-kv: nesting levels.")
@click.option("--pairs", type=click.IntRange(1), default=140, show_default=True, help="nested-kv: UUID pairs.")
@click.option("--per-level", type=click.IntRange(1), default=5, show_default=True,
              help="nested-kv: questions per level.")
@click.option("--seed", type=int, default=0, show_default=True, help="nested-kv: generation seed.")
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="nested-kv: output JSONL (default outputs/nested-kv[-baseline].jsonl).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 64), default=4, show_default=True,
              help="nested-kv: questions answered at once.")
@click.option("--model", default=None, help="nested-kv: model name (env ANALYZE_MODEL).")
@click.option("--tool-mode", type=click.Choice(["tools", "json"]), default=None, help="nested-kv: function calling.")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="nested-kv: agent steps per question.")
@context_window_option
@llm_options
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show progress bars.")
def command(target: str, baseline: bool, levels: tuple[int, ...], pairs: int, per_level: int, seed: int,
            out: Path | None, concurrency: int, model: str | None, tool_mode: str | None, max_steps: int | None,
            context_window: int | None, llm: str, local_model: str | None, progress: bool) -> None:
    """Score a batch output, or run the nested key-value task. TARGET is OUT.jsonl or the word nested-kv.

    \b
    analyze eval outputs/demo.jsonl
      Scores each record against its gold fields (from the question file):
      normalized exact match, best_subspan_em (a gold answer inside the
      answer, as in "Lost in the Middle"), correct abstention on questions
      marked unanswerable, citation page recall where gold pages are given.
      Prints a table by category and writes outputs/demo.eval.md and
      outputs/demo.eval.png (accuracy by category). Other options are ignored.

    \b
    analyze eval nested-kv [--baseline] [--levels 0-4] [--pairs 140]
      The MemGPT nested key-value task against the configured endpoint
      (OPENAI_BASE_URL, or a local model per --llm): UUID pairs in a fresh
      temporary archive, questions whose value may itself be a key to look
      up (levels 0-4), answered by the agent or, with --baseline, by a
      retriever-reader with the same model. Reports accuracy and steps per level; writes
      outputs/nested-kv[-baseline].jsonl and its .eval.md/.eval.png.
    """
    if target == NESTED_KV:
        settings = Settings.from_env(model=model, tool_mode=tool_mode, max_steps=max_steps,
                                     context_window=context_window)
        try:
            with llm_endpoint(settings, llm=llm, local_model=local_model,
                              echo=lambda m: click.echo(m, err=True)) as settings:
                _nested_kv(settings, baseline=baseline, levels=levels, pairs=pairs, per_level=per_level, seed=seed,
                           out=out, concurrency=concurrency, progress=progress)
        except click.ClickException as exc:  # no endpoint and no local model
            _fail(f"nested-kv needs an LLM endpoint: {exc.message}")
    else:
        _score(Path(target))


def _score(path: Path) -> None:
    from pipeline.batch import BatchInputError, load_output
    from pipeline.evaluate import evaluate, format_table, write_report

    if not path.is_file():
        _fail(f"{path}: no such file (TARGET is a batch output .jsonl or the word {NESTED_KV})")
    try:
        records = load_output(path, repair=False)
    except BatchInputError as exc:
        _fail(str(exc))
    if not records:
        _fail(f"{path}: no records to score")
    report = evaluate(records)
    click.echo(format_table(report))
    if not report["overall"]["graded"]:
        click.echo("No record has gold answers or an unanswerable mark: nothing to grade (only errors and steps).")
    md, png = write_report(report, path)
    click.echo(f"report: {md}\nchart: {png}")


def _nested_kv(settings: Settings, **kwargs: object) -> None:
    from pipeline.llm import LLMError, resolve_endpoint
    from pipeline.nestedkv import format_levels, run

    try:
        resolve_endpoint(settings)
    except LLMError as exc:
        _fail(f"nested-kv needs an LLM endpoint: {exc}")
    try:
        result = run(settings, **kwargs)  # type: ignore[arg-type]
    except (ValueError, LLMError) as exc:
        _fail(str(exc))
    click.echo(format_levels(result))
    click.echo(f"records: {result['out']}")
    if result["interrupted"]:
        click.echo("Interrupted: the scores above cover the questions answered so far.", err=True)
        sys.exit(130)


def _fail(message: str) -> NoReturn:
    click.echo(f"Error: {message}", err=True)
    sys.exit(2)
