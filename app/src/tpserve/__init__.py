"""tpserve: a tensor-parallel LLM service; one process per rank, rank 0 serves HTTP."""

__version__ = "0.1.0"
