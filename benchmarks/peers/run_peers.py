"""modelcycle against the tools a user would pick instead, side by side: one table.

Each row runs modelcycle and its peer on the same model, data, seed, epochs and torch threads,
each side a fresh process (``harness.py``), interleaved (A B, B A, ...) for ``--rounds`` rounds;
medians are shown with their spread. Run it in the peers environment (``make bench-peers``
builds .venv-peers: Lightning, TRL, LitServe and modelcycle itself, torch pinned as ours):

    .venv-peers/bin/python benchmarks/peers/run_peers.py [--only image_train,dpo] [--rounds 3] [--quick]

Ratios read "how many times better modelcycle is": samples/s ours/peer; wall time, CPU time and
peak memory peer/ours. So > 1 favours modelcycle everywhere.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # benchmarks/common.py
import harness  # noqa: E402

import common  # noqa: E402

COMPARISONS = ["image_train", "text_classify", "dpo", "sft", "image_serve", "generate", "lm_serve"]


def measure(module, case: str, root: Path, side: str, threads: int) -> dict:
    if hasattr(module, "serve"):  # a server: started here, loaded, stopped
        return module.serve(side, case, root, threads)
    return harness.run_child(HERE / f"{module.__name__}.py", side, case, root, threads)


def run_case(module, case: str, root: Path, args) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    common.console.print(f"{module.CASES[case]}: preparing ...", style="dim")
    prepared = module.prepare(case, root, args.quick)
    (root / "settings.json").write_text(json.dumps(prepared))
    label = module.CASES[case]

    def side_of(side: str):
        def run() -> dict:
            common.console.print(f"{label}: {side} ...", style="dim")
            return measure(module, case, root, side, args.threads)

        return run

    results = common.alternate({side: side_of(side) for side in harness.SIDES}, args.rounds)
    found = {"module": module, "case": case, "what": prepared.get("what", ""), "results": results}
    common.console.print(" | ".join(map(str, row(found))), style="dim")  # the row now, in case a later one fails
    return found


def summary(values: list[float]) -> str:
    mid = common.median(values)
    if len(values) < 2 or not mid:
        return common.fmt(mid)
    return f"{common.fmt(mid)} ±{(max(values) - min(values)) / 2 / abs(mid):.0%}"


def row(found: dict) -> list[object]:
    module, res = found["module"], found["results"]
    ours, peer = res["modelcycle"], res["peer"]

    def med(side: list[dict], key: str) -> float:
        return common.median([r[key] for r in side])

    def three(a: list[float], b: list[float], better: float) -> list[str]:
        return [summary(a), summary(b), f"{better:.2f}x"]

    rate = {name: [r["samples"] / r["seconds"] for r in side] for name, side in res.items()}
    cells = [module.CASES[found["case"]], module.PEER]
    cells += three(rate["modelcycle"], rate["peer"], common.ratio(*map(common.median, rate.values())))
    for key in ("wall_s", "cpu_s", "peak_mb"):  # less is better: peer / ours
        cells += three([r[key] for r in ours], [r[key] for r in peer], common.ratio(med(peer, key), med(ours, key)))
    return [*cells, module.QUALITY, *qualities([r["quality"] for r in ours], [r["quality"] for r in peer])]


def qualities(ours: list, peer: list) -> list[str]:
    """Each side's median quality figure; a text figure is a digest of what a side produced
    (greedy tokens, served answers): then whether every round of both sides produced the same."""
    if isinstance(ours[0], str):
        same = "same" if len({*ours, *peer}) == 1 else "differ"
        return [same, same]
    return [common.fmt(common.median(ours)), common.fmt(common.median(peer))]


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "small sizes, to check every row runs end to end")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row (medians shown)")
    parser.add_argument(
        "--only", default="", help="comma-separated comparisons or rows (" + ", ".join(COMPARISONS) + "; or a case)"
    )
    parser.set_defaults(threads=min(2, os.cpu_count() or 1))
    threads = next(a for a in parser._actions if a.dest == "threads")
    threads.help = "torch threads of each side's process (OMP_NUM_THREADS; image servers: ONNX Runtime's default)"
    args = parser.parse_args()
    modules = [importlib.import_module(name) for name in COMPARISONS]
    rows = [(m, case) for m in modules for case in m.CASES]
    wanted = {w for w in args.only.split(",") if w}
    if unknown := wanted - {*COMPARISONS, *(case for _, case in rows)}:
        cases = ", ".join(case for _, case in rows)
        parser.error(
            f"--only {','.join(sorted(unknown))}: no such comparison or row; comparisons: "
            f"{', '.join(COMPARISONS)}; rows: {cases}"
        )
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: give 1 or more (3 or more for a spread worth reading)")
    load = os.getloadavg()[0]
    common.console.print(common.environment_line(args.threads))
    with common.temp_dir("peers", args.workdir, args.keep) as tmp:
        found = [
            run_case(module, case, tmp / f"{module.__name__}-{case}", args)
            for module, case in rows
            if not wanted or module.__name__ in wanted or case in wanted
        ]
    columns = ["row", "peer", "samples/s ours", "peer", "x"]
    for what in ("wall s", "CPU s", "peak MB"):
        columns += [f"{what} ours", "peer", "x"]
    columns += ["quality", "ours", "peer"]
    common.print_table(
        f"modelcycle against its peers (median ±half the spread of {args.rounds} interleaved round(s), "
        f"torch threads {args.threads})",
        columns,
        [row(f) for f in found],
        note="x: how many times better modelcycle is (samples/s ours/peer; time and memory peer/ours). Wall and CPU "
        "are the whole process; peak MB the largest process (training) or the sum over the server's processes.",
    )
    for f in found:
        common.console.print(f"{f['module'].CASES[f['case']]}: {f['what']}", style="dim")
    common.console.print(common.environment_line(args.threads) + f" (before: {load:.2f})")
    common.warn_if_busy(load, "the seconds are noisy; the interleaved ratios less so")


if __name__ == "__main__":
    main()
