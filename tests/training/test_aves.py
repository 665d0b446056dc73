"""AVES conversion: tiny random HuBERT checkpoints written in the real fairseq and TorchAudio key layouts.

The source checkpoints are built by renaming a Hugging Face model's weights into each layout with the renamers
below, which are written from the layouts' documentation (fairseq HubertModel, torchaudio Wav2Vec2Model) and share
no code with vocalprobe.training.aves.convert. Converting them back must reproduce the original model exactly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="torch (the train extra) is not installed")
transformers = pytest.importorskip("transformers", reason="transformers (the train extra) is not installed")

from typer.testing import CliRunner  # noqa: E402

from vocalprobe.runtime.core.errors import VocalprobeError  # noqa: E402
from vocalprobe.training.aves import checkpoints, reference  # noqa: E402
from vocalprobe.training.aves import convert as aves  # noqa: E402

torch.set_num_threads(1)

CONV = [(32, 10, 5), (32, 3, 2), (32, 3, 2)]


def tiny_config(*, norm: str = "group", conv_bias: bool = False, pre_ln: bool = False,
                mask: bool = True) -> transformers.HubertConfig:
    return transformers.HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=tuple(c[0] for c in CONV), conv_kernel=tuple(c[1] for c in CONV),
        conv_stride=tuple(c[2] for c in CONV), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        feat_extract_norm=norm, conv_bias=conv_bias, do_stable_layer_norm=pre_ln,
        mask_time_prob=0.05 if mask else 0.0)


def reference_model(config, seed: int = 1):
    torch.manual_seed(seed)
    model = transformers.HubertModel(config).eval()
    with torch.no_grad():  # default init leaves biases at 0 and norms at 1: randomise so a swap would show
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def hf_state(model) -> dict:
    """The model's weights with weight norm named weight_g / weight_v."""
    return {k.replace("parametrizations.weight.original0", "weight_g")
            .replace("parametrizations.weight.original1", "weight_v"): v.clone() for k, v in model.state_dict().items()}


def to_torchaudio(model, *, parametrized: bool = False) -> dict:
    """torchaudio Wav2Vec2Model layout: feature_extractor.* unchanged, feature_projection.* under encoder.,
    the HF encoder under encoder.transformer., no mask embedding."""
    out = {}
    for key, value in hf_state(model).items():
        if key == "masked_spec_embed":
            continue
        if parametrized:
            key = key.replace("conv.weight_g", "conv.parametrizations.weight.original0") \
                     .replace("conv.weight_v", "conv.parametrizations.weight.original1")
        if key.startswith("feature_projection."):
            key = "encoder." + key
        elif key.startswith("encoder."):
            key = "encoder.transformer." + key[len("encoder."):]
        out[key] = value
    return out


def to_fairseq(model, config) -> dict:
    """fairseq HubertModel layout (state dict of `checkpoint["model"]`), plus its pre-training heads."""
    layer_renames = {"attention.q_proj": "self_attn.q_proj", "attention.k_proj": "self_attn.k_proj",
                     "attention.v_proj": "self_attn.v_proj", "attention.out_proj": "self_attn.out_proj",
                     "layer_norm": "self_attn_layer_norm", "feed_forward.intermediate_dense": "fc1",
                     "feed_forward.output_dense": "fc2", "final_layer_norm": "final_layer_norm"}
    out = {}
    for key, value in hf_state(model).items():
        parts = key.split(".")
        if key == "masked_spec_embed":
            new = "mask_emb"
        elif parts[0] == "feature_extractor":
            n, module, param = parts[2], parts[3], parts[4]
            if module == "conv":  # Sequential(conv, dropout, norm?, gelu)
                new = f"feature_extractor.conv_layers.{n}.0.{param}"
            elif config.feat_extract_norm == "group":  # Fp32GroupNorm at index 2, layer 0 only
                new = f"feature_extractor.conv_layers.{n}.2.{param}"
            else:  # Sequential(TransposeLast, Fp32LayerNorm, TransposeLast) at index 2
                new = f"feature_extractor.conv_layers.{n}.2.1.{param}"
        elif key.startswith("feature_projection.layer_norm."):
            new = "layer_norm." + parts[-1]
        elif key.startswith("feature_projection.projection."):
            new = "post_extract_proj." + parts[-1]
        elif key.startswith("encoder.pos_conv_embed.conv."):
            new = "encoder.pos_conv.0." + parts[-1]
        elif key.startswith("encoder.layers."):
            module = ".".join(parts[3:-1])
            new = f"encoder.layers.{parts[2]}.{layer_renames[module]}.{parts[-1]}"
        else:
            assert key.startswith("encoder.layer_norm."), key
            new = key
        out[new] = value
    out["label_embs_concat"] = torch.randn(100, 16)
    out["final_proj.weight"] = torch.randn(16, 32)
    out["final_proj.bias"] = torch.randn(16)
    return out


