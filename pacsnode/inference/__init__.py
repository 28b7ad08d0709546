"""Model card, runtimes (OpenVINO, ONNX Runtime) behind one Model, nnU-Net-style preprocessing, sliding window, pipeline."""

from pacsnode.inference.card import ModelCard, load_model_card
from pacsnode.inference.model import Model
from pacsnode.inference.pipeline import Prediction, run
from pacsnode.inference.preprocessing import Preprocessed, PreprocessingPlan, preprocess

__all__ = [
    "ModelCard",
    "load_model_card",
    "Model",
    "Prediction",
    "run",
    "Preprocessed",
    "PreprocessingPlan",
    "preprocess",
]
