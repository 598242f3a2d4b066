"""Reading datasets, format adapters, chat templates, tokenization, masks and batching."""
