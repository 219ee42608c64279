"""`twinlm glue`: the GLUE tasks fine-tuned over seeds, scored with GLUE's own metrics, one table and one chart.

    from twinlm.glue import GlueOptions, run_glue
    summary = run_glue(GlueOptions(model="../shared/data/checkpoints/all-MiniLM-L6-v2", out="runs/glue"))
"""

from .run import GlueOptions, run_glue
from .tasks import TASKS, GlueTask

__all__ = ["TASKS", "GlueOptions", "GlueTask", "run_glue"]
