"""models layer: built-in CNNs, parameter/MAC counts, training, checkpoints and the model cache."""

from qubocompress.models.stats import count_macs, count_params, describe
from qubocompress.models.train import (
    TrainConfig,
    default_cache_dir,
    default_config,
    evaluate,
    evaluate_loss,
    load_checkpoint,
    load_or_train,
    resolve_device,
    save_checkpoint,
    train,
)
from qubocompress.models.zoo import MODELS, build_model

__all__ = [
    "MODELS",
    "TrainConfig",
    "build_model",
    "count_macs",
    "count_params",
    "default_cache_dir",
    "default_config",
    "describe",
    "evaluate",
    "evaluate_loss",
    "load_checkpoint",
    "load_or_train",
    "resolve_device",
    "save_checkpoint",
    "train",
]