def fairseq_cfg(config) -> dict:
    return {"_name": "hubert", "label_rate": 50.0,
            "extractor_mode": "default" if config.feat_extract_norm == "group" else "layer_norm",
            "conv_feature_layers": "[(32, 10, 5)] + [(32, 3, 2)] * 2", "conv_bias": config.conv_bias,
            "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64, "encoder_attention_heads": 2,
            "activation_fn": "gelu", "layer_norm_first": config.do_stable_layer_norm, "conv_pos": 16,
            "conv_pos_groups": 4, "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.0,
            "encoder_layerdrop": 0.05, "dropout_input": 0.1, "final_dim": 16, "mask_prob": 0.8}


def torchaudio_json(config) -> dict:
    return {"extractor_mode": f"{config.feat_extract_norm}_norm",
            "extractor_conv_layer_config": [list(c) for c in CONV], "extractor_conv_bias": config.conv_bias,
            "encoder_embed_dim": 32, "encoder_projection_dropout": 0.1, "encoder_pos_conv_kernel": 16,
            "encoder_pos_conv_groups": 4, "encoder_num_layers": 2, "encoder_num_heads": 2,
            "encoder_attention_dropout": 0.1, "encoder_ff_interm_features": 64, "encoder_ff_interm_dropout": 0.0,
            "encoder_dropout": 0.1, "encoder_layer_norm_first": config.do_stable_layer_norm,
            "encoder_layer_drop": 0.05}


def write_torchaudio(tmp_path: Path, model, config, *, parametrized: bool = False) -> Path:
    ckpt = tmp_path / "aves-tiny.torchaudio.pt"
    torch.save(to_torchaudio(model, parametrized=parametrized), ckpt)
    (tmp_path / "aves-tiny.torchaudio.model_config.json").write_text(json.dumps(torchaudio_json(config)))
    return ckpt


def assert_same_model(original, out_dir: Path, *, skip=()) -> None:
    converted = transformers.HubertModel.from_pretrained(str(out_dir)).eval()
    want, got = hf_state(original), hf_state(converted)
    assert set(got) == set(want) - set(skip)
    for key in got:
        assert torch.equal(got[key], want[key]), key
    generator = torch.Generator().manual_seed(3)
    for n in (5000, 12345):  # two lengths, one of them odd
        x = torch.randn(1, n, generator=generator)
        with torch.no_grad():
            a = original(x, output_hidden_states=True).hidden_states
            b = converted(x, output_hidden_states=True).hidden_states
        assert len(a) == len(b) == 3
        for ha, hb in zip(a, b):
            assert torch.equal(ha, hb)


