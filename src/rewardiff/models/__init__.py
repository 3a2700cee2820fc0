"""Model loading and LoRA handling, wrapped once so algorithms never load models themselves."""
