"""The `analyze` command line: a thin click layer; each command lives in `pipeline/commands/`.

Commands load lazily so that `analyze --help` never imports torch, sentence-transformers or lancedb.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> (module under pipeline.commands, one-line help shown by `analyze --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("ingest", "Ingest a directory of documents into archival memory."),
    "search": ("search", "Search archival memory (hybrid, vector or full-text)."),
    "status": ("status", "Summarize the store: documents, chunks, failures, settings."),
    "ask": ("ask", "Answer one question with the memory-paging agent."),
    "batch": ("batch", "Answer a file of questions into JSONL, concurrently and resumably."),
    "eval": ("eval", "Score a batch output against gold answers, or run the nested key-value task."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"pipeline.commands.{COMMANDS[name][0]}")
        return getattr(module, "command")

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pagefault")
def main() -> None:
    """pagefault: ask questions of document collections far larger than any model's context window.

    \b
    analyze ingest ./corpus            build archival memory (LanceDB) from documents
    analyze search "query"             look things up in it
    analyze ask "question"             let the agent page through it and answer, with citations
    analyze batch queries/FILE         answer many questions into outputs/FILE.jsonl
    """


store_option = click.option(
    "--store", type=click.Path(path_type=str), envvar="ANALYZE_STORE", default="ingest/archive",
    show_default=True,
    help="LanceDB store: a directory or s3://bucket/prefix (env ANALYZE_STORE; S3 credentials and endpoint from "
         "the AWS_* variables).")

def open_archive(store: str) -> Any:
    """The archive at `store`, searching with the environment's fusion settings, or a one-line `ClickException`
    when there is none."""
    from pipeline.archive.search import Fusion
    from pipeline.archive.store import Archive, StoreError
    from pipeline.config import Settings

    try:
        return Archive.open(store, fusion=Fusion.from_settings(Settings.from_env()))
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc


MIN_CONTEXT_WINDOW = 1024  # below this nothing useful fits; between it and ~2048 the agent says what it needs

context_window_option = click.option(
    "--context-window", type=click.IntRange(MIN_CONTEXT_WINDOW), envvar="ANALYZE_CONTEXT_WINDOW", default=None,
    help="Token budget of every LLM request, reply included (env ANALYZE_CONTEXT_WINDOW; default 8192; "
         "2048 is the smallest that works, search pages shrink to fit).")
