"""Each recipe family's settings beside its spec (WeakSegLib/registry/): typed and validated per recipe,
``auto`` keeping only the picked recipe's, the resume fingerprint of the shared settings and the chosen
recipe's, the command line's options and help generated from the specs."""

import argparse
import dataclasses

import pytest

from WeakSegLib.app.cli import build_parser
from WeakSegLib.config import TrainConfig
from WeakSegLib.errors import InputError
from WeakSegLib.registry import RecipeSettings, RecipeSpec, recipe_spec, register, settings_fields, specs
from WeakSegLib.registry import spec as registry_spec
from WeakSegLib.registry.box_constraints import BoxConstraintSettings
from WeakSegLib.registry.mil import MILSettings


def train_parser() -> argparse.ArgumentParser:
    return build_parser()._subparsers._group_actions[0].choices["train"]


def test_a_recipe_reads_its_family_defaults_with_the_users_values_in_place():
    config = TrainConfig(recipe="tightness+emptiness", recipe_settings={"band_width": 3})
    settings = config.settings()
    assert type(settings) is BoxConstraintSettings
    assert (settings.band_width, settings.tightness_weight, settings.bounds_weight) == (3, 5e-3, 1.0)
    assert TrainConfig(recipe="box-mask").settings() is None
    resolved = config.resolved()  # what the card records: every setting of the family
    assert resolved.recipe_settings == dataclasses.asdict(settings)
    assert resolved.resolved() == resolved


def test_a_setting_the_chosen_recipe_does_not_have_is_a_one_line_error_listing_its_settings():
    with pytest.raises(InputError) as err:
        TrainConfig(recipe="boxsup", recipe_settings={"tightness_weight": 1e-3}).validate()
    assert str(err.value) == ("recipe 'boxsup' has no setting tightness_weight (its settings: boxsup_k, "
                              "boxsup_weight)")
    with pytest.raises(InputError, match="recipe 'full' has no setting boxsup_k .its settings: none"):
        TrainConfig(recipe="full", recipe_settings={"boxsup_k": 3}).validate()
    with pytest.raises(InputError, match="boxsup_k is '3', not a whole number"):
        TrainConfig(recipe="boxsup", recipe_settings={"boxsup_k": "3"}).validate()


def test_auto_checks_each_value_where_it_is_used_and_keeps_only_the_picked_recipes():
    given = {"size_bounds": (0.4, 0.8), "boxsup_k": 3}
    config = TrainConfig(recipe="auto", recipe_settings=given).validate()
    assert config.picking("boxsup").recipe_settings == {"boxsup_k": 3}
    assert config.picking("tightness+size+emptiness").recipe_settings == {"size_bounds": (0.4, 0.8)}
    assert config.picking("full").recipe_settings == {}
    with pytest.raises(InputError, match="size_bounds must satisfy"):  # checked though boxsup may be picked
        TrainConfig(recipe="auto", recipe_settings={"size_bounds": (0.9, 0.1)}).validate()
    with pytest.raises(InputError, match="no recipe 'auto' may pick has the setting.s. mil_alpha"):
        TrainConfig(recipe="auto", recipe_settings={"mil_alpha": 2.0}).validate()
    named = TrainConfig(recipe="gmil", recipe_settings={"mil_alpha": 2.0})
    assert named.picking("gmil") == named  # a named recipe keeps what it was given


def test_the_fingerprint_is_the_shared_settings_and_the_chosen_recipes_without_speed_only_ones():
    deepcut = TrainConfig(recipe="deepcut").resolved()
    fp = deepcut.fingerprint()
    shared = {f.name for f in dataclasses.fields(TrainConfig)} - {
        "epochs", "device", "eval_every", "cache_gb", "workers", "postprocess", "recipe_settings"}
    mine = {f.name for f in dataclasses.fields(recipe_spec("deepcut").settings)} - {"processes"}
    assert set(fp) == shared | mine
    assert not set(fp) & ({"tightness_weight", "boxsup_k", "size_weight"} | {"processes"})
    faster = dataclasses.replace(deepcut, recipe_settings={**deepcut.recipe_settings, "processes": 8})
    assert faster.fingerprint() == fp
    other = dataclasses.replace(deepcut, recipe_settings={**deepcut.recipe_settings, "proposal_every": 3})
    assert other.fingerprint()["proposal_every"] == 3 != fp["proposal_every"]
    assert set(TrainConfig(recipe="full").resolved().fingerprint()) == shared


def test_recipe_setting_names_are_unique_across_families_and_the_shared_settings():
    shared = {f.name for f in dataclasses.fields(TrainConfig)}
    assert not shared & set(settings_fields())
    assert {name for name, (_, users) in settings_fields().items() if len(users) > 1} >= {"mil_alpha", "band_width"}


def test_the_registry_refuses_a_family_that_redefines_another_familys_setting(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Clash(RecipeSettings):
        band_width: int = 3

    @dataclasses.dataclass(frozen=True)
    class Inherits(MILSettings):
        extra_rays: int = 4

    monkeypatch.setattr(registry_spec, "_REGISTRY", dict(registry_spec._REGISTRY))
    with pytest.raises(ValueError, match=r"settings \['band_width'\] are another family's"):
        register(RecipeSpec("clash", "x", "x:X", settings=Clash()))
    register(RecipeSpec("inherits", "x", "x:X", settings=Inherits()))  # a family that inherits shares them
    assert [recipe for recipe, _ in settings_fields()["mil_alpha"][1]] == ["gmil", "polar-mil", "inherits"]


def test_train_help_has_one_group_per_set_of_recipes_with_each_recipes_default():
    groups = {g.title: {a.dest: a for a in g._group_actions} for g in train_parser()._action_groups}
    for name, (field, users) in settings_fields().items():
        title = "settings of " + ", ".join(recipe for recipe, _ in users)
        action = groups[title][name]
        assert action.default is argparse.SUPPRESS  # set only when given: the recipe's own default stays
        for recipe, value in users:
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            assert value in (None, {}) or isinstance(value, bool) or f" {shown}" in action.help, (name, recipe)
    weight = groups["settings of tightness+size+emptiness, tightness+emptiness, tightness+size+masked-ce"]
    assert weight["tightness_weight"].help.endswith("(default by recipe: 0.005 for tightness+emptiness; else 0.0001)")
    lr = {a.dest: a for a in train_parser()._actions}["lr"].help
    for spec in specs():
        assert str(spec.lr) in lr


def test_train_options_become_the_recipe_settings_given_and_nothing_else():
    from WeakSegLib.app.cli import recipe_settings_from

    args = train_parser().parse_args(["--out", "m", "--recipe", "deepcut", "--proposal-every", "3", "--crf",
                                      "iterations=2", "--size-bounds", "0.3", "0.7", "--polar-parallel"])
    assert recipe_settings_from(args) == {"proposal_every": 3, "crf": {"iterations": 2.0}, "size_bounds": [0.3, 0.7],
                                          "polar_parallel": True}
    assert recipe_settings_from(train_parser().parse_args(["--out", "m"])) == {}
    # a setting whose default is decided by the boxes: either flag gives it, neither leaves it to the boxes
    off = train_parser().parse_args(["--out", "m", "--recipe", "polar-mil", "--no-polar-parallel"])
    assert recipe_settings_from(off) == {"polar_parallel": False}
    assert recipe_settings_from(train_parser().parse_args(["--out", "m", "--recipe", "polar-mil"])) == {}
