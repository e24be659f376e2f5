"""The identity inputs of the published config against the official script's formulas.

Each expected value is computed here from the formula the published ``inference.py`` uses (its
calls to facenet-pytorch, BiSeNet's FaceParser and CLIP's processor), written with PIL, numpy and
torch directly, not by calling the code under test:

- global token: ``MTCNN(image_size=160)`` (margin 0, largest face) on the photo: the box cut with
  int() truncation, resized to 160 x 160 with PIL's bilinear filter (non-square boxes stretch),
  then (x - 127.5) / 128;
- local tokens: BiSeNet on the whole photo at its native size (ToTensor + ImageNet Normalize, no
  resize), classes {0, 7, 8, 9, 14, 15, 16, 17, 18} painted white, then CLIP's processor: the
  shortest side to 224 with PIL bicubic (long side int(224 * long / short)), centre crop 224;
- the head prior's input: ``(skimage.transform.resize(im, (512, 512), anti_aliasing=True) * 255)
  .astype(uint8)`` (DECA's TestData(size=512));
- the added prompt: ``prompt + ", " + a_prompt`` when a_prompt is not empty.
"""

from __future__ import annotations

import matplotlib.cbook
import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.transform import resize

from caphuman.config import load_config
from caphuman.session import CapHumanSession

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The official FaceParser.parse paints these CelebAMask-HQ classes white: background, ears,
# earring, neck, necklace, cloth, hair, hat.
OFFICIAL_WHITE_CLASSES = (0, 7, 8, 9, 14, 15, 16, 17, 18)
OPENAI_CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
OPENAI_CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def grace() -> np.ndarray:
    """A real, non-square (600 x 512) portrait."""
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as stream:
        return np.asarray(Image.open(stream).convert("RGB"))


def session_for(tmp_path, **identity) -> CapHumanSession:
    config = load_config("configs/tiny.yaml", {"identity": identity} if identity else None)
    return CapHumanSession(config, weights_dir=tmp_path, device="cpu")


def official_clip_framing(image: np.ndarray, size: int = 224) -> np.ndarray:
    """CLIP's processor as the official code ran it: shortest side -> size (PIL bicubic), centre crop."""
    height, width = image.shape[:2]
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    resized = Image.fromarray(image).resize(new_size, Image.BICUBIC) if min(height, width) != size else Image.fromarray(image)
    left, top = (resized.size[0] - size) // 2, (resized.size[1] - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


# ------------------------------------------------------------------------------ global token


