"""`analyze batch FILE -o OUT.jsonl`: answer a question file concurrently and resumably."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from pipeline.cli import context_window_option, store_option
from pipeline.config import Settings
from pipeline.local_llm import llm_endpoint, llm_options, wants_local

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_answer_fn(settings: Settings, *, rpm: float | None, store_version: int | None) -> tuple[Any, dict[str, Any]]:
    """(answer_fn, record metadata): the agent over the archive opened once, pinned to one LanceDB version.

    Raises `click.ClickException` with a plain message when the store or the endpoint is unusable.
    """
    from pipeline.agent.loop import answer
    from pipeline.batch import RateLimitedClient, RateLimiter

    client = _client(settings)
    if rpm:
        client = RateLimitedClient(client, RateLimiter(rpm))
    archive = _pinned_archive(settings, store_version)

    def answer_fn(question: str) -> Any:
        return answer(question, retriever=archive, client=client, settings=settings)

    return answer_fn, {"model": settings.model, "store_version": archive.version}


def build_ray_answer_fn(settings: Settings, *, rpm: float | None, store_version: int | None,
                        concurrency: int) -> tuple[Any, dict[str, Any]]:
    """`build_answer_fn` for `--engine ray` (inside a Ray session): `concurrency` agents on Ray actors, all
    reading the version pinned here; `rpm` holds for the whole cluster."""
    from pipeline.batch_ray import Answerers

    _client(settings)  # no endpoint configured: say so here, not once per actor
    version = _pinned_archive(settings, store_version).version
    return (Answerers(settings, version=version, concurrency=concurrency, rpm=rpm),
            {"model": settings.model, "store_version": version})


def _client(settings: Settings):
    from pipeline.llm import LLMError, make_client

    try:
        return make_client(settings)
    except LLMError as exc:
        raise click.ClickException(str(exc)) from None


def _pinned_archive(settings: Settings, store_version: int | None):
    from pipeline.archive.search import Fusion
    from pipeline.archive.store import Archive, StoreError

    try:
        archive = Archive.open(settings.store, fusion=Fusion.from_settings(settings))
        archive.pin(store_version)  # the latest version unless resuming: ingest beside us changes nothing
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:  # a missing version, a corrupt store: say what and where
        raise click.ClickException(f"cannot open the archive at {settings.store}: {exc}") from None
    return archive


def _nothing_to_ask(question: str) -> Any:
    raise AssertionError("every question is already answered")


@click.command(context_settings={"help_option_names": ["-h", "--help"]},
               epilog="Exit codes: 0 every question answered ok; 1 finished, but some records are errors "
                      "(including malformed input lines); 2 bad usage or input (unreadable FILE, no archive, "
                      "no endpoint) or OUT cannot be written (a full disk); 130 interrupted with Ctrl-C (rerun the same command to resume).")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Output JSONL (default outputs/<FILE stem>.jsonl); rerunning with the same OUT resumes.")
@click.option("-c", "--concurrency", type=click.IntRange(1, 64), default=None,
              help="Questions answered at once, each with its own context (default 4; 1 with a local LLM, "
                   "whose server answers one request at a time).")
@click.option("--rpm", type=click.FloatRange(0, min_open=True), default=None,
              help="Cap on requests per minute to the endpoint (all workers together).")
@click.option("--retry-errors", is_flag=True, help="Redo questions whose earlier record has status error.")
@store_option
@click.option("--model", default=None, help="Model name (env ANALYZE_MODEL).")
@click.option("--tool-mode", type=click.Choice(["tools", "json"]), default=None,
              help="Native tool calls or one JSON object per step (env ANALYZE_TOOL_MODE).")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Agent steps per question.")
@context_window_option
@click.option("--top-k", type=click.IntRange(1, 50), default=None,
              help="Most search hits per page (default 5; fewer when the window is small).")
@click.option("--strict", is_flag=True, default=None,
              help="Record an abstention instead of an answer whose claims are in no retrieved chunk (env "
                   "ANALYZE_STRICT=1); the answer is kept under `withheld`.")
@llm_options
@click.option("--engine", type=click.Choice(["local", "ray"]), envvar="ANALYZE_ENGINE", default=None,
              help="local: threads here (default); ray: agents on Ray actors, one per --concurrency "
                   "(install .[ray]; env ANALYZE_ENGINE).")
@click.option("--ray-address", default=None,
              help="Ray cluster for --engine ray (env RAY_ADDRESS; default: a local Ray started for the run).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show the progress bar.")
def command(file: Path, out: Path | None, concurrency: int | None, rpm: float | None, retry_errors: bool, store: str,
            model: str | None, tool_mode: str | None, max_steps: int | None, context_window: int | None,
            top_k: int | None, strict: bool | None, llm: str, local_model: str | None, engine: str | None,
            ray_address: str | None, progress: bool) -> None:
    """Answer every question in FILE into OUT, one JSON record per line.

    \b
    FILE is .txt (one question a line; the id is the line number) or .jsonl
    ({"id": ..., "question": ..., optional gold "answer"/"answers", and any extra
    fields such as "category", "unanswerable", "pages", kept under "gold" for
    `analyze eval`). Malformed lines are reported with their line numbers and
    become error records; the batch goes on.

    \b
    Each record: id, question, answer, citations, status (ok/error), error,
    grounded (every number, date, name... of the answer found in a retrieved
    chunk), unsupported (the claims that were not), withheld (the answer --strict
    replaced), steps, usage, latency_s, model, store_version (one LanceDB version
    for the whole file, also on resume), gold. Records are appended and flushed as they complete; a
    rerun with the same OUT skips ids already there (and redoes errors only with
    --retry-errors). Ctrl-C once finishes in-flight questions, twice abandons them.
    A summary goes to OUT with .summary.json.
    """
    from pipeline.batch import BatchInputError, format_summary, key, load_output, read_questions, run_batch

    settings = Settings.from_env(store=store, model=model, tool_mode=tool_mode, max_steps=max_steps,
                                 context_window=context_window, top_k=top_k, strict=strict, engine=engine,
                                 ray_address=ray_address)
    out = out or Path("outputs") / f"{file.stem}.jsonl"
    try:
        if out.resolve() == file.resolve():
            raise BatchInputError(f"OUT {out} is the question file itself; choose another -o")
        questions, bad = read_questions(file)
        if not questions and not bad:
            raise BatchInputError(f"{file}: no questions in it")
        existing = load_output(out, echo=lambda m: click.echo(m, err=True))
    except BatchInputError as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    for b in bad:
        click.echo(f"{file}:{b.line}: {b.reason} (recorded as an error)", err=True)
    versions = {r["store_version"] for r in existing if r.get("store_version") is not None}
    pinned = versions.pop() if len(versions) == 1 else None
    if pinned is not None:
        click.echo(f"Resuming at store version {pinned}, the version the earlier records read.", err=True)
    answered = {key(r["id"]) for r in existing if r.get("status") == "ok" or not retry_errors}
    nothing_to_ask = all(key(q.id) in answered for q in questions)
    if concurrency is None:
        concurrency = 1 if wants_local(llm, settings) else 4
    endpoint = (contextlib.nullcontext(settings) if nothing_to_ask  # start no endpoint and no local server
                else llm_endpoint(settings, llm=llm, local_model=local_model, echo=lambda m: click.echo(m, err=True)))
    on_ray = settings.engine == "ray" and not nothing_to_ask
    try:
        with endpoint as settings, _cluster(settings, progress) if on_ray else contextlib.nullcontext():
            answer_fn, meta = (
                (_nothing_to_ask, {}) if nothing_to_ask
                else build_ray_answer_fn(settings, rpm=rpm, store_version=pinned, concurrency=concurrency) if on_ray
                else build_answer_fn(settings, rpm=rpm, store_version=pinned))
            result = run_batch(questions, out, answer_fn, concurrency=concurrency, retry_errors=retry_errors,
                               bad_lines=bad, meta=meta, progress=progress)
    except click.ClickException as exc:  # no endpoint, no archive, no local model, no Ray cluster
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:  # a full disk: what was written stays, a torn last line is repaired on the rerun
        resume = f"analyze batch {shlex.quote(str(file))} -o {shlex.quote(str(out))}"
        click.echo(f"Error: cannot write {out}: {exc.strerror or exc}; free some space, then resume with the same "
                   f"command: {resume} (plus your other options)", err=True)
        sys.exit(EXIT_USAGE)
    click.echo(format_summary(result.summary, out))
    if result.interrupted:
        resume = f"analyze batch {shlex.quote(str(file))} -o {shlex.quote(str(out))}"
        click.echo(f"Interrupted: {result.summary['remaining']} questions left. Resume with the same command: "
                   f"{resume} (plus your other options).", err=True)
        sys.exit(EXIT_INTERRUPTED)
    wanted = {key(q.id) for q in questions}
    failed = any(r["status"] != "ok" for r in load_output(out) if key(r["id"]) in wanted) or bad
    sys.exit(EXIT_ERRORS if failed else EXIT_OK)


@contextlib.contextmanager
def _cluster(settings: Settings, progress: bool):
    """The Ray session of `--engine ray`, its failures as one-line errors."""
    from pipeline.cluster import ClusterError, ray_session

    try:
        with ray_session(settings.ray_address, progress=progress):
            yield
    except ClusterError as exc:
        raise click.ClickException(str(exc)) from None
