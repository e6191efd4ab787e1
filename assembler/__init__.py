"""assembler: container-first VM image assembler."""

__version__ = "0.1.0"
