"""Gemma3 (a prefix-LM VLM): for now only its tiny random checkpoint, used by kernel tests."""
