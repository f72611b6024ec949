"""Models: the family seam, prompts, loading, adapter chains, generation and the summarizer."""
