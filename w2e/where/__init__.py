"""Where to edit: the hypernetwork, CutMix, mask search, meta-training and mask diagnostics."""
