"""The scaling rules, cell by cell, against Table 1 of arXiv 2512.22382 (shared/reference/completed-p.md)."""

import math

import pytest

from trainer.parameterisation import SCALING_GROUPS, GroupScaling, Parameterisation, Shape

BASE = Shape(width=64, depth=4, batch_size=16, tokens=1_000_000)
# m_N = 4, m_L = 2, m_B = 2, m_D = 8, so s = sqrt(m_B / m_D) = 1/2 and (1 - beta) scales by m_B / m_D = 1/4.
TARGET = Shape(width=256, depth=8, batch_size=32, tokens=8_000_000)

# Hand-computed from the table. Columns: init std (sqrt of the variance factor), LR, eps, weight decay.
COMPLETED_ALPHA_1 = {
    "embedding": (1.0, 1 / 2, 1 / 2, 1 / 2),  # σ², η·s, ε/(m_N·s), λ·s
    "hidden_weight": (1 / 2, 1 / 8, 1 / 4, 2.0),  # σ²/m_N, η·s/m_N, ε/(m_N·m_L·s), λ·m_N·s
    "hidden_vector": (1.0, 1 / 2, 1 / 4, 1 / 2),  # σ², η·s, ε/(m_N·m_L·s), λ·s
    "qk_norm": (1.0, 1 / 2, 1.0, 1 / 2),  # σ², η·s, ε/(m_L·s), λ·s
    "final_norm": (1.0, 1 / 2, 2.0, 1 / 2),  # σ², η·s, ε/s, λ·s
    "unembedding": (1 / 4, 1 / 8, 2.0, 2.0),  # σ²/m_N², η·s/m_N, ε/s, λ·m_N·s
}
R = 2**-0.5  # m_L^(α-1) = m_L^-α = 2^-0.5 at α = 1/2
COMPLETED_ALPHA_HALF = {
    "embedding": (1.0, 1 / 2, 1 / 2, 1 / 2),
    "hidden_weight": (1 / 2, R / 8, R / 2, 2.0),
    "hidden_vector": (1.0, R / 2, R / 2, 1 / 2),
    "qk_norm": (1.0, R / 2, 2 * R, 1 / 2),
    "final_norm": (1.0, 1 / 2, 2.0, 1 / 2),
    "unembedding": (1 / 4, 1 / 8, 2.0, 2.0),
}


def cells(g: GroupScaling) -> tuple[float, float, float, float]:
    return (g.init_std, g.lr, g.eps, g.weight_decay)


def all_factors(g: GroupScaling) -> tuple[float, ...]:
    return (*cells(g), g.one_minus_beta1, g.one_minus_beta2)


@pytest.mark.parametrize(
    ("alpha", "table", "residual"), [(1.0, COMPLETED_ALPHA_1, 1 / 2), (0.5, COMPLETED_ALPHA_HALF, R)]
)
def test_completed_matches_every_cell_of_the_table(alpha, table, residual):
    scaling = Parameterisation("completed", alpha=alpha, duration_exponent=0.5).scaling(BASE, TARGET)  # the paper's
    assert set(scaling.groups) == set(SCALING_GROUPS)
    for group, expected in table.items():
        assert cells(scaling.groups[group]) == pytest.approx(expected, rel=1e-12), group
        assert scaling.groups[group].one_minus_beta1 == pytest.approx(1 / 4)
        assert scaling.groups[group].one_minus_beta2 == pytest.approx(1 / 4)
    assert scaling.residual == pytest.approx(residual)
    assert scaling.logit == 1.0
    assert scaling.steps == pytest.approx(4.0)  # m_D / m_B


def test_identity_shape_changes_nothing():
    for name in ("sp", "mup", "completep", "completed"):
        scaling = Parameterisation(name).scaling(BASE, BASE)
        for group in scaling.groups.values():
            assert all_factors(group) == (1.0,) * 6
        assert (scaling.residual, scaling.logit, scaling.steps) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("group", ["hidden_weight", "unembedding"])
def test_lr_times_weight_decay_of_matrices_is_width_invariant(group):
    products = set()
    for width in (32, 64, 128, 512, 4096):
        target = Shape(width, BASE.depth, BASE.batch_size, BASE.tokens)
        g = Parameterisation("completed").scaling(BASE, target).groups[group]
        products.add(round(g.lr * g.weight_decay, 12))
    assert products == {1.0}


def test_scaling_batch_and_tokens_together_changes_nothing_at_the_papers_duration_exponent():
    target = Shape(BASE.width, BASE.depth, BASE.batch_size * 4, BASE.tokens * 4)
    scaling = Parameterisation("completed", duration_exponent=0.5).scaling(BASE, target)
    for group in scaling.groups.values():
        assert all_factors(group) == pytest.approx((1.0,) * 6)
    assert scaling.steps == 1.0


