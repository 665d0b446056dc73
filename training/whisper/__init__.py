"""Whisper checkpoints (CTranslate2 / faster-whisper folders, OpenAI .pt) converted into Hugging Face folders."""
