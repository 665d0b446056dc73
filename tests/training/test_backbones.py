"""Backbone registry and loader: real tiny checkpoints saved with save_pretrained and loaded back (no network)."""

from __future__ import annotations

import json

import pytest
import torch

from vocalprobe.runtime.core.errors import VocalprobeError
from vocalprobe.training.backbones import (
    AVES_DIR_ENV,
    REGISTRY,
    BackboneError,
    aves_dir,
    load_backbone,
    make_tiny_checkpoint,
    resolve_device,
)


def test_registry_holds_the_papers_seven_and_whisper():
    whisper = {f"whisper-{size}{en}" for size in ("tiny", "base", "small") for en in ("", ".en")}
    assert set(REGISTRY) == {"aves-bio", "hubert", "wav2vec2", "wav2vec2-100h", "wav2vec2-960h", "wavlm",
                             "wavlm-100h"} | whisper
    assert {REGISTRY[name].hub_id for name in whisper} == {f"openai/{name}" for name in whisper}
    assert REGISTRY["hubert"].hub_id == "facebook/hubert-base-ls960"
    assert REGISTRY["wav2vec2"].hub_id == "facebook/wav2vec2-base"
    assert REGISTRY["wav2vec2-100h"].hub_id == "facebook/wav2vec2-base-100h"
    assert REGISTRY["wav2vec2-960h"].hub_id == "facebook/wav2vec2-base-960h"
    assert REGISTRY["wavlm"].hub_id == "microsoft/wavlm-base"
    assert REGISTRY["wavlm-100h"].hub_id == "patrickvonplaten/wavlm-libri-clean-100h-base"
    assert REGISTRY["aves-bio"].hub_id is None
    assert {s.name for s in REGISTRY.values() if s.kind == "PT+FT"} == {"wav2vec2-100h", "wav2vec2-960h",
                                                                        "wavlm-100h"}
    assert {s.family for s in REGISTRY.values()} == {"hubert", "wav2vec2", "wavlm", "whisper"}
    assert all(s.dim == 768 and s.num_layers == 12 for s in REGISTRY.values() if s.family != "whisper")
    assert {(s.dim, s.num_layers) for s in REGISTRY.values() if s.family == "whisper"} == {(384, 4), (512, 6),
                                                                                           (768, 12)}


@pytest.mark.parametrize("family", ["hubert", "wav2vec2", "wavlm"])
def test_tiny_checkpoint_roundtrip(tiny_checkpoints, family):
    backbone = load_backbone(tiny_checkpoints[family])
    assert backbone.family == family
    assert type(backbone.model).__name__.lower().startswith(family)
    assert not backbone.model.training
    assert backbone.num_layers == 2 and backbone.dim == 32
    assert backbone.spec is None and backbone.revision is None
    assert len(backbone.fingerprint) == 64
    config = json.loads((tiny_checkpoints[family] / "config.json").read_text())
    assert config["vocalprobe_untrained"] is True
    assert "untrained" in (tiny_checkpoints[family] / "README.md").read_text().lower()
    json.dumps(backbone.identity())  # JSON-able


