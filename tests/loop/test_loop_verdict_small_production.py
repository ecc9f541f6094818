"""A production split too small for the production check to pass says so: with 2 production images the check
failed as 'no different ... needed better with p < 0.05' although no result on 2 images can reach that p."""
from __future__ import annotations

from scipy.stats import binomtest

from sightline.loop.verdict import _fewest_discordant, decide_promotion
from sightline.spec import Promotion


def _split(n: int, challenger_only: int, champion_only: int, p: float) -> dict:
    acc = {"champion": 0.5, "challenger": 0.5, "difference": 0.0, "low": 0.0, "high": 0.0, "level": 0.95,
           "n_images": n}
    return {"accuracy": acc, "per_class_recall": {},
            "mcnemar": {"challenger_only": challenger_only, "champion_only": champion_only, "p_value": p}}


def test_the_fewest_discordant_images_match_the_exact_test() -> None:
    for p in (0.05, 0.01, 0.2):
        n = _fewest_discordant(p)
        assert binomtest(n, n).pvalue < p <= binomtest(n - 1, n - 1).pvalue


def test_a_production_split_too_small_to_pass_is_named() -> None:
    test = _split(40, 0, 0, 1.0)
    small = decide_promotion(test, _split(2, 0, 0, 1.0), Promotion())
    assert not small.promote
    assert small.reasons[-1].endswith("which takes at least 6 images on which exactly one model is right (0 here): "
                                      "label more of the service's random slice (feedback export puts it in "
                                      "production/) and challenge again")
    # enough disagreement to decide: the sentence is as before
    worse = decide_promotion(test, _split(40, 1, 9, 0.02), Promotion())
    assert worse.reasons[-1].endswith("needed better with p < 0.05")


def test_a_recall_drop_names_the_images_behind_its_points() -> None:
    # -2.4 points read as a real loss; it is 1 image of 42, which the default rule (2 points) already refuses
    test = _split(77, 0, 0, 1.0)
    test["per_class_recall"] = {"bees": {"champion": 38 / 42, "challenger": 37 / 42, "change": -1 / 42,
                                         "support": 42},
                                "ants": {"champion": 0.5, "challenger": 0.6, "change": 0.1, "support": 35}}
    v = decide_promotion(test, None, Promotion())
    assert "recall fell on the frozen test for bees 0.905 -> 0.881 (-2.4 points, 42 images: 1 fewer recognised)" \
        in v.reasons[0]
