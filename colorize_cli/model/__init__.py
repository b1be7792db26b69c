"""The model: networks, VGG features, the Lab colour space, the preprocessing training and inference share,
bundles and the registry of bundled models, int8, devices, CUDA graphs, and the ``Colorizer`` (arrays in,
samples out). Knows nothing of folders, image files, progress or exit codes."""
