"""Training: the paper's two stages, the optional refine and ranking stages, data, augmentation, losses,
distributed training, evaluation and int8 calibration."""
