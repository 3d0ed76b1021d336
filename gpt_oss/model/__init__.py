"""The GPT-OSS architecture: its config, the model and its pieces (attention, mixture of
experts, losses), the tokenizer, sampling, the Hugging Face format and size estimates."""
