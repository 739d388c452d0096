"""`analyze status`."""

from __future__ import annotations

import json

import click

from pipeline.cli import store_option


@click.command("status")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def command(store: str, as_json: bool) -> None:
    """Summarize the store: documents, chunks, failures, duplicates, embedder, chunk settings, LanceDB version."""
    from importlib.metadata import version

    from pipeline.archive.store import Archive, StoreError

    try:
        archive = Archive.open(store)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    docs = list(archive.document_rows().values())
    failed = sorted((d for d in docs if d["status"] != "ok"), key=lambda d: d["path"])
    ok = [d for d in docs if d["status"] == "ok"]
    info = {
        "store": str(archive.path), "documents": len(docs) - len(failed), "failed": len(failed),
        "pages": sum(d["pages"] or 0 for d in ok), "ocr_pages": sum(d["ocr_pages"] or 0 for d in ok),
        "ocr_low_pages": sum(d["ocr_low_pages"] or 0 for d in ok), "chunks": archive.count(),
        "embedder": archive.meta.embedder, "dim": archive.meta.dim,
        "embed_backend": archive.meta.embed_backend, "quantization": archive.meta.quantization,
        "chunk_tokens": archive.meta.chunk_tokens,
        "chunk_overlap": archive.meta.chunk_overlap, "table_version": archive.version,
        "indexes": sorted(i.name for i in archive.chunks.list_indices()), "lancedb": version("lancedb"),
        "failures": [{"path": d["path"], "error": d["error"]} for d in failed],
        "warnings": [{"path": d["path"], "warning": d["warning"]} for d in sorted(ok, key=lambda d: d["path"])
                     if d["warning"]],
        "duplicates": archive.duplicates(),
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"store      {info['store']} (chunks table version {info['table_version']}, lancedb {info['lancedb']})")
    ocr = (f" ({info['ocr_pages']} read by OCR, {info['ocr_low_pages']} with low confidence)"
           if info["ocr_pages"] else "")
    click.echo(f"documents  {info['documents']} ok, {info['failed']} failed; {info['pages']} pages{ocr}; "
               f"{info['chunks']} chunks")
    click.echo(f"embedder   {info['embedder']} ({info['dim']} dims, {info['embed_backend']} {info['quantization']}); chunks of {info['chunk_tokens']} tokens, "
               f"overlap {info['chunk_overlap']}")
    click.echo(f"indexes    {', '.join(info['indexes']) or 'none'}")
    if any(info["duplicates"].values()):
        click.echo(f"duplicates {info['duplicates']['chunks']} chunk rows and {info['duplicates']['documents']} "
                   "document rows repeat an id: run `analyze ingest DIR --repair`")
    for failure in info["failures"]:
        click.echo(f"failed     {failure['path']}: {failure['error']}")
    for warning in info["warnings"]:
        click.echo(f"warning    {warning['path']}: {warning['warning']}")
