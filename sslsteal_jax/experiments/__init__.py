"""Experiment orchestration: train_victim, steal (the main job), evaluate."""
