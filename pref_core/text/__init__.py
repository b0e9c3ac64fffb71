"""From a row to token ids: prompt templates, truncation to the token budget, batched tokenization and its cache."""
