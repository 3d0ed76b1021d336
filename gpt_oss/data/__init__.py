"""Data: a text source -> flat uint32 token files (cached, checked) -> training and eval loaders.

config (DataConfig, DataError) -> sources / hub (documents) -> prepare (token files, tokens.py's
format) -> loaders (batches). `python -m gpt_oss.data` prepares ahead of training.
"""
