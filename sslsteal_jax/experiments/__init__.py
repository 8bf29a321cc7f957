"""Experiment orchestration: train_victim, steal (the main job), evaluate,
watermark_victim (rotation-watermarked victim), verify (owner-side watermark and
dataset-inference verification of suspect encoders)."""
