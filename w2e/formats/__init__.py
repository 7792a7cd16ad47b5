"""File formats with no model logic: Hugging Face Hub paths, the benchmark file, checkpoints."""
