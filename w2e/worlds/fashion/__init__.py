"""The fashion world: a Fashion-MNIST ViT with held-out subpopulations, its benchmark and hypernetwork."""
