import random

import numpy as np
import pytest

from agff_deploy.scenes import ATTRIBUTES, HELD_OUT_COMBOS, change_attribute, make_scene
from train.pairs import CLASS_LABELS, SyntheticPairs, parse_task_mix, scene_pair


def combos(scene):
    return {(g.shape, g.colour) for g in scene.groups}


def test_a_scene_is_the_same_for_the_same_seed():
    a, b = make_scene(42), make_scene(42)
    assert a == b
    assert np.array_equal(a.render(112), b.render(112))
    assert make_scene(43) != a


def test_training_scenes_never_use_held_out_combinations():
    assert all(not combos(make_scene(s)) & HELD_OUT_COMBOS for s in range(3000))


def test_held_out_scenes_always_use_a_held_out_combination():
    assert all(combos(make_scene(s, held_out=True)) & HELD_OUT_COMBOS for s in range(500))


def test_caption_names_every_attribute_of_the_first_group():
    scene = next(s for s in map(make_scene, range(200)) if s.groups[0].direction and len(s.groups) == 2)
    first, caption = scene.groups[0], scene.caption()
    for word in (scene.category, first.shape, first.colour, first.size, first.state, first.position, first.direction):
        assert word in caption
    assert any(rel in caption for rel in ("left of", "right of", "above", "below"))


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_changing_an_attribute_changes_only_that_attribute(attribute):
    rng = random.Random(0)
    changed = [(s, change_attribute(s, attribute, rng)) for s in map(make_scene, range(300))]
    changed = [(s, c) for s, c in changed if c is not None]
    assert changed, f"no scene can change {attribute}"
    for scene, other in changed:
        assert other.caption() != scene.caption()
        if attribute == "scene":
            assert other.groups == scene.groups
        else:
            diff = {k for k, v in vars(scene.groups[0]).items() if getattr(other.groups[0], k) != v}
            allowed = {"shape", "direction"} if attribute == "shape" else {attribute}
            assert attribute in diff and diff <= allowed and other.category == scene.category


def test_a_triangle_changed_into_another_shape_stops_pointing():
    rng = random.Random(0)
    triangles = [s for s in map(make_scene, range(300)) if s.groups[0].shape == "triangle"]
    changed = [c.groups[0] for c in (change_attribute(s, "shape", rng) for s in triangles) if c is not None]
    assert changed
    assert all(g.direction is None and "pointing" not in g.phrase() for g in changed)


def test_question_answers_read_off_the_scene():
    scene = make_scene(7)
    answers = dict(scene.questions())
    assert answers["what kind of scene is this?"] == scene.category
    assert answers[f"what colour is the {scene.groups[0].shape}?"] == scene.groups[0].colour


def test_each_task_serves_its_mmeb_style_pair():
    i2t, vqa, cls = (scene_pair(task, 5, 56) for task in ("i2t", "vqa", "cls"))
    assert i2t.query_image.shape == (56, 56, 3) and i2t.pos_text == make_scene(5).caption()
    assert vqa.query_text.endswith("?") and vqa.pos_text in dict(make_scene(5).questions()).values()
    assert cls.pos_text in CLASS_LABELS


def test_a_batch_depends_only_on_seed_and_step():
    source = SyntheticPairs(seed=1, batch_size=4, image_size=56, tasks={"i2t": 1.0})
    first, again = source.batch(3), source.batch(3)
    assert [p.pos_text for p in first] == [p.pos_text for p in again]
    assert [p.pos_text for p in source.batch(4)] != [p.pos_text for p in first]


def test_task_mix_rejects_unknown_tasks():
    assert parse_task_mix("i2t:0.8,vqa:0.2") == {"i2t": 0.8, "vqa": 0.2}
    with pytest.raises(ValueError, match="unknown task 'ocr'"):
        parse_task_mix("ocr")
