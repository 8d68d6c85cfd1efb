"""Training-free MASA compression: the budget is met, the error grows with it, the result reloads."""

import pytest
import torch

from pipelines.nn.attention_sharing import attention_parameters
from pipelines.nn.checkpoint import load_decoder, save_decoder
from pipelines.nn.decoder import Decoder, DecoderConfig
from pipelines.nn.masa_compress import compress_attention_masa


def model_and_calibration(seed: int = 0):
    torch.manual_seed(seed)
    cfg = DecoderConfig(vocab_size=64, dim=48, n_layers=6, n_heads=6, n_kv_heads=2, hidden_dim=96, max_seq_len=64)
    model = Decoder(cfg).eval()
    # Layers that share structure, as trained models' do: a common part plus a small own part.
    with torch.no_grad():
        for p in ("q", "k", "v", "o"):
            common = getattr(model.blocks[0].attn, f"{p}_proj").weight.clone()
            for block in model.blocks:
                w = getattr(block.attn, f"{p}_proj").weight
                w.copy_(common + 0.3 * w)
    calibration = torch.randint(0, 64, (8, 24)).tolist()
    return model, calibration


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_parameter_count_is_what_was_asked(ratio):
    model, calibration = model_and_calibration()
    before = attention_parameters(model)
    stats = compress_attention_masa(model, calibration, ratio, n_groups=2)
    assert stats["attention_parameters_before"] == before
    assert attention_parameters(model) == stats["attention_parameters_after"]
    assert ratio <= stats["reduction"] <= ratio + 0.1


def test_error_grows_with_the_ratio_and_refinement_helps():
    ids = torch.randint(0, 64, (2, 16))
    errors = {}
    for ratio, share in ((0.2, 0.3), (0.5, 0.3), (0.5, 0.0)):
        model, calibration = model_and_calibration()
        with torch.no_grad():
            reference = model(ids)
            compress_attention_masa(model, calibration, ratio, n_groups=2, refine_share=share)
            errors[ratio, share] = float((model(ids) - reference).pow(2).mean() / reference.pow(2).mean())
    assert errors[0.2, 0.3] < errors[0.5, 0.3]
    assert errors[0.2, 0.3] < 0.05


def test_compressed_decoder_saves_and_reloads(tmp_path):
    model, calibration = model_and_calibration()
    compress_attention_masa(model, calibration, 0.3, n_groups=3)
    ids = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        expected = model(ids)
    save_decoder(tmp_path / "m", model)
    again = load_decoder(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(again(ids), expected)
    assert attention_parameters(again) == attention_parameters(model)


def test_bad_ratio_is_refused():
    model, calibration = model_and_calibration()
    with pytest.raises(ValueError, match="ratio"):
        compress_attention_masa(model, calibration, 1.2)


def test_svd_baseline_meets_the_budget_and_reloads(tmp_path):
    from pipelines.nn.masa_compress import compress_attention_svd

    model, _ = model_and_calibration()
    ids = torch.randint(0, 64, (1, 9))
    stats = compress_attention_svd(model, 0.5)
    assert stats["reduction"] >= 0.5 and attention_parameters(model) == stats["attention_parameters_after"]
    with torch.no_grad():
        expected = model(ids)
    save_decoder(tmp_path / "svd", model)
    with torch.no_grad():
        torch.testing.assert_close(load_decoder(tmp_path / "svd")(ids), expected)


def test_masa_beats_per_layer_svd_when_layers_share_structure():
    from pipelines.nn.masa_compress import compress_attention_svd

    ids = torch.randint(0, 64, (2, 16))
    errors = {}
    for name in ("masa", "svd"):
        model, calibration = model_and_calibration()
        with torch.no_grad():
            reference = model(ids)
            if name == "masa":
                compress_attention_masa(model, calibration, 0.5, n_groups=1)
            else:
                compress_attention_svd(model, 0.5)
            errors[name] = float((model(ids) - reference).pow(2).mean())
    assert errors["masa"] < errors["svd"]


def test_lm_compress_command_writes_a_model_that_generates(tmp_path, capsys):
    from pipelines.cli import main
    from pipelines.data.text import TextTokenizer, reference_manual_text

    tokenizer = TextTokenizer.train_bpe([reference_manual_text("train")[:20000]], vocab_size=300)
    torch.manual_seed(0)
    model = Decoder(DecoderConfig(vocab_size=tokenizer.vocab_size, dim=48, n_layers=6, n_heads=6, n_kv_heads=2,
                                  hidden_dim=96, max_seq_len=64))
    save_decoder(tmp_path / "src", model, tokenizer)
    main(["lm", "compress", "--method", "masa", "--ratio", "0.3", "--groups", "2", "--ckpt", str(tmp_path / "src"),
          "--out", str(tmp_path / "masa"), "--calibration_sequences", "4", "--sequence_tokens", "16"])
    assert "−" in capsys.readouterr().out
    again = load_decoder(tmp_path / "masa")
    assert again.cfg.attention_sharing.kind == "masa-pca"
    main(["lm", "generate", "--model", str(tmp_path / "masa"), "--prompt", "abc", "--raw", "true",
          "--max_new_tokens", "4"])
    with pytest.raises(SystemExit):
        main(["lm", "compress", "--ratio", "0.3", "--ckpt", str(tmp_path / "src"), "--out", str(tmp_path / "masa")])
