"""The shapes world: renderer determinism, prompt grammar, the split, and the verifier's claims."""

from collections import defaultdict

import numpy as np
import pytest

from ddrl.worlds.shapes import (CATEGORIES, IMAGE_SIZE, detect, format_prompt, parse_prompt, render,
                                split, verify, vocabulary)
from ddrl.worlds.shapes.prompts import (HELD_OUT_COLOR_SHAPE, HELD_OUT_COUNT_SHAPE, HELD_OUT_RELATIONS,
                                        all_specs, is_held_out)
from ddrl.worlds.shapes.render import BACKGROUNDS, make_scene


def test_render_is_deterministic_and_seed_dependent():
    a = np.asarray(render("a red circle and a blue square", 3))
    b = np.asarray(render("a red circle and a blue square", 3))
    c = np.asarray(render("a red circle and a blue square", 4))
    assert a.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_backgrounds_vary_and_include_textures():
    kinds = {make_scene("a circle", s).background for s in range(60)}
    assert kinds == set(BACKGROUNDS)


def test_every_prompt_round_trips_through_the_parser():
    specs = all_specs()
    assert len(specs) == len({format_prompt(s) for s in specs}) == 180
    for spec in specs:
        assert parse_prompt(format_prompt(spec)) == spec
    words = {w for s in specs for w in format_prompt(s).split()}
    assert words == set(vocabulary())


@pytest.mark.parametrize("bad", ["a dog", "five circles", "one circles", "two circle", "", "a red"])
def test_parser_rejects_prompts_outside_the_grammar(bad):
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        parse_prompt(bad)


def test_split_is_disjoint_and_held_out_combinations_never_occur_in_training():
    train, held = split("train"), split("heldout")
    assert set(train).isdisjoint(held)
    assert sorted(train + held) == sorted(split("all"))
    assert {parse_prompt(p).category for p in held} == set(CATEGORIES)  # every category evaluated
    for p in train:
        spec = parse_prompt(p)
        assert not is_held_out(spec)
        assert not any((o.color, o.shape) in HELD_OUT_COLOR_SHAPE for o in spec.objects)
        if spec.category == "counting":
            assert (spec.count, spec.objects[0].shape) not in HELD_OUT_COUNT_SHAPE
        if spec.category == "position":
            assert (spec.objects[0].shape, spec.relation, spec.objects[1].shape) not in HELD_OUT_RELATIONS
    # Every shape, colour and relation word still occurs in training, only in other combinations.
    assert set(vocabulary()) == {w for p in train for w in p.split()}


def test_a_shapes_source_can_keep_only_some_categories():
    from ddrl.prompts import load_prompt_records

    colour = [p for p, _ in load_prompt_records("shapes:train:color_attr")]
    assert colour == [p for p in split("train") if parse_prompt(p).category == "color_attr"] and len(colour) == 78
    both = [p for p, _ in load_prompt_records("shapes:heldout:single_object,counting")]
    assert {parse_prompt(p).category for p in both} == {"single_object", "counting"}
    assert set(both) <= set(split("heldout"))
    with pytest.raises(ValueError, match="unknown categories"):
        load_prompt_records("shapes:train:colour")


def test_verifier_is_right_on_fresh_ground_truth_for_every_category():
    """>= 0.97 accuracy and mean partial score per category on images the pretraining data
    never used (render seeds far above the dataset's)."""
    correct, scores = defaultdict(list), defaultdict(list)
    for p in split("all"):
        for seed in range(10_000_000, 10_000_000 + 4):
            v = verify(render(p, seed), p)
            correct[v.category].append(v.correct)
            scores[v.category].append(v.score)
    for cat in CATEGORIES:
        assert np.mean(correct[cat]) >= 0.97, (cat, np.mean(correct[cat]))
        assert np.mean(scores[cat]) >= 0.97, (cat, np.mean(scores[cat]))


def test_verifier_is_not_fooled_by_empty_or_noise_images():
    rng = np.random.default_rng(0)
    images = {
        "grey": np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 0.5),
        "black": np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3)),
        "uniform noise": rng.random((IMAGE_SIZE, IMAGE_SIZE, 3)),
        "gaussian noise": np.clip(0.5 + 0.25 * rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 1),
        "2px block noise": rng.random((IMAGE_SIZE // 2, IMAGE_SIZE // 2, 3)).repeat(2, 0).repeat(2, 1),
    }
    for name, img in images.items():
        worst = max(verify(img, p).score for p in split("all"))
        assert worst <= 0.05, (name, worst)


def test_verifier_reads_each_shape_colour_and_count():
    """Detections of a rendered counting image: the right number of the right shape."""
    for shape in ("circle", "square", "triangle"):
        dets = detect(render(f"three {shape}s", 11))
        assert [d.shape for d in dets] == [shape] * 3
    dets = detect(render("a purple triangle and a yellow square", 5))
    assert sorted((d.color, d.shape) for d in dets) == [("purple", "triangle"), ("yellow", "square")]


def test_verifier_accepts_tensor_layouts_and_rejects_bad_shapes():
    import torch

    img = render("a green circle", 2)
    hwc = np.array(img)
    chw = torch.from_numpy(hwc).permute(2, 0, 1).float() / 255
    assert verify(hwc, "a green circle").correct and verify(chw, "a green circle").correct
    with pytest.raises(ValueError, match="RGB image"):
        verify(np.zeros((48, 48)), "a circle")
