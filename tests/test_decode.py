"""One image decoder for every path that reads user images (ddrl/decode.py): 16-bit and float
images are refused, naming the mode, by the DPO pairs reader, `reward-train`'s pairs reader, the
reward server, a reward given PIL images and the shapes verifier; 8-bit images of any mode decode
to the same RGB pixels everywhere."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ddrl.decode import ImageDecodeError, decode_rgb, rgb_array
from ddrl.rewards import RewardError
from ddrl.rewards.base import as_image_tensor
from ddrl.rewards.learned import load_images
from ddrl.rewards.server import BadRequest, decode_json
from ddrl.worlds.shapes.verifier import _to_array

WIDE = {  # mode: (an image of that mode, the format that stores it)
    "I;16": (lambda: Image.fromarray(np.full((8, 8), 30000, np.uint16)), "PNG"),
    "I": (lambda: Image.fromarray(np.full((8, 8), 70000, np.int32)), "TIFF"),
    "F": (lambda: Image.fromarray(np.full((8, 8), 0.5, np.float32)), "TIFF"),
}


def _encoded(mode: str) -> bytes:
    make, fmt = WIDE[mode]
    buf = io.BytesIO()
    make().save(buf, format=fmt)
    return buf.getvalue()


def _file(tmp_path, mode: str, name: str = "wide"):
    path = tmp_path / f"{name}.{'png' if WIDE[mode][1] == 'PNG' else 'tif'}"
    path.write_bytes(_encoded(mode))
    return path


@pytest.mark.parametrize("mode", sorted(WIDE))
def test_each_path_refuses_a_wide_image_naming_its_mode(mode, tmp_path):
    """Converting these to RGB clips at 255 (16-bit 30000 and 32-bit 70000 become white, float 0.5
    becomes black): every path refuses them with the decoder's message instead."""
    assert Image.open(io.BytesIO(_encoded(mode))).mode == mode  # the file really holds that mode
    path = _file(tmp_path, mode)
    with pytest.raises(ImageDecodeError, match=rf"has mode '{mode}'.*8-bit"):
        decode_rgb(path)
    with pytest.raises(RewardError, match=rf"has mode '{mode}'"):  # reward-train's pairs
        load_images([str(path)])
    body = json.dumps({"images": [base64.b64encode(_encoded(mode)).decode()], "prompts": ["p"]}).encode()
    with pytest.raises(BadRequest, match=rf"image 0 has mode '{mode}'"):  # the reward server
        decode_json(body, 10**6)
    with pytest.raises(RewardError, match=rf"reward 'jpeg-compressibility': image 0 has mode '{mode}'"):
        as_image_tensor("jpeg-compressibility", [Image.open(path)])
    with pytest.raises(ImageDecodeError, match=rf"has mode '{mode}'"):  # the shapes verifier
        _to_array(Image.open(path))


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "1", "CMYK"])
def test_eight_bit_images_decode_to_the_same_pixels_on_every_path(mode, tmp_path):
    g = torch.Generator().manual_seed(0)
    rgb = Image.fromarray(torch.randint(0, 256, (12, 10, 3), generator=g, dtype=torch.uint8).numpy())
    image = rgb.convert(mode)
    fmt = "TIFF" if mode == "CMYK" else "PNG"
    path = tmp_path / f"x.{fmt.lower()}"
    image.save(path, format=fmt)
    want = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(rgb_array(path), want)
    assert np.array_equal(load_images([str(path)])[0].permute(1, 2, 0).numpy(), want)
    body = json.dumps({"images": [base64.b64encode(path.read_bytes()).decode()], "prompts": ["p"]}).encode()
    served, _, _ = decode_json(body, 10**6)
    assert torch.equal(served[0], torch.from_numpy(want).permute(2, 0, 1).float() / 255)
    assert torch.equal(as_image_tensor("r", [Image.open(path)])[0], served[0])


def test_truncated_and_non_image_files_are_one_message(tmp_path):
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(png, format="PNG")
    (tmp_path / "cut.png").write_bytes(png.getvalue()[:60])
    (tmp_path / "text.png").write_text("not an image")
    for name in ("cut.png", "text.png", "absent.png"):
        with pytest.raises(ImageDecodeError, match="cannot decode the image"):
            decode_rgb(tmp_path / name)
    with pytest.raises(ImageDecodeError, match="expected image bytes, a path or a PIL image, got int"):
        decode_rgb(3)
