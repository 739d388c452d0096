"""PDFs whose pages are pictures of known text (scans), typed pages, or both: the OCR tests' and benchmark's input.

A scanned page is made the way a scanner makes one: the text is typeset (fpdf2, Helvetica), rendered to a
grayscale raster at the scan's resolution (pypdfium2), optionally tilted and speckled, and the picture alone is
placed on an A4 page: no text layer.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

A4_MM = (210.0, 297.0)
MARGIN_MM = 20.0


@dataclass(frozen=True)
class Scan:
    """A page that is only a picture of `text` (empty: a scanned blank sheet)."""

    text: str
    dpi: int = 300
    rotate: float = 0.0  # degrees, counter-clockwise
    noise: float = 0.0  # standard deviation of Gaussian grain, in gray levels (0-255)
    seed: int = 0
    layer: str = ""  # typed over the picture at the foot of the page: a scanner's stamp, say (a thin text layer)


def write_pdf(path: Path, pages: list[str | Scan], *, font_size: float = 11) -> Path:
    """An A4 PDF with one page per entry: a str is typed (a text layer), a Scan is a picture only."""
    pdf = _new_pdf()
    for page in pages:
        pdf.add_page()
        if isinstance(page, Scan):
            buffer = io.BytesIO()
            scan_image(page, font_size=font_size).save(buffer, format="PNG")
            pdf.image(buffer, x=0, y=0, w=A4_MM[0], h=A4_MM[1])
            if page.layer:
                pdf.set_xy(MARGIN_MM, A4_MM[1] - MARGIN_MM / 2)
                pdf.set_font("Helvetica", size=7)
                pdf.cell(0, 4, page.layer)
        else:
            _typeset(pdf, page, font_size)
    pdf.output(str(path))
    return Path(path)


def scan_image(scan: Scan, *, font_size: float = 11):
    """The grayscale picture of `scan` (a PIL image at `scan.dpi`), as a scanner would have produced it."""
    import numpy as np
    import pypdfium2 as pdfium
    from PIL import Image

    pdf = _new_pdf()
    pdf.add_page()
    _typeset(pdf, scan.text, font_size)
    document = pdfium.PdfDocument(bytes(pdf.output()))
    try:
        image = document[0].render(scale=scan.dpi / 72, grayscale=True).to_pil().convert("L")
    finally:
        document.close()
    if scan.rotate:
        image = image.rotate(scan.rotate, resample=Image.Resampling.BICUBIC, fillcolor=255)
    if scan.noise:
        grain = np.random.default_rng(scan.seed).normal(0.0, scan.noise, size=(image.height, image.width))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8))
    return image


def _new_pdf():
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_margins(MARGIN_MM, MARGIN_MM, MARGIN_MM)
    pdf.set_auto_page_break(False)
    return pdf


def _typeset(pdf, text: str, font_size: float) -> None:
    pdf.set_font("Helvetica", size=font_size)
    for paragraph in text.split("\n\n"):
        if paragraph.strip():
            pdf.multi_cell(0, font_size * 0.5, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(font_size * 0.3)


# Known text for measuring OCR: digits, codes, punctuation and capitals, as in the documents people scan.
PASSAGES = (
    "Invoice 2291-B was paid on 14 March 2031 by wire transfer.\n\n"
    "The Kestrel probe entered orbit around Titan; its launch code was 4471-ALPHA, and the mission budget "
    "was EUR 1,250,000 (one million two hundred and fifty thousand euros).",
    "Clause 7.2: the tenant shall give the landlord at least 90 days' written notice before leaving the premises "
    "at 18 Harbour Street, Stavanger.\n\nSigned in duplicate on 3 June 2029 by Ingrid Solberg and Tomas Berg.",
)

# The scans the OCR tests and benchmark read, by name: the clean 300-dpi pages are held to CER <= 2%.
SAMPLES = {
    "300 dpi": Scan(PASSAGES[0], dpi=300),
    "300 dpi, second text": Scan(PASSAGES[1], dpi=300),
    "150 dpi": Scan(PASSAGES[1], dpi=150),
    "300 dpi, tilted 1.5 degrees": Scan(PASSAGES[0], dpi=300, rotate=1.5),
    "300 dpi, noisy (grain sd 40)": Scan(PASSAGES[1], dpi=300, noise=40, seed=7),
}
CLEAN_300 = ("300 dpi", "300 dpi, second text")
# A page too coarse and grainy to read well: OCR keeps it, marked as low confidence (measured: about 0.67).
POOR = Scan(PASSAGES[0], dpi=60, noise=60)


def cer(read: str, truth: str) -> float:
    """Character error rate: edit distance between the two texts, whitespace runs taken as one space, over the
    length of `truth`."""
    from rapidfuzz.distance import Levenshtein

    read, truth = " ".join(read.split()), " ".join(truth.split())
    return Levenshtein.distance(read, truth) / max(len(truth), 1)
