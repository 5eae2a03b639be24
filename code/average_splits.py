"""Average the val results of the two train/val splits (MS-CMRSEG19, Task05 Prostate; docs/datasets.md).

    python code/test_ACDC.py --root_path data/MSCMR/split1 --exp MSCMR_split1/DiffRect --labelnum 7 --split val
    python code/test_ACDC.py --root_path data/MSCMR/split2 --exp MSCMR_split2/DiffRect --labelnum 7 --split val
    python code/average_splits.py model/MSCMR_split1/DiffRect_7_labeled/unet/val_summary.json \
                                  model/MSCMR_split2/DiffRect_7_labeled/unet/val_summary.json

Prints, per class and for the mean, each split's value and their average (Dice and Jaccard in %); with --out
also writes them as JSON.
"""
import argparse
import json
import sys

from utils.safe_write import write_text

METRICS = ("dice", "jaccard", "hd95", "asd")


def average(summaries):
    """summaries: test_ACDC.py summary dicts with the same classes -> {row: {metric: [per split..., mean]}}."""
    classes = summaries[0]["classes"]
    for s in summaries[1:]:
        if s["classes"] != classes:
            raise ValueError(f"the summaries have different classes: {classes} vs {s['classes']}")
    rows = {}
    for row in [*classes, "mean"]:
        rows[row] = {}
        for m in METRICS:
            vals = [(s["mean"] if row == "mean" else s["per_class"][row])[m]["mean"] for s in summaries]
            rows[row][m] = vals + [sum(vals) / len(vals)]
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("summaries", nargs="+", help="val_summary.json of each split")
    p.add_argument("--out", default=None, help="write the averaged table as JSON here")
    args = p.parse_args(argv)
    loaded = []
    for path in args.summaries:
        try:
            with open(path) as f:
                loaded.append(json.load(f))
        except (OSError, ValueError) as e:
            print(f"error: {path}: cannot read a summary ({e}); run test_ACDC.py on that split first", file=sys.stderr)
            sys.exit(2)
    try:
        rows = average(loaded)
    except (ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    n = len(loaded)
    print("row    metric   " + "  ".join(f"split{i + 1:<3}" for i in range(n)) + "  average")
    for row, metrics in rows.items():
        for m, vals in metrics.items():
            scale = 100.0 if m in ("dice", "jaccard") else 1.0
            print(f"{row:<6} {m:<8} " + "  ".join(f"{v * scale:8.2f}" for v in vals))
    if args.out:
        write_text(args.out, lambda f: json.dump({"summaries": args.summaries, "rows": rows}, f, indent=2), "--out")
    return rows


if __name__ == "__main__":
    from utils.config import run_main

    run_main(main)
