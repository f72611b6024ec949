"""Data: reading sources, splits, the filter's rules, training features, preference pairs and
dialogue files."""
