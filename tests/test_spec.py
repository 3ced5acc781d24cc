"""The search spec: the contract's fields, errors that name the field, and the search space's coordinates."""

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from hpo_service.spec import SEARCH_SECTIONS, SearchSpec
from trainer.config import TrainConfig
from trainer.model import GPT, MODULE_TYPES, ModelConfig
from trainer.parameterisation import Shape

ROOT = Path(__file__).resolve().parents[1]


def spec(**sections) -> SearchSpec:
    return SearchSpec.model_validate({"name": "t", **sections})


def error_fields(**sections) -> set[str]:
    with pytest.raises(ValidationError) as info:
        spec(**sections)
    return {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


@pytest.mark.parametrize("example", ["tiny.yaml", "proxy-50m.yaml", "staged.yaml"])
def test_the_shipped_examples_are_valid_specs(example):
    loaded = SearchSpec.model_validate(yaml.safe_load((ROOT / "examples" / example).read_text()))
    assert loaded.dimension() > 0


def test_the_contract_example_parses_with_every_field_it_names():
    loaded = SearchSpec.model_validate(yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text()))
    assert loaded.name == "tiny-demo"
    assert loaded.search_space.modules == "all"
    assert loaded.optimizer.name == "cma" and loaded.optimizer.population == 6
    assert loaded.execution.max_retries == 1 and loaded.execution.timeout_s == 600


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"search_space": {"modules": ["attn_q", "attn_z"]}}, "search_space.modules"),
        ({"search_space": {"hps": ["lr", "momentum"]}}, "search_space.hps"),
        ({"search_space": {"log2_bounds": [3, -3]}}, "search_space.log2_bounds"),
        ({"search_space": {"log2_bounds": [1, 3]}}, "search_space.log2_bounds"),  # must contain the base HPs
        ({"optimizer": {"population": 0}}, "optimizer.population"),
        ({"optimizer": {"generations": -1}}, "optimizer.generations"),
        ({"optimizer": {"name": "bayes"}}, "optimizer.name"),
        ({"optimizer": {"name": "cma", "population": 1}}, "optimizer"),
        ({"execution": {"parallel": 0}}, "execution.parallel"),
        ({"execution": {"timeout_s": 0}}, "execution.timeout_s"),
        ({"training": {"steps": 0}}, "training.steps"),
        ({"optimizer": {"popsize": 4}}, "optimizer.popsize"),  # unknown keys are refused
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_values_are_rejected_naming_the_field(sections, field):
    assert field in error_fields(**sections)


def test_an_absurd_budget_is_rejected():
    with pytest.raises(ValidationError, match="above the limit"):
        spec(optimizer={"population": 10_000, "generations": 100_000})


def test_coordinates_cover_modules_times_hps_except_the_init_of_norm_gains():
    names = spec(search_space={"hps": ["lr", "init_std"]}).search_space.coordinates(depth=2)
    assert "module.attn_q.init_std" in names and "module.norm_attn.lr" in names
    assert "module.norm_attn.init_std" not in names  # gains start at one whatever the init std
    assert len(names) == len(MODULE_TYPES) + 8  # lr everywhere, init std for the 8 weight matrices


def test_per_depth_and_residual_coordinates():
    s = spec(
        model={"depth": 3}, search_space={"modules": ["mlp_up"], "hps": ["lr"], "per_depth": True, "residual": True}
    )
    assert s.search_space.coordinates(depth=3) == [
        "module.mlp_up.lr",
        "depth.lr.0",
        "depth.lr.1",
        "depth.lr.2",
        "residual.attn",
        "residual.mlp",
    ]
    multipliers = s.multipliers([1.0, 0.1, 0.2, 0.3, -1.0, 0.5])
    assert multipliers.module == {"mlp_up": {"lr": 1.0}}
    assert multipliers.depth == {"lr": (0.1, 0.2, 0.3)}
    assert multipliers.residual == {"attn": -1.0, "mlp": 0.5}


def test_a_tied_space_searches_the_global_hps_one_multiplier_per_hp_for_every_module():
    s = spec(search_space={"hps": ["lr", "init_std"], "tied": True})
    assert s.search_space.coordinates(depth=2) == ["global.lr", "global.init_std"]
    multipliers = s.multipliers([1.0, -0.5])
    assert set(multipliers.module) == set(MODULE_TYPES)
    assert all(hps["lr"] == 1.0 for hps in multipliers.module.values())
    assert multipliers.module["attn_q"]["init_std"] == -0.5
    assert "init_std" not in multipliers.module["norm_attn"]  # gains have no init std, tied or not
    with pytest.raises(ValidationError, match="tied"):
        spec(search_space={"tied": True, "per_depth": True})


def test_the_spec_is_a_training_config_with_its_own_shape_as_the_base_shape():
    s = spec(model={"width": 32, "depth": 1, "head_dim": 16}, training={"steps": 5, "batch_size": 4})
    config = s.train_config()
    assert config.base_shape() == config.shape()
    assert config.parameterisation.base_shape is not None


