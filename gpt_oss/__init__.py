"""gpt-oss-lab: GPT-OSS-architecture MoE language models, trained from scratch."""

from gpt_oss.config import ConfigError, ModelConfig
from gpt_oss.hf import export_hf, import_hf
from gpt_oss.loading import load_model
from gpt_oss.model import GptOss
from gpt_oss.tokenizer import get_tokenizer

__all__ = ["ConfigError", "GptOss", "ModelConfig", "export_hf", "get_tokenizer", "import_hf", "load_model"]
__version__ = "0.1.0"
