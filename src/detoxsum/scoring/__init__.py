"""Scoring: toxicity classifiers and rewards, the learned reward model, ROUGE and the evaluation."""
