"""Do two replicate runs (``metrics/replicates.json``) reach the same science?

For a speed-up that must not change the results: prints, per cell kind, each conclusion of
both runs (and whether every replicate agrees), and for every figure both means with their
confidence intervals and whether the intervals overlap. Exit status 1 if a conclusion
changed or an interval no longer overlaps.

    git show <old commit>:metrics/replicates.json > /tmp/old.json
    .venv/bin/python bench/compare_replicates.py /tmp/old.json metrics/replicates.json [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from meiscope.atomic import write_json  # noqa: E402


def compare(old: dict, new: dict) -> dict:
    """``{"conclusions": [...], "figures": [...], "same": bool}`` for two replicates.json contents."""
    conclusions = []
    for kind in sorted(set(old["conclusions"]) | set(new["conclusions"])):
        for claim in sorted(set(old["conclusions"].get(kind, {})) | set(new["conclusions"].get(kind, {}))):
            before = old["conclusions"].get(kind, {}).get(claim, {})
            after = new["conclusions"].get(kind, {}).get(claim, {})
            conclusions.append(dict(kind=kind, claim=claim, old=before.get("per_replicate"),
                                    new=after.get("per_replicate"), old_conclusion=before.get("conclusion"),
                                    new_conclusion=after.get("conclusion"),
                                    same=before.get("conclusion") == after.get("conclusion")))
    figures = []
    for key in sorted(set(old["figures"]) & set(new["figures"])):
        a, b = old["figures"][key], new["figures"][key]
        bounds = [a.get("ci_low"), a.get("ci_high"), b.get("ci_low"), b.get("ci_high")]
        overlap = None if None in bounds else bool(bounds[0] <= bounds[3] and bounds[2] <= bounds[1])
        figures.append(dict(figure=key, old_mean=a.get("mean"), old_ci=bounds[:2], new_mean=b.get("mean"),
                            new_ci=bounds[2:], overlap=overlap))
    same = all(c["same"] for c in conclusions) and all(f["overlap"] is not False for f in figures)
    return dict(conclusions=conclusions, figures=figures, same=same,
                old_commit=old.get("git_commit"), new_commit=new.get("git_commit"))


def _fmt(mean: float | None, ci: list) -> str:
    if mean is None:
        return "n/a"
    if None in ci:
        return f"{mean:.3g}"
    return f"{mean:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="also write the comparison as JSON")
    args = parser.parse_args()
    result = compare(json.loads(args.old.read_text()), json.loads(args.new.read_text()))
    print(f"old {result['old_commit']}  ->  new {result['new_commit']}\n")
    for c in result["conclusions"]:
        mark = "same" if c["same"] else "CHANGED"
        print(f"{c['kind']:<12} {c['claim']:<52} {str(c['old_conclusion']):<13} {str(c['new_conclusion']):<13} "
              f"{mark}  {c['old']} -> {c['new']}")
    print()
    for f in result["figures"]:
        mark = {True: "overlap", False: "NO OVERLAP", None: "-"}[f["overlap"]]
        print(f"{f['figure']:<58} {_fmt(f['old_mean'], f['old_ci']):>30} {_fmt(f['new_mean'], f['new_ci']):>30}  "
              f"{mark}")
    print(f"\nsame conclusions and overlapping intervals: {'yes' if result['same'] else 'NO'}")
    if args.out:
        write_json(args.out, result)
    return 0 if result["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
