"""`analyze search "query"` and `analyze search --queries FILE`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pipeline.cli import open_archive, store_option


@click.command("search")
@click.argument("query", required=False)
@store_option
@click.option("--mode", type=click.Choice(["hybrid", "vector", "fts"]), default="hybrid", show_default=True,
              help="hybrid fuses the vector and BM25 rankings, chunks holding the query's identifiers first.")
@click.option("--top-k", "-k", type=click.IntRange(1), default=5, show_default=True, help="Hits per page.")
@click.option("--page", type=click.IntRange(0), default=0, show_default=True, help="0-based page of top-k hits.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of hits.")
@click.option("--queries", "queries_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Run every query in FILE (.txt: one a line; .jsonl: objects with id and query); prints JSONL. "
                   "Malformed lines are named as FILE:LINE and skipped (exit 1 at the end).")
def command(query: str | None, store: str, mode: str, top_k: int, page: int, as_json: bool,
            queries_file: Path | None) -> None:
    """Search archival memory for QUERY and show the best chunks with their source and page."""
    from pipeline.terminal import safe

    if (query is None) == (queries_file is None):
        raise click.UsageError("give either a QUERY or --queries FILE")
    archive = open_archive(store)
    if queries_file is not None:
        from pipeline.batch import BatchInputError, read_questions

        try:
            queries, bad = read_questions(queries_file, field="query")
        except BatchInputError as exc:
            raise click.ClickException(str(exc)) from None
        for line in bad:
            click.echo(f"{queries_file}:{line.line}: {line.reason}", err=True)
        for q in queries:
            result = archive.search(q.question, mode=mode, top_k=top_k, page=page)
            click.echo(json.dumps({"id": q.id, "query": q.question, "total": result.total, "total_exact": result.total_exact,
                                   "hits": [_hit_json(h) for h in result.hits]}))
        if bad:
            sys.exit(1)
        return
    result = archive.search(query, mode=mode, top_k=top_k, page=page)
    if as_json:
        click.echo(json.dumps([_hit_json(h) for h in result.hits], indent=2))
        return
    first = page * top_k + 1
    bound = "" if result.total_exact else "at least "
    if not result.hits:
        click.echo(f"No results on page {page + 1} ({bound}{result.total} matches in all).")
        return
    click.echo(f"Showing results {first}-{first + len(result.hits) - 1} of {bound}{result.total} "
               f"(page {page + 1} of {bound}{result.pages}, {mode})")
    for rank, hit in enumerate(result.hits, start=first):
        where = hit.source + (f" p.{hit.page}" if hit.page else "") + (f" · {hit.heading}" if hit.heading else "")
        click.echo(safe(f"\n[{rank}] {where}  (score {hit.score:.3f}, {hit.chunk_id})"))
        click.echo(safe("    " + " ".join(hit.text.split())[:400]))


def _hit_json(hit) -> dict:
    return {key: value for key, value in hit.to_dict().items() if key != "page_end"}