def test_doubling_tokens_at_fixed_batch_follows_the_reference_consequences():
    target = Shape(BASE.width, BASE.depth, BASE.batch_size, BASE.tokens * 2)
    g = Parameterisation("completed", duration_exponent=0.5).scaling(BASE, target).groups["hidden_weight"]
    assert g.lr == pytest.approx(2**-0.5)
    assert g.weight_decay == pytest.approx(2**-0.5)
    assert g.eps == pytest.approx(2**0.5)
    assert g.one_minus_beta2 == pytest.approx(1 / 2)  # beta2 0.95 -> 0.975


@pytest.mark.parametrize("exponent", [0.0, 0.3, 0.5])
def test_batch_alone_scales_lr_wd_and_eps_by_its_square_root_whatever_the_duration_exponent(exponent):
    target = Shape(BASE.width, BASE.depth, BASE.batch_size * 4, BASE.tokens)
    scaling = Parameterisation("completed", duration_exponent=exponent).scaling(BASE, target)
    for group in scaling.groups.values():
        assert all_factors(group) == pytest.approx((1.0, 2.0, 1 / 2, 2.0, 4.0, 4.0))


@pytest.mark.parametrize("exponent", [0.0, 0.3, 0.5])
def test_tokens_alone_scale_lr_wd_and_eps_by_the_duration_exponent(exponent):
    target = Shape(BASE.width, BASE.depth, BASE.batch_size, BASE.tokens * 4)
    scaling = Parameterisation("completed", duration_exponent=exponent).scaling(BASE, target)
    for group in scaling.groups.values():
        s = 4**-exponent
        # the betas follow m_B/m_D whatever the exponent
        assert all_factors(group) == pytest.approx((1.0, s, 1 / s, s, 1 / 4, 1 / 4))


def test_completep_differs_from_completed_exactly_where_the_paper_says():
    """Width and depth change: embedding ε, QK-norm ε and the logit multiplier (folded into the unembedding)."""
    width_depth = Shape(256, 8, BASE.batch_size, BASE.tokens)
    completed = Parameterisation("completed").scaling(BASE, width_depth)
    completep = Parameterisation("completep").scaling(BASE, width_depth)
    differing = {
        (group, field)
        for group in SCALING_GROUPS
        for field in ("init_std", "lr", "eps", "weight_decay", "one_minus_beta1", "one_minus_beta2")
        if not math.isclose(getattr(completed.groups[group], field), getattr(completep.groups[group], field))
    }
    assert differing == {
        ("embedding", "eps"),  # Complete(d)P: ε/m_N; CompleteP's code: one ε
        ("qk_norm", "eps"),  # Complete(d)P: no width factor; CompleteP: ε/(m_N·m_L^α) like other vectors
        # CompleteP multiplies the logits by 1/m_N and leaves the unembedding's init, LR and WD unscaled;
        # Complete(d)P folds that multiplier into them (Adam's abc-symmetry), keeping η·λ the same.
        ("unembedding", "init_std"),
        ("unembedding", "lr"),
        ("unembedding", "weight_decay"),
    }
    assert (completed.logit, completep.logit) == (1.0, 1 / 4)
    unembed_c, unembed_p = completed.groups["unembedding"], completep.groups["unembedding"]
    assert unembed_c.lr * unembed_c.weight_decay == pytest.approx(unembed_p.lr * unembed_p.weight_decay)
    assert completep.groups["qk_norm"].eps == pytest.approx(1 / 4 / 2)
    assert completep.residual == completed.residual == 1 / 2


def test_completep_does_not_scale_batch_or_duration():
    target = Shape(BASE.width, BASE.depth, BASE.batch_size, BASE.tokens * 8)
    scaling = Parameterisation("completep").scaling(BASE, target)
    for group in scaling.groups.values():
        assert all_factors(group) == (1.0,) * 6
    assert scaling.steps == 8.0


def test_mup_scales_width_only_and_sp_nothing():
    mup = Parameterisation("mup").scaling(BASE, TARGET)
    assert cells(mup.groups["hidden_weight"]) == pytest.approx((1 / 2, 1 / 4, 1.0, 1.0))
    assert cells(mup.groups["unembedding"]) == pytest.approx((1 / 4, 1 / 4, 1.0, 1.0))
    assert cells(mup.groups["embedding"]) == (1.0, 1.0, 1.0, 1.0)
    assert mup.residual == 1.0
    sp = Parameterisation("sp").scaling(BASE, TARGET)
    assert all(cells(g) == (1.0, 1.0, 1.0, 1.0) for g in sp.groups.values())
    assert (sp.residual, sp.steps) == (1.0, 4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"name": "ntk"}, "unknown parameterisation"), ({"alpha": 0.4}, "alpha"), ({"duration_exponent": -1}, "duration")],
)
def test_invalid_parameterisations_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Parameterisation(**kwargs)


def test_non_positive_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"Shape\.width"):
        Shape(0, 1, 1, 1)
