"""Identifier lookups (pipeline.idcorpus): how often the first hybrid hit holds the exact token, per kind and fusion."""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path


def run(out_dir: Path) -> dict:
    from pipeline.archive.search import Fusion
    from pipeline.archive.store import Archive
    from pipeline.bench._fusion import CANDIDATES, OLD, retrieve, row_column
    from pipeline.config import Settings
    from pipeline.idcorpus import contains_token, generate
    from pipeline.ingest.local import ingest_directory

    corpus, store = out_dir / "identifier-corpus", out_dir / "identifier-store"
    shutil.rmtree(corpus, ignore_errors=True)
    lookups = generate(corpus)
    report = ingest_directory(corpus, Settings.from_env(store=store), progress=True, rebuild=True)
    archive = Archive.open(store)
    texts = row_column(archive, "text")
    retrieved = retrieve(archive, [lookup.query for lookup in lookups])

    def first_hit_rate(rankings) -> tuple[float, dict[str, float]]:
        by_kind: dict[str, list[bool]] = defaultdict(list)
        for lookup, ranking in zip(lookups, rankings):
            by_kind[lookup.kind].append(bool(len(ranking)) and contains_token(texts[int(ranking[0])], lookup.token))
        every = [ok for oks in by_kind.values() for ok in oks]
        return round(sum(every) / len(every), 4), {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())}

    fusions = {name: first_hit_rate([r.ranking(fusion) for r in retrieved])[0] for name, fusion in CANDIDATES.items()}
    default, by_kind = first_hit_rate([r.default for r in retrieved])
    single = {"fts": first_hit_rate([r.fts.ids for r in retrieved])[0],
              "vector": first_hit_rate([r.vector.ids for r in retrieved])[0]}
    failures = [lookup.query for lookup, r in zip(lookups, retrieved)
                if not (len(r.default) and contains_token(texts[int(r.default[0])], lookup.token))][:10]
    return {"lookups": len(lookups), "documents": report.new + report.unchanged, "chunks": archive.count(),
            "default_fusion": Fusion().__dict__, "hybrid_first_hit_exact": default, "by_kind": by_kind,
            "single_modes": single, "before_issue_13": fusions[OLD], "target": 0.99, "meets_target": default >= 0.99,
            "fusions": fusions, "failures": failures}
