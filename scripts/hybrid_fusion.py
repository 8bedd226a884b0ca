#!/usr/bin/env python3
"""Reciprocal rank fusion against a weighted sum of normalised scores, on one BEIR set.

Reads the TSVs of `rewa search --k 100` in dense and in BM25 mode over the same queries
(query column: the query's id, or its row when --query-ids maps rows to ids), the qrels, and
prints nDCG@10 and recall@100 for each side alone, RRF at several constants, and
alpha * dense + (1 - alpha) * bm25 with each side's scores min-max normalised per query.

usage: hybrid_fusion.py --dense dense.tsv --bm25 bm25.tsv --qrels test.tsv \
           [--dense-query-ids query_ids.txt] [--doc-ids doc_ids.txt]
(--doc-ids maps row ids to corpus ids for an index built from vectors.)
"""
import argparse, json, math
from collections import defaultdict


def read_tsv(path, qmap, dmap):
    runs = defaultdict(list)
    with open(path) as f:
        next(f)
        for line in f:
            q, rank, doc, score = line.rstrip("\n").split("\t")[:4]
            q = qmap[int(q)] if qmap else q
            doc = dmap[int(doc)] if dmap else doc
            runs[q].append((doc, float(score)))
    return runs


def ndcg10(ranked, rel):
    dcg = sum(1 / math.log2(i + 2) for i, d in enumerate(ranked[:10]) if d in rel)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(rel), 10)))
    return dcg / ideal if ideal else 0.0


def evaluate(runs, qrels):
    nd, rc = [], []
    for q, rel in qrels.items():
        ranked = runs.get(q, [])
        nd.append(ndcg10(ranked, rel))
        rc.append(len(set(ranked[:100]) & rel) / len(rel))
    return sum(nd) / len(nd), sum(rc) / len(rc)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dense", required=True)
    p.add_argument("--bm25", required=True)
    p.add_argument("--qrels", required=True)
    p.add_argument("--dense-query-ids")
    p.add_argument("--doc-ids")
    a = p.parse_args()
    qmap = [l.strip() for l in open(a.dense_query_ids)] if a.dense_query_ids else None
    dmap = [l.strip() for l in open(a.doc_ids)] if a.doc_ids else None
    dense = read_tsv(a.dense, qmap, dmap)
    bm25 = read_tsv(a.bm25, None, dmap)
    qrels = defaultdict(set)
    with open(a.qrels) as f:
        for line in f:
            q, d, s = line.rstrip("\n").split("\t")
            if q == "query-id":
                continue
            if float(s) > 0:
                qrels[q].add(d)

    def out(name, runs):
        n, r = evaluate({q: [d for d, _ in v] for q, v in runs.items()}, qrels)
        print(json.dumps({"fusion": name, "ndcg_at_10": round(n, 4), "recall_at_100": round(r, 4)}))

    out("dense", dense)
    out("bm25", bm25)
    for c in [1, 10, 20, 60, 100, 200]:
        fused = {}
        for q in qrels:
            s = defaultdict(float)
            for lst in (dense.get(q, []), bm25.get(q, [])):
                for i, (d, _) in enumerate(lst):
                    s[d] += 1 / (c + i + 1)
            fused[q] = sorted(s.items(), key=lambda x: (-x[1], x[0]))
        out(f"rrf k={c}", fused)
    for alpha in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]:
        fused = {}
        for q in qrels:
            s = defaultdict(float)
            for w, lst in ((alpha, dense.get(q, [])), (1 - alpha, bm25.get(q, []))):
                if not lst:
                    continue
                hi, lo = max(x for _, x in lst), min(x for _, x in lst)
                for d, x in lst:
                    s[d] += w * ((x - lo) / (hi - lo) if hi > lo else 1.0)
            fused[q] = sorted(s.items(), key=lambda x: (-x[1], x[0]))
        out(f"weighted alpha={alpha}", fused)


if __name__ == "__main__":
    main()
