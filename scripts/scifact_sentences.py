#!/usr/bin/env python3
"""The sentences of the SciFact corpus as a text file for `rewa embed`: each document's title
and each sentence of its abstract (split after '.', '?' or '!' followed by a space and a
capital letter or digit), one JSON object per line with `_id` = `<doc id>:<n>`.
usage: scifact_sentences.py CORPUS.jsonl OUT.jsonl"""
import json
import re
import sys

split = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9(])")
n_docs = n = 0
with open(sys.argv[1]) as f, open(sys.argv[2], "w") as out:
    for line in f:
        d = json.loads(line)
        n_docs += 1
        parts = [d.get("title", "").strip()] + split.split(d.get("text", "").strip())
        for i, s in enumerate(p for p in parts if len(p.strip()) > 1):
            out.write(json.dumps({"_id": f"{d['_id']}:{i}", "text": s.strip()}) + "\n")
            n += 1
print(f"{n} sentences from {n_docs} documents", file=sys.stderr)
