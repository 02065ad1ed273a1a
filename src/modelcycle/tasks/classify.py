"""Image classification (``run.task=classify``, the default): the plugin. The step and the set-up
are tasks/images.py, shared with distillation; a classify run with ``distill.teacher`` set learns
from that teacher too (tasks/distill.py), as ``modelcycle distill`` runs do."""

from __future__ import annotations

from modelcycle.config import Config
from modelcycle.tasks import distill
from modelcycle.tasks.images import IMAGE_PLUGIN_FIELDS, ClassifySetup, ClassifyTask, portable, run_setup, setup
from modelcycle.tasks.plugin import SetupContext, TaskParts, TaskPlugin

__all__ = ["ClassifySetup", "ClassifyTask", "setup", "portable", "PLUGIN"]


def _setup(config: Config, ctx: SetupContext) -> TaskParts:
    return run_setup(config, ctx, distill.attach)


PLUGIN = TaskPlugin(
    name="classify",
    setup=_setup,
    **IMAGE_PLUGIN_FIELDS,
    description="image classification on a folder made by `modelcycle prepare`",
)
