"""The second PDF reader: pages without a usable text layer are rendered (pypdfium2) and read by OCR (RapidOCR).

Everything runs offline: RapidOCR's wheel ships the PP-OCRv6 detection and recognition models, which are loaded
by path (never through RapidOCR's downloader). `PageReader` decides which pages need OCR (`wants`), reads them
in worker processes (one per core by default, started at the first page that needs them) or in this process,
and hands results back in page order through `submit`/`result`, a few pages ahead, so a long scan streams.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.children import worker_pool
from pipeline.ingest.embed import available_cores

MODES = ("auto", "off", "force")
THIN_TEXT = 100  # visible characters: fewer than this on a page mostly covered by pictures, and it is OCR'd
PICTURE_COVER = 0.5  # the share of the page that pictures must cover for a thin text layer to count as thin
RENDER_DPI = 200
MAX_SIDE = 2000  # pixels: RapidOCR shrinks larger images to this anyway, so a page is never rendered larger
DETECT_SIDE = 1280  # pixels: the text detector sees the page at most this large (lines are read at full size)
MAX_AUTO_WORKERS = 4
WORKER_NICE = 5  # OCR yields the CPU to the embedding workers, which are further down the stream
MODEL_FILES = {"Det": "PP-OCRv6_det_small.onnx", "Rec": "PP-OCRv6_rec_small.onnx"}


class OcrError(Exception):
    """OCR cannot run here (its models are missing); the message says what to install."""


@dataclass(frozen=True)
class PageText:
    """What OCR read on one page: the text (rows joined by newlines) and its mean recognition score (0-1)."""

    text: str
    confidence: float | None  # None when nothing was read
    error: str | None = None  # why the page could not be read (it failed to render), else None


def model_paths() -> dict[str, Path]:
    """The detection and recognition models inside the installed rapidocr wheel (found without importing it)."""
    from importlib.util import find_spec

    spec = find_spec("rapidocr")
    if spec is None or spec.origin is None or find_spec("onnxruntime") is None:
        raise OcrError("OCR needs rapidocr and onnxruntime: pip install rapidocr==3.10.0 onnxruntime==1.32.0 "
                       "(or `make setup`), or ingest with --ocr off")
    models = Path(spec.origin).parent / "models"
    paths = {task: models / name for task, name in MODEL_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise OcrError(f"rapidocr's bundled models are missing ({', '.join(missing)}): reinstall rapidocr==3.10.0")
    return paths


class Engine:
    """RapidOCR with the wheel's models, no orientation classifier (pages are upright; the classifier turned
    whole lines of a clean scan upside down), `threads` onnxruntime threads, and nothing written to the log."""

    def __init__(self, threads: int = 1) -> None:
        paths = model_paths()
        import logging

        from rapidocr import RapidOCR

        self._ocr = RapidOCR(params={
            "Global.log_level": "critical", "Global.use_cls": False, "Global.max_side_len": MAX_SIDE,
            "Det.model_path": str(paths["Det"]), "Rec.model_path": str(paths["Rec"]),
            "Det.limit_type": "max", "Det.limit_side_len": DETECT_SIDE,
            "EngineConfig.onnxruntime.intra_op_num_threads": threads,
            "EngineConfig.onnxruntime.inter_op_num_threads": 1,
        })
        logging.getLogger("RapidOCR").setLevel(logging.CRITICAL)

    def read(self, image) -> PageText:
        """OCR an image (a numpy array, gray or BGR): its rows of text, and the mean score of the lines weighted
        by their length."""
        result = self._ocr(image)
        if not result.txts:
            return PageText("", None)
        lines = [(box, text.strip(), float(score)) for box, text, score in zip(result.boxes, result.txts, result.scores)
                 if text.strip()]
        if not lines:
            return PageText("", None)
        chars = sum(len(text) for _, text, _ in lines)
        confidence = sum(len(text) * score for _, text, score in lines) / chars
        return PageText(_layout([(box, text) for box, text, _ in lines]), round(confidence, 4))


def _layout(lines: list[tuple[Any, str]]) -> str:
    """Join recognised lines into rows, top to bottom: lines whose boxes share most of their height are one row
    (read left to right, a space between), rows are separated by newlines."""
    boxes = sorted((float(box[:, 1].min()), float(box[:, 1].max()), float(box[:, 0].min()), text)
                   for box, text in lines)
    rows: list[list[tuple[float, float, float, str]]] = []
    for top, bottom, left, text in boxes:
        if rows:
            row_top, row_bottom = rows[-1][0][:2]
            if min(bottom, row_bottom) - max(top, row_top) > 0.5 * min(bottom - top, row_bottom - row_top):
                rows[-1].append((top, bottom, left, text))
                continue
        rows.append([(top, bottom, left, text)])
    return "\n".join(" ".join(text for *_, text in sorted(row, key=lambda b: b[2])) for row in rows)


# --- which pages need OCR -------------------------------------------------------------------------------------


def visible_chars(text: str) -> int:
    return sum(not c.isspace() for c in text)


def picture_cover(page) -> float:
    """The share of a pypdfium2 page covered by its images (overlaps counted twice, capped at 1)."""
    import pypdfium2.raw as pdfium_c

    left, bottom, right, top = page.get_bbox()
    area = max((right - left) * (top - bottom), 1e-9)
    covered = 0.0
    for image in page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE]):
        x0, y0, x1, y1 = image.get_bounds()
        width = min(x1, right) - max(x0, left)
        height = min(y1, top) - max(y0, bottom)
        covered += max(width, 0.0) * max(height, 0.0)
    return min(covered / area, 1.0)


def has_marks(page) -> bool:
    """Whether a pypdfium2 page draws anything at all (a blank page has no page objects)."""
    return next(iter(page.get_objects(max_depth=1)), None) is not None


# --- reading pages: rendering and OCR, here or in worker processes ----------------------------------------------


class _Renderer:
    """Renders pages of one PDF at a time with pypdfium2 (the open document is kept for the next page)."""

    def __init__(self) -> None:
        self._path: str | None = None
        self._document = None

    def document(self, path: str):
        import pypdfium2 as pdfium

        if self._path != path:
            self.close()
            self._document = pdfium.PdfDocument(path)
            self._path = path
        return self._document

    def render(self, path: str, number: int):
        """Page `number` (1-based) as a grayscale numpy array, RENDER_DPI but at most MAX_SIDE pixels a side."""
        page = self.document(path)[number - 1]
        try:
            width, height = page.get_size()
            scale = min(RENDER_DPI / 72, MAX_SIDE / max(width, height, 1.0))
            return page.render(scale=scale, grayscale=True).to_numpy().copy()
        finally:
            page.close()

    def close(self) -> None:
        if self._document is not None:
            self._document.close()
        self._path, self._document = None, None


def read_page(engine: Engine, renderer: _Renderer, path: str, number: int) -> PageText:
    """Render page `number` of the PDF at `path` and OCR it; a page that cannot be rendered or read says why."""
    try:
        image = renderer.render(path, number)
    except Exception as exc:  # pdfium raises PdfiumError, and assorted errors on damaged pages
        return PageText("", None, error=f"page {number} failed to render: {first_line(exc)}")
    try:
        return engine.read(image)
    except Exception as exc:  # onnxruntime or OpenCV on a picture they cannot take: the page, not the document
        return PageText("", None, error=f"page {number} could not be read by OCR: {first_line(exc)}")


class PageReader:
    """Decides which pages of a PDF are OCR'd and reads them, in `workers` processes (or here when 1).

    `mode`: auto (pages whose text layer is empty, or thin on a page mostly covered by pictures), force (every
    page that draws anything), off (none). Use as a context manager.
    """

    def __init__(self, mode: str = "auto", workers: int = 1) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown OCR mode {mode!r}; use one of {', '.join(MODES)}")
        model_paths()  # fail now, with the one line, rather than at the first scanned page
        self.mode = mode
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._engine: Engine | None = None
        self._renderer = _Renderer()  # this process's: for `wants`, and for reading here

    @property
    def lookahead(self) -> int:
        """Pages that may be read ahead of the one being chunked: enough to keep every worker busy."""
        return 2 * self.workers if self.workers > 1 else 1

    def wants(self, path: str, number: int, text: str) -> bool:
        """Whether page `number` (1-based), whose text layer is `text`, should be read by OCR."""
        if self.mode == "off":
            return False
        chars = visible_chars(text)
        if self.mode == "auto" and chars >= THIN_TEXT:
            return False
        try:
            page = self._renderer.document(path)[number - 1]
        except Exception:  # pdfium cannot load it: reading it will name the page and say why
            return True
        try:
            if not has_marks(page):
                return False  # a blank page: nothing to read
            return self.mode == "force" or chars == 0 or picture_cover(page) >= PICTURE_COVER
        finally:
            page.close()

    def submit(self, path: str, number: int) -> "Future[PageText]":
        """Start reading page `number`; take the outcome with `result`."""
        if self.workers > 1:
            if self._executor is None:
                threads = max(1, available_cores() // self.workers)
                self._executor = worker_pool(self.workers, _start_worker, (threads,))
            try:
                return self._executor.submit(_read_in_worker, path, number)
            except BrokenProcessPool as exc:
                self._read_here(exc)
        future: Future[PageText] = Future()
        future.set_result(read_page(self._local_engine(), self._renderer, path, number))
        return future

    def result(self, future: "Future[PageText]", path: str, number: int) -> PageText:
        """The page `future` read; if the workers died (killed for memory, say), read it here instead."""
        try:
            return future.result()
        except BrokenProcessPool as exc:
            self._read_here(exc)
            return read_page(self._local_engine(), self._renderer, path, number)

    def _read_here(self, exc: BaseException) -> None:
        if self.workers > 1:
            print(f"OCR workers failed ({exc}); reading pages in this process instead", file=sys.stderr)
            self.workers = 1
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    def _local_engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(threads=available_cores())
        return self._engine

    def close(self, *, cancel: bool = False) -> None:
        """Stop the workers: after their current page, or (`cancel`: an error, Ctrl-C) without waiting."""
        if self._executor is not None:
            self._executor.shutdown(wait=not cancel, cancel_futures=cancel)
            self._executor = None
        self._renderer.close()

    def __enter__(self) -> "PageReader":
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        self.close(cancel=exc_type is not None)


def ocr_workers(requested: int) -> int:
    """OCR processes: `requested`, or by default one per core (at most MAX_AUTO_WORKERS)."""
    return requested or min(available_cores(), MAX_AUTO_WORKERS)


_worker: tuple[Engine, _Renderer] | None = None


def _start_worker(threads: int) -> None:
    global _worker
    os.nice(WORKER_NICE)
    _worker = (Engine(threads=threads), _Renderer())


def _read_in_worker(path: str, number: int) -> PageText:
    assert _worker is not None
    return read_page(*_worker, path, number)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name), at most 200 characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
