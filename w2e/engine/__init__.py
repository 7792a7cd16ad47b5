"""The editing engine: the edit site, the split forward pass, weight overrides, sparse edits and masked fine-tuning."""
