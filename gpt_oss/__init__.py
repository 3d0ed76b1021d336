"""gpt-oss-lab: GPT-OSS-architecture MoE language models, trained from scratch."""

from gpt_oss.model.config import ConfigError, ModelConfig
from gpt_oss.model.hf import export_hf, import_hf
from gpt_oss.model.model import GptOss
from gpt_oss.model.tokenizer import get_tokenizer
from gpt_oss.training.loading import load_model, load_vocabulary

__all__ = [
    "ConfigError",
    "GptOss",
    "ModelConfig",
    "export_hf",
    "get_tokenizer",
    "import_hf",
    "load_model",
    "load_vocabulary",
]
__version__ = "0.1.0"
