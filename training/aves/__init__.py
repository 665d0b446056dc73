"""AVES (a HuBERT pre-trained on animal sounds): conversion of its TorchAudio/fairseq checkpoints to a local
transformers HuBERT folder (`vocalprobe convert-aves`)."""