@pytest.mark.parametrize("photo_name", ["astronaut", "grace"])
def test_facenet_input_is_the_mtcnn_160_crop(photo_name, request, tmp_path):
    from facenet_pytorch import MTCNN

    photo = request.getfixturevalue(photo_name)
    with session_for(tmp_path) as session:
        ours = session.reference_inputs(photo)
    assert ours.recognizer_crop_source == "mtcnn"
    assert ours.recognizer_crop.shape == (160, 160, 3) and ours.recognizer_crop.dtype == np.uint8

    # What the official get_id_feat feeds InceptionResnetV1, brought back to pixels.
    prewhitened = MTCNN(image_size=160, margin=0)(Image.fromarray(photo))
    official = (prewhitened * 128.0 + 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.abs(ours.recognizer_crop.astype(int) - official.astype(int)).max() <= 2

    # The same crop from the formula: the largest box, int()-truncated, PIL bilinear to 160 x 160.
    boxes, _ = MTCNN(image_size=160, margin=0).detect(Image.fromarray(photo))
    largest = max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
    x0, y0 = int(max(largest[0], 0)), int(max(largest[1], 0))
    x1, y1 = int(min(largest[2], photo.shape[1])), int(min(largest[3], photo.shape[0]))
    formula = np.asarray(Image.fromarray(photo).crop((x0, y0, x1, y1)).resize((160, 160), Image.BILINEAR))
    np.testing.assert_array_equal(ours.recognizer_crop, formula)
    if photo_name == "grace":
        # MTCNN's box is not square: the official crop stretches the face; ours must too.
        assert abs((x1 - x0) - (y1 - y0)) >= 3


def test_facenet_prewhitening_is_fixed_image_standardization():
    from facenet_pytorch import fixed_image_standardization

    from caphuman.faces.facenet import prewhiten

    crop = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    expected = fixed_image_standardization(torch.from_numpy(crop).permute(2, 0, 1).float())
    torch.testing.assert_close(prewhiten([crop])[0], expected, atol=0, rtol=0)


def test_mesh_facenet_crop_stays_available(astronaut, tmp_path):
    with session_for(tmp_path, facenet_crop="mesh") as session:
        ours = session.reference_inputs(astronaut)
    assert ours.recognizer_crop_source == "mesh" and ours.recognizer_crop.shape == (160, 160, 3)


# ------------------------------------------------------------------------------ local tokens


@pytest.fixture(scope="module")
def bisenet_weights(tmp_path_factory, grace):
    """A random BiSeNet saved as face-parsing/79999_iter.pth whose labels split the photo into
    background (class 0, painted white) and skin (class 1, kept): its last 1x1 conv scores class 0
    by a random direction v of the features and class 1 by -v (all other classes 0)."""
    from caphuman.faces.bisenet import BiSeNet

    torch.manual_seed(0)
    model = BiSeNet().eval()
    pixels = torch.from_numpy(grace.copy()).permute(2, 0, 1).float() / 255.0
    head = model.conv_out.conv_out.weight  # (19, 256, 1, 1)
    for seed in range(20):
        direction = torch.randn(head.shape[1], generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            head.zero_()
            head[0, :, 0, 0] = direction
            head[1, :, 0, 0] = -direction
            share = float((model(pixels[None])[0].argmax(0) == 0).float().mean())
        if 0.2 < share < 0.8:
            break
    folder = tmp_path_factory.mktemp("weights")
    (folder / "face-parsing").mkdir()
    torch.save(model.state_dict(), folder / "face-parsing" / "79999_iter.pth")
    return model, folder


def test_official_clip_input_parses_the_whole_photo_at_native_size(grace, bisenet_weights):
    model, folder = bisenet_weights
    config = load_config("configs/tiny.yaml", {"identity": {"face_parser": "bisenet", "clip_crop": "official"}})
    with CapHumanSession(config, weights_dir=folder, device="cpu") as session:
        ours = session.reference_inputs(grace)

    # FaceParser.parse: ToTensor + Normalize on the photo as it is (600 x 512), argmax of the
    # main head's logits, non-face classes white.
    pixels = torch.from_numpy(grace.copy()).permute(2, 0, 1).float() / 255.0
    normalised = (pixels - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        labels = model(normalised[None])[0].argmax(0).numpy()
    painted = grace.copy()
    painted[np.isin(labels, OFFICIAL_WHITE_CLASSES)] = 255
    white_share = float(np.isin(labels, OFFICIAL_WHITE_CLASSES).mean())
    assert 0.05 < white_share < 0.95, "the random parser must give both kinds of pixels for this test to see anything"

    assert ours.face_parser == "bisenet"
    np.testing.assert_array_equal(ours.face_region, ~np.isin(labels, OFFICIAL_WHITE_CLASSES))
    expected = official_clip_framing(painted)
    assert ours.clip_input.shape == (224, 224, 3)
    np.testing.assert_array_equal(ours.clip_input, expected)


def test_clip_processor_on_our_224_input_equals_the_official_processor_on_the_whole_photo(grace, tmp_path):
    """The pipeline feeds CLIP's processor our 224 px input; the official code fed it the whole
    painted photo. Both must give the same pixel values (up to one 8-bit level of rounding)."""
    from caphuman.conditions.identity import prepare_identity_inputs
    from caphuman.faces.tiny_recognizer import TinyFaceRecognizer
    from caphuman.models.backbone import clip_image_processor

    with session_for(tmp_path, face_parser="mesh", clip_crop="official") as session:
        ours = session.reference_inputs(grace)
    processor = clip_image_processor(224)
    inputs = prepare_identity_inputs([ours.reference_face()], TinyFaceRecognizer(512), processor)
    painted = grace.copy()
    painted[~ours.face_region] = 255
    # CLIP's normalisation written out: rescale to [0, 1], OpenAI mean/std.
    expected = (official_clip_framing(painted) / 255.0 - OPENAI_CLIP_MEAN) / OPENAI_CLIP_STD
    got = inputs.clip_pixel_values[0, 0].permute(1, 2, 0).double().numpy()
    assert np.abs(got - expected).max() * OPENAI_CLIP_STD.max() * 255 <= 1.01
    # And it differs from the aligned framing (the two options are not the same thing).
    with session_for(tmp_path, face_parser="mesh", clip_crop="aligned") as session:
        aligned = session.reference_inputs(grace).clip_input
    assert np.abs(aligned.astype(int) - ours.clip_input.astype(int)).mean() > 20


# ------------------------------------------------------------------------------ head input, prompt


def test_squash_is_the_official_512_resize_and_pad_keeps_proportions(grace, tmp_path):
    with session_for(tmp_path) as session:
        squashed = session.head_input(grace)
    expected = (resize(grace, (512, 512), anti_aliasing=True) * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(squashed, expected)

    config = load_config("configs/tiny.yaml", {"head": {"photo_fit": "pad"}})
    with CapHumanSession(config, weights_dir=tmp_path, device="cpu") as session:
        padded = session.head_input(grace)
    assert padded.shape == (600, 600, 3)
    np.testing.assert_array_equal(padded[:, 44:556], grace)  # (600 - 512) / 2 columns each side


def test_added_prompt_is_joined_as_the_official_script_does():
    from caphuman.conditions.text import join_prompt

    assert join_prompt("a photo of a man", "best quality") == "a photo of a man" + ", " + "best quality"
    assert join_prompt("a photo of a man", "") == "a photo of a man"
