import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.cli import main
from pipelines.compress.lossless import CodecError
from pipelines.compress.lossless_checkpoint import compress_checkpoint, decompress_checkpoint, load_compressed
from pipelines.nn.checkpoint import load_decoder, save_decoder
from pipelines.nn.decoder import Decoder, DecoderConfig


def state():
    torch.manual_seed(0)
    return {"w.f32": torch.randn(64, 33), "w.bf16": torch.randn(300).to(torch.bfloat16),
            "w.f16": torch.randn(2, 3, 5).half(), "steps": torch.tensor(7), "mask": torch.tensor([True, False]),
            "empty": torch.zeros(0, 4)}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
        assert torch.equal(a[name].reshape(-1).view(torch.uint8), b[name].reshape(-1).view(torch.uint8)), name


def test_safetensors_round_trip_through_the_cli(tmp_path, capsys):
    save_file(state(), tmp_path / "m.safetensors")
    main(["compress", "lossless", "--ckpt", str(tmp_path / "m.safetensors"), "--out", str(tmp_path / "m.enec")])
    assert "ratio" in capsys.readouterr().out
    assert_same(load_compressed(tmp_path / "m.enec"), state())
    main(["compress", "lossless", "--ckpt", str(tmp_path / "m.enec"), "--out", str(tmp_path / "back.safetensors")])
    assert_same(load_file(tmp_path / "back.safetensors"), state())


def test_lightning_ckpt_state_dict(tmp_path):
    torch.save({"state_dict": state(), "epoch": 3}, tmp_path / "last.ckpt")
    compress_checkpoint(tmp_path / "last.ckpt", tmp_path / "last.enec")
    assert_same(load_compressed(tmp_path / "last.enec"), state())


def test_a_compressed_decoder_loads_directly(tmp_path):
    model = Decoder(DecoderConfig.tiny()).eval()
    save_decoder(tmp_path / "lm", model)
    compress_checkpoint(tmp_path / "lm" / "model.safetensors", tmp_path / "lm" / "model.enec")
    (tmp_path / "lm" / "model.safetensors").unlink()
    reloaded = load_decoder(tmp_path / "lm")
    ids = torch.randint(0, 256, (1, 9))
    assert torch.equal(reloaded(ids), model(ids))


def test_errors_keep_existing_files_and_name_the_problem(tmp_path):
    save_file(state(), tmp_path / "m.safetensors")
    compress_checkpoint(tmp_path / "m.safetensors", tmp_path / "m.enec")
    before = (tmp_path / "m.enec").read_bytes()
    with pytest.raises(FileExistsError):
        compress_checkpoint(tmp_path / "m.safetensors", tmp_path / "m.enec")
    assert (tmp_path / "m.enec").read_bytes() == before
    (tmp_path / "cut.enec").write_bytes(before[: len(before) // 2])
    with pytest.raises(CodecError):
        load_compressed(tmp_path / "cut.enec")
    flipped = bytearray(before)
    flipped[200] ^= 0x10
    (tmp_path / "flip.enec").write_bytes(bytes(flipped))
    with pytest.raises(CodecError):
        load_compressed(tmp_path / "flip.enec")
    with pytest.raises(FileNotFoundError):
        decompress_checkpoint(tmp_path / "nope.enec", tmp_path / "x.safetensors")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CodecError, match="junk.ckpt"):
        compress_checkpoint(tmp_path / "junk.ckpt", tmp_path / "junk.enec")
    assert not (tmp_path / "junk.enec").exists() and not list(tmp_path.glob("*.partial"))


def test_cli_reports_a_corrupt_file_in_one_line(tmp_path, capsys):
    (tmp_path / "bad.enec").write_bytes(b"ENECKPT1" + bytes(40))
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", "lossless", "--ckpt", str(tmp_path / "bad.enec"), "--out", str(tmp_path / "x.safetensors")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and "bad.enec" in err and "Traceback" not in err
    assert not (tmp_path / "x.safetensors").exists()
