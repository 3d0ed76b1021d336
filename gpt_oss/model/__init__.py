"""The GPT-OSS architecture: its config, the model and its pieces (attention, mixture of
experts, losses), number formats, the tokenizer, sampling, the Hugging Face format and size
estimates."""
