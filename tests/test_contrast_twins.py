import random
from collections import Counter

from agff_deploy.scenes import HELD_OUT_COMBOS, make_scene, mirrored
from train.pairs import CONTRASTS, contrast_twins, showing


def twins(count=1500, seed=0):
    rng = random.Random(seed)
    return [t for t in (contrast_twins(make_scene(s), rng) for s in range(count)) if t is not None]


def contrast_of(a, b):
    """The contrast a pair of twins shows, read off the two scenes."""
    if a.category != b.category:
        return "scene"
    if len(a.groups) == 2 and b == mirrored(a):
        return "mirror"
    changed = {k for k, v in vars(a.groups[0]).items() if getattr(b.groups[0], k) != v}
    return "shape" if "shape" in changed else changed.pop()


def test_every_contrast_gets_a_fair_share_of_hard_negatives():
    shares = Counter(contrast_of(a, b) for a, b in twins())
    assert set(shares) == set(CONTRASTS)
    assert min(shares.values()) / sum(shares.values()) > 0.5 / len(CONTRASTS)


def test_twins_differ_in_their_captions():
    assert all(a.caption() != b.caption() for a, b in twins(300))


def test_twins_never_use_a_held_out_combination():
    assert not any({(g.shape, g.colour) for s in pair for g in s.groups} & HELD_OUT_COMBOS for pair in twins())


def test_a_scene_is_made_to_point_before_its_direction_is_contrasted():
    scene = next(s for s in map(make_scene, range(100)) if s.groups[0].shape != "triangle")
    shown = showing(scene, "direction", random.Random(0))
    assert shown.groups[0].shape == "triangle" and shown.groups[0].direction is not None
    assert shown.groups[0].colour == scene.groups[0].colour and shown.category == scene.category


def test_a_mirror_twin_swaps_both_groups_from_side_to_side():
    scene = next(s for s in map(make_scene, range(100)) if len(s.groups) == 2)
    shown = showing(scene, "mirror", random.Random(0))
    twin = mirrored(shown)
    assert {g.position for g in shown.groups} == {"left", "right"}
    assert [g.position for g in twin.groups] == [g.position for g in reversed(shown.groups)]


def test_a_single_group_scene_cannot_show_a_mirror_contrast():
    scene = next(s for s in map(make_scene, range(100)) if len(s.groups) == 1)
    assert showing(scene, "mirror", random.Random(0)) is None
