"""Chapter 10: prompting patterns (prompt anatomy, in-context learning, chain-of-thought and self-consistency,
structured output, prompt optimisation), each measured on the course's local model through `labkit.llm`."""
