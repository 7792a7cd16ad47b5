"""Loading a model folder or a timm model into a ModelBundle, and the bundled architectures."""
