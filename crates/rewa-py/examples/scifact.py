"""The README's Python example: SciFact MiniLM embeddings, a compressed index, FAISS shapes."""
import sys
import numpy as np, rewa

d = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/scifact/emb_all-MiniLM-L6-v2"
docs, queries = np.load(f"{d}/docs.npy"), np.load(f"{d}/queries.npy")
index = rewa.Index.build(docs, "opq32+pq32:100,exact:10", metric="cosine")
D, I = index.search(queries, k=10)                     # D float32 (nq, 10), I int64 (nq, 10)
print(index, "bytes/vector:", index.bytes_per_vector)
print("query 0 ->", I[0, :3], D[0, :3])
print(rewa.evaluate(docs, queries, "opq32+pq32", k=10)["recall_at_k"])  # held-out queries, no rerank
