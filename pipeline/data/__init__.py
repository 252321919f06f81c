"""Training data: the streaming dataset, augmentations, labels and splits, the demo's synthetic videos."""
