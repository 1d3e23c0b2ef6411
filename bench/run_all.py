"""`make bench`: every benchmark in turn; each prints its table and writes JSON under bench/results/.

    .venv/bin/python bench/run_all.py [--device cpu|cuda] [--skip-pipeline]

The pipeline benchmark (``bench_pipeline.py``: ``dvc repro -f`` of the default study in a
temporary clone) takes most of the time; ``--skip-pipeline`` leaves it out.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["bench_mei.py", "bench_gabor.py", "bench_insilico.py", "bench_train.py", "bench_pipeline.py"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-pipeline", action="store_true")
    args = parser.parse_args()
    failed, start = [], time.perf_counter()
    for script in SCRIPTS:
        if args.skip_pipeline and script == "bench_pipeline.py":
            continue
        print(f"\n=== {script} ===", flush=True)
        if subprocess.run([sys.executable, str(HERE / script), "--device", args.device]).returncode:
            failed.append(script)
    print(f"\nmake bench: {time.perf_counter() - start:.0f} s")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
