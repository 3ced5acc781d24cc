"""The worker side: Complete(d)P parameterisation, model, data and training loop. Never imports hpo_service."""

from trainer.config import TrainConfig
from trainer.export import load_export
from trainer.hparams import BaseHPs, MaterialisedHPs, Multipliers, apply_to_model, clip_grad_norm_, materialise
from trainer.layout import Layout, Rule, preset
from trainer.model import GPT, MODULE_TYPES, ModelConfig
from trainer.parameterisation import Parameterisation, Shape
from trainer.train import TrialResult, run_trial
from trainer.transfer import apply_export

__all__ = [
    "GPT",
    "MODULE_TYPES",
    "BaseHPs",
    "Layout",
    "MaterialisedHPs",
    "ModelConfig",
    "Multipliers",
    "Parameterisation",
    "Rule",
    "Shape",
    "TrainConfig",
    "TrialResult",
    "apply_export",
    "apply_to_model",
    "clip_grad_norm_",
    "load_export",
    "materialise",
    "preset",
    "run_trial",
]
