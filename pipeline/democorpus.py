"""The demo corpus: documents this project writes itself, seeded with facts whose answers are known.

`python -m pipeline.democorpus [DEST] [--queries FILE] [--force]` writes into DEST (default `corpus/`):

- `hydra-7_service_manual.pdf`: a 64-page service manual for a fictional pump (~30k tokens, far
  longer than any context window used here), facts on known pages;
- `norrvik_annual_report_2029.pdf`: an 8-page annual report;
- `board_minutes_2029-03.docx`, `site_visit_bergen.html`, `engineer_onboarding.md`;

and the questions, gold answers, gold pages and categories to `queries/demo.jsonl` (11 answerable, 9 about
facts no document holds, marked `unanswerable`). The output is
deterministic: the same bytes on every run (fixed seeds, dates and zip timestamps), so re-ingesting
an unchanged corpus is a no-op.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fpdf import FPDF

MANUAL = "hydra-7_service_manual.pdf"
REPORT = "norrvik_annual_report_2029.pdf"
MINUTES = "board_minutes_2029-03.docx"
SITE_VISIT = "site_visit_bergen.html"
ONBOARDING = "engineer_onboarding.md"
FILES = (MANUAL, REPORT, MINUTES, SITE_VISIT, ONBOARDING)
MANUAL_PAGES = 64
FIXED_DATE = datetime(2029, 11, 1, 9, 0, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Fact:
    """One question with a known answer, and (unless unanswerable) the sentence and place that hold it."""

    id: str
    question: str
    answers: tuple[str, ...]  # the first is the canonical answer; all are accepted
    category: str
    source: str | None = None
    page: int | None = None  # 1-based PDF page, None for formats without pages
    sentence: str = ""

    @property
    def unanswerable(self) -> bool:
        return self.source is None

    def record(self) -> dict[str, object]:
        """The line for queries/demo.jsonl (fields as `analyze batch` / `analyze eval` read them)."""
        rec: dict[str, object] = {"id": self.id, "question": self.question, "category": self.category}
        if self.unanswerable:
            rec["unanswerable"] = True
            return rec
        rec["answer"] = self.answers[0]
        rec["answers"] = list(self.answers)
        rec["source"] = self.source
        if self.page is not None:
            rec["pages"] = [{"source": self.source, "page": self.page}]
        return rec


FACTS: tuple[Fact, ...] = (
    Fact("q01", "What is the maximum rated operating pressure of the Hydra-7 pump?", ("42 bar",), "number",
         MANUAL, 9, "The Hydra-7 is rated for a maximum operating pressure of 42 bar at a fluid temperature of up "
                    "to 80 degrees Celsius; its predecessor, the Hydra-5, was limited to 35 bar."),
    Fact("q02", "What material is the impeller of the Hydra-7 made of?",
         ("duplex stainless steel grade 2205", "duplex stainless steel", "2205"), "term",
         MANUAL, 23, "The impeller of the Hydra-7 is cast from duplex stainless steel grade 2205, chosen for its "
                     "resistance to pitting in chloride-rich water."),
    Fact("q03", "After how many operating hours must the mechanical seal of the Hydra-7 be replaced?",
         ("4,000 operating hours", "4000 hours", "4,000 hours", "4000"), "number",
         MANUAL, 40, "Replace the mechanical seal every 4,000 operating hours, even when no leakage is visible; "
                     "inspect it for weeping at every 1,000-hour service."),
    Fact("q04", "Which lubricant is recommended for the Hydra-7 bearings?", ("Norrlube HT-220",), "term",
         MANUAL, 45, "Only Norrlube HT-220 synthetic grease is approved for the Hydra-7 bearings; mixing it with "
                     "mineral greases voids the bearing warranty."),
    Fact("q05", "What does error code E-117 on the Hydra-7 controller mean?",
         ("blocked suction line", "suction line is blocked", "suction line blocked", "blockage in the suction line"),
         "term", MANUAL, 52, "Error code E-117 means a blocked suction line: the controller has seen inlet pressure "
                             "fall below the cavitation threshold for more than ten seconds."),
    Fact("q06", "Who handles warranty claims for the Hydra-7?", ("Ingrid Solberg",), "name",
         MANUAL, 61, "Warranty claims for the Hydra-7 are handled by the service coordinator, Ingrid Solberg, at "
                     "the Norrvik Hydraulics service centre in Stavanger."),
    Fact("q07", "What was Norrvik Hydraulics' revenue in 2029?", ("184.6 million euros", "184.6 million"), "number",
         REPORT, 3, "Revenue for 2029 reached 184.6 million euros, up 7.2 percent from 172.2 million euros in 2028."),
    Fact("q08", "What budget did the board approve for the Tromso plant expansion?",
         ("2.4 million euros", "2.4 million", "EUR 2.4 million"), "number",
         MINUTES, None, "The board approved a budget of 2.4 million euros for the Tromso plant expansion, to be "
                        "completed by the end of the second quarter of 2030."),
    Fact("q09", "On what date did the board of Norrvik Hydraulics approve the Tromso plant expansion?",
         ("12 March 2029", "March 12, 2029", "2029-03-12"), "date",
         MINUTES, None, "Minutes of the meeting of the board of directors of Norrvik Hydraulics held on 12 March 2029 "
                        "in Stavanger."),
    Fact("q10", "How many pumps at the Bergen water treatment plant had worn bearings?",
         ("three", "3 pumps", "3 had", "3 of"), "number",
         SITE_VISIT, None, "Of the eleven Hydra-7 pumps installed at the Bergen water treatment plant, three pumps "
                           "had worn bearings and were scheduled for overhaul."),
    Fact("q11", "Within how many days must new engineers complete Pump School?", ("30 days", "thirty days"), "number",
         ONBOARDING, None, "Every new field engineer completes Pump School within their first 30 days; until then "
                           "they work only alongside a certified engineer."),
    Fact("q12", "What is the retail price of the Hydra-7 pump in US dollars?", (), "unanswerable"),
    # Facts no document holds (the grounding benchmark's unanswerable set); q20 is a near miss: the manual names
    # the Hydra-7's lubricant and mentions the Hydra-5, but never the Hydra-5's lubricant.
    Fact("q13", "How much does the Hydra-7 pump weigh in kilograms?", (), "unanswerable"),
    Fact("q14", "What is the maximum flow rate of the Hydra-7 pump in cubic metres per hour?", (), "unanswerable"),
    Fact("q15", "What was Norrvik Hydraulics' revenue in 2026?", (), "unanswerable"),
    Fact("q16", "What does error code E-204 on the Hydra-7 controller mean?", (), "unanswerable"),
    Fact("q17", "What is the rated motor power of the Hydra-7 in kilowatts?", (), "unanswerable"),
    Fact("q18", "How many months does the Hydra-7 warranty last?", (), "unanswerable"),
    Fact("q19", "What is the telephone number of the Norrvik Hydraulics service centre in Stavanger?", (),
         "unanswerable"),
    Fact("q20", "Which lubricant is approved for the Hydra-5 bearings?", (), "unanswerable"),
)


# --------------------------------------------------------------------------- filler text

CHAPTERS: tuple[tuple[str, int, tuple[str, ...]], ...] = (  # title, first page, section titles
    ("Introduction and Safety", 3, ("About this manual", "Intended use", "Safety symbols", "Protective equipment")),
    ("Specifications", 8, ("Hydraulic performance", "Electrical data", "Materials", "Dimensions and weight")),
    ("Installation", 13, ("Foundation", "Piping", "Alignment", "Electrical connection", "Commissioning")),
    ("Components", 21, ("Pump casing", "Impeller", "Shaft and sleeve", "Bearing housing", "Controller")),
    ("Operation", 31, ("Start-up", "Normal running", "Shutdown", "Seasonal storage")),
    ("Maintenance", 37, ("Maintenance schedule", "Mechanical seal", "Bearings", "Lubrication", "Coupling")),
    ("Troubleshooting", 49, ("Reading the controller", "Error codes", "Noise and vibration", "Leaks")),
    ("Warranty and Service", 59, ("Warranty terms", "Claims", "Spare parts", "Service centres")),
)

SUBJECTS = ("The operator", "The service technician", "The maintenance team", "A qualified electrician",
            "The plant engineer", "The commissioning engineer", "The installer", "Site personnel")
ACTIONS = ("should verify", "must record", "is expected to check", "should document", "must confirm",
           "is required to inspect", "should review", "must compare")
OBJECTS = ("the condition of the pump casing", "the alignment of the coupling", "the tightness of the flange bolts",
           "the readings shown on the controller", "the direction of rotation", "the state of the drain valve",
           "the cleanliness of the suction strainer", "the condition of the cable glands",
           "the noise level during operation", "the temperature of the bearing housing",
           "the position of the isolation valves", "the contents of the service log")
CLAUSES = ("before the unit is returned to service", "after any intervention on the hydraulic circuit",
           "as part of the routine inspection", "whenever the installation conditions change",
           "in accordance with local regulations", "before the warranty inspection",
           "when the pump has been idle for a long period", "at the end of each shift")
REMARKS = ("Deviations from the expected values are noted in the service log together with the corrective action taken.",
           "Where local rules are stricter than this manual, the local rules apply.",
           "Illustrations in this chapter show a typical installation; the actual arrangement may differ.",
           "Genuine Norrvik spare parts keep the pump within its certified performance envelope.",
           "Work on the pump is carried out only when the motor is isolated and locked out.",
           "Keep this manual near the pump so that it is available to everyone who operates it.",
           "If in doubt, contact the nearest Norrvik service centre before continuing.",
           "The procedures described here assume that the pump is installed indoors on a level foundation.")


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(OBJECTS)} {rng.choice(CLAUSES)}."


def filler_paragraph(rng: random.Random, sentences: int) -> str:
    """Plausible manual prose with no facts in it: `sentences` sentences, one a general remark."""
    parts = [_sentence(rng) for _ in range(sentences - 1)] + [rng.choice(REMARKS)]
    rng.shuffle(parts)
    return " ".join(parts)


def _heading(page: int) -> str:
    """The heading of a manual page from 3 on: chapter title on its first page, sections in even runs of pages."""
    number, (title, first, sections) = max((i, c) for i, c in enumerate(CHAPTERS, start=1) if c[1] <= page)
    end = CHAPTERS[number][1] if number < len(CHAPTERS) else MANUAL_PAGES + 1
    index = (page - first) * len(sections) // (end - first)
    starts = (page - first) * len(sections) % (end - first) < len(sections)
    heading = f"{number}.{index + 1} {sections[index]}" + ("" if starts else " (continued)")
    return f"Chapter {number}. {title}\n{heading}" if page == first else heading


# --------------------------------------------------------------------------- documents


def _pdf() -> FPDF:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_producer("pagefault democorpus")
    pdf.set_auto_page_break(False)
    pdf.set_margins(20, 20, 20)
    return pdf


def _pdf_page(pdf: FPDF, header: str, heading: str, paragraphs: list[str], number: int) -> None:
    pdf.add_page()
    pdf.set_font("Helvetica", "I", 8)
    pdf.cell(0, 5, header, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    if heading:
        pdf.set_font("Helvetica", "B", 13)
        pdf.multi_cell(0, 7, heading, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.set_font("Helvetica", "", 10)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 5, paragraph, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)
    pdf.set_y(-15)
    pdf.set_font("Helvetica", "", 8)
    pdf.cell(0, 5, f"Page {number}", align="C")


def _facts_for(source: str) -> dict[int | None, list[Fact]]:
    placed: dict[int | None, list[Fact]] = {}
    for fact in FACTS:
        if fact.source == source:
            placed.setdefault(fact.page, []).append(fact)
    return placed


def write_manual(path: Path) -> None:
    """The long PDF: cover, contents, eight chapters; each fact sentence on its page."""
    rng = random.Random(7)
    facts = _facts_for(MANUAL)
    pdf = _pdf()
    pdf.set_title("Hydra-7 Centrifugal Pump - Installation, Operation and Service Manual")
    header = "Norrvik Hydraulics - Service Manual NH-7-SM rev. C"
    _pdf_page(pdf, header, "Hydra-7 Centrifugal Pump\nInstallation, Operation and Service Manual",
              ["Norrvik Hydraulics AS, Stavanger, Norway.", "Document NH-7-SM, revision C, issued November 2029.",
               "Read this manual completely before installing or operating the pump."], 1)
    contents = [f"Chapter {i}. {title} ........ page {first}" for i, (title, first, _) in enumerate(CHAPTERS, start=1)]
    _pdf_page(pdf, header, "Contents", contents, 2)
    for page in range(3, MANUAL_PAGES + 1):
        paragraphs = [filler_paragraph(rng, rng.randint(5, 7)) for _ in range(4)]
        for fact in facts.get(page, []):
            paragraphs[1] = f"{paragraphs[1]} {fact.sentence}"
        _pdf_page(pdf, header, _heading(page), paragraphs, page)
    pdf.output(str(path))


REPORT_PAGES: tuple[tuple[str, str], ...] = (
    ("Norrvik Hydraulics AS - Annual Report 2029", "Pumps and pumping systems for water, energy and industry."),
    ("Letter from the Chief Executive", "Norrvik Hydraulics had a year of steady growth. Demand for the Hydra-7 "
     "remained strong in the municipal water sector, and the service business grew faster than equipment sales. "
     "Chief Executive Officer Marit Haugen thanks all employees for their work during the year."),
    ("Financial Highlights", ""),
    ("Markets", "Municipal water utilities remained the largest customer group, followed by aquaculture and "
     "district heating. Exports to Sweden and Finland grew, while sales in Germany were flat."),
    ("Operations", "The Stavanger plant ran two shifts throughout the year. Preparations for the expansion of the "
     "Tromso plant began in the spring after the board approved the investment."),
    ("People", "The company employed 412 people at year end. Every new field engineer attended Pump School, the "
     "internal training programme."),
    ("Sustainability", "Energy use per pump produced fell for the fourth year in a row. The company reports its "
     "emissions under the national reporting scheme."),
    ("Outlook", "The board expects moderate growth in 2030, driven by service contracts and the Tromso expansion."),
)


def write_report(path: Path) -> None:
    """A short PDF: eight pages of an annual report, the revenue fact on page 3."""
    facts = _facts_for(REPORT)
    pdf = _pdf()
    pdf.set_title("Norrvik Hydraulics Annual Report 2029")
    for page, (heading, text) in enumerate(REPORT_PAGES, start=1):
        paragraphs = [text] if text else []
        paragraphs += [fact.sentence for fact in facts.get(page, [])]
        if page == 3:
            paragraphs.append("Operating profit was 21.3 million euros. The order backlog at year end stood at "
                              "96.0 million euros. The board proposes a dividend of 4.10 euros per share.")
        _pdf_page(pdf, "Norrvik Hydraulics - Annual Report 2029", heading, paragraphs, page)
    pdf.output(str(path))


def _fixed_zip_times(path: Path) -> None:
    """Rewrite a zip container (DOCX) with fixed member timestamps, so equal content gives equal bytes."""
    with zipfile.ZipFile(path) as zf:
        members = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            fixed = zipfile.ZipInfo(info.filename, date_time=FIXED_DATE.timetuple()[:6])
            fixed.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(fixed, data)


def write_minutes(path: Path) -> None:
    """Board minutes as DOCX: headings, a table of attendees, the budget decision."""
    import docx

    sentences = {f.id: f.sentence for f in FACTS if f.source == MINUTES}
    document = docx.Document()
    document.core_properties.created = document.core_properties.modified = FIXED_DATE.replace(tzinfo=None)
    document.core_properties.author = "Norrvik Hydraulics board secretary"
    document.add_heading("Norrvik Hydraulics AS - Board of Directors", level=0)
    document.add_paragraph(sentences["q09"])
    document.add_heading("1. Attendance", level=1)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Name", "Role"
    for name, role in (("Astrid Lindqvist", "Chair"), ("Marit Haugen", "Chief Executive Officer"),
                       ("Per Ostby", "Chief Financial Officer"), ("Lene Dahl", "Board member")):
        cells = table.add_row().cells
        cells[0].text, cells[1].text = name, role
    document.add_heading("2. Results for 2028", level=1)
    document.add_paragraph("The Chief Financial Officer presented the audited accounts for 2028. The board adopted "
                           "the accounts without remarks.")
    document.add_heading("3. Tromso plant expansion", level=1)
    document.add_paragraph("Management presented the business case for a second assembly line at the Tromso plant, "
                           "serving the aquaculture market in northern Norway.")
    document.add_paragraph(sentences["q08"])
    document.add_heading("4. Any other business", level=1)
    document.add_paragraph("The next ordinary board meeting will be held in June. The meeting was closed by the chair.")
    document.save(str(path))
    _fixed_zip_times(path)


def write_site_visit(path: Path) -> None:
    sentence = next(f.sentence for f in FACTS if f.source == SITE_VISIT)
    path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Site visit report: Bergen water treatment plant</title></head>
<body>
<h1>Site visit report: Bergen water treatment plant</h1>
<p>Visit on 3 September 2029 by field engineer Tomas Berg, Norrvik Hydraulics service centre Bergen.</p>
<h2>Scope</h2>
<p>Annual inspection of the raw-water and filtered-water pumping stations under the service contract.</p>
<h2>Findings</h2>
<p>{sentence} The remaining pumps were in good condition. Vibration readings were within limits on all units.</p>
<ul><li>Suction strainers cleaned on all units.</li><li>Controller firmware updated on two units.</li></ul>
<h2>Follow-up</h2>
<p>The overhaul is planned for October, during the plant's low-demand period.</p>
</body></html>
""", encoding="utf-8")


