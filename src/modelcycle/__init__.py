"""modelcycle: a deep-learning model's whole life in one tool.

    import modelcycle
    modelcycle.prepare("flower_photos", "data/flowers")
    run = modelcycle.train("configs/flowers.yaml", ["data.root=data/flowers", "run.name=flowers"])
    modelcycle.evaluate(run)
    modelcycle.predict(run, ["photo.jpg"])
"""

from modelcycle.api import Run, crossval, evaluate, load_config, predict, prepare, train, write_digits
from modelcycle.errors import UserError

__version__ = "0.1.0"
__all__ = ["prepare", "train", "evaluate", "predict", "crossval", "write_digits", "load_config", "Run", "UserError"]