@pytest.mark.parametrize("parametrized", [False, True], ids=["weight_g_v", "parametrizations"])
def test_torchaudio_round_trip(tmp_path, parametrized):
    config = tiny_config(mask=False)  # torchaudio releases have no mask embedding
    original = reference_model(config)
    ckpt = write_torchaudio(tmp_path, original, config, parametrized=parametrized)

    report = aves.convert_aves(ckpt, tmp_path / "out")  # config found beside the checkpoint (AVES naming)

    assert report.layout == "torchaudio" and report.dropped == ()
    assert report.config_source.endswith("aves-tiny.torchaudio.model_config.json")
    assert report.reference.startswith("functional")  # "+torchaudio" where torchaudio is installed
    assert report.max_abs_diff <= report.tolerance < 1e-4
    assert report.num_tensors == len(original.state_dict())
    assert_same_model(original, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "conversion.json").read_text())
    assert written["source_sha256"] == report.source_sha256 and written["layout"] == "torchaudio"
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["mask_time_prob"] == 0.0 and saved["feat_extract_norm"] == "group"
    assert json.loads((tmp_path / "out" / "preprocessor_config.json").read_text())["sampling_rate"] == 16000


@pytest.mark.parametrize("norm,conv_bias,pre_ln", [("group", False, False), ("layer", True, True)],
                         ids=["hubert-base-like", "layer-norm-pre-ln"])
def test_fairseq_round_trip(tmp_path, norm, conv_bias, pre_ln):
    config = tiny_config(norm=norm, conv_bias=conv_bias, pre_ln=pre_ln)
    original = reference_model(config)
    ckpt = tmp_path / "aves-tiny.pt"
    torch.save({"model": to_fairseq(original, config), "cfg": {"model": fairseq_cfg(config)}}, ckpt)

    report = aves.convert_aves(ckpt, tmp_path / "out")

    assert report.layout == "fairseq" and report.config_source == "checkpoint cfg"
    assert report.dropped == ("final_proj.bias", "final_proj.weight", "label_embs_concat")
    assert report.max_abs_diff <= report.tolerance
    assert_same_model(original, tmp_path / "out")  # includes masked_spec_embed <- mask_emb


def _torchaudio_models():
    try:
        from torchaudio.models import wav2vec2_model
    except (ImportError, OSError) as exc:
        pytest.skip(f"torchaudio not usable here ({exc}); its PyPI builds match torch 2.11 only (a venv with "
                    "torch==2.11.0 torchaudio==2.11.0 runs this comparison)")
    return wav2vec2_model


def test_real_torchaudio_checkpoint_matches_torchaudio(tmp_path):
    """Where torchaudio is installed: a checkpoint saved by torchaudio itself converts to a model whose hidden
    states equal torchaudio's extract_features (the reference the issue names)."""
    wav2vec2_model = _torchaudio_models()
    config = tiny_config(mask=False)
    torch.manual_seed(5)
    source = wav2vec2_model(**torchaudio_json(config), aux_num_out=None).eval()
    with torch.no_grad():
        for param in source.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    ckpt = tmp_path / "aves-tiny.torchaudio.pt"
    torch.save(source.state_dict(), ckpt)
    (tmp_path / "aves-tiny.torchaudio.model_config.json").write_text(json.dumps(torchaudio_json(config)))

    report = aves.convert_aves(ckpt, tmp_path / "out")

    assert report.reference == "functional+torchaudio"
    converted = transformers.HubertModel.from_pretrained(str(tmp_path / "out")).eval()
    x = torch.randn(1, 9000)
    with torch.no_grad():
        want, _ = source.extract_features(x)
        got = converted(x, output_hidden_states=True).hidden_states
    for a, b in zip(got[1:], want):
        assert (a - b).abs().max().item() < 1e-5


def test_fairseq_old_flat_args_dict(tmp_path):
    """Old fairseq checkpoints keep a flat `args` namespace; re-saved as a plain dict it is read like `cfg`."""
    config = tiny_config()
    original = reference_model(config)
    ckpt = tmp_path / "old.pt"
    torch.save({"model": to_fairseq(original, config), "args": fairseq_cfg(config), "cfg": None}, ckpt)
    assert aves.convert_aves(ckpt, tmp_path / "out").config_source == "checkpoint cfg"
    assert_same_model(original, tmp_path / "out")


