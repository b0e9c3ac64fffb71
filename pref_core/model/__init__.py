"""The model: where the base comes from and its fingerprint, loading it, the preference heads and LoRA, losses,
adapter averaging."""
