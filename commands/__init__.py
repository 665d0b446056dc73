"""The `vocalprobe` command line: one module per command group, each its own ``typer.Typer()``, joined by ``cli.py``.

Command modules import only typer and each other at import time; the work (runtime, training, export) is imported
inside each command's body, so ``vocalprobe --help`` loads none of it and the runtime commands run without torch.
"""
