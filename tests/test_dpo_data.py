"""Preference data for Diffusion-DPO: JSONL and `datasets` sources, bad rows, the latent cache,
and offline training that resumes exactly."""

import io
import json

import pytest
import torch
from PIL import Image
from test_train import _final_weights, _rows, tiny_config

from ddrl.config import ConfigError, DataConfig
from ddrl.config_checks import validate
from ddrl.data import DataError, pair_latents, read_pair_rows
from ddrl.data.latent_cache import preprocess
from helpers import train
from ddrl.images.loop import ImageRun

PROMPTS = ["a red circle", "a blue square", "two green triangles"]


def _image(seed: int, size=(56, 40)) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


def _png(seed: int) -> bytes:
    buf = io.BytesIO()
    _image(seed).save(buf, format="PNG")
    return buf.getvalue()


def _jsonl(folder, n=6, extra_lines=()):
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        for k in ("a", "b"):
            _image(2 * i + (k == "b")).save(folder / "img" / f"{i}{k}.png")
        lines.append(json.dumps({"prompt": PROMPTS[i % 3], "chosen": f"img/{i}a.png", "rejected": f"img/{i}b.png"}))
    (folder / "pairs.jsonl").write_text("\n".join(lines + list(extra_lines)) + "\n")
    return folder / "pairs.jsonl"


@pytest.mark.parametrize("line, why", [
    ("{not json", "not JSON"),
    (json.dumps({"prompt": "a red circle", "chosen": "img/0a.png"}), "rejected must be non-empty text"),
    (json.dumps({"prompt": "a red circle", "chosen": "img/0a.png", "rejected": "img/none.png"}), "no image at"),
    (json.dumps({"prompt": "a red circle", "chosen": "img/0a.png", "rejected": "img/0b.png", "label": 1}),
     "unknown field"),
])
def test_a_bad_jsonl_row_names_its_line_or_is_skipped_and_counted(tmp_path, line, why):
    path = _jsonl(tmp_path, n=3, extra_lines=[line])
    with pytest.raises(DataError, match=rf"pairs.jsonl:4: {why}.*skip_bad_rows"):
        read_pair_rows(DataConfig(pairs=str(path)))
    rows = read_pair_rows(DataConfig(pairs=str(path), skip_bad_rows=True))
    assert len(rows.rows) == 3 and len(rows.skipped) == 1 and rows.skipped[0].startswith(f"{path}:4: {why}")


def test_an_undecodable_image_is_named_when_its_latents_are_cached(tiny_sd_folder, tmp_path):
    from ddrl.models.loading import load_policy

    path = _jsonl(tmp_path, n=3)
    (tmp_path / "img" / "1b.png").write_bytes(_png(0)[:60])  # a truncated PNG
    policy = load_policy(str(tiny_sd_folder))
    rows = read_pair_rows(DataConfig(pairs=str(path)))
    with pytest.raises(DataError, match=r"pairs.jsonl:2: cannot decode the image .*1b.png"):
        pair_latents(rows, policy, "tiny", 32, False, tmp_path / "cache", skip_bad_rows=False, progress=False)
    data, _, cached = pair_latents(rows, policy, "tiny", 32, False, tmp_path / "cache", skip_bad_rows=True,
                                   progress=False)
    assert not cached and len(data) == 2 and data.skipped[0].startswith(f"{path}:2: cannot decode")
    with pytest.raises(DataError, match="pairs.jsonl:2"):  # a cache with skipped rows still needs skip_bad_rows
        pair_latents(rows, policy, "tiny", 32, False, tmp_path / "cache", skip_bad_rows=False, progress=False)


def _pickapic_parquet(path, labels):
    datasets = pytest.importorskip("datasets")
    n = len(labels)
    datasets.Dataset.from_dict({
        "caption": [PROMPTS[i % 3] for i in range(n)], "jpg_0": [_png(2 * i) for i in range(n)],
        "jpg_1": [_png(2 * i + 1) for i in range(n)], "label_0": labels}).to_parquet(str(path))
    return path


