"""The Editor: a model plus its hypernetwork, editing one image at a time, stacking edits, image sets."""