def write_onboarding(path: Path) -> None:
    sentence = next(f.sentence for f in FACTS if f.source == ONBOARDING)
    path.write_text(f"""# Field engineer onboarding

Welcome to Norrvik Hydraulics. This page explains your first weeks as a field engineer.

## Your first week

You receive your tools, your protective equipment and access to the service log system. Your team leader
introduces you to the customers in your region.

## Pump School

{sentence} Pump School covers the Hydra-5 and Hydra-7 product lines, seal replacement, alignment and the
controller's error codes.

## Certification

After Pump School you are assessed on a live service job. Certification is renewed every two years.
""", encoding="utf-8")


WRITERS = {MANUAL: write_manual, REPORT: write_report, MINUTES: write_minutes, SITE_VISIT: write_site_visit,
           ONBOARDING: write_onboarding}


def write_questions(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(f.record(), ensure_ascii=False) + "\n" for f in FACTS), encoding="utf-8")


def write_corpus(dest: Path, queries: Path, *, force: bool = False) -> list[Path]:
    """Write the documents missing from `dest` (all with `force`) and the questions; return what was written."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, writer in WRITERS.items():
        if force or not (dest / name).exists():
            writer(dest / name)
            written.append(dest / name)
    if force or not queries.exists():
        write_questions(queries)
        written.append(queries)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.democorpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", nargs="?", default="corpus", type=Path, help="corpus directory (default corpus/)")
    parser.add_argument("--queries", default=Path("queries/demo.jsonl"), type=Path,
                        help="question file (default queries/demo.jsonl)")
    parser.add_argument("--force", action="store_true", help="rewrite files that exist")
    args = parser.parse_args(argv)
    try:
        written = write_corpus(args.dest, args.queries, force=args.force)
    except OSError as exc:
        print(f"error: cannot write the demo corpus: {exc}", file=sys.stderr)
        return 1
    kept = len(FILES) + 1 - len(written)
    print(f"demo corpus in {args.dest}/ ({len(FILES)} documents) and {len(FACTS)} questions in {args.queries}: "
          f"{len(written)} written, {kept} already present")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
