"""The README's Python example (run from the repository root; writes scifact-py.idx/)."""
import numpy as np, rewa

d = "../shared/data/scifact/emb_all-MiniLM-L6-v2"
docs, queries = np.load(f"{d}/docs.npy"), np.load(f"{d}/queries.npy")
index = rewa.Index.build(docs, "opq32+pq32:100,exact:10", metric="cosine")
D, I = index.search(queries, k=10)               # D float32 (nq, 10), I int64 (nq, 10)
index.add(queries[:5])                           # ids continue from len(index)
report = index.tune(queries[:300], target_recall=0.95)   # dict: the keys of `rewa tune --json`
index.save("scifact-py.idx"); index = rewa.Index.open("scifact-py.idx")   # `rewa search` reads it
print(rewa.evaluate(docs, queries, "opq32+pq32", k=10)["recall_at_k"])   # 0.729 (FAISS: 0.728)
codes = rewa.Encoder.fit("opq32+pq32", docs).encode(docs)               # uint8 (5183, 32)
