"""The shapes world's judges: tiny transformers models of the real judges' classes (CLIP, OWLv2,
BLIP), trained on rendered images only and loaded by the real rewards. Never imports the oracle."""
