"""``modelcycle predict`` on a folder: images/second of the batched path against the old one.

The script writes photo-like JPEGs (512x512 by default), trains a one-epoch model on them (its weights do not
matter, its cost does: ``--model`` at ``--image-size``), and times answering every file with:

* old path (the baseline): what `predict` did before it answered files one by one: every file
  fully decoded once to check it (``probe_image``), then all of them decoded again through a
  DataLoader without workers, in batches of 256; one bad file stopped everything;
* modelcycle.iter_predict at batch sizes 1 and 32 (decoding in its thread pool, a batch ahead of
  the model, each file answered or given its own error), and at 32 with one decoding thread;
* a DataLoader with worker processes at batch 32 (``predict_items``): the alternative to the
  thread pool, which would give no per-file errors; its workers start on every call.

Rounds alternate between the paths; the table shows the median rate and the ratio to the old path.
"""

from __future__ import annotations

import time

import common
import modelcycle
from modelcycle.data.datasets import default_workers
from modelcycle.data.images import probe_image
from modelcycle.evaluation import predict as predict_module
from modelcycle.evaluation.inference import predict_items
from modelcycle.export.runtime import load_predictor


def old_predict(run, paths) -> int:
    """The code `predict` ran before batching (git 70ec667), minus its top-k formatting."""
    predictor = load_predictor(run)
    for path in paths:
        probe_image(path)
    return len(predict_items(predictor, [(p, 0) for p in paths], workers=0))


def new_predict(run, paths, batch_size: int, threads: int) -> int:
    saved, predict_module.DECODE_THREADS = predict_module.DECODE_THREADS, threads
    try:
        return sum("label" in row for row in modelcycle.iter_predict(run, paths, batch_size=batch_size))
    finally:
        predict_module.DECODE_THREADS = saved


def loader_predict(run, paths) -> int:
    return len(predict_items(load_predictor(run), [(p, 0) for p in paths], batch_size=32, workers=default_workers()))


def rate(fn, count: int):
    def measure() -> float:
        start = time.perf_counter()
        answered = fn()
        assert answered == count, f"{answered} of {count} answered"
        return count / (time.perf_counter() - start)

    return measure


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0], "smoke run: 64 images, one round")
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--photo-size", type=int, default=512, help="side of the JPEGs written")
    parser.add_argument("--image-size", type=int, default=64, help="the model's input side")
    parser.add_argument("--model", default="simple_cnn")
    parser.add_argument("--width", type=int, default=16, help="simple_cnn's width (model.args)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    common.quick_default(args, "images", 64)
    common.quick_default(args, "rounds", 1)
    load_before = __import__("os").getloadavg()[0]
    threads = common.set_threads(args.threads)
    with common.temp_dir("predict", args.workdir, args.keep) as root:
        paths = sorted(common.write_image_folder(root / "raw", args.images, args.photo_size, classes=4))
        modelcycle.prepare(root / "raw", root / "data", val=0.2, seed=0)
        overrides = [
            f"data.root={root / 'data'}",
            f"data.image_size={args.image_size}",
            f"model.name={args.model}",
            f"model.args={{width: {args.width}}}" if args.model == "simple_cnn" else "model.args={}",
            f"run.dir={root / 'runs'}",
            "run.name=bench",
            "train.epochs=1",
            "train.device=cpu",
        ]
        run = modelcycle.train(modelcycle.load_config(None, overrides), progress=False).path
        decode_threads = predict_module.DECODE_THREADS
        runs = {
            "old path (probe each, then batch 256)": rate(lambda: old_predict(run, paths), len(paths)),
            "iter_predict, batch 1": rate(lambda: new_predict(run, paths, 1, decode_threads), len(paths)),
            "iter_predict, batch 32": rate(lambda: new_predict(run, paths, 32, decode_threads), len(paths)),
            "iter_predict, batch 32, 1 decode thread": rate(lambda: new_predict(run, paths, 32, 1), len(paths)),
            f"DataLoader, {default_workers()} workers, batch 32": rate(lambda: loader_predict(run, paths), len(paths)),
        }
        rates = common.alternate(runs, args.rounds)
    baseline = common.median(rates["old path (probe each, then batch 256)"])
    rows = [
        [name, common.median(values), common.spread(values), f"{common.ratio(common.median(values), baseline):.2f}x"]
        for name, values in rates.items()
    ]
    common.print_table(
        f"predict: {args.images} JPEGs {args.photo_size}x{args.photo_size} -> {args.model} at {args.image_size} px",
        ["path", "images/s (median)", f"range over {args.rounds} rounds", "vs old path"],
        rows,
        note=f"{common.environment_line(threads)}; {decode_threads} decode threads by default",
    )
    common.warn_if_busy(load_before, "the rates are low and noisy")
    batched = common.median(rates["iter_predict, batch 32"])
    common.verdict(batched >= baseline, f"batch 32 answers {batched / baseline:.2f}x as many images/s as the old path")


if __name__ == "__main__":
    main()
