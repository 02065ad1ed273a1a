"""modelcycle: a deep-learning model's whole life in one tool.

import modelcycle
modelcycle.prepare("flower_photos", "data/flowers")
run = modelcycle.train("configs/flowers.yaml", ["data.root=data/flowers", "run.name=flowers"])
modelcycle.evaluate(run)
modelcycle.predict(run, ["photo.jpg"])
"""

from modelcycle._version import __version__ as __version__  # re-exported
from modelcycle.errors import UserError

__all__ = [
    "prepare",
    "train",
    "distill",
    "evaluate",
    "predict",
    "iter_predict",
    "compare",
    "crossval",
    "train_ppo",
    "export_model",
    "bench",
    "prune_model",
    "quantize_int8",
    "merge_lora",
    "serve_models",
    "write_digits",
    "load_config",
    "tune",
    "Run",
    "register_task",
    "TaskPlugin",
    "TaskParts",
    "SetupContext",
    "UserError",
]


def __getattr__(name: str):
    # torch and friends load on first use, so `modelcycle --help` answers at once
    if name in __all__:
        from modelcycle import api

        return getattr(api, name)
    raise AttributeError(f"module 'modelcycle' has no attribute {name!r}")