def test_a_spec_is_a_training_config_plus_its_search_sections():
    s = spec()
    assert isinstance(s, TrainConfig)
    staged = ("stages", "selection", "validate", "start_from", "early_stopping")
    assert ("name", "search_space", "optimizer", "execution", "export_targets", *staged) == SEARCH_SECTIONS
    assert set(s.model_dump()) == set(TrainConfig.model_fields) | set(SEARCH_SECTIONS)
    assert s.train_config() == TrainConfig().with_base_shape_pinned()  # the same defaults, defined once
    assert type(s.train_config()) is TrainConfig  # what a worker is sent: no search sections


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"training": {"steps": 10**8}}, "training.steps"),
        ({"training": {"batch_size": 10**7}}, "training.batch_size"),
        ({"training": {"data": "ftp://corpus"}}, "training.data"),
        ({"base_hps": {"lr": 0}}, "base_hps.lr"),
        ({"model": {"vocab_size": 1}}, "model.vocab_size"),
        ({"parameterisation": {"alpha": 0.2}}, "parameterisation.alpha"),
    ],
)
def test_the_training_sections_bounds_are_the_training_configs_own(sections, field):
    assert field in error_fields(**sections)
    with pytest.raises(ValidationError) as info:
        TrainConfig.model_validate(sections)
    assert field in {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}


def test_the_digest_of_a_spec_is_stable_across_releases():
    # A stored search's spec_hash is the provenance of its exports: a new default changes it (the duration
    # exponent's 0.5 -> 0.3 did), a refactor or an option that is off by default must not.
    assert spec().digest() == "c8176501974315772492bdd806cafab21658abd564a5d4a718ce5a6290d4f577"
    tiny = SearchSpec.model_validate(yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text()))
    assert tiny.digest() == "d78d8d94c2a33c1ec19468f0c35daac30851caa10bec17fc55cd18d0d66429ed"
    assert SearchSpec.model_validate(tiny.model_dump(mode="json")) == tiny


def test_the_digest_ignores_key_order_but_not_values():
    a = SearchSpec.model_validate({"name": "t", "optimizer": {"population": 4, "seed": 1}})
    b = SearchSpec.model_validate({"optimizer": {"seed": 1, "population": 4}, "name": "t"})
    c = SearchSpec.model_validate({"name": "t", "optimizer": {"population": 4, "seed": 2}})
    assert a.digest() == b.digest() != c.digest()


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"model": {"width": 2**100}}, "model.width"),
        ({"model": {"depth": 2**20}}, "model.depth"),
        ({"model": {"seq_len": 2**30}}, "model.seq_len"),
        ({"model": {"mlp_ratio": 10**6}}, "model.mlp_ratio"),
        ({"training": {"seed": 2**40}}, "training.seed"),
        ({"training": {"seed": 2**31 - 1}, "optimizer": {"replicates": 2}}, "training.seed"),
        ({"training": {"eval_every": 10**12}}, "training.eval_every"),
        ({"training": {"eval_batches": 10**9}}, "training.eval_batches"),
        ({"training": {"z_loss": float("nan")}}, "training.z_loss"),
        ({"search_space": {"log2_bounds": [float("-inf"), 1]}}, "search_space.log2_bounds.0"),
        ({"export_targets": [{"width": 0, "depth": 1, "batch_size": 1, "tokens": 1}]}, "export_targets.0.width"),
        ({"export_targets": [{"width": 8, "depth": 1, "batch_size": 1, "tokens": 2**64}]}, "export_targets.0.tokens"),
        ({"parameterisation": {"base_shape": {"width": 8, "depth": 0, "batch_size": 1, "tokens": 1}}},
         "parameterisation.base_shape.depth"),
        ({"name": " \t\n"}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"training": {"data": "text:a\x00b"}}, "training.data"),
    ],
)  # fmt: skip
def test_every_value_is_bounded_by_what_the_store_and_the_trainer_can_hold(sections, field):
    assert field in error_fields(**sections)


def test_a_run_at_every_hard_bound_still_counts_its_tokens_in_64_bits():
    most = TrainConfig.model_validate(
        {
            "model": {"width": 2**20, "depth": 2**14, "head_dim": 2**10, "seq_len": 2**19},
            "training": {"batch_size": 1_000_000, "steps": 10_000_000},
        }
    )
    assert most.shape().tokens < 2**63  # the store's trial token count is a BigInteger
    assert TrainConfig.model_validate(most.with_base_shape_pinned().model_dump(mode="json")).base_shape() == (
        most.shape()
    )


def test_a_name_is_kept_without_its_surrounding_whitespace():
    assert spec(name="  tuned\n").name == "tuned"


def test_shapes_read_and_write_as_they_did():
    target = {"width": 256, "depth": 4, "batch_size": 32, "tokens": 10**9}
    loaded = spec(export_targets=[target])
    assert loaded.export_targets == [Shape(256, 4, 32, 10**9)]
    assert loaded.model_dump(mode="json")["export_targets"] == [target]


def test_the_parameter_count_the_server_limits_is_the_models_own():
    for config in (ModelConfig(), ModelConfig(width=96, depth=3, head_dim=32, vocab_size=300, mlp_ratio=3)):
        assert config.n_params == sum(p.numel() for p in GPT(config).parameters())


def test_cma_on_a_one_dimensional_space_is_refused_naming_the_optimizer():
    assert error_fields(search_space={"tied": True, "hps": ["lr"]}) == {"optimizer.name"}
    stage = {"name": "g", "search_space": {"tied": True, "hps": ["lr"]}, "optimizer": {"name": "diagonal_cma"}}
    with pytest.raises(ValidationError, match="at least two") as info:
        SearchSpec.model_validate({"name": "x", "stages": [stage]})
    assert info.value.errors()[0]["loc"] == ("stages", 0, "optimizer", "name")
    spec(search_space={"tied": True, "hps": ["lr"]}, optimizer={"name": "oneplusone"})  # other optimizers can
