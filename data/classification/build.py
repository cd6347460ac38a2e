"""Write data.jsonl from sentences.tsv: a seeded, label-balanced split into train / dev / test.

    python data/classification/build.py

sentences.tsv holds the 256 sentences (64 per topic) as `label<TAB>text`, one per line; this script only
shuffles and splits them, so running it again writes the same bytes (tests/test_icl.py checks that).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 0
PER_LABEL = {"train": 32, "dev": 12, "test": 20}  # of each label's 64 sentences
START = {"train": 0, "dev": 32, "test": 44}       # where each split's slice of a label's shuffled list begins


def build() -> list[dict]:
    rows = [line.split("\t") for line in (HERE / "sentences.tsv").read_text().splitlines() if line]
    labels = sorted({label for label, _ in rows})
    rng = random.Random(SEED)
    out = []
    for split in ("train", "dev", "test"):
        part = []
        for label in labels:
            texts = [t for lab, t in rows if lab == label]
            rng_label = random.Random(f"{SEED}-{label}")  # each label's order independent of the others
            rng_label.shuffle(texts)
            part += [{"text": t, "label": label, "split": split}
                     for t in texts[START[split]:START[split] + PER_LABEL[split]]]
        rng.shuffle(part)  # labels interleaved, so that the first rows are not all one label
        out += part
    return [{"id": f"cls-{i:03d}", **r} for i, r in enumerate(out)]


if __name__ == "__main__":
    rows = build()
    (HERE / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"wrote {len(rows)} rows to {HERE / 'data.jsonl'}")
