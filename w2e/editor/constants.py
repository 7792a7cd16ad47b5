"""The Editor's names and defaults, importable without torch: the default kept fraction, the
benchmark's locality sets and where a mask comes from."""

#: Default kept fraction of the site (the paper's rho as the authors' code uses it).
DEFAULT_RHO = 0.1
#: The benchmark's locality sets: images the base model barely gets right (the paper's, the
#: harshest test) and a random draw of ordinary in-distribution images.
NEAR_BOUNDARY = "near-boundary"
IN_DISTRIBUTION = "in-distribution"
#: Where a mask comes from: the model's hypernetwork, or the test-time search when it has none.
HYPERNETWORK_MASKS = "hypernetwork"
SEARCHED_MASKS = "test-time search"