def test_fairseq_state_dict_alone_needs_config(tmp_path):
    config = tiny_config()
    original = reference_model(config)
    ckpt = tmp_path / "weights.pt"
    torch.save(to_fairseq(original, config), ckpt)
    with pytest.raises(checkpoints.AvesConversionError, match="--config"):
        aves.convert_aves(ckpt, tmp_path / "out")
    cfg_json = tmp_path / "fairseq_model_cfg.json"
    cfg_json.write_text(json.dumps(fairseq_cfg(config)))
    aves.convert_aves(ckpt, tmp_path / "out", config_path=cfg_json)
    assert_same_model(original, tmp_path / "out")


def test_reference_matches_hf_model_directly():
    """The functional reference alone reproduces HubertModel, for both layer-norm orders and both CNN norms."""
    for config in (tiny_config(), tiny_config(norm="layer", conv_bias=True, pre_ln=True)):
        model = reference_model(config).double()
        state = hf_state(model)
        x = torch.randn(2, 7000, dtype=torch.float64)
        with torch.no_grad():
            want = model(x, output_hidden_states=True)
            got, got_last = reference.reference_hidden_states(state.__getitem__, torchaudio_json(config), x)
        assert len(got) == len(want.hidden_states) == 3
        for a, b in zip(got[:2] + [got_last], want.hidden_states[:2] + (want.last_hidden_state,)):
            assert (a - b).abs().max().item() < 1e-10


