"""The MemGPT agent: the step loop, the context budget and memory, and the functions the model calls."""
