"""Plot the learning curves of one or more runs written by ``ddchm train``.

What it shows: a run directory read back in Python with ``ddchm.load_run`` (its model,
algorithm, data splits and the metrics it logged), and its curves drawn with matplotlib: the
held-out figure the run evaluated (the exact test NLL where the latents can be enumerated, else
MMD^2 to held-out data) and one training metric (``--metric``, default ``grad_norm``), each
against training CPU seconds and against steps. Several runs go on one figure, one line each,
so runs of different algorithms or settings can be compared. It prints the PNG it wrote and,
for each run, the points plotted and the last held-out value.

Run::

    ddchm train --steps 500 --out runs/hard                    # any run directory will do
    python examples/plot_run.py runs/hard --out curves.png
    python examples/plot_run.py runs/a runs/b --metric recognition_loss --out ab.png

The last line of output is JSON with what was plotted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

import ddchm  # noqa: E402

HELDOUT = ("test_nll", "mmd2")  # what `ddchm train` evaluates, in order of preference
X_AXES = {"cpu_time": "training CPU seconds", "step": "step"}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def series(records: list[dict], key: str) -> dict[str, list[float]]:
    """{x axis: values, key: values} over the records that logged ``key``."""
    rows = [r for r in records if _number(r.get(key))]
    return {name: [float(r[name]) for r in rows] for name in (*X_AXES, key)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories written by `ddchm train`")
    parser.add_argument("--metric", default="grad_norm", help="training metric of the lower row")
    parser.add_argument("--out", default="learning_curves.png", help="the PNG to write")
    args = parser.parse_args(argv)

    runs = []
    for directory in args.runs:
        try:
            runs.append(ddchm.load_run(directory))
        except (OSError, ValueError, RuntimeError) as error:  # missing, damaged or changed data
            sys.exit(f"error: {error}")
    logged = {k for run in runs for r in run.records for k, v in r.items() if _number(v)}
    if args.metric not in logged:
        sys.exit(
            f"error: --metric: no run logged {args.metric!r}; they logged: "
            f"{', '.join(sorted(logged - set(X_AXES)))}"
        )
    heldout = next((k for k in HELDOUT if any(k in r for run in runs for r in run.records)), None)
    rows = [key for key in (heldout, args.metric) if key is not None]

    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.5 * len(rows)), squeeze=False)
    summary = {"png": str(Path(args.out).resolve()), "runs": {}}
    for run in runs:
        label = f"{run.path.name} ({run.config['algorithm']['name']}, {run.step} steps)"
        plotted = {}
        for row, key in zip(axes, rows):
            curve = series(run.records, key)
            plotted[key] = len(curve[key])
            for ax, x_key in zip(row, X_AXES):
                ax.plot(curve[x_key], curve[key], marker=".", label=label)
        last = series(run.records, heldout)[heldout][-1:] if heldout else []
        summary["runs"][str(run.path)] = {"points": plotted, f"last_{heldout}": (last or [None])[0]}
    for row, key in zip(axes, rows):
        for ax, x_key in zip(row, X_AXES):
            ax.set_xlabel(X_AXES[x_key])
            ax.set_ylabel(key)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)

    print(
        f"wrote {summary['png']} ({Path(args.out).stat().st_size} bytes): {' and '.join(rows)} "
        f"against {' and '.join(X_AXES.values())}"
    )
    for path, info in summary["runs"].items():
        points = ", ".join(f"{n} points of {key}" for key, n in info["points"].items())
        print(f"  {path}: {points}; last {heldout}: {info[f'last_{heldout}']}")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