def test_pickapic_columns_order_each_pair_and_drop_ties(tmp_path):
    """label_0 = 1 prefers jpg_0, 0 prefers jpg_1, 0.5 is a tie and is dropped (as the reference)."""
    path = _pickapic_parquet(tmp_path / "pp.parquet", [1.0, 0.0, 0.5, 1.0])
    rows = read_pair_rows(DataConfig(pairs=str(path)))
    assert rows.ties == 1 and [r.prompt for r in rows.rows] == [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    from ddrl.data.pairs import open_image

    def same(ref, seed):
        return open_image(ref).tobytes() == _image(seed).tobytes()

    assert same(rows.rows[0].chosen, 0) and same(rows.rows[0].rejected, 1)  # label 1: jpg_0 wins
    assert same(rows.rows[1].chosen, 3) and same(rows.rows[1].rejected, 2)  # label 0: jpg_1 wins


def test_a_save_to_disk_folder_with_image_features_and_custom_columns_reads_its_split(tmp_path):
    """A DatasetDict saved with save_to_disk, images as datasets.Image features (decoded to PIL by
    default; read back as their encoded bytes) and other column names."""
    datasets = pytest.importorskip("datasets")
    n = 3
    ds = datasets.Dataset.from_dict({"text": PROMPTS, "a": [_image(2 * i) for i in range(n)],
                                     "b": [_image(2 * i + 1) for i in range(n)], "pref_a": [0.0, 1.0, 0.5]},
                                    features=datasets.Features({"text": datasets.Value("string"), "a": datasets.Image(),
                                                                "b": datasets.Image(), "pref_a": datasets.Value("float32")}))
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    rows = read_pair_rows(DataConfig(pairs=str(tmp_path / "dd"), split="validation", caption_column="text",
                                     image_0_column="a", image_1_column="b", label_column="pref_a"))
    from ddrl.data.pairs import open_image

    assert rows.ties == 1 and [r.prompt for r in rows.rows] == PROMPTS[:2]
    assert open_image(rows.rows[0].chosen).tobytes() == _image(1).tobytes()  # pref_a 0: b wins
    assert open_image(rows.rows[1].chosen).tobytes() == _image(2).tobytes()  # pref_a 1: a wins


def test_a_bad_label_or_missing_column_is_named(tmp_path):
    path = _pickapic_parquet(tmp_path / "pp.parquet", [1.0, 2.0, 0.0])
    with pytest.raises(DataError, match=r"pp.parquet row 1: label_0 must be 0, 0.5 or 1, got 2.0"):
        read_pair_rows(DataConfig(pairs=str(path)))
    assert len(read_pair_rows(DataConfig(pairs=str(path), skip_bad_rows=True)).rows) == 2
    with pytest.raises(DataError, match=r"no column for caption \('prompt'\).*data.caption_column"):
        read_pair_rows(DataConfig(pairs=str(path), caption_column="prompt"))


def test_an_unreachable_hub_dataset_or_missing_path_is_a_config_error(tiny_sd_folder):
    with pytest.raises(ConfigError, match="does not exist"):
        validate(tiny_config(tiny_sd_folder, **{"train.algorithm": "dpo", "data.pairs": "no/such/file.jsonl"}))
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="cannot load it as a dataset"):
        read_pair_rows(DataConfig(pairs="nobody-here/no-such-dataset"))


def test_dpo_needs_pairs_and_online_algorithms_need_groups(tiny_sd_folder):
    with pytest.raises(ConfigError, match="set data.pairs"):
        validate(tiny_config(tiny_sd_folder, **{"train.algorithm": "dpo"}))
    with pytest.raises(ConfigError, match="images_per_prompt >= 2"):
        validate(tiny_config(tiny_sd_folder, **{"train.algorithm": "online-dpo"}))
    with pytest.raises(ConfigError, match="must divide train.batch_size"):
        validate(tiny_config(tiny_sd_folder, **{"train.algorithm": "sft", "sample.images_per_prompt": 3,
                                                "sample.batch_size": 6, "train.batch_size": 2}))


def test_a_square_image_at_the_resolution_passes_unchanged_and_others_are_centre_cropped():
    img = _image(7, size=(32, 32))
    expected = torch.from_numpy(__import__("numpy").array(img)).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.equal(preprocess(img, 32), expected)
    wide = Image.new("RGB", (64, 32))
    wide.paste((255, 0, 0), (0, 0, 16, 32))  # a red band on the left quarter, cropped away
    x = preprocess(wide, 32)
    assert x.shape == (3, 32, 32) and float(x[0].max()) == -1.0