@pytest.mark.parametrize("field", ["do_stable_layer_norm", "conv_stride", "layer_norm_eps"])
def test_config_translation_error_is_caught_and_nothing_written(tmp_path, monkeypatch, field):
    """A HubertConfig that disagrees with the source's architecture (same tensor shapes) fails the numerical check:
    the reference reads the source's own arguments, not the translated config."""
    config = tiny_config(mask=False)
    ckpt = write_torchaudio(tmp_path, reference_model(config), config)
    translate = aves.hubert_config_from_torchaudio

    def mistranslate(cfg, *, mask_embedding):
        hf = translate(cfg, mask_embedding=mask_embedding)
        if field == "do_stable_layer_norm":
            hf.do_stable_layer_norm = not hf.do_stable_layer_norm
        elif field == "conv_stride":
            hf.conv_stride = (5, 2, 3)
        else:
            hf.layer_norm_eps = 1e-3
        return hf

    monkeypatch.setattr(aves, "hubert_config_from_torchaudio", mistranslate)
    with pytest.raises(checkpoints.AvesConversionError, match="differs from the|hidden state shape"):
        aves.convert_aves(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []  # temp dir cleaned up


def test_leftover_missing_and_mismatched_keys_are_named(tmp_path):
    config = tiny_config(mask=False)
    original = reference_model(config)
    state = to_torchaudio(original)
    state["encoder.transformer.layers.0.attention.extra.weight"] = torch.zeros(3)
    del state["encoder.transformer.layers.1.final_layer_norm.bias"]
    state["encoder.feature_projection.projection.bias"] = torch.zeros(31)
    ckpt = tmp_path / "bad.torchaudio.pt"
    torch.save(state, ckpt)
    (tmp_path / "bad.torchaudio.model_config.json").write_text(json.dumps(torchaudio_json(config)))
    with pytest.raises(checkpoints.AvesConversionError) as err:
        aves.convert_aves(ckpt, tmp_path / "out")
    message = str(err.value)
    assert "encoder.transformer.layers.0.attention.extra.weight" in message
    assert "encoder.layers.1.final_layer_norm.bias" in message
    assert "encoder.feature_projection.projection.bias: shape (31,)" in message
    assert not (tmp_path / "out").exists()


def test_unknown_config_keys_are_rejected(tmp_path):
    with pytest.raises(checkpoints.AvesConversionError, match="unknown encoder_typo"):
        config = torchaudio_json(tiny_config()) | {"encoder_typo": 1}
        checkpoints.hubert_config_from_torchaudio(config, mask_embedding=False)


_UNPICKLED: list[str] = []


def _record_unpickling():
    _UNPICKLED.append("ran")
    return argparse.Namespace()


class _Trap:
    def __reduce__(self):
        return (_record_unpickling, ())


def test_foreign_pickle_is_refused_with_instructions(tmp_path):
    config = tiny_config()
    ckpt = tmp_path / "aves-base-bio.pt"
    torch.save({"model": to_fairseq(reference_model(config), config),
                "args": argparse.Namespace(encoder_layers=2), "trap": _Trap()}, ckpt)
    with pytest.raises(checkpoints.ForeignPickleError) as err:
        aves.convert_aves(ckpt, tmp_path / "out")
    message = str(err.value)
    assert isinstance(err.value, VocalprobeError)
    assert "aves-base-bio.torchaudio.pt" in message and "weights_only=False" in message
    assert "aves-base-bio.plain.pt" in message
    assert _UNPICKLED == []  # nothing from the file was executed
    assert not (tmp_path / "out").exists()


def test_conv_layer_spec_is_parsed_without_eval():
    assert checkpoints._literal_conv_layers("[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2") == \
        [[512, 10, 5]] + [[512, 3, 2]] * 4 + [[512, 2, 2]] * 2
    with pytest.raises(checkpoints.AvesConversionError):
        checkpoints._literal_conv_layers("__import__('os').system('true')")


def test_existing_output_needs_force(tmp_path):
    config = tiny_config(mask=False)
    ckpt = write_torchaudio(tmp_path, reference_model(config), config)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(checkpoints.AvesConversionError, match="--force"):
        aves.convert_aves(ckpt, out)
    assert (out / "keep.txt").exists()
    aves.convert_aves(ckpt, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_default_out_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv(aves.AVES_DIR_ENV, raising=False)
    assert aves.default_aves_dir() == Path("artifacts/models/aves-bio")
    monkeypatch.setenv(aves.AVES_DIR_ENV, str(tmp_path / "elsewhere"))
    assert aves.default_aves_dir() == tmp_path / "elsewhere"


def test_cli_converts_and_reports_errors_in_one_line(tmp_path, monkeypatch):
    from vocalprobe.cli import app

    config = tiny_config(mask=False)
    original = reference_model(config)
    ckpt = write_torchaudio(tmp_path, original, config)
    monkeypatch.setenv(aves.AVES_DIR_ENV, str(tmp_path / "registry" / "aves-bio"))
    runner = CliRunner()

    result = runner.invoke(app, ["convert-aves", str(ckpt)])  # --out defaults to $VOCALPROBE_AVES_DIR
    assert result.exit_code == 0, result.output
    assert "max abs diff" in result.output
    assert_same_model(original, tmp_path / "registry" / "aves-bio")

    bare = tmp_path / "bare.pt"
    torch.save(to_torchaudio(original), bare)
    result = runner.invoke(app, ["convert-aves", str(bare), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 1
    assert "error:" in result.output and "--config" in result.output and "Traceback" not in result.output


def test_registry_loads_the_converted_folder(tmp_path, monkeypatch):
    """`aves-bio` in the backbone registry resolves to the converter's default output and loads cleanly."""
    from vocalprobe.training.backbones import load_backbone

    config = tiny_config(mask=False)
    original = reference_model(config)
    ckpt = write_torchaudio(tmp_path, original, config)
    monkeypatch.setenv(aves.AVES_DIR_ENV, str(tmp_path / "aves-bio"))
    aves.convert_aves(ckpt)  # out_dir defaults to the registry's folder

    backbone = load_backbone("aves-bio")
    assert backbone.family == "hubert" and backbone.num_layers == 2
    x = torch.randn(1, 6000)
    with torch.no_grad():
        a = original(x, output_hidden_states=True).hidden_states
        b = backbone.model(x, output_hidden_states=True).hidden_states
    assert all(torch.equal(p, q) for p, q in zip(a, b))
