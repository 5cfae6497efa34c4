"""distill-kit: what LLM knowledge distillation costs in energy, and what it buys in quality."""

__version__ = "0.1.0"