def _dpo_config(folder, pairs, cache, run, **extra):
    return tiny_config(folder, **{"train.algorithm": "dpo", "data.pairs": str(pairs), "data.cache_dir": str(cache),
                                  "data.pairs_per_epoch": 4, "train.batch_size": 2, "run.output_dir": str(run),
                                  "train.learning_rate": 1e-3} | extra)


def test_latents_are_cached_once_and_reused(tiny_sd_folder, tmp_path):
    pairs = _jsonl(tmp_path / "data")
    first = ImageRun(_dpo_config(tiny_sd_folder, pairs, tmp_path / "cache", tmp_path / "a"), tmp_path / "a")
    files = list((tmp_path / "cache").glob("*/latents.safetensors"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = ImageRun(_dpo_config(tiny_sd_folder, pairs, tmp_path / "cache", tmp_path / "b"), tmp_path / "b")
    assert files[0].stat().st_mtime_ns == mtime
    for k, v in first.algorithm.data.tensors.items():
        assert torch.equal(v, second.algorithm.data.tensors[k])
    # mirrored images are a different cache (both orientations encoded)
    ImageRun(_dpo_config(tiny_sd_folder, pairs, tmp_path / "cache", tmp_path / "c", **{"data.hflip": False}), tmp_path / "c")
    assert len(list((tmp_path / "cache").glob("*/latents.safetensors"))) == 2


def test_offline_dpo_resumes_exactly_and_saves_its_position(tiny_sd_folder, tmp_path):
    """6 pairs, 4 per epoch: epoch 2 crosses into the second shuffled pass. 2 epochs straight equal
    1 epoch and a resumed second, weights bit for bit and every logged metric."""
    pairs = _jsonl(tmp_path / "data")
    straight = tmp_path / "straight"
    train(_dpo_config(tiny_sd_folder, pairs, tmp_path / "cache", straight, **{"run.epochs": 2}), straight)
    split = tmp_path / "split"
    train(_dpo_config(tiny_sd_folder, pairs, tmp_path / "cache", split, **{"run.epochs": 1}), split)
    state = json.loads(sorted((split / "checkpoints").glob("epoch_*"))[-1].joinpath("state.json").read_text())
    assert json.dumps(state).count('"position": 4') == 1
    train(_dpo_config(tiny_sd_folder, pairs, tmp_path / "cache", split, **{"run.epochs": 2}), split, resume=True)
    a, b = _final_weights(straight), _final_weights(split)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(straight) == _rows(split)
    assert [r["data/pairs_seen"] for r in _rows(straight)] == [4, 8]


def test_a_sixteen_bit_image_is_refused_naming_its_line_not_read_as_white(tiny_sd_folder, tmp_path):
    """PIL converts a 16-bit PNG to RGB by clipping at 255 (a nearly white image); the pairs
    reader uses ddrl's one decoder (decode.py), which refuses it."""
    import numpy as np

    from ddrl.models.loading import load_policy

    path = _jsonl(tmp_path, n=3)
    Image.fromarray(np.full((40, 56), 20000, np.uint16)).save(tmp_path / "img" / "2a.png")
    rows = read_pair_rows(DataConfig(pairs=str(path)))
    with pytest.raises(DataError, match=r"pairs.jsonl:3: the image .*img/2a.png has mode 'I;16'"):
        pair_latents(rows, load_policy(str(tiny_sd_folder)), "tiny", 32, False, tmp_path / "cache",
                     skip_bad_rows=False, progress=False)


def test_a_pair_of_one_image_is_a_bad_row(tiny_sd_folder, tmp_path):
    """The same file on both sides is found when the rows are read; two files with the same
    pixels when they are decoded. Either is refused naming its line, or skipped and counted."""
    from ddrl.models.loading import load_policy

    same_path = json.dumps({"prompt": "a red circle", "chosen": "img/0a.png", "rejected": "./img/0a.png"})
    path = _jsonl(tmp_path, n=3, extra_lines=[same_path])
    with pytest.raises(DataError, match=r"pairs.jsonl:4: chosen and rejected are the same image"):
        read_pair_rows(DataConfig(pairs=str(path)))
    assert len(read_pair_rows(DataConfig(pairs=str(path), skip_bad_rows=True)).rows) == 3
    path = _jsonl(tmp_path, n=3)
    _image(2).save(tmp_path / "img" / "1b.png")  # row 2's rejected now has its chosen's pixels
    rows = read_pair_rows(DataConfig(pairs=str(path)))
    policy = load_policy(str(tiny_sd_folder))
    with pytest.raises(DataError, match=r"pairs.jsonl:2: chosen and rejected are the same image"):
        pair_latents(rows, policy, "tiny", 32, False, tmp_path / "c", skip_bad_rows=False, progress=False)
    data, _, _ = pair_latents(rows, policy, "tiny", 32, False, tmp_path / "c2", skip_bad_rows=True, progress=False)
    assert len(data) == 2 and "same image" in data.skipped[0]


def test_captions_obey_the_training_prompt_rules(tiny_sd_folder, tmp_path):
    """A caption longer than the text encoder reads is refused, not cut (as a training prompt);
    with the built-in model, a word outside its vocabulary too. Each names the row."""
    from ddrl.data import check_captions
    from ddrl.models.loading import load_policy

    long = " ".join(["circle"] * 30)
    path = _jsonl(tmp_path, n=3, extra_lines=[
        json.dumps({"prompt": long, "chosen": "img/0a.png", "rejected": "img/0b.png"})])
    rows = read_pair_rows(DataConfig(pairs=str(path)))
    tiny = load_policy(str(tiny_sd_folder))
    with pytest.raises(DataError, match=r"pairs.jsonl:4: caption: the prompt \('circle circle.*'\) is 32 tokens; the text "
                       r"encoder reads at most 16.*skip_bad_rows"):
        check_captions(rows, tiny, skip=False)
    kept = check_captions(rows, tiny, skip=True)
    assert len(kept.rows) == 3 and kept.skipped[0].startswith(f"{path}:4: caption: the prompt")
    path = _jsonl(tmp_path / "v", n=2, extra_lines=[
        json.dumps({"prompt": "a purple dog", "chosen": "img/0a.png", "rejected": "img/0b.png"})])
    with pytest.raises(DataError, match=r"pairs.jsonl:3: caption: prompt 'a purple dog' has words outside the model's "
                       r"vocabulary: \['dog'\]"):
        check_captions(read_pair_rows(DataConfig(pairs=str(path))), load_policy("shapes-sd"), skip=False)
    only_long = type(rows)([rows.rows[-1]], rows.identity)
    with pytest.raises(DataError, match="every caption breaks the prompt rules"):
        check_captions(only_long, tiny, skip=True)


def test_a_cache_folder_that_is_a_file_is_refused_before_any_model_loads(tmp_path):
    (tmp_path / "cachefile").write_text("")
    path = _jsonl(tmp_path, n=2)
    cfg = tiny_config("shapes-sd", **{"train.algorithm": "dpo", "data.pairs": str(path),
                                      "data.cache_dir": str(tmp_path / "cachefile" / "sub")})
    from ddrl.images import check_run

    with pytest.raises(ValueError, match=r"data.cache_dir .*cachefile/sub is a file, not a folder \(its parent"):
        check_run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_writer_killed_mid_write_leaves_no_folder_that_restarts_keep(tiny_sd_folder, tmp_path):
    """The cache is written in `.KEY.PID.tmp` and renamed; a writer killed before the rename
    leaves that folder, which the next writer removes (its process is gone) while one whose
    process is alive is kept."""
    import os
    import subprocess
    import sys

    from ddrl.models.loading import load_policy

    rows = read_pair_rows(DataConfig(pairs=str(_jsonl(tmp_path, n=2))))
    policy = load_policy(str(tiny_sd_folder))
    _, folder, _ = pair_latents(rows, policy, "tiny", 32, False, tmp_path / "c", skip_bad_rows=False, progress=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder.with_name(f".{folder.name}.{int(dead.stdout)}.tmp")
    live = folder.with_name(f".{folder.name}.{os.getppid()}.tmp")  # another writer, still running
    for tmp in (stale, live):
        tmp.mkdir()
        (tmp / "latents.safetensors").write_bytes(b"half")
    import shutil

    shutil.rmtree(folder)
    pair_latents(rows, policy, "tiny", 32, False, tmp_path / "c", skip_bad_rows=False, progress=False)
    assert not stale.exists() and live.exists() and (folder / "latents.safetensors").is_file()
