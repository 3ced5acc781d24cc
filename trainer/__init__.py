"""The worker side: Complete(d)P parameterisation, model, data and training loop. Never imports hpo_service."""

from trainer.config import TrainConfig
from trainer.hparams import BaseHPs, MaterialisedHPs, Multipliers, apply_to_model, materialise
from trainer.model import GPT, MODULE_TYPES, ModelConfig
from trainer.parameterisation import Parameterisation, Shape
from trainer.train import TrialResult, run_trial

__all__ = [
    "GPT",
    "MODULE_TYPES",
    "BaseHPs",
    "MaterialisedHPs",
    "ModelConfig",
    "Multipliers",
    "Parameterisation",
    "Shape",
    "TrainConfig",
    "TrialResult",
    "apply_to_model",
    "materialise",
    "run_trial",
]