def test_same_seed_same_weights_and_fingerprint(tmp_path):
    a = make_tiny_checkpoint("wavlm", tmp_path / "a", seed=5)
    b = make_tiny_checkpoint("wavlm", tmp_path / "b", seed=5)
    c = make_tiny_checkpoint("wavlm", tmp_path / "c", seed=6)
    ba, bb, bc = (load_backbone(p) for p in (a, b, c))
    assert ba.fingerprint == bb.fingerprint != bc.fingerprint
    for (name, pa), (_, pb) in zip(ba.model.state_dict().items(), bb.model.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_ctc_checkpoint_loads_its_base_model(tiny_ctc_checkpoint):
    from transformers import HubertForCTC, HubertModel

    backbone = load_backbone(tiny_ctc_checkpoint)
    assert isinstance(backbone.model, HubertModel)
    ctc = HubertForCTC.from_pretrained(tiny_ctc_checkpoint).eval()
    x = torch.randn(1, 8000)
    with torch.no_grad():
        expected = ctc.hubert(x).last_hidden_state
        got = backbone.model(x).last_hidden_state
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_unknown_name_lists_the_registry():
    with pytest.raises(BackboneError, match="not a registry name.*hubert"):
        load_backbone("no-such-model")


def test_missing_folder_config(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no config.json"):
        load_backbone(tmp_path / "empty")


def test_unreachable_hub_id_is_a_clear_error():
    # local_files_only makes the lookup fail at once, exactly as an unreachable hub does, without network access
    with pytest.raises(BackboneError, match="cannot load the config of hub id 'vocalprobe-tests/absent'"):
        load_backbone("vocalprobe-tests/absent", local_files_only=True)


def test_unsupported_family(tmp_path):
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8).save_pretrained(
        tmp_path / "bert")
    with pytest.raises(BackboneError, match="model_type 'bert' is not supported"):
        load_backbone(tmp_path / "bert")


def test_checkpoint_with_missing_weights_is_refused(tmp_path, tiny_checkpoints):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "broken"
    shutil.copytree(tiny_checkpoints["hubert"], folder)
    weights = load_file(folder / "model.safetensors")
    dropped = [k for k in weights if "encoder.layers.1." in k]
    assert dropped
    save_file({k: v for k, v in weights.items() if k not in dropped}, folder / "model.safetensors",
              metadata={"format": "pt"})
    with pytest.raises(BackboneError, match="missing"):
        load_backbone(folder)


def test_revision_rejected_for_local_folder(tiny_checkpoints):
    with pytest.raises(BackboneError, match="revision"):
        load_backbone(tiny_checkpoints["hubert"], revision="main")


def test_aves_dir_env_override(monkeypatch, tmp_path, tiny_checkpoints):
    monkeypatch.delenv(AVES_DIR_ENV, raising=False)
    assert str(aves_dir()).replace("\\", "/") == "artifacts/models/aves-bio"
    monkeypatch.setenv(AVES_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(BackboneError, match="aves-bio: no converted checkpoint"):
        load_backbone("aves-bio")
    monkeypatch.setenv(AVES_DIR_ENV, str(tiny_checkpoints["hubert"]))
    backbone = load_backbone("aves-bio")
    assert backbone.name == "aves-bio" and backbone.spec is REGISTRY["aves-bio"] and backbone.family == "hubert"


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(VocalprobeError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(VocalprobeError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_state_dict_fingerprint_follows_the_weights(tiny_checkpoints):
    from vocalprobe.training.backbones import state_dict_fingerprint

    a = load_backbone(tiny_checkpoints["wav2vec2"]).model
    b = load_backbone(tiny_checkpoints["wav2vec2"]).model
    assert state_dict_fingerprint(a) == state_dict_fingerprint(b)
    with torch.no_grad():
        b.encoder.layers[1].final_layer_norm.bias[0] += 1e-3
    assert state_dict_fingerprint(a) != state_dict_fingerprint(b)


@pytest.mark.parametrize("given", ["bb/small-hubrt", "./small-hubrt", "../bb/small-hubrt", "bb/sub/small-hubrt"])
def test_a_mistyped_local_path_is_an_error_at_once_not_a_hub_lookup(tmp_path, monkeypatch, given):
    import transformers

    (tmp_path / "bb").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work" if given.startswith("..") else tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("a path was sent to the hub")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", no_network)
    with pytest.raises(BackboneError, match="backbone folder not found"):
        load_backbone(given)


def test_backbone_family_without_loading_weights(tiny_checkpoints, tmp_path):
    from vocalprobe.training.backbones import BackboneError, backbone_family

    assert backbone_family("whisper-tiny.en") == "whisper" and backbone_family("wavlm-100h") == "wavlm"
    for family, folder in tiny_checkpoints.items():
        assert backbone_family(folder) == family
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BackboneError, match="cannot read model_type"):
        backbone_family(tmp_path)
