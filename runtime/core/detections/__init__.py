"""The stream output folder: its layout (``layout.py``) and the writers of its tables, shared by ``stream`` and
``merge`` (runtime/field) and ``probe apply`` (runtime/archive)."""
