"""The embedded demo: a synthetic fine-detail video QA task and a five-variant comparison on CPU."""
