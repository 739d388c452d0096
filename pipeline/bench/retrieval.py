"""Retrieval quality on Cranfield (BEIR layout in ../shared/eval/cranfield, or $PAGEFAULT_CRANFIELD): nDCG@10 and
recall@100 per mode, nDCG@10 of each fusion candidate (pipeline.bench._fusion) from the same retrievals, and of
hybrid search with each number of pseudo-relevance feedback chunks (FEEDBACK_DOCS; 0: none)."""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Iterable

CRANFIELD = Path(os.environ.get("PAGEFAULT_CRANFIELD", "")
                 or Path(__file__).resolve().parents[2].parent / "shared" / "eval" / "cranfield")
MODES = ("vector", "fts", "hybrid")
FEEDBACK_DOCS = (0, 3, 5, 10)


def ndcg_at(ranked: list[str], gains: dict[str, int], k: int) -> float:
    dcg = sum(gains.get(doc, 0) / math.log2(i + 2) for i, doc in enumerate(ranked[:k]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(gains.values(), reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


def recall_at(ranked: list[str], gains: dict[str, int], k: int) -> float:
    relevant = {doc for doc, g in gains.items() if g > 0}
    return len(relevant & set(ranked[:k])) / len(relevant) if relevant else 0.0


def documents_in_order(sources: Iterable[str]) -> list[str]:
    """The sources of ranked chunks -> document ids (file stems), each at its best rank."""
    return list(dict.fromkeys(Path(source).stem for source in sources))


def cranfield_corpus(out_dir: Path, *, limit: int | None = None) -> Path:
    """The Cranfield abstracts (the first `limit` of them) as one text file each (title, then abstract), written
    once."""
    corpus = out_dir / ("cranfield-corpus" if limit is None else f"cranfield-corpus-{limit}")
    corpus.mkdir(parents=True, exist_ok=True)
    for line in (CRANFIELD / "corpus.jsonl").read_text().splitlines()[:limit]:
        doc = json.loads(line)
        path = corpus / f"{doc['_id']}.txt"
        if not path.exists():
            path.write_text(f"{doc['title'].strip().upper()}\n\n{doc['text']}\n")
    return corpus


def judged_queries() -> tuple[list[dict], dict[str, dict[str, int]]]:
    """The Cranfield queries that have relevance judgements, and the judgements (query -> doc -> gain)."""
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for line in (CRANFIELD / "qrels.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split("\t")
        qrels[qid][did] = int(score)
    queries = [json.loads(line) for line in (CRANFIELD / "queries.jsonl").read_text().splitlines()]
    return [q for q in queries if q["_id"] in qrels], qrels


def scores_by_mode(archive, *, queries: int | None = None) -> dict[str, dict[str, float]]:
    """Mean nDCG@10 and recall@100 over the judged queries (the first `queries` of them), per search mode."""
    judged, qrels = judged_queries()
    judged = judged[:queries]
    scores = {}
    for mode in MODES:
        ndcg, recall = [], []
        for q in judged:
            ranked = documents_in_order(h.source for h in archive.search(q["text"], mode=mode, top_k=150).hits)
            ndcg.append(ndcg_at(ranked, qrels[q["_id"]], 10))
            recall.append(recall_at(ranked, qrels[q["_id"]], 100))
        scores[mode] = {"ndcg@10": round(sum(ndcg) / len(ndcg), 4), "recall@100": round(sum(recall) / len(recall), 4)}
    return scores


def run(out_dir: Path) -> dict:
    from pipeline.config import Settings
    from pipeline.ingest.local import ingest_directory
    from pipeline.archive.search import Fusion, hybrid_matches
    from pipeline.archive.store import Archive
    from pipeline.bench._fusion import CANDIDATES, retrieve, row_column

    if not CRANFIELD.exists():
        return {"skipped": f"{CRANFIELD} not available"}
    store = out_dir / "cranfield-store"
    report = ingest_directory(cranfield_corpus(out_dir), Settings.from_env(store=store), progress=True)
    archive = Archive.open(store)
    scores = scores_by_mode(archive)
    best_single = max(scores["vector"]["ndcg@10"], scores["fts"]["ndcg@10"])
    queries, qrels = judged_queries()
    sources = row_column(archive, "source")
    texts = [" ".join(q["text"].split()) for q in queries]
    retrieved = retrieve(archive, texts)

    def mean_ndcg(rankings) -> float:
        return round(sum(ndcg_at(documents_in_order(sources[int(i)] for i in ranking), qrels[q["_id"]], 10)
                         for q, ranking in zip(queries, rankings)) / len(queries), 4)

    fusions = {name: mean_ndcg(r.ranking(fusion) for r in retrieved) for name, fusion in CANDIDATES.items()}
    vectors = archive.embedder.encode(texts)
    feedback = {n: mean_ndcg(hybrid_matches(archive.chunks, vector, text, Fusion(feedback_docs=n))[0]
                             for text, vector in zip(texts, vectors))
                for n in FEEDBACK_DOCS}
    return {"queries": len(queries), "documents": report.new + report.unchanged, "chunks": archive.count(),
            "default_fusion": Fusion().__dict__, "target_hybrid_ndcg@10": 0.43,
            "meets_target": scores["hybrid"]["ndcg@10"] >= 0.43 and scores["hybrid"]["ndcg@10"] > best_single,
            "fusions_ndcg@10": fusions, "feedback_docs_ndcg@10": feedback, "scores": scores,
            "hybrid_beats_both_ndcg@10": scores["hybrid"]["ndcg@10"] > best_single,
            "hybrid_beats_both_recall@100": scores["hybrid"]["recall@100"] > max(
                scores["vector"]["recall@100"], scores["fts"]["recall@100"])}
