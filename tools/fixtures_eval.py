#!/usr/bin/env python3
"""Writes tests/fixtures/eval/: tiny benchmark files in the published layouts, parquet edge
cases, and a table of responses scored by the reference's own rules. Dev-only (never at run
time or in CI); the output is committed.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install pyarrow==21.0.0 pillow
    /tmp/venv/bin/python tools/fixtures_eval.py [tests/fixtures/eval]

pyarrow 21.0.0 is the version ERGO pins (spec eval-server.md, header). Its defaults are what
the reference's pandas.read_parquet reads: SNAPPY, dictionary encoding (RLE_DICTIONARY data
pages after a PLAIN dictionary page), data page v1. We write those defaults for the main
layouts and vary codec, page version, page sizes and row groups elsewhere.
"""
import base64
import io
import json
import os
import re
import shutil
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/eval"


def jpeg(color, size=(8, 8)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def b64(data):
    return base64.b64encode(data).decode()


def write(table, path, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path, **kw)
    md = pq.read_metadata(path)
    encs = sorted({e for g in range(md.num_row_groups) for c in range(md.num_columns)
                   for e in md.row_group(g).column(c).encodings})
    codecs = sorted({md.row_group(g).column(c).compression for g in range(md.num_row_groups)
                     for c in range(md.num_columns)})
    print(f"{path}: {md.num_rows} rows, {md.num_row_groups} row groups, {codecs}, {encs}")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    data = os.path.join(OUT, "data")
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]
    imgs = [jpeg(c) for c in colors]

    # ---- V*: test_questions.jsonl + image files (spec 2.1) ----
    vs = os.path.join(data, "vstar_bench")
    os.makedirs(os.path.join(vs, "direct_attributes"))
    os.makedirs(os.path.join(vs, "relative_position"))
    open(os.path.join(vs, "direct_attributes", "sa_1.jpg"), "wb").write(imgs[0])
    open(os.path.join(vs, "direct_attributes", "sa_2.jpg"), "wb").write(imgs[1])
    open(os.path.join(vs, "relative_position", "sa_3.jpg"), "wb").write(imgs[2])
    post = "Answer with the option's letter from the given choices directly."
    vlines = [
        {"question_id": 0, "image": "direct_attributes/sa_1.jpg", "category": "direct_attributes",
         "text": "What is the color of the cup?\n(A) red\n(B) green\n(C) blue\n(D) white\n" + post, "label": "A"},
        {"question_id": 1, "image": "direct_attributes/sa_2.jpg", "category": "direct_attributes",
         "text": "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) leather\n(D) wool\n" + post,
         "label": "B", "bbox": [1, 2, 6, 7]},
        {"question_id": 2, "image": "relative_position/sa_3.jpg", "category": "relative_position",
         "text": "Is the dog on the left or right side of the bench?\n(A) left\n(B) right\n" + post, "label": "A"},
        # an image that does not exist: the sample fails, iteration goes on
        {"question_id": 3, "image": "relative_position/missing.jpg", "category": "relative_position",
         "text": "Only one line", "label": "B"},
    ]
    with open(os.path.join(vs, "test_questions.jsonl"), "w") as f:
        for ln in vlines:
            f.write(json.dumps(ln) + "\n")

    # ---- HR-Bench: two parquet files and their TSV copies (spec 2.2) ----
    hr = os.path.join(data, "HR-Bench")
    os.makedirs(hr)
    for res, kw in (("4k", {}),  # pyarrow defaults: snappy, dictionary, page v1
                    ("8k", {"compression": "zstd", "data_page_version": "2.0", "row_group_size": 3})):
        rows = []
        for q in range(2):           # 2 questions x 4 option rotations (cycle_category)
            for k in range(4):
                opts = ["red", "green", "blue", "white"]
                opts = opts[k:] + opts[:k]
                rows.append({
                    "index": len(rows) + (100 if res == "8k" else 0),
                    "question": f"{res} question {q}: what colour is the sign?",
                    "answer": "ABCD"[(4 - k) % 4 if q == 0 else (5 - k) % 4],
                    "category": "single" if q == 0 else "cross",
                    "A": opts[0], "B": opts[1], "C": opts[2], "D": opts[3],
                    "cycle_category": f"{res}_{q}",
                    "image": b64(imgs[q if res == "4k" else 2 + q]),
                })
        cols = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]
        table = pa.table({c: [r[c] for r in rows] for c in cols})
        write(table, os.path.join(hr, f"hr_bench_{res}.parquet"), **kw)
        with open(os.path.join(hr, f"hr_bench_{res}.tsv"), "w") as f:
            f.write("\t".join(cols) + "\n")
            for r in rows:
                f.write("\t".join(str(r[c]) for c in cols) + "\n")

    # ---- MME-RealWorld-lite: four shards (spec 2.3) ----
    mme = os.path.join(data, "MME-RealWorld-lite-lmms-eval", "data")
    cats = ["Perception/Autonomous_Driving", "Reasoning/Diagram and Table", "Perception/Monitoring",
            "Perception/OCR with Complex Context", "Perception/Remote Sensing", "Reasoning/Monitoring",
            "Something/Else"]
    codecs = ["snappy", "gzip", "zstd", "none"]
    n = 0
    for s in range(4):
        rows = []
        for k in range(2 if s < 3 else 1):
            nopt = 5 if n % 2 == 0 else 4
            rows.append({
                "index": n,
                "question": f"MME question {n}?",
                "multi-choice options": [f"({'ABCDE'[i]}) option {i} of {n}" for i in range(nopt)],
                "answer": "ABCDE"[n % nopt],
                "category": cats[n % len(cats)],
                "l2-category": f"l2 {n}",
                "bytes": b64(imgs[n % 4]),
            })
            n += 1
        schema = pa.schema([("index", pa.int64()), ("question", pa.string()),
                            ("multi-choice options", pa.list_(pa.string())), ("answer", pa.string()),
                            ("category", pa.string()), ("l2-category", pa.string()), ("bytes", pa.string())])
        table = pa.Table.from_pylist(rows, schema=schema)
        write(table, os.path.join(mme, f"train-0000{s}-of-00004.parquet"), compression=codecs[s])

    # ---- parquet edge cases, with the values pyarrow reads back ----
    edge = os.path.join(OUT, "edge")
    os.makedirs(edge)
    expect = {}
    # 1. a dictionary that overflows and falls back to PLAIN pages, several pages per chunk
    vals = [f"value-{i:04d}-" + "x" * (i % 13) for i in range(400)]
    t = pa.table({"s": vals, "n": pa.array(range(400), pa.int64())})
    write(t, os.path.join(edge, "fallback.parquet"), dictionary_pagesize_limit=512, data_page_size=256,
          write_batch_size=16)
    # 2. nulls, lists (null list, empty list, null item), other types, row groups, page v1 / v2,
    #    each codec
    rows = []
    for i in range(23):
        rows.append({
            "s": None if i % 5 == 3 else f"s{i}" * (1 + i % 3),
            "i64": None if i % 7 == 2 else i * 1000003 - 5,
            "i32": -i,
            "b": i % 3 == 0,
            "d": i / 4.0,
            "l": None if i % 6 == 1 else ([] if i % 6 == 4 else [None if (i + j) % 4 == 0 else f"it{i}.{j}" for j in range(i % 4 + 1)]),
        })
    schema = pa.schema([("s", pa.string()), ("i64", pa.int64()), ("i32", pa.int32()), ("b", pa.bool_()),
                        ("d", pa.float64()), ("l", pa.list_(pa.string()))])
    t = pa.Table.from_pylist(rows, schema=schema)
    for codec in ("none", "snappy", "gzip", "zstd"):
        for ver in ("1.0", "2.0"):
            name = f"types_{codec}_v{ver[0]}.parquet"
            write(t, os.path.join(edge, name), compression=codec, data_page_version=ver, row_group_size=10,
                  data_page_size=64, write_batch_size=4, use_dictionary=(codec != "gzip"))
    # 3. columns we refuse by name, next to one we can read
    import datetime
    t = pa.table({
        "ok": pa.array([1, 2, 3], pa.int64()),
        "ts": pa.array([datetime.datetime(2024, 1, d) for d in (1, 2, 3)], pa.timestamp("ns")),
        "st": pa.array([{"x": 1}, {"x": 2}, {"x": 3}], pa.struct([("x", pa.int64())])),
        "dl": pa.array([10, 20, 30], pa.int64()),
        "ll": pa.array([[["a"]], [], [["b", "c"]]], pa.list_(pa.list_(pa.string()))),
    })
    write(t, os.path.join(edge, "unsupported.parquet"), use_deprecated_int96_timestamps=True,
          use_dictionary=["ok"], column_encoding={"dl": "DELTA_BINARY_PACKED"})
    expect["types"] = rows
    expect["fallback"] = {"s": vals}
    with open(os.path.join(edge, "expect.json"), "w") as f:
        json.dump(expect, f, indent=0)

    # ---- scoring table: the reference's extraction and letter rule (spec 1.6) ----
    def extract_answer_text(text):
        # ergo's reading of the reference (src/pipeline/ergo.c ergo_extract_answer): between the
        # first <answer> and the next </answer> (or the end), stripped; None without <answer>.
        try:
            return text.split("<answer>", 1)[1].split("</answer>", 1)[0].strip()
        except Exception:
            return None

    def verdict(r2, gt):
        raw = extract_answer_text(r2) or r2
        pred = "".join(re.findall(r"[a-zA-Z]", raw))
        return raw, pred, gt.lower() == pred.lower()

    cases = [("<think>x</think><answer>A</answer>", "A"), ("<answer> b </answer>", "B"),
             ("<answer>A. red</answer>", "A"), ("<answer></answer>C", "C"), ("C", "C"),
             ("The answer is C", "C"), ("<answer>(D)</answer>", "D"), ("<answer>\n\tE\u3000</answer>", "E"),
             ("<answer>A</answer><answer>B</answer>", "B"), ("<answer>1</answer>", "A"),
             ("<answer>é A</answer>", "A"), ("", "A"), ("<answer>  </answer>", "A"),
             ("<answer>a", "A"), ("no tags, A", "A"), ("<answer>A</answer>", "a"),
             ("</answer>A<answer>B</answer>", "B"), ("<ANSWER>A</ANSWER>", "A")]
    table = []
    for r2, gt in cases:
        raw, pred, ok = verdict(r2, gt)
        table.append({"response": r2, "label": gt, "extracted": raw, "pred": pred, "correct": ok})
    with open(os.path.join(OUT, "score_cases.json"), "w") as f:
        json.dump(table, f, indent=1, ensure_ascii=False)

    total = sum(os.path.getsize(os.path.join(d, x)) for d, _, fs in os.walk(OUT) for x in fs)
    print(f"{OUT}: {total} bytes")


if __name__ == "__main__":
    main()
