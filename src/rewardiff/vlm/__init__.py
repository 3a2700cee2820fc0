"""Vision-language back-ends (transformers image-text-to-text, OpenAI-compatible endpoints, the
shapes world's stand-in): ask a question about each image, get text and, where the back-end gives
them, the first answer token's log-probabilities. Used by the captioners and the `vlm` reward."""
