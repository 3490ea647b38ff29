"""Labelers: the Ollama vision LLM and the teacher model (see issue "Labelers")."""
